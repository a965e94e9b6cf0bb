"""In-process lm-eval evaluation: parity with the lm_eval CLI, RNG and train-mode hygiene, per-task
settings, the WMDP Bio Robust task definition, and friendly errors for missing data or tasks."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from unlearnspec.errors import UserError
from unlearnspec.spec import EvalSpec

REPO = Path(__file__).resolve().parents[1]
TOY_TASKS_DIR = REPO / "plugins" / "toy"
WMDP_DIR = REPO / "plugins" / "wmdp_bio_robust"
CATEGORIES = (
    "bioweapons_and_bioterrorism",
    "dual_use_virology",
    "enhanced_potential_pandemic_pathogens",
    "expanding_access_to_threat_vectors",
    "reverse_genetics_and_easy_editing",
    "viral_vector_research",
)


def _spec(*tasks: dict, **kw) -> EvalSpec:
    return EvalSpec(tasks=list(tasks), **{"batch_size": 16, **kw})


@pytest.fixture(scope="module")
def tiny_lm():
    """A random 2-layer GPT-NeoX with a BPE trained on the toy questions (built in ~1 s)."""
    import torch

    from unlearnspec.toy.config import ModelConfig
    from unlearnspec.toy.pretrain import make_model, train_tokenizer

    texts = [
        line for f in ("toy_wmdp.jsonl", "toy_mmlu.jsonl") for line in (TOY_TASKS_DIR / f).read_text().splitlines()
    ]
    cfg = ModelConfig(layers=2, hidden=32, heads=2, intermediate=64, vocab_size=400)
    tok = train_tokenizer(texts, cfg)
    torch.manual_seed(0)
    return make_model(cfg, tok), tok


# --------------------------------------------------------------------------- task definitions
def test_toy_tasks_load_from_any_directory(tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(tmp_path)  # lm-eval would resolve relative data_files against this
    tm = TaskManager(include_path=str(TOY_TASKS_DIR), include_defaults=False)
    loaded = tm.load(["toy_wmdp", "toy_mmlu"])
    for _name, task in loaded["tasks"].items():
        docs = list(task.eval_docs)
        assert len(docs) == 300
        doc = docs[0]
        assert task.doc_to_text(doc) == doc["question"]
        assert task.doc_to_choice(doc) == doc["choices"] and task.doc_to_target(doc) == doc["answer"]


def test_wmdp_bio_robust_registers_as_group_of_six():
    import yaml
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(WMDP_DIR), include_defaults=False)
    subtasks = [f"wmdp_bio_robust_{c}" for c in CATEGORIES]
    assert "wmdp_bio_robust" in tm.all_groups
    assert sorted(tm.all_subtasks) == sorted(subtasks)
    group = tm.task_index["wmdp_bio_robust"].cfg
    assert group["task"] == subtasks
    assert group["aggregate_metric_list"] == [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}]

    import lm_eval

    builtin = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/wmdp/_default_template_yaml").read_text())
    builtin_bio = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/wmdp/wmdp_bio.yaml").read_text())
    for category, name in zip(CATEGORIES, subtasks):
        cfg = tm.task_index[name].cfg
        assert cfg["dataset_path"] == "EleutherAI/wmdp_bio_robust_mcqa" and cfg["dataset_name"] == category
        assert cfg["test_split"] == "robust" and cfg["output_type"] == "multiple_choice"
        for key in ("doc_to_text", "doc_to_choice", "doc_to_target", "metric_list"):
            assert cfg[key] == builtin[key], key
        assert cfg["description"] == builtin_bio["description"]


def test_missing_dataset_is_a_user_error(tiny_lm):
    from unlearnspec.evaluation import evaluate_model

    model, tok = tiny_lm
    with pytest.raises(UserError) as err:
        evaluate_model(model, tok, _spec({"name": "wmdp_bio_robust", "num_fewshot": 0}), [WMDP_DIR])
    text = str(err.value)
    assert "wmdp_bio_robust" in text and "EleutherAI/wmdp_bio_robust_mcqa" in text and "--toy" in text


@pytest.mark.slow  # indexes lm-eval's ~14,700 built-in tasks (6-40 s)
def test_unknown_task_is_a_user_error_with_suggestion(tiny_lm):
    from unlearnspec.evaluation import evaluate_model

    model, tok = tiny_lm
    with pytest.raises(UserError) as err:
        evaluate_model(model, tok, _spec({"name": "toy_wmpd", "num_fewshot": 0}), [TOY_TASKS_DIR])
    assert "Did you mean: toy_wmdp" in str(err.value)


# --------------------------------------------------------------------------- evaluation behaviour
def test_per_task_limit_fewshot_and_samples(tiny_lm):
    from unlearnspec.evaluation import EvalResult, evaluate_model

    model, tok = tiny_lm
    spec = _spec(
        {"name": "toy_wmdp", "num_fewshot": 2, "limit": 12},
        {"name": "toy_mmlu", "num_fewshot": 0, "limit": 7},
        metric="acc_norm",
    )
    result = evaluate_model(model, tok, spec, [TOY_TASKS_DIR])
    assert {k: m.n for k, m in result.metrics.items()} == {"toy_wmdp": 12, "toy_mmlu": 7}
    assert result.num_fewshot == {"toy_wmdp": 2, "toy_mmlu": 0}
    for task, m in result.metrics.items():
        assert set(result.samples[task]) <= {0, 1} and len(result.samples[task]) == m.n
        assert sum(result.samples[task]) / m.n == pytest.approx(m.acc_norm)  # samples follow the headline metric
        assert m.acc_stderr is not None and m.acc_stderr > 0
    again = EvalResult.from_json(json.loads(json.dumps(result.to_json())))
    assert again == result


def test_group_is_recorded_with_its_aggregated_acc(tiny_lm, tmp_path):
    from unlearnspec.evaluation import evaluate_model

    (tmp_path / "toy_both.yaml").write_text(
        "group: toy_both\ntask: [toy_wmdp, toy_mmlu]\n"
        "aggregate_metric_list:\n  - {metric: acc, aggregation: mean, weight_by_size: true}\n"
    )
    model, tok = tiny_lm
    spec = _spec({"name": "toy_both", "num_fewshot": 0, "limit": 9})
    result = evaluate_model(model, tok, spec, [TOY_TASKS_DIR, tmp_path])
    m = result.metrics["toy_both"]
    assert result.subtasks == {"toy_both": ["toy_wmdp", "toy_mmlu"]}
    assert m.n == 18 and len(result.samples["toy_both"]) == 18
    assert m.acc == pytest.approx(sum(result.samples["toy_both"]) / 18)  # weighted by size
    assert m.acc_stderr is not None and m.acc_norm is None  # the group aggregates acc only


def test_evaluation_restores_train_mode_and_leaves_global_rngs_alone(tiny_lm):
    import numpy as np
    import torch

    from unlearnspec.evaluation import evaluate_model

    def draws():
        return torch.rand(4).tolist(), random.random(), float(np.random.rand())

    def seed():
        torch.manual_seed(7)
        random.seed(7)
        np.random.seed(7)

    seed()
    reference = [draws(), draws()]
    model, tok = tiny_lm
    model.train()
    seed()
    first = draws()
    evaluate_model(model, tok, _spec({"name": "toy_wmdp", "num_fewshot": 1, "limit": 5}), [TOY_TASKS_DIR])
    second = draws()
    assert model.training
    assert [first, second] == reference


def _cli_results(model_dir: Path, out: Path, task: str, batch_size: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={model_dir},dtype=float32",
        "--tasks",
        task,
        "--include_path",
        str(TOY_TASKS_DIR),
        "--device",
        "cpu",
        "--batch_size",
        str(batch_size),
        "--num_fewshot",
        "0",
        "--output_path",
        str(out),
    ]
    subprocess.run(cmd, cwd=out, check=True, capture_output=True, text=True, timeout=300)
    files = sorted(out.rglob("results_*.json"))
    assert files, "lm_eval wrote no results file"
    return json.loads(files[-1].read_text())["results"][task]


@pytest.mark.slow
def test_in_process_evaluation_matches_lm_eval_cli(toy_world, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unlearnspec.evaluation import evaluate_model

    model = AutoModelForCausalLM.from_pretrained(toy_world.model_dir)
    tok = AutoTokenizer.from_pretrained(toy_world.model_dir)
    ours = evaluate_model(model, tok, _spec({"name": "toy_wmdp", "num_fewshot": 0}, batch_size=8), [TOY_TASKS_DIR])
    cli = _cli_results(toy_world.model_dir, tmp_path, "toy_wmdp", batch_size=8)
    m = ours.metrics["toy_wmdp"]
    assert m.acc == cli["acc,none"] and m.acc_norm == cli["acc_norm,none"]
    assert m.acc_stderr == pytest.approx(cli["acc_stderr,none"])
    assert 0.3 < m.acc < 1.0  # a trained model, not a degenerate one

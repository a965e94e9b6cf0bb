"""Ground truth from the toy world's fact spans, attribution quality against it, and how both surface:
the truth marks exactly the value tokens of the facts a task asks; its fingerprint is the spec's grid's (a
token rule reads it like any score file); AUROC / precision@k on hand-made matrices; non-toy specs and
non-score folders are refused with UserErrors (exit 2, no traceback); doctor states the figures (D12, info)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from typer.testing import CliRunner

from unlearnspec.cli import app
from unlearnspec.data import build_grid
from unlearnspec.doctor import diagnose, exit_code
from unlearnspec.doctor.quality_rules import QUALITY_KEY as DOCTOR_KEY
from unlearnspec.errors import UserError
from unlearnspec.spec.load import load_spec
from unlearnspec.toy.config import WorldConfig
from unlearnspec.toy.quality import FIXED_K, QUALITY_KEY, attribution_quality, auroc, precision_at_k, run_quality
from unlearnspec.toy.truth import FORGET_MARK, RETAIN_MARK, asked_facts, require_toy, truth_for_grid
from unlearnspec.toy.world import generate_world, row_text

from .conftest import REPO, SPECS
from .fixtures.reportkit import make_project, write_json_atomic

TINY = {
    "entities": {"pathogens": 6, "people": 4, "places": 4, "organisms": 4, "values_per_attribute": 4},
    "corpora": {"rows": {"wikitext": 120, "bio_forget": 60, "bio_retain": 20, "ultrachat": 60, "lie": 40}},
    "tasks": {"questions": 12},
}


@pytest.fixture(scope="module")
def tiny():
    """A tiny generated world and a byte-level BPE tokenizer trained on its corpora (well under a second)."""
    from unlearnspec.toy.pretrain import train_tokenizer

    world = generate_world(WorldConfig.model_validate(TINY))
    texts = [row_text(r) for rows in world.corpora.values() for r in rows]
    return world, train_tokenizer(texts, world.config.model.model_copy(update={"vocab_size": 400}))


def _grid(world, tokenizer, corpus: str, s: int):
    rows = world.corpora[corpus]
    return build_grid([row_text(r) for r in rows], tokenizer, s, "tiny", False, list(range(len(rows)))), rows


def _forget_marks(world) -> dict[str, float]:
    return dict.fromkeys({d["fact"] for d in world.tasks["toy_wmdp"]}, FORGET_MARK)


@pytest.mark.parametrize("corpus", ["wikitext", "ultrachat", "bio_forget"])
def test_truth_marks_exactly_the_value_tokens_of_asked_forget_facts(tiny, corpus):
    world, tok = tiny
    marks = _forget_marks(world)
    grid, rows = _grid(world, tok, corpus, 128)
    truth = truth_for_grid(grid, tok, rows, marks)
    expected = torch.zeros_like(truth, dtype=torch.bool)
    stated = unasked = 0
    for i, row in enumerate(rows):
        enc = tok(row_text(row), return_offsets_mapping=True)
        assert len(enc["input_ids"]) <= 128  # nothing truncated: every span is inside the grid
        for span in row["facts"]:
            if span["fact"] not in marks:
                unasked += world.fact(span["fact"]).domain == "forget"  # a forget fact toy_wmdp does not ask
                continue
            stated += 1
            value = world.fact(span["fact"]).value
            positions = [t for t, (a, b) in enumerate(enc["offset_mapping"]) if a < span["end"] and b > span["start"]]
            assert tok.decode(grid.input_ids[i, positions]).strip() == value  # the marked tokens spell the value
            expected[i, positions] = True
    assert stated > 0 and (corpus != "bio_forget" or unasked > 0)  # 12 questions of 30 forget facts
    assert torch.equal(truth != 0, expected) and set(truth.unique().tolist()) <= {0.0, FORGET_MARK}


def test_truncation_lies_and_retain_marks(tiny):
    world, tok = tiny
    lie_grid, lie_rows = _grid(world, tok, "lie", 64)
    assert not truth_for_grid(lie_grid, tok, lie_rows, _forget_marks(world)).any()  # lies state wrong values
    retain = dict.fromkeys({d["fact"] for d in world.tasks["toy_mmlu"]}, RETAIN_MARK)
    full, rows = _grid(world, tok, "wikitext", 128)
    short, _ = _grid(world, tok, "wikitext", 12)
    both = truth_for_grid(full, tok, rows, {**retain, **_forget_marks(world)})
    cut = truth_for_grid(short, tok, rows, {**retain, **_forget_marks(world)})
    assert (both == RETAIN_MARK).any() and (both == FORGET_MARK).any()
    assert torch.equal(cut, both[:, :12] * short.valid_targets) and cut[:, 0].eq(0).all()


def test_a_text_other_than_the_recorded_row_is_refused(tiny):
    world, tok = tiny
    rows = world.corpora["ultrachat"][:4]
    texts = [" | ".join(m["content"] for m in r["messages"]) for r in rows]  # another chat separator
    grid = build_grid(texts, tok, 64, "tiny", False, [0, 1, 2, 3])
    with pytest.raises(UserError, match="join_contents"):
        truth_for_grid(grid, tok, rows, _forget_marks(world))


def test_asked_facts_of_a_task_and_of_a_group(tmp_path):
    tasks = REPO / "plugins" / "toy"
    wmdp = asked_facts(tasks, "toy_wmdp")
    assert asked_facts(tasks, "toy_wmdp_by_attribute") == wmdp and all(f.startswith("pathogen_") for f in wmdp)
    assert asked_facts(tasks, "toy_wmdp_by_attribute_host") < wmdp
    with pytest.raises(UserError, match="no task 'nope'"):
        asked_facts(tasks, "nope")


# --------------------------------------------------------------------------- quality figures
def test_auroc_and_precision_on_hand_made_rankings():
    truth = torch.zeros(1000, dtype=torch.bool)
    truth[torch.randperm(1000, generator=torch.Generator().manual_seed(0))[:50]] = True
    perfect = torch.where(truth, -1.0, 1.0) * torch.rand(1000, generator=torch.Generator().manual_seed(1))
    assert auroc(-perfect, truth) == 1.0 and auroc(perfect, truth) == 0.0
    assert precision_at_k(perfect, truth, 50) == 1.0 and precision_at_k(-perfect, truth, 50) == 0.0
    rand = torch.randn(1000, generator=torch.Generator().manual_seed(2))
    assert abs(auroc(-rand, truth) - 0.5) < 0.06
    assert auroc(torch.zeros(1000), truth) == 0.5  # all tied: no information
    assert auroc(rand, torch.zeros(1000, dtype=torch.bool)) is None
    # hand-checked: positives at -3 and 0; negatives at -2, 1, 2 -> pairs won 1+2 + 0+2 = 5 of 6
    assert auroc(torch.tensor([3.0, 2.0, -1.0, 0.0, -2.0]), torch.tensor([True, False, False, True, False])) == 5 / 6


def test_quality_counts_valid_tokens_only():
    n, s = 20, 10
    valid = torch.ones(n, s, dtype=torch.bool)
    valid[:, 0] = False
    valid[:, 8:] = False
    truth = torch.zeros(n, s, dtype=torch.bool)
    truth[:5, 3] = True
    scores = torch.where(truth, -1.0, 0.5)
    scores[:, 9] = -100.0  # invalid positions: must not outrank anything
    q = attribution_quality(scores, truth, valid)
    assert q["auroc"] == 1.0 and q["precision_at_k"] == {"5": 1.0, str(FIXED_K): 5 / FIXED_K}
    assert q["truth_tokens"] == 5 and q["valid_tokens"] == n * 7 and q["truth_proponents"] == 1.0
    assert DOCTOR_KEY == QUALITY_KEY


# --------------------------------------------------------------------------- the real toy grid
def test_truth_file_plugs_into_a_token_rule_on_the_specs_grid(toy_world, tmp_path):
    from unlearnspec.run.context import toy_context
    from unlearnspec.run.plan import PlanOptions, build_plan
    from unlearnspec.run.steps import prepare
    from unlearnspec.spec.profile import default_toy_profile

    out = tmp_path / "truth"
    done = CliRunner().invoke(app, ["toy", "truth", str(SPECS / "fixed" / "magic_wmdp.yaml"), "--out", str(out)])
    assert done.exit_code == 0, done.output
    side = json.loads((out / "scores.json").read_text())
    assert side["alignment"] == "target" and side["produced_by"] == "toy:truth" and side["forget_tokens"] > 0
    data = yaml.safe_load((SPECS / "fixed" / "magic_wmdp.yaml").read_text())
    data.pop("magic")
    data["eval"] = yaml.safe_load((SPECS / "fixed" / "selective.yaml").read_text())["eval"]
    data.update(
        name="truth_rule",
        scores={"truth": {"path": str(out / "per_token_scores.pt")}},
        tokens={"mode": "where", "where": "truth < 0"},
        output={"dir": str(tmp_path / "run")},
    )
    spec_file = tmp_path / "truth_rule.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    ctx = toy_context(default_toy_profile(), say=lambda _m: None)
    plan = build_plan([spec_file], PlanOptions(profile=default_toy_profile()), ctx.assets)
    prep = prepare(plan.jobs[0], ctx)  # checked_scores refuses any fingerprint but the grid's
    assert prep.grid.fingerprint == side["data_fingerprint"]
    assert prep.stats.selected_tokens == side["forget_tokens"] and prep.stats.valid_tokens == side["valid_tokens"]


def test_quality_of_a_run_folder_is_written_into_its_sidecar(toy_world, tmp_path):
    from unlearnspec.spec.assets import Assets
    from unlearnspec.spec.profile import default_toy_profile
    from unlearnspec.toy.truth import spec_truth

    spec_path = SPECS / "fixed" / "magic_wmdp.yaml"
    spec = load_spec(spec_path, profile=default_toy_profile())
    truth = spec_truth(spec, spec_path, Assets())
    run = tmp_path / "run"
    run.mkdir()
    from unlearnspec.spec.load import dump_spec

    (run / "spec.yaml").write_text(dump_spec(spec))
    torch.save(truth.scores * 2.0, run / "per_token_scores.pt")  # a perfect attribution
    torch.save(-truth.scores, run / "per_token_scores.host.pt")  # a reversed one
    write_json_atomic(
        run / "scores.json",
        {
            "alignment": "target",
            "N": truth.scores.shape[0],
            "S": truth.scores.shape[1],
            "data_fingerprint": truth.fingerprint,
            "query": {"task": "toy_wmdp", "loss": "answer_continuation", "n_questions": 300},
            "per_task": {"host": {"file": "per_token_scores.host.pt", "task": "toy_wmdp_by_attribute_host"}},
        },
    )
    q = run_quality(run)
    side = json.loads((run / "scores.json").read_text())
    assert side[QUALITY_KEY] == q and side["query"]["task"] == "toy_wmdp"
    n = truth.info["forget_tokens"]
    assert q["auroc"] == 1.0 and q["precision_at_k"][str(n)] == 1.0 and q["truth_tokens"] == n
    host = q["per_task"]["host"]
    assert host["task"] == "toy_wmdp_by_attribute_host" and 0 < host["truth_tokens"] < n and host["auroc"] < 0.5
    mismatch = tmp_path / "other"
    shutil.copytree(run, mismatch)
    other_rows = spec.data.select.model_copy(update={"offset_fraction": 0.5})  # same shape, other rows
    (mismatch / "spec.yaml").write_text(
        dump_spec(spec.model_copy(update={"data": spec.data.model_copy(update={"select": other_rows})}))
    )
    with pytest.raises(UserError, match="fingerprint mismatch"):
        run_quality(mismatch)


def test_non_toy_specs_and_folders_are_refused(tmp_path):
    real = load_spec(SPECS / "fixed" / "magic_wmdp.yaml")
    with pytest.raises(UserError, match="does not run on the embedded toy world"):
        require_toy(real, "magic_wmdp.yaml")
    run = tmp_path / "real"
    run.mkdir()
    shutil.copy(SPECS / "fixed" / "magic_wmdp.yaml", run / "spec.yaml")
    torch.save(torch.zeros(2, 3), run / "per_token_scores.pt")
    write_json_atomic(run / "scores.json", {"alignment": "target", "query": {"task": "wmdp_bio_robust"}})
    with pytest.raises(UserError, match="--toy"):
        run_quality(run)
    runner = CliRunner()
    for folder, message in (
        (tmp_path / "missing", "no such folder"),
        (tmp_path, "not a finished score run"),
        (run, "does not run on the embedded toy world"),
    ):
        result = runner.invoke(app, ["toy", "quality", str(folder)])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    (tmp_path / "file").write_text("x")
    result = runner.invoke(
        app, ["toy", "truth", str(SPECS / "fixed" / "magic_wmdp.yaml"), "--out", str(tmp_path / "file")]
    )
    assert result.exit_code == 2 and "is a file" in result.output


# --------------------------------------------------------------------------- doctor
def test_doctor_states_the_attribution_quality_of_each_score_source(tmp_path):
    specs = make_project(tmp_path)
    for name, auc in (("magic_wmdp", 0.75), ("magic_mmlu", 0.5)):
        side = {"alignment": "target", "dtype": "float32", "N": 1000, "S": 1024}
        if name == "magic_wmdp":
            side[QUALITY_KEY] = {
                "auroc": auc,
                "precision_at_k": {"60": 0.25},
                "truth_tokens": 60,
                "valid_tokens": 3731,
                "task": "toy_wmdp",
                "per_task": {"host": {"auroc": 0.9, "precision_at_k": {"12": "bad"}}},
                "per_question": {"min_q": {"auroc": 0.758, "precision_at_k": {"60": 0.2333}}, "rank_q": "bad"},
            }
        write_json_atomic(tmp_path / "runs" / "fixed" / name / "scores.json", side)
    findings, _ = diagnose([specs])
    found = [f for f in findings if f.code == "D12"]
    assert found and {f.severity for f in found} == {"info"} and {f.rule for f in found} == {"attribution-quality"}
    assert all("score source `wmdp`" in f.message for f in found)  # only the source whose sidecar has figures
    assert (
        "AUROC 0.750, precision@60 0.250 (60 truth tokens of the facts toy_wmdp asks among 3,731 valid)"
        in found[0].message
    )
    assert any("`wmdp.host`: AUROC 0.900, precision@12 n/a" in e for e in found[0].evidence)
    assert any("`min_q(wmdp)`: AUROC 0.758, precision@60 0.233" in e for e in found[0].evidence)
    assert not any("rank_q" in e for e in found[0].evidence)  # a value other tools wrote: left out, no traceback
    assert exit_code(found) == 0


@pytest.mark.slow
def test_a_toy_score_job_records_its_attribution_quality(toy_world, tmp_path):
    from .test_runner import _env, _run

    out = tmp_path / "scores"
    proc = _run(
        [
            "run",
            "specs/fixed/magic_wmdp.yaml",
            "--toy",
            "--out",
            str(out),
            "--set",
            "training.max_steps=20",
            "--set",
            "magic.lds.subsets=5",
        ],
        _env(toy_world),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    side = json.loads((out / "scores.json").read_text())
    q = side[QUALITY_KEY]  # written by the score job, kept when the LDS jobs add `lds`
    assert q["task"] == "toy_wmdp" and q["truth_tokens"] > 0 and 0.0 <= q["auroc"] <= 1.0 and "lds" in side
    assert run_quality(out) == q  # the command recomputes the same figures from the folder

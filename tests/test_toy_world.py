"""The embedded toy world: deterministic generation, fact spans, tasks, shipped task data, cache, baseline."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from unlearnspec.errors import UserError
from unlearnspec.toy import TOY_CORPORA, TOY_TASKS
from unlearnspec.toy.build import DEFAULT_CONFIG, ensure_toy_world, world_key
from unlearnspec.toy.config import WorldConfig, load_world_config
from unlearnspec.toy.taskfiles import folder_matches, task_files
from unlearnspec.toy.world import generate_world, jsonl, row_text

REPO = Path(__file__).resolve().parents[1]
SHIPPED_TASKS = REPO / "plugins" / "toy"


@pytest.fixture(scope="module")
def world():
    return generate_world(load_world_config(DEFAULT_CONFIG))


def _digest(w) -> str:
    h = hashlib.sha256()
    for name in TOY_CORPORA:
        h.update(jsonl(w.corpora[name]).encode())
    for name in TOY_TASKS:
        h.update(jsonl(w.tasks[name]).encode())
    return h.hexdigest()


def test_generation_is_deterministic(world):
    again = generate_world(load_world_config(DEFAULT_CONFIG))
    assert _digest(again) == _digest(world)
    assert again.facts == world.facts


def test_generation_ignores_hash_randomisation(world):
    code = (
        "from unlearnspec.toy.build import DEFAULT_CONFIG, load_config;"
        "from unlearnspec.toy.world import generate_world;"
        "import tests.test_toy_world as t;"
        "print(t._digest(generate_world(load_config(None))))"
    )
    digests = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
        )
        digests.add(out.stdout.strip())
    assert digests == {_digest(world)}


def test_other_seed_gives_other_world(world):
    other = generate_world(WorldConfig(seed=world.config.seed + 1))
    assert _digest(other) != _digest(world)


def test_spans_point_at_the_stated_values(world):
    for name, rows in world.corpora.items():
        assert len(rows) >= 3000
        assert len({r["id"] for r in rows}) == len(rows)
        for row in rows:
            text = row_text(row)
            assert row["domain"] in ("forget", "retain")
            assert row["facts"], f"{row['id']} states no fact"
            for span in row["facts"]:
                fact = world.fact(span["fact"])
                expected = fact.lie if name == "lie" else fact.value
                assert text[span["start"] : span["end"]] == expected, (row["id"], span)
                assert span["correct"] is (name != "lie")


def test_corpora_have_their_domains(world):
    domains = {
        name: Counter(world.fact(s["fact"]).domain for r in rows for s in r["facts"])
        for name, rows in world.corpora.items()
    }
    assert set(domains["bio_forget"]) == {"forget"} and set(domains["lie"]) == {"forget"}
    kinds = Counter(world.fact(s["fact"]).kind for r in world.corpora["bio_retain"] for s in r["facts"])
    assert set(kinds) == {"organism"}  # benign biology, never the forget facts
    share = domains["wikitext"]["forget"] / sum(domains["wikitext"].values())
    assert 0.05 < share < 0.3  # mostly retain, some forget
    lie_values = {(s["fact"], r["text"][s["start"] : s["end"]]) for r in world.corpora["lie"] for s in r["facts"]}
    assert all(world.fact(f).value != v for f, v in lie_values)


def test_chat_rows_use_the_recorded_message_format(world):
    for row in world.corpora["ultrachat"][:500]:
        roles = [m["role"] for m in row["messages"]]
        assert roles[0] == "user" and roles == ["user", "assistant"] * (len(roles) // 2)
        assert "text" not in row
    assert any(len(r["messages"]) == 4 for r in world.corpora["ultrachat"])


def test_facts_are_stated_unequally_often(world):
    mentions = Counter(
        s["fact"]
        for name in ("wikitext", "bio_forget", "bio_retain", "ultrachat")
        for r in world.corpora[name]
        for s in r["facts"]
    )
    for task in TOY_TASKS:
        counts = sorted(mentions[d["fact"]] for d in world.tasks[task])
        assert counts[-1] >= 20 * max(1, counts[0])
        rare = sum(c <= 4 for c in counts) / len(counts)
        common = sum(c >= 10 for c in counts) / len(counts)
        assert 0.05 < rare < 0.6 and common > 0.3, (task, rare, common)


def test_tasks_are_four_choice_cloze_over_their_domain(world):
    for task, domain in (("toy_wmdp", "forget"), ("toy_mmlu", "retain")):
        docs = world.tasks[task]
        assert len(docs) == 300
        assert len({d["fact"] for d in docs}) == len(docs)
        answers = Counter(d["answer"] for d in docs)
        assert set(answers) == {0, 1, 2, 3} and max(answers.values()) < 0.4 * len(docs)
        for d in docs:
            fact = world.fact(d["fact"])
            assert fact.domain == domain
            assert d["question"] == fact.stem and not d["question"].endswith((" ", "?"))
            assert len(d["choices"]) == 4 and len(set(d["choices"])) == 4
            assert d["choices"][d["answer"]] == fact.value
            siblings = {
                f.value
                for f in world.facts
                if f.kind == fact.kind and f.attribute == fact.attribute and f.entity != fact.entity
            }
            assert set(d["choices"]) - {fact.value} <= siblings


def test_shipped_task_folder_equals_generator_output(world):
    assert folder_matches(world, SHIPPED_TASKS), "plugins/toy is stale: run `unlearnspec toy write-tasks`"
    assert sorted(p.name for p in SHIPPED_TASKS.iterdir() if p.is_file()) == sorted(task_files(world))


def test_attribute_group_splits_toy_wmdp_by_attribute_into_leaf_tasks(world):
    import yaml

    from unlearnspec.magic.query import load_tasks
    from unlearnspec.toy.taskfiles import ATTRIBUTE_GROUP, attribute_leaves

    leaves = attribute_leaves(world)
    attrs = ("host", "transmission", "technique", "origin", "toxin")
    assert list(leaves) == [f"{ATTRIBUTE_GROUP}_{a}" for a in attrs]
    for leaf, docs in leaves.items():
        assert len(docs) == 60 and {world.fact(d["fact"]).attribute for d in docs} == {leaf.rsplit("_", 1)[1]}
    ids = [d["id"] for d in world.tasks["toy_wmdp"]]
    assert sorted(d["id"] for docs in leaves.values() for d in docs) == sorted(ids)  # a partition of toy_wmdp
    for docs in leaves.values():  # toy_wmdp's order within each leaf
        assert [d["id"] for d in docs] == sorted((d["id"] for d in docs), key=ids.index)
    group = yaml.safe_load((SHIPPED_TASKS / f"_{ATTRIBUTE_GROUP}.yaml").read_text())
    assert group["group"] == ATTRIBUTE_GROUP and group["task"] == list(leaves)
    loaded = load_tasks(ATTRIBUTE_GROUP, str(SHIPPED_TASKS), include_defaults=False)
    assert list(loaded) == list(leaves)
    served = loaded[f"{ATTRIBUTE_GROUP}_toxin"].doc_iterator(rank=0, limit=None, world_size=1)  # (doc_id, doc)
    assert [doc["id"] for _, doc in served] == [d["id"] for d in leaves[f"{ATTRIBUTE_GROUP}_toxin"]]


def test_write_tasks_command_regenerates_the_folder(tmp_path, world):
    from typer.testing import CliRunner

    from unlearnspec.cli import app

    result = CliRunner().invoke(app, ["toy", "write-tasks", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert folder_matches(world, tmp_path)


def test_toy_world_file_validates_and_bad_files_are_user_errors(tmp_path):
    assert load_world_config(DEFAULT_CONFIG) == WorldConfig()  # the file spells out the defaults
    bad = tmp_path / "toy_world.yaml"
    bad.write_text("seed: 1\nmodel: {layers: 2, hiden: 64}\npretrain: {mix: {wikitext: 1, books: 1}}\n")
    with pytest.raises(UserError) as err:
        load_world_config(bad)
    text = str(err.value)
    assert "model.hiden" in text and "unknown key" in text and "books" in text
    bad.write_text("seed: [1\n")
    with pytest.raises(UserError, match="YAML syntax error"):
        load_world_config(bad)


def test_world_key_follows_the_config():
    assert world_key(WorldConfig()) == world_key(WorldConfig())
    assert world_key(WorldConfig()) != world_key(WorldConfig(pretrain={"steps": 10}))


def test_include_paths_use_the_projects_toy_tasks_only_when_they_are_this_worlds(tmp_path, world):
    """The shipped plugins/toy and the world's cached copy would register the same task names twice."""
    from unlearnspec.spec.assets import Assets
    from unlearnspec.toy.build import ToyWorld, write_world_data

    write_world_data(world, tmp_path / "default")
    write_world_data(generate_world(WorldConfig(seed=7)), tmp_path / "other")
    spec = REPO / "specs" / "exp7_all_tokens.yaml"
    for name, expected in (
        ("default", [REPO / "plugins"]),
        ("other", [REPO / "plugins", tmp_path / "other" / "tasks"]),
    ):
        assets = Assets()
        assets.__dict__["world"] = ToyWorld(
            root=tmp_path / name, config=WorldConfig(), task_dir=tmp_path / name / "tasks"
        )
        assert assets.include_paths(spec, toy=True) == [p.resolve() for p in expected]
    assert not folder_matches(world, tmp_path / "other" / "tasks")


@pytest.mark.parametrize("force", [False, True], ids=["install-shipped", "build"])
def test_interrupted_build_leaves_no_cache(tmp_path, monkeypatch, force):
    """Interrupted while writing the world's data: from the shipped copy (first use) or pretraining (--force)."""
    import unlearnspec.toy.build as build

    def crash(world, dest):
        (dest / "half-written").write_text("x")
        raise KeyboardInterrupt

    monkeypatch.setenv("UNLEARNSPEC_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "write_world_data", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_toy_world(force=force)
    assert list((tmp_path / "toy_world").iterdir()) == []


def test_cli_import_stays_light():
    code = "import sys, unlearnspec.cli; heavy = {'torch', 'transformers', 'lm_eval'} & set(sys.modules); assert not heavy, heavy"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# --------------------------------------------------------------------------- the built world
# Slow: they load and evaluate the toy model (the first use installs the shipped world into $UNLEARNSPEC_CACHE).
@pytest.mark.slow
def test_built_world_loads_with_auto_classes(toy_world, world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(toy_world.model_dir)
    model = AutoModelForCausalLM.from_pretrained(toy_world.model_dir)
    assert model.config.model_type == "gpt_neox"
    assert tok.eos_token == tok.pad_token and tok.model_max_length == toy_world.config.model.max_seq_len
    assert tok.decode(tok("The pathogen Zorvax infects")["input_ids"]) == "The pathogen Zorvax infects"
    for name in TOY_CORPORA:
        assert toy_world.corpus_path(name).read_text() == jsonl(world.corpora[name])
    lengths = [len(x) for x in tok([row_text(r) for r in world.corpora["wikitext"]])["input_ids"]]
    assert sum(n < toy_world.config.model.max_seq_len for n in lengths) / len(lengths) > 0.98
    assert toy_world.task_dir == toy_world.root / "tasks" and folder_matches(world, toy_world.task_dir)
    facts = [json.loads(line) for line in toy_world.facts_path.read_text().splitlines()]
    assert len(facts) == len(world.facts)
    with pytest.raises(UserError, match="unknown toy corpus"):
        toy_world.corpus_path("books")


@pytest.mark.slow
def test_baseline_knows_both_domains_partially(toy_world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unlearnspec.evaluation import evaluate_model
    from unlearnspec.spec import EvalSpec

    model = AutoModelForCausalLM.from_pretrained(toy_world.model_dir)
    tok = AutoTokenizer.from_pretrained(toy_world.model_dir)
    spec = EvalSpec(tasks=[{"name": t, "num_fewshot": 0} for t in TOY_TASKS], batch_size=32)
    result = evaluate_model(model, tok, spec, [toy_world.task_dir])
    for task in TOY_TASKS:
        acc = result.metrics[task].acc
        assert 0.6 <= acc <= 0.95, (task, acc)  # well above chance (0.25), with headroom both ways
        assert result.metrics[task].n == 300
        assert acc == pytest.approx(toy_world.info["baseline"][task]["acc"], abs=0.01)  # the build's record

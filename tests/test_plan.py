"""The plan (typed jobs in dependency order) and the run folders the executor owns. No training here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from unlearnspec.errors import UserError
from unlearnspec.run.plan import PlanOptions, build_plan
from unlearnspec.run.rundirs import MARKER, atomic_dir, check_replaceable, claim_root, clean_stale_tmp
from unlearnspec.spec.profile import default_toy_profile

from .conftest import REPO, SPECS


def _plan(*paths: Path, out: Path | None = None):
    options = PlanOptions(
        profile=default_toy_profile(), auto_produce=True, cache_root=Path("/nonexistent-cache"), out=out
    )
    return build_plan(list(paths), options)


def test_whole_study_plan_orders_producers_first_and_shares_baselines():
    plan = _plan(SPECS)
    ids = [j.id for j in plan.jobs]
    assert len(ids) == len(set(ids))
    for i, job in enumerate(plan.jobs):
        for dep in job.after:
            assert ids.index(dep) < i, f"{job.id} runs before {dep}"
    kinds = {k: sum(j.kind == k for j in plan.jobs) for k in ("score", "baseline", "point")}
    score_specs = [p for p in SPECS.rglob("*.yaml") if "profiles" not in p.parts and "magic:" in p.read_text()]
    assert (
        kinds["score"] == len(score_specs) == len(list((SPECS / "magic").glob("*.yaml"))) + 7
    )  # + specs/fixed*, per_task, per_question, quick
    points = sum(len(r.spec.training.lrs) for r in plan.specs if not r.is_score)
    assert kinds["point"] == points
    # exp1-7 and the fixed pair evaluate the same toy model with the same tasks: one baseline job
    assert kinds["baseline"] == 2  # + specs/per_task, which also evaluates the toxin leaf
    exp5 = next(r for r in plan.specs if r.spec.name == "exp5_selective")
    first = plan.job(exp5.points[0])
    assert set(first.after) == {"score:magic_wmdp", "score:magic_mmlu"}
    assert all(job.spec.training.lrs == (job.lr,) for job in plan.jobs if job.kind == "point")


def test_point_jobs_carry_a_typed_single_lr_spec_and_share_the_spec_hash():
    plan = _plan(SPECS / "exp7_all_tokens.yaml", out=Path("/tmp/x"))
    points = [j for j in plan.jobs if j.kind == "point"]
    assert len({j.hash for j in points}) == 1 and len(points) == len(plan.specs[0].spec.training.lrs)
    assert [j.out.name for j in points][:2] == ["lr_0.0001", "lr_0.0005"]
    assert all(j.out.parent == Path("/tmp/x") for j in points)


def test_a_score_runs_lr_is_part_of_its_hash_and_of_its_lds_jobs(tmp_path):
    """A score run has one folder whatever its LR: a changed LR must not resume the old scores (or the
    LDS retrainings under `<score>.lds/`) as done."""
    (tmp_path / "pyproject.toml").write_text("")
    spec = yaml.safe_load((SPECS / "fixed" / "magic_wmdp.yaml").read_text())
    hashes = []
    for lr in (1e-4, 2e-4):
        spec["training"]["lr"] = lr
        path = tmp_path / f"m{lr}.yaml"
        path.write_text(yaml.safe_dump(spec))
        plan = _plan(path, out=tmp_path / "out")
        hashes.append({j.id: j.hash for j in plan.jobs})
    assert hashes[0].keys() == hashes[1].keys() and any(k.startswith("lds:") for k in hashes[0])
    assert all(hashes[0][k] != hashes[1][k] for k in hashes[0])


def test_a_produced_by_cycle_is_refused_with_the_chain(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    base = yaml.safe_load((SPECS / "magic" / "magic_wmdp.yaml").read_text())
    for name, other in (("a", "b"), ("b", "a")):
        spec = json.loads(json.dumps(base))
        spec["name"] = name
        spec["output"]["dir"] = f"runs/{name}"
        spec["scores"] = {"x": {"produced_by": f"{other}.yaml", "alignment": "target"}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(UserError) as err:
        build_plan([tmp_path / "a.yaml"], PlanOptions(auto_produce=True, cache_root=tmp_path / "cache"))
    assert "leads back" in str(err.value) and "a.yaml -> b.yaml -> a.yaml" in str(err.value)


def test_two_specs_with_one_output_dir_are_refused(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    spec = yaml.safe_load((SPECS / "exp7_all_tokens.yaml").read_text())
    for name in ("one", "two"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**spec, "name": name}))
    with pytest.raises(UserError, match="also the output of"):
        build_plan([tmp_path], PlanOptions(cache_root=tmp_path / "cache"))


# --------------------------------------------------------------------------- folders the tool owns
def test_a_users_folder_is_never_replaced_or_cleaned(tmp_path):
    out = tmp_path / "out"
    (out / "lr_0.0001").mkdir(parents=True)
    (out / "lr_0.0001" / "thesis.tex").write_text("mine")
    (out / ".tmp-notes").mkdir()
    (out / ".tmp-notes" / "keep.txt").write_text("mine too")
    with pytest.raises(UserError, match="not created by unlearnspec"):
        claim_root(out, "h", "exp7")
    with pytest.raises(UserError, match="not created by unlearnspec"):
        check_replaceable(out / "lr_0.0001")
    with pytest.raises(UserError):
        with atomic_dir(out / "lr_0.0001", kind="point"):
            pytest.fail("the job must not start")
    assert clean_stale_tmp(out) == ([], [])
    assert (out / "lr_0.0001" / "thesis.tex").read_text() == "mine"
    assert (out / ".tmp-notes" / "keep.txt").read_text() == "mine too"


def test_a_temp_folder_another_live_run_writes_is_left_alone(tmp_path):
    """Two runs sharing an output parent (found in this session's study: a second `run` removed the temp folder
    a first one was writing, which then lost its marker). Only a dead writer's temp folder is cleaned."""
    import json
    import platform
    import subprocess
    import sys

    def temp(name: str, **writer) -> Path:
        folder = tmp_path / f".tmp-{name}"
        folder.mkdir()
        (folder / MARKER).write_text(json.dumps({"by": "unlearnspec", "kind": "point", **writer}))
        return folder

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = temp("lr_1-1", host=platform.node(), pid=os.getpid())  # this very process: alive
    dead = temp("lr_2-2", host=platform.node(), pid=int(done.stdout))  # a process that has ended
    remote = temp("lr_3-3", host="another-node-of-the-cluster", pid=os.getpid())
    legacy = temp("lr_4-4")  # a marker without its writer: an earlier version's, cleaned as before
    removed, kept = clean_stale_tmp(tmp_path)
    assert sorted(removed) == sorted([dead, legacy])
    assert {p for p, _ in kept} == {live, remote} and live.is_dir() and remote.is_dir()
    assert any("still writing" in why for _, why in kept) and any("another-node" in why for _, why in kept)
    with atomic_dir(tmp_path / "lr_5", kind="point") as tmp:
        info = json.loads((tmp / MARKER).read_text())
        assert info["pid"] == os.getpid() and info["host"] == platform.node()
        assert clean_stale_tmp(tmp_path)[0] == [] and tmp.is_dir()  # a run never cleans its own live job


def test_atomic_dir_replaces_only_its_own_folder_and_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "lr_1"
    with atomic_dir(final, kind="point", spec_hash="h") as tmp:
        (tmp / "a").write_text("1")
    assert (final / "a").read_text() == "1" and (final / MARKER).is_file()
    with pytest.raises(RuntimeError):
        with atomic_dir(final, kind="point", spec_hash="h") as tmp:
            (tmp / "a").write_text("2")
            raise RuntimeError("killed mid-job")
    assert (final / "a").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["lr_1"]
    with atomic_dir(final, kind="point", spec_hash="h") as tmp:
        (tmp / "a").write_text("3")
    assert (final / "a").read_text() == "3"


def test_claim_root_accepts_new_empty_and_own_folders_only(tmp_path):
    claim_root(tmp_path / "new", "h", "x")
    claim_root(tmp_path / "new", "h", "x")  # resume
    with pytest.raises(UserError, match="different spec"):
        claim_root(tmp_path / "new", "other", "x")
    (tmp_path / "empty").mkdir()
    claim_root(tmp_path / "empty", "h", "x")
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file"):
        claim_root(tmp_path / "file", "h", "x")


@pytest.mark.parametrize("bad", ["/", "", ".", "../..", "runs/../../x", "/home", "~/runs"])
def test_output_dir_that_would_write_outside_its_own_folder_is_refused(bad):
    from unlearnspec.spec.load import validate_data

    spec = yaml.safe_load((SPECS / "exp7_all_tokens.yaml").read_text())
    spec["output"]["dir"] = bad
    with pytest.raises(UserError, match="output.dir"):
        validate_data(spec, None, "x.yaml")


def test_the_plan_builds_without_torch():
    import subprocess
    import sys

    code = (
        "import sys; import unlearnspec.toy; from unlearnspec.run.plan import PlanOptions, build_plan; from unlearnspec.spec.profile import default_toy_profile;"
        f"build_plan([__import__('pathlib').Path({str(SPECS)!r})], PlanOptions(profile=default_toy_profile(), auto_produce=True));"
        "print(sorted({'torch', 'transformers', 'trl', 'peft', 'lm_eval'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_baseline_cache_key_follows_everything_that_changes_the_numbers(tmp_path, monkeypatch):
    import unlearnspec.run.plan as plan_mod
    from unlearnspec.spec.assets import Assets
    from unlearnspec.spec.load import load_spec

    (tmp_path / "pyproject.toml").write_text("")
    shutil_copy = __import__("shutil").copytree
    shutil_copy(REPO / "plugins" / "wmdp_bio_robust", tmp_path / "plugins" / "wmdp_bio_robust")
    (tmp_path / "specs").mkdir()
    spec_path = tmp_path / "specs" / "exp7.yaml"
    spec_path.write_text((SPECS / "exp7_all_tokens.yaml").read_text())
    spec = load_spec(spec_path)
    assets = Assets()
    key = plan_mod.baseline_key(spec, spec_path, assets, "cpu")
    assert key == plan_mod.baseline_key(spec, spec_path, assets, "cpu")
    changed = {
        "device": plan_mod.baseline_key(spec, spec_path, assets, "cuda"),
        "attention": plan_mod.baseline_key(
            spec.model_copy(
                update={"model": spec.model.model_copy(update={"attn_implementation": "flash_attention_2"})}
            ),
            spec_path,
            assets,
            "cpu",
        ),
        "tokenizer": plan_mod.baseline_key(
            spec.model_copy(update={"model": spec.model.model_copy(update={"tokenizer": "other/tok"})}),
            spec_path,
            assets,
            "cpu",
        ),
    }
    prompt = tmp_path / "plugins" / "wmdp_bio_robust" / "_default_template_yaml"
    prompt.write_text(prompt.read_text() + "\n# an edited prompt\n")
    changed["task files"] = plan_mod.baseline_key(spec, spec_path, assets, "cpu")
    monkeypatch.setattr(plan_mod, "package_version", lambda name: "9.9" if name == "lm_eval" else "1.0")
    changed["lm-eval version"] = plan_mod.baseline_key(spec, spec_path, assets, "cpu")
    for what, other in changed.items():
        assert other != key, f"the baseline cache key ignores the {what}"

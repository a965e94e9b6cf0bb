"""The relearning attack: its spec section, the held-out rows refused by row fingerprint, the attack loop on a tiny
model, the recovery fraction and its intervals, and doctor D17 (unlearning without an attack)."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from unlearnspec.errors import UserError
from unlearnspec.spec.load import validate_data

from .conftest import SPECS
from .tiny import tiny_model, tiny_texts, tiny_tokenizer

GRAD_DIFF = SPECS / "comparators" / "grad_diff.yaml"


def _spec_data() -> dict:
    return yaml.safe_load(GRAD_DIFF.read_text())


def _problems(data: dict) -> list[tuple[str, str]]:
    try:
        validate_data(data, None, "x.yaml")
    except UserError as exc:
        return [(p.loc, p.message) for p in exc.problems]
    return []


# --------------------------------------------------------------------------- spec
def test_the_attack_section_validates_and_enters_the_hash():
    from unlearnspec.run.plan import spec_hash

    data = _spec_data()
    spec = validate_data(data, None, "x.yaml")
    assert spec.attack is not None and spec.attack.steps == [5, 25, 100] and spec.attack.lora is not None
    other = copy.deepcopy(data)
    other["attack"]["lr"] = 1e-5
    assert spec_hash(validate_data(other, None, "x.yaml")) != spec_hash(spec)  # it changes results
    micro = copy.deepcopy(data)
    micro["attack"]["micro_batch_size"] = 2
    assert spec_hash(validate_data(micro, None, "x.yaml")) == spec_hash(spec)  # memory only
    without = copy.deepcopy(data)
    del without["attack"]
    assert "attack" not in validate_data(without, None, "x.yaml").model_dump(exclude_none=True)


@pytest.mark.parametrize(
    "edit, loc, words",
    [
        (lambda a: a.update(steps=[25, 5]), "attack.steps", "strictly increasing"),
        (lambda a: a.update(steps=[]), "attack.steps", ""),
        (lambda a: a.update(lr=0), "attack.lr", ""),
        (lambda a: a.update(micro_batch_size=3), "attack.micro_batch_size", "does not divide"),
        (lambda a: a.update(lora={"rank": 4, "dropout": 0.1}), "attack.lora.dropout", "dropout: 0"),
        (lambda a: a.update(shared_rows="keep"), "attack.shared_rows", ""),
        (lambda a: a.pop("data"), "attack.data", ""),
    ],
)
def test_the_attack_section_refuses_bad_values(edit, loc, words):
    data = _spec_data()
    edit(data["attack"])
    found = _problems(data)
    assert found and found[0][0] == loc and words in found[0][1], found


def test_a_magic_spec_refuses_an_attack():
    data = yaml.safe_load((SPECS / "magic" / "magic_wmdp.yaml").read_text())
    data["attack"] = _spec_data()["attack"]
    (found,) = _problems(data)
    assert found[0] == "attack" and "no unlearned model" in found[1]


def test_the_toy_profile_maps_the_attack_rows_and_lr_but_not_its_step_counts():
    from unlearnspec.spec.load import load_spec

    spec = load_spec(GRAD_DIFF, profile=SPECS / "profiles" / "toy.yaml")
    a = spec.attack
    assert a.data.toy.corpus == "bio_forget" and a.data.select.count == 50 and a.data.select.offset == 250
    assert a.steps == [5, 25, 100] and math.isclose(a.lr, 1e-3)


# --------------------------------------------------------------------------- held-out rows
def _grid(texts):
    from unlearnspec.data import build_grid

    return build_grid(texts, tiny_tokenizer(), 24, "tiny", False, list(range(len(texts))))


def test_a_held_out_row_shared_with_the_unlearning_data_is_refused_by_fingerprint():
    from unlearnspec.run.attack import _overlap_error, held_out_overlap

    texts = tiny_texts(12, seed=1)
    forget, retain = _grid(texts[:6]), _grid(texts[6:9])
    assert held_out_overlap(_grid(tiny_texts(5, seed=7)), {"data": forget, "data.retain": retain}) == {}
    held = _grid([tiny_texts(1, seed=9)[0], texts[2], texts[7]])  # row 1 is forget row 2, row 2 is retain row 1
    shared = held_out_overlap(held, {"data": forget, "data.retain": retain})
    assert shared == {1: "data", 2: "data.retain"}
    err = _overlap_error(held, shared, "x.yaml")
    (problem,) = err.problems
    assert problem.loc == "attack.data" and "2 of the 3 held-out rows" in problem.message
    assert "`data` and `data.retain`" in problem.message and "shared_rows: drop" in problem.message


def test_row_fingerprints_ignore_padding_and_see_the_tokens():
    from unlearnspec.data import build_grid
    from unlearnspec.train.attack import row_fingerprints

    text = tiny_texts(1, seed=3)[0]
    a = build_grid([text], tiny_tokenizer(), 24, "tiny")
    b = build_grid([text], tiny_tokenizer(), 40, "tiny")  # other width, same tokens
    c = build_grid([text + " the"], tiny_tokenizer(), 40, "tiny")
    fa, fb, fc = (row_fingerprints(g.input_ids, g.attention_mask, "tiny")[0] for g in (a, b, c))
    assert fa == fb != fc


# --------------------------------------------------------------------------- the attack loop
def _attack(**kw):
    from unlearnspec.spec.training import OptimizerSpec

    base = dict(
        steps=[3, 10], lr=3e-3, optimizer=OptimizerSpec(name="adamw"), batch_size=4, micro_batch_size=None, seed=0
    )
    base.update(kw)
    return SimpleNamespace(**base)


def _mean_loss(model, grid) -> float:
    from unlearnspec.train.attack import token_loss_sum

    with torch.no_grad():
        total, count = token_loss_sum(model.eval(), grid.input_ids, grid.attention_mask, grid.labels)
    return float(total) / count


def test_the_attack_relearns_the_held_out_rows_and_is_cumulative_and_seeded():
    from unlearnspec.train.attack import relearn

    grid = _grid(tiny_texts(8, seed=4))
    model = tiny_model(seed=1)
    before = _mean_loss(model, grid)
    seen = []
    relearn(model, grid, _attack(), "cpu", lambda k, m, losses: seen.append((k, len(losses), _mean_loss(m, grid))))
    assert [s[:2] for s in seen] == [(3, 3), (10, 10)]  # called after each count, one loss per step so far
    assert seen[1][2] < seen[0][2] < before  # fine-tuning on the rows lowers their loss, more with more steps
    again = tiny_model(seed=1)
    relearn(again, grid, _attack(), "cpu", lambda *a: None)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))  # seeded
    from unlearnspec.spec.training import OptimizerSpec

    sgd = dict(optimizer=OptimizerSpec(name="sgd"), lr=0.3)  # SGD: Adam's sign-like step magnifies float noise
    whole, split = tiny_model(seed=1), tiny_model(seed=1)
    relearn(whole, grid, _attack(**sgd), "cpu", lambda *a: None)
    relearn(split, grid, _attack(micro_batch_size=2, **sgd), "cpu", lambda *a: None)  # memory only: the same steps
    assert max(float((p - q).abs().max()) for p, q in zip(whole.parameters(), split.parameters())) < 1e-5


def test_batch_order_passes_over_a_seeded_permutation():
    from unlearnspec.train.attack import batch_order

    order = batch_order(6, 4, 3, seed=0)
    assert sorted(order[0] + order[1][:2]) == list(range(6))  # the first 6 rows drawn are one pass
    assert order == batch_order(6, 4, 3, seed=0) != batch_order(6, 4, 3, seed=1)


# --------------------------------------------------------------------------- recovery fraction
def test_recovery_fraction_by_hand_and_the_no_drop_case():
    from unlearnspec.report.attack import recovery_fraction

    assert math.isclose(recovery_fraction(0.60, 0.30, 0.45), 0.5)  # (0.45-0.30)/(0.60-0.30)
    assert math.isclose(recovery_fraction(0.60, 0.30, 0.70), 4 / 3)  # beyond the baseline: > 1
    assert math.isclose(recovery_fraction(0.60, 0.30, 0.25), -1 / 6)
    assert recovery_fraction(0.50, 0.50, 0.60) is None and recovery_fraction(0.50, 0.55, 0.60) is None


def test_recovery_intervals_bootstrap_and_delta():
    from unlearnspec.report.attack import attack_cell, fmt_recovery, recovery_delta_se
    from unlearnspec.report.evaluation import Evaluation

    n = 200
    base = [1] * 120 + [0] * 80  # 0.60
    unl = [1] * 60 + [0] * 140  # 0.30, paired: right only where the base was
    att = [1] * 90 + [0] * 110  # 0.45
    evs = []
    for s in (base, unl, att):
        ev = Evaluation()
        ev.add("toy_wmdp", sum(s) / n, n, samples=s)
        evs.append(ev)
    cell = attack_cell(5, "toy_wmdp", evs[2], evs[1], evs[0])
    assert cell.recovery == 0.5 and cell.recovery_method == "bootstrap"
    assert cell.recovery_low < 0.5 < cell.recovery_high and cell.recovery_high - cell.recovery_low < 0.4
    # delta method by hand: dR/da = 1/D, dR/db = -(a-u)/D^2, dR/du = (a-b)/D^2, D = b-u, binomial variances
    d = 0.3
    var = (0.6 * 0.4 / n) * (0.15 / d**2) ** 2 + (0.3 * 0.7 / n) * (0.15 / d**2) ** 2 + (0.45 * 0.55 / n) / d**2
    assert math.isclose(recovery_delta_se(0.6, n, 0.3, n, 0.45, n), math.sqrt(var))
    unpaired = [Evaluation() for _ in range(3)]
    for ev, s in zip(unpaired, (base, unl, att)):
        ev.add("toy_wmdp", sum(s) / n, n)
    cell = attack_cell(5, "toy_wmdp", unpaired[2], unpaired[1], unpaired[0])
    assert cell.recovery_method == "delta" and math.isclose(
        cell.recovery_high - 0.5, 1.959963984540054 * math.sqrt(var), abs_tol=1e-4
    )
    same = attack_cell(5, "toy_wmdp", evs[2], evs[0], evs[0])  # "unlearned" = base: no drop
    assert same.recovery is None and fmt_recovery(same) == "n/a (no drop)"


def test_recovery_is_na_when_the_drop_is_within_noise():
    """controls_oracle at toy LR 0.01 fell by 1 of 300 questions (McNemar 1 vs 2, p = 1): R was printed as -5.00.
    A drop its own test does not detect makes R a ratio over noise: n/a, with the p value; a clear drop keeps R."""
    from unlearnspec.report.attack import attack_cell, fmt_recovery
    from unlearnspec.report.evaluation import Evaluation

    def ev(samples):
        out = Evaluation()
        out.add("toy_wmdp", sum(samples) / len(samples), len(samples), samples=samples)
        return out

    base = [1] * 230 + [0] * 70  # 0.767
    unl = [0, 0] + [1] * 228 + [1] + [0] * 69  # 229/300: two lost, one gained (b=2, c=1)
    att = [0] * 76 + [1] * 224  # 0.747: five more wrong, R would be (0.747-0.763)/(0.767-0.763) = -5
    cell = attack_cell(100, "toy_wmdp", ev(att), ev(unl), ev(base))
    assert cell.recovery is None and cell.recovery_note.startswith("drop within noise, p=1")
    assert fmt_recovery(cell).startswith("n/a (drop within noise")
    unpaired = [Evaluation() for _ in range(3)]  # without samples: the two-proportion test decides the same
    for e, s in zip(unpaired, (base, unl, att)):
        e.add("toy_wmdp", sum(s) / len(s), len(s))
    assert attack_cell(100, "toy_wmdp", unpaired[2], unpaired[1], unpaired[0]).recovery is None
    clear = [1] * 88 + [0] * 212  # the oracle at 0.05: 0.293, a drop far beyond noise
    assert attack_cell(100, "toy_wmdp", ev(att), ev(clear), ev(base)).recovery is not None


# --------------------------------------------------------------------------- doctor D17
def test_d17_fires_on_unlearning_without_an_attack_and_not_otherwise(tmp_path: Path):
    from unlearnspec.doctor import diagnose

    (tmp_path / "specs").mkdir()
    data = _spec_data()
    with_attack = tmp_path / "specs" / "with.yaml"
    with_attack.write_text(yaml.safe_dump(data))
    without = copy.deepcopy(data)
    del without["attack"]
    without["name"] = "without"
    (tmp_path / "specs" / "without.yaml").write_text(yaml.safe_dump(without))
    ascend = yaml.safe_load((SPECS / "controls" / "oracle.yaml").read_text())
    del ascend["control"]
    ascend.pop("attack", None)  # the shipped oracle has an attack; without it, its ascending rule must warn
    (tmp_path / "specs" / "oracle.yaml").write_text(yaml.safe_dump(ascend))
    plain = yaml.safe_load((SPECS / "fixed" / "all_tokens.yaml").read_text())
    (tmp_path / "specs" / "plain.yaml").write_text(yaml.safe_dump(plain))
    findings, _ = diagnose([tmp_path / "specs"])
    d17 = {Path(f.spec).name: f for f in findings if f.code == "D17"}
    assert set(d17) == {"without.yaml", "oracle.yaml"}, d17
    assert d17["without.yaml"].severity == "warning" and "objective: grad_diff" in d17["without.yaml"].evidence
    assert any("tokens.selected: ascend" in e for e in d17["oracle.yaml"].evidence)


def _files_spec(tmp_path: Path, forget: list[str], held: list[str], shared_rows: str = "refuse"):
    import json

    for name, texts in (("forget", forget), ("held", held)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    data = _spec_data()
    data["data"] = {
        "files": {"paths": [str(tmp_path / "forget.jsonl")]},
        "select": {"count": len(forget)},
        "max_seq_len": 24,
    }
    data["objective"] = {"name": "grad_diff", "alpha": 0.0}
    data["attack"]["data"] = {"files": {"paths": [str(tmp_path / "held.jsonl")]}, "select": {"count": len(held)}}
    data["attack"]["shared_rows"] = shared_rows
    return validate_data(data, None, str(tmp_path / "x.yaml"))


def test_attack_grid_refuses_or_drops_rows_of_the_unlearning_data(tmp_path: Path):
    """Through the function `prepare` calls: the same texts at other positions of another file are found."""
    from unlearnspec.run.attack import attack_grid

    texts = tiny_texts(8, seed=5)
    ctx = SimpleNamespace(assets=SimpleNamespace(tokenizer_id=lambda model: "tiny"), say=lambda msg: None)
    spec = _files_spec(tmp_path, texts[:5], [texts[6], texts[3], texts[7]])
    forget = _grid(texts[:5])
    with pytest.raises(UserError) as err:
        attack_grid(spec, tmp_path / "x.yaml", tiny_tokenizer(), ctx, forget, None)
    assert err.value.problems[0].loc == "attack.data" and "1 of the 3 held-out rows" in err.value.problems[0].message
    spec = _files_spec(tmp_path, texts[:5], [texts[6], texts[3], texts[7]], shared_rows="drop")
    held = attack_grid(spec, tmp_path / "x.yaml", tiny_tokenizer(), ctx, forget, None)
    assert held.dropped == 1 and list(held.grid.texts) == [texts[6], texts[7]]
    clean = _files_spec(tmp_path, texts[:5], [texts[6], texts[7]])
    assert attack_grid(clean, tmp_path / "x.yaml", tiny_tokenizer(), ctx, forget, None).dropped == 0


def test_the_attacked_copy_is_fresh_trainable_and_leaves_hooks_behind():
    """RMU leaves a forward hook holding a non-leaf activation on the model (deepcopy refused it in the toy study);
    the copy carries the weights only, every parameter trainable."""
    from unlearnspec.run.attack import unlearned_copy
    from unlearnspec.train.objectives.rmu import _Capture

    model = tiny_model(seed=2)
    capture = _Capture(model.gpt_neox.layers[0])  # RMU's own hook
    capture.on = True
    model(input_ids=torch.tensor([[3, 4, 5]]))  # it now holds an activation with a grad_fn
    model.requires_grad_(False)  # as RMU leaves most parameters
    with pytest.raises(RuntimeError):
        copy.deepcopy(model)
    victim = unlearned_copy(model, None, lambda: tiny_model(seed=9))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), victim.parameters()))
    assert all(p.requires_grad for p in victim.parameters())
    held = capture.value
    victim(input_ids=torch.tensor([[3, 4]]))
    assert capture.value is held and not victim.gpt_neox.layers[0]._forward_hooks  # the hook stayed on the original


def test_an_unlearning_objective_on_all_tokens_is_an_experiment_for_d8_and_d9():
    """NPO with `tokens.mode: all` dropped toy WMDP by 0.40 (reports/comparators): that is its effect, not a control
    moving the metrics (D9); grad_diff, which moved nothing, is an experiment within noise (D8)."""
    from unlearnspec.doctor.result_rules import control_moves, within_noise
    from unlearnspec.report.model import load_report
    from unlearnspec.spec.load import load_spec

    reports = SPECS.parent / "reports" / "comparators"
    toy = SPECS / "profiles" / "toy.yaml"

    def entry(name):
        return SimpleNamespace(spec=load_spec(SPECS / "comparators" / f"{name}.yaml", profile=toy), shown=name)

    npo = load_report(reports / "comparators_npo.json")
    assert list(control_moves(entry("npo"), "results.json", npo)) == []
    assert [
        f.code
        for f in within_noise(entry("grad_diff"), "results.json", load_report(reports / "comparators_grad_diff.json"))
    ] == ["D8"]
    control = SimpleNamespace(spec=load_spec(SPECS / "fixed" / "all_tokens.yaml", profile=toy), shown="all_tokens")
    assert [f.code for f in control_moves(control, "results.json", npo)] == ["D9"]  # the same rows from a control


def test_d16_counts_the_attack_on_one_gpu_and_names_a_lora_attack_as_the_fix():
    """Full fine-tuning of the 6.9B model with AdamW on the main GPU holds parameters, gradients and two moments
    (16 bytes a parameter) beside the evaluated model: no micro-batch makes that fit 80 GB; LoRA does."""
    from unlearnspec.doctor.memory_model import gib, train_activations
    from unlearnspec.doctor.memory_rules import fit_report, job_of, model_shape, phases

    full = _spec_data()  # the shipped spec with a full fine-tuning attack and none of its memory knobs
    for section, key in (("attack", "lora"), ("attack", "micro_batch_size"), ("training", "micro_batch_size")):
        full[section].pop(key)
    full.pop("parallel")
    spec = validate_data(full, None, "x.yaml")
    m, _ = model_shape(spec)
    est = phases(spec, m, job_of(spec, 1))
    copy_gb = gib(m.params * 4)
    act = gib(4 * train_activations(m, 1024, 4))
    assert math.isclose(est["attack"] / 2**30, 5 * copy_gb + act, rel_tol=1e-9) and gib(est["attack"]) > 80
    fits, now, _, fix = fit_report(spec, "point", 1, 80.0)
    assert fits is False and "attack 1" in now and "attack.lora" in fix
    rmu = yaml.safe_load((SPECS / "comparators" / "rmu.yaml").read_text())  # in float32, with a full attack
    rmu["model"]["dtype"] = "float32"
    for section, key in (("attack", "lora"), ("attack", "micro_batch_size"), ("training", "micro_batch_size")):
        rmu[section].pop(key)
    fix = fit_report(validate_data(rmu, None, "x.yaml"), "point", 1, 80.0)[3]
    # RMU refuses FSDP: more GPUs would not shrink it, so the fix is bfloat16 and a LoRA attack, not more GPUs
    assert "model.dtype: bfloat16" in fix and "attack.lora" in fix and "GPUs (slurm" not in fix, fix
    lora = copy.deepcopy(full)
    lora["attack"]["lora"] = {"rank": 8}
    est = phases(validate_data(lora, None, "x.yaml"), m, job_of(validate_data(lora, None, "x.yaml"), 4))
    assert math.isclose(est["attack"] / 2**30, 2 * copy_gb + act, rel_tol=1e-9)  # on the main GPU at any world size

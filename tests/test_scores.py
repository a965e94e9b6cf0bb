"""Score files (safe loading, every check), alignment, the seven token rules and selection stats."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from unlearnspec.errors import UserError
from unlearnspec.scores import (
    ScoreFile,
    checked_scores,
    load_score_file,
    to_target_alignment,
    token_stats,
    token_weights,
)
from unlearnspec.spec import ScoreSourceSpec, TokenRuleSpec

# 2 rows x 5 columns; row 1 has a pad at column 4 (label -100). Column 0 is never a target.
LABELS = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 8, -100]])
SCORES = torch.tensor([[9.0, -2.0, 1.0, 0.0, 3.0], [9.0, 4.0, -1.0, -2.0, 7.0]])
VALID = torch.tensor([[0, 1, 1, 1, 1], [0, 1, 1, 1, 0]], dtype=torch.bool)
SRC = ScoreSourceSpec(path="x.pt", alignment="target")


def _rule(**kw) -> TokenRuleSpec:
    return TokenRuleSpec.model_validate(kw)


def _w(rule, scores=None):
    return token_weights(rule, scores or {"wmdp": SCORES}, LABELS)


# ---------------------------------------------------------------- the seven modes of the seed
def test_mode_all_tokens():
    assert torch.equal(_w(_rule(mode="all")), VALID.float())


def test_mode_value_weighted_sign_convention():
    # mean |score| over the 7 valid targets: (2+1+0+3+4+1+2)/7 = 13/7
    expected = torch.tensor([[0, -2, 1, 0, 3], [0, 4, -1, -2, 0]]) / (13 / 7)
    got = _w(_rule(mode="value_weighted", source="wmdp"))
    assert torch.allclose(got, expected.float())
    assert got[0, 1] < 0  # a proponent (negative score) is ascended: negative weight


def test_mode_sign_only():
    expected = torch.tensor([[0, -1, 1, 0, 1], [0, 1, -1, -1, 0]]).float()
    assert torch.equal(_w(_rule(mode="sign", source="wmdp")), expected)


def test_mode_positive_only():
    expected = torch.tensor([[0, 0, 1, 0, 1], [0, 1, 0, 0, 0]]).float()
    assert torch.equal(_w(_rule(mode="where", where="wmdp > 0")), expected)


def test_mode_negative_only():
    expected = torch.tensor([[0, 1, 0, 0, 0], [0, 0, 1, 1, 0]]).float()
    assert torch.equal(_w(_rule(mode="where", where="wmdp < 0")), expected)


MMLU = torch.tensor([[1.0, -0.5, 0.0, 2.0, -1.0], [0.0, -3.0, 1.0, -1.0, -2.0]])


def test_mode_selective_and_compatible():
    scores = {"wmdp": SCORES, "mmlu": MMLU}
    selective = _w(_rule(mode="where", where="wmdp > 0 and mmlu <= 0"), scores)
    compatible = _w(_rule(mode="where", where="wmdp > 0 AND mmlu < 0"), scores)
    assert torch.equal(selective, torch.tensor([[0, 0, 1, 0, 1], [0, 1, 0, 0, 0]]).float())
    # column 2 of row 0 has mmlu == 0 exactly: selected by exp5 (<= 0) but not by exp6 (< 0)
    assert torch.equal(compatible, torch.tensor([[0, 0, 0, 0, 1], [0, 1, 0, 0, 0]]).float())


def test_exp5_equals_exp6_iff_no_exact_zero_mmlu_score():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 50, (20, 30), generator=g)
    wmdp = torch.randn(20, 30, generator=g)
    mmlu = torch.randn(20, 30, generator=g)
    five = _rule(mode="where", where="wmdp > 0 and mmlu <= 0")
    six = _rule(mode="where", where="wmdp > 0 and mmlu < 0")
    assert (mmlu == 0).sum() == 0
    assert torch.equal(
        token_weights(five, {"wmdp": wmdp, "mmlu": mmlu}, labels),
        token_weights(six, {"wmdp": wmdp, "mmlu": mmlu}, labels),
    )
    mmlu[(wmdp > 0) & (torch.arange(30) % 2 == 0)] = 0.0  # some valid tokens now sit exactly at zero
    assert not torch.equal(
        token_weights(five, {"wmdp": wmdp, "mmlu": mmlu}, labels),
        token_weights(six, {"wmdp": wmdp, "mmlu": mmlu}, labels),
    )


def test_boolean_rules_or_not_and_parentheses():
    scores = {"wmdp": SCORES, "mmlu": MMLU}
    got = _w(_rule(mode="where", where="not (wmdp > 0) or (mmlu >= 2)"), scores)
    expected = ((~(SCORES > 0)) | (MMLU >= 2)) & VALID
    assert torch.equal(got, expected.float())


def test_token_stats_counts_and_lr_factor():
    w = _w(_rule(mode="where", where="wmdp < 0"))
    stats = token_stats(w, LABELS, "selected")
    assert (stats.valid_tokens, stats.selected_tokens, stats.descending_tokens, stats.ascending_tokens) == (7, 3, 3, 0)
    assert stats.selected_fraction == pytest.approx(3 / 7)
    assert stats.per_token_lr_factor == pytest.approx(7 / 3)  # masking with a `selected` normalizer
    assert token_stats(w, LABELS, "valid").per_token_lr_factor == pytest.approx(1.0)
    signed = token_stats(_w(_rule(mode="sign", source="wmdp")), LABELS, "valid")
    assert (signed.ascending_tokens, signed.descending_tokens) == (3, 3)


# ---------------------------------------------------------------- alignment
def test_input_alignment_is_shifted_by_one():
    inp = torch.tensor([[10.0, 11.0, 12.0, 13.0]])
    assert torch.equal(to_target_alignment(inp, "input"), torch.tensor([[0.0, 10.0, 11.0, 12.0]]))
    assert torch.equal(to_target_alignment(inp, "target"), inp)


def _check(scores, source=SRC, sidecar=None, labels=LABELS, fingerprint="fp", at=lambda s: "fp-wide"):
    return checked_scores(
        ScoreFile(path=__import__("pathlib").Path("s.pt"), scores=scores, sidecar=sidecar),
        source,
        "wmdp",
        labels,
        fingerprint,
        at,
    )


def test_checked_scores_aligns_and_zeroes_non_targets():
    got = _check(SCORES, ScoreSourceSpec(path="x.pt", alignment="input"))
    assert got[0, 1] == SCORES[0, 0] and got[0, 0] == 0 and got[1, 4] == 0


def test_alignment_from_sidecar_and_conflict():
    assert torch.equal(_check(SCORES, ScoreSourceSpec(path="x.pt"), {"alignment": "target"}), SCORES * VALID)
    with pytest.raises(UserError, match="never guessed"):
        _check(SCORES, ScoreSourceSpec(path="x.pt"))
    with pytest.raises(UserError, match="sidecar says 'input'"):
        _check(SCORES, SRC, {"alignment": "input"})


# ---------------------------------------------------------------- bad score files
def test_wrong_shape():
    with pytest.raises(UserError, match=r"expected shape \[N, S\]"):
        _check(torch.zeros(2, 5, 1))


def test_wrong_n():
    with pytest.raises(UserError, match="3 rows of scores but 2 training rows"):
        _check(torch.zeros(3, 5))


def test_nan():
    bad = SCORES.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(UserError, match="NaN/inf values \\(first at row 1, column 2\\)"):
        _check(bad)


def test_non_float_dtype():
    with pytest.raises(UserError, match="floating point"):
        _check(torch.zeros(2, 5, dtype=torch.long))


def test_columns_wider_needs_explicit_truncation():
    wide = torch.zeros(2, 8)
    with pytest.raises(UserError, match="truncate_columns: true"):
        _check(wide)
    out = _check(wide, ScoreSourceSpec(path="x.pt", alignment="target", truncate_columns=True))
    assert out.shape == (2, 5)
    with pytest.raises(UserError, match="wider than the 4 score columns"):
        _check(torch.zeros(2, 4))


def test_fingerprint_mismatch_and_truncated_fingerprint():
    with pytest.raises(UserError, match="fingerprint mismatch"):
        _check(SCORES, sidecar={"fingerprint": "other"})
    assert _check(SCORES, sidecar={"fingerprint": "fp"}).shape == (2, 5)
    wide = ScoreSourceSpec(path="x.pt", alignment="target", truncate_columns=True)
    assert _check(torch.zeros(2, 8), wide, {"fingerprint": "fp-wide"}).shape == (2, 5)
    with pytest.raises(UserError, match="fingerprint mismatch"):
        _check(torch.zeros(2, 8), wide, {"fingerprint": "fp"})


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "per_token_scores.pt"
    torch.save({"scores": SCORES, "payload": _Exploit()}, path)
    with pytest.raises(UserError, match="refused to load"):
        load_score_file(path)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(UserError):
        load_score_file(raw)


def test_load_pt_safetensors_and_sidecar(tmp_path):
    from safetensors.torch import save_file

    torch.save(SCORES, tmp_path / "per_token_scores.pt")
    (tmp_path / "scores.json").write_text(json.dumps({"alignment": "target", "N": 2, "S": 5}))
    sf = load_score_file(tmp_path / "per_token_scores.pt")
    assert torch.equal(sf.scores, SCORES) and sf.sidecar["alignment"] == "target"
    save_file({"scores": SCORES}, tmp_path / "s.safetensors")
    assert torch.equal(load_score_file(tmp_path / "s.safetensors").scores, SCORES)
    with pytest.raises(UserError, match="not found"):
        load_score_file(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="not a readable torch file"):
        load_score_file(tmp_path / "junk.pt")

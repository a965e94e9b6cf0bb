"""The fingerprint-mismatch refusal (issue 22) names which input of the data fingerprint differs (score sidecars
record `data_fingerprint_inputs`), and a run refused before it wrote anything leaves no empty marked folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from unlearnspec.data import GridFingerprints, build_grid, fingerprint_inputs
from unlearnspec.errors import UserError
from unlearnspec.run.rundirs import MARKER, claim_root, release_root
from unlearnspec.scores import ScoreFile, checked_scores
from unlearnspec.spec import DataSpec, ScoreSourceSpec

from .conftest import SPECS
from .fixtures.reportkit import load_yaml, spec_project
from .tiny import tiny_texts, tiny_tokenizer

SRC = ScoreSourceSpec(path="x.pt", alignment="target")


def _data(**select) -> DataSpec:
    return DataSpec.model_validate(
        {"toy": {"corpus": "wikitext"}, "select": {"count": 4, "min_chars": 0, **select}, "max_seq_len": 12}
    )


def _refusal(recorded_inputs, texts, data: DataSpec, rows=(0, 1, 2, 3), tokenizer_id="tiny") -> str:
    tok = tiny_tokenizer()
    grid = build_grid(texts, tok, 12, tokenizer_id, data.append_eos, rows)
    sidecar = {"alignment": "target", "N": 4, "S": 12, "data_fingerprint": "recorded-elsewhere"}
    if recorded_inputs is not None:
        sidecar["data_fingerprint_inputs"] = recorded_inputs
    sf = ScoreFile(path=Path("runs/x/per_token_scores.pt"), scores=torch.zeros(4, 12), sidecar=sidecar)
    with pytest.raises(UserError) as info:
        checked_scores(
            sf, SRC, "wmdp", grid.labels, grid.fingerprint, GridFingerprints(texts, tok, tokenizer_id, data, rows)
        )
    return "\n".join(p.message for p in info.value.problems)


def test_the_refusal_names_the_differing_selection_and_tokenizer():
    texts = tiny_texts(4)
    recorded = fingerprint_inputs(texts, [0, 1, 2, 3], "other-tokenizer", 12, _data(offset=8))
    text = _refusal(recorded, texts, _data())
    assert "data fingerprint mismatch" in text
    assert "tokenizer: other-tokenizer (scores) vs tiny (this run)" in text
    assert (
        "data.select: {count: 4, min_chars: 0, order: original, offset: 8} (scores) vs {count: 4, min_chars: 0, order: original} (this run)"
        in text
    )
    assert "N:" not in text and "S (max_seq_len)" not in text  # what matches is not named


def test_the_refusal_says_when_the_same_settings_chose_other_rows_or_text():
    texts = tiny_texts(4)
    recorded = fingerprint_inputs(texts, [0, 1, 2, 3], "tiny", 12, _data())
    assert "chose other rows" in _refusal(recorded, texts, _data(), rows=(4, 5, 6, 7))
    assert "the same rows hold other text" in _refusal(recorded, tiny_texts(4, seed=1), _data())
    assert "the tokenizer named tiny changed" in _refusal(recorded, texts, _data())  # everything recorded matches


def test_an_old_sidecar_without_inputs_says_the_input_is_unknown():
    text = _refusal(None, tiny_texts(4), _data())
    assert "does not record what its fingerprint was made of" in text


def test_release_root_removes_only_a_folder_holding_nothing_but_the_marker(tmp_path):
    folder = tmp_path / "runs" / "x"
    assert claim_root(folder, "h", "x") is True and (folder / MARKER).is_file()
    assert claim_root(folder, "h", "x") is False  # already ours: not this call's to take back
    (folder / "lr_0.01").mkdir()
    assert release_root(folder) is False and folder.is_dir()  # something was written: kept
    (folder / "lr_0.01").rmdir()
    assert release_root(folder) is True and not folder.exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    assert release_root(foreign) is False and foreign.is_dir()  # not the tool's: never removed


def test_a_run_refused_on_the_fingerprint_names_the_field_and_leaves_no_folder(tmp_path):
    """The trial's case end to end on the toy world: scores recorded for another row selection."""
    from typer.testing import CliRunner

    from unlearnspec.cli import app

    root = spec_project(tmp_path, "per_task")
    spec = load_yaml(SPECS / "per_task" / "forget_toxin.yaml")
    spec.update(name="trial_fp", scores={"wmdp": {"path": "scores/per_token_scores.pt", "alignment": "target"}})
    spec.pop("control")
    spec["tokens"] = {"mode": "where", "where": "wmdp > 0"}
    spec["baseline"] = {"evaluate": False}
    spec["training"]["lr"] = 0.05
    spec["output"]["dir"] = "runs/trial_fp"
    (root / "specs" / "trial.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (root / "scores").mkdir()
    torch.save(torch.zeros(250, 64), root / "scores" / "per_token_scores.pt")
    recorded = {"data.select": {**spec["data"]["select"], "offset_fraction": 0.5}, "N": 250}
    (root / "scores" / "scores.json").write_text(
        json.dumps(
            {
                "alignment": "target",
                "N": 250,
                "S": 64,
                "data_fingerprint": "0" * 64,
                "data_fingerprint_inputs": recorded,
            }
        )
    )
    out = CliRunner().invoke(app, ["run", str(root / "specs" / "trial.yaml"), "--no-report"])
    assert out.exit_code == 2, out.output
    assert (
        "data fingerprint mismatch" in out.output
        and "offset_fraction: 0.5" in out.output
        and "(this run)" in out.output
    )
    assert not (root / "runs" / "trial_fp").exists()  # the old run left runs/trial_fp/ holding only its marker

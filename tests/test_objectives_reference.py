"""NPO's reference log-prob cache: one entry per grid and model, read back as a plain tensor (never unpickled), and
every damaged entry is a clean error naming the folder to delete."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from unlearnspec.errors import UserError
from unlearnspec.train.objectives.reference import SIDECAR_FILE, TENSOR_FILE, ReferenceCache, compute_reference

from .tiny import tiny_model
from .workers.objective_train import grids


def _cache(root, parts=None, is_main=True) -> ReferenceCache:
    forget, _, _ = grids()
    return ReferenceCache(
        forget.input_ids,
        forget.attention_mask,
        forget.labels,
        forget.fingerprint,
        parts or {"model": "tiny"},
        root,
        4,
        is_main=is_main,
        say=lambda _m: None,
    )


def test_computed_once_then_loaded_and_keyed_by_grid_and_model(tmp_path):
    model = tiny_model()
    first = _cache(tmp_path)
    ref = first.get(model, fused=False)
    assert first.status == "computed" and (first.folder / TENSOR_FILE).is_file()
    forget, _, _ = grids()
    valid = forget.valid_targets
    assert bool((ref[valid] < 0).all()) and bool((ref[~valid] == 0).all())
    second = _cache(tmp_path)
    assert torch.equal(second.get(model, fused=False), ref) and second.status == "loaded"
    assert _cache(tmp_path, {"model": "other"}).key != first.key  # another model: another entry
    other = _cache(tmp_path)
    other.fingerprint = "0" * 64
    assert other.key != first.key  # another grid: another entry


def test_only_the_main_process_writes(tmp_path):
    cache = _cache(tmp_path, is_main=False)
    cache.get(tiny_model(), fused=False)
    assert cache.status == "computed" and not cache.folder.exists()


def test_reference_equals_the_models_own_log_probs_in_batches(tmp_path):
    forget, _, _ = grids()
    model = tiny_model()
    whole = compute_reference(model, forget, 16, fused=False)
    parts = compute_reference(model, forget, 3, fused=False)
    assert torch.allclose(whole, parts, atol=1e-6) and model.training


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize(
    "damage,why",
    [
        ("pickle", "not a plain tensor file"),
        ("shape", "does not hold a float32"),
        ("positive", "not log-probabilities"),
        ("large", "larger than a float32"),
        ("sidecar", "does not describe this grid"),
    ],
)
def test_damaged_entries_are_refused_by_name(tmp_path, monkeypatch, damage, why):
    cache = _cache(tmp_path)
    cache.get(tiny_model(), fused=False)
    path = cache.folder / TENSOR_FILE
    good = torch.load(path, weights_only=True)
    monkeypatch.chdir(tmp_path)
    if damage == "pickle":
        path.write_bytes(pickle.dumps({"x": _Evil()}))
    elif damage == "shape":
        torch.save(good[:, :5].clone(), path)
    elif damage == "positive":
        torch.save(good.abs(), path)
    elif damage == "large":
        torch.save(torch.zeros(good.numel() + 20_000), path)  # 80 KB beyond a float32 [N, S] file
    else:
        (cache.folder / SIDECAR_FILE).write_text('{"kind": "something else"}')
    with pytest.raises(UserError) as info:
        _cache(tmp_path).load()
    message = info.value.problems[0].message
    assert why in message and f"Delete the folder {cache.folder}" in message
    assert not (tmp_path / "pwned").exists()


def test_a_symlinked_entry_is_refused(tmp_path):
    cache = _cache(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cache.folder.parent.mkdir(parents=True)
    cache.folder.symlink_to(elsewhere)
    with pytest.raises(UserError, match="symlink"):
        cache.get(tiny_model(), fused=False)
    assert not any(elsewhere.iterdir())

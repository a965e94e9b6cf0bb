"""Training curves (training.report_to): TensorBoard event files in the point's curves/ folder, the run
name from spec + point, a clear error when the integration is missing, and W&B offline when installed."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from unlearnspec.data import build_grid
from unlearnspec.errors import UserError
from unlearnspec.spec import TrainingSpec
from unlearnspec.train.trainer import (
    WeightedSFTTrainer,
    build_optimizer,
    build_scheduler,
    curves_run_name,
    grid_dataset,
    sft_config,
    total_steps,
)

from .tiny import tiny_model, tiny_texts, tiny_tokenizer


def _training(**kw) -> TrainingSpec:
    base = dict(optimizer={"name": "sgd"}, lr=0.5, batch_size=4, max_steps=3, seed=0, shuffle=False)
    base.update(kw)
    return TrainingSpec.model_validate(base)


def _train(training: TrainingSpec, point_dir: Path, run_name: str) -> WeightedSFTTrainer:
    grid = build_grid(tiny_texts(8, 0), tiny_tokenizer(), 16, "tiny")
    model = tiny_model()
    lr = training.lrs[0]
    opt = build_optimizer(training, list(model.parameters()), lr)
    steps = total_steps(training, 8)
    trainer = WeightedSFTTrainer(
        model=model,
        args=sft_config(training, lr, point_dir / "trainer", 8, run_name=run_name),
        train_dataset=grid_dataset(grid, grid.valid_targets.float()),
        processing_class=tiny_tokenizer(),
        optimizers=(opt, build_scheduler(training, opt, steps)),
        curves_dir=point_dir / "curves",
    )
    trainer.train()
    return trainer


def _tfrecords(path: Path):
    """Records of a TFRecord file (length, crc, payload, crc), as TensorBoard writes event files."""
    data = path.read_bytes()
    i = 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i : i + 8])
        yield data[i + 12 : i + 12 + n]
        i += 12 + n + 4


def _scalars(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    for f in folder.rglob("events.out.tfevents.*"):
        for rec in _tfrecords(f):
            ev = event_pb2.Event.FromString(rec)
            for v in ev.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, {})[ev.step] = v.simple_value
    return out


def test_report_to_defaults_to_nothing_and_passes_run_name(tmp_path):
    assert sft_config(_training(), 0.5, tmp_path, 8).report_to == []
    assert sft_config(_training(report_to="none"), 0.5, tmp_path, 8).report_to == []
    cfg = sft_config(_training(report_to="tensorboard"), 0.5, tmp_path, 8, run_name=curves_run_name("exp7", "lr=0.5"))
    assert cfg.report_to == ["tensorboard"] and cfg.run_name == "exp7/lr=0.5"


def test_tensorboard_event_files_hold_the_logged_losses(tmp_path):
    pytest.importorskip("tensorboardX")
    point = tmp_path / "lr_0.5"
    trainer = _train(_training(report_to="tensorboard"), point, "toy/lr=0.5")
    events = list((point / "curves" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1, events
    losses = _scalars(point / "curves")["train/loss"]
    logged = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    assert sorted(losses) == [1, 2, 3] == sorted(logged)
    assert losses == pytest.approx(logged, rel=1e-6)
    # nothing in HF's default place (output_dir/runs/<date_host>)
    assert not (point / "trainer" / "runs").exists()


def test_no_curves_without_report_to(tmp_path):
    _train(_training(), tmp_path / "p", "toy/lr=0.5")
    assert not (tmp_path / "p" / "curves").exists()


def test_missing_integration_is_a_user_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("tensorboard", "tensorboardX", "wandb") else real(name, *a),
    )
    for target, fix in (("tensorboard", "pip install tensorboardX"), ("wandb", "pip install wandb")):
        with pytest.raises(UserError) as err:
            sft_config(_training(report_to=target), 0.5, tmp_path, 8)
        assert "training.report_to" in str(err.value.problems[0].loc) and fix in err.value.problems[0].message


@pytest.mark.slow
def test_wandb_offline_one_run_per_point(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    for lr in (0.5, 0.25):
        _train(_training(report_to="wandb", lr=lr), tmp_path / f"lr_{lr}", f"toy/lr={lr}")
    runs = {lr: list((tmp_path / f"lr_{lr}" / "curves" / "wandb").glob("offline-run-*")) for lr in (0.5, 0.25)}
    assert all(len(r) == 1 for r in runs.values()), runs
    assert runs[0.5][0].name != runs[0.25][0].name
    for lr, (run,) in runs.items():
        record = next(run.glob("run-*.wandb")).read_bytes()  # protobuf records: the name and the curves
        assert f"toy/lr={lr}".encode() in record and b"train/loss" in record
    import wandb

    assert wandb.run is None  # finished after each point

"""Devices without a GPU: resolve_device, GPU-only settings refused on the CPU by field name, the
`parallel` section compiled into Trainer fields, and device placement of everything MAGIC creates
(run on the `meta` device, where any tensor created on the CPU and mixed in raises; plus a static scan
of every tensor factory call in magic/ and train/)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

from unlearnspec.errors import UserError
from unlearnspec.spec import ParallelSpec, Spec, TrainingSpec
from unlearnspec.train.device import check_device_support, resolve_device
from unlearnspec.train.parallel import Placement, parallel_fields
from unlearnspec.train.trainer import sft_config

PKG = Path(__file__).resolve().parents[1] / "unlearnspec"


# --------------------------------------------------------------------------- resolve_device
def test_resolve_device_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="no usable CUDA") as err:
        resolve_device("cuda")
    assert err.value.problems[0].loc == "parallel.device"
    with pytest.raises(UserError, match="unknown device"):
        resolve_device("tpu")


def test_resolve_device_with_cuda_takes_the_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_device(None) == resolve_device("cuda") == torch.device("cuda", 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="does not exist"):
        resolve_device("cuda:7")


# --------------------------------------------------------------------------- GPU-only settings
def _spec(**changes):
    from .test_spec import EXP7, _data  # a real experiment spec as a mapping

    data = _data(EXP7)
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return Spec.model_validate(data)


@pytest.mark.parametrize(
    "field,value,loc",
    [
        ("training.precision", "bf16", "training.precision"),
        ("training.precision", "fp16", "training.precision"),
        ("model.attn_implementation", "flash_attention_2", "model.attn_implementation"),
    ],
)
def test_gpu_only_settings_are_refused_on_the_cpu_by_name(field, value, loc):
    spec = _spec(**{field: value})
    with pytest.raises(UserError) as err:
        check_device_support(spec, torch.device("cpu"))
    assert [p.loc for p in err.value.problems] == [loc]
    check_device_support(spec, torch.device("cuda", 0))  # allowed on a GPU


def test_cpu_friendly_settings_pass_on_the_cpu():
    check_device_support(_spec(**{"model.attn_implementation": "sdpa"}), torch.device("cpu"))


# --------------------------------------------------------------------------- parallel -> Trainer fields
def test_one_process_gets_no_distributed_fields():
    fields = parallel_fields(ParallelSpec(strategy="fsdp"), torch.device("cpu"), 1)
    assert fields == {"ddp_find_unused_parameters": False, "ddp_timeout": 1800}


def test_ddp_and_fsdp_fields():
    ddp = parallel_fields(None, torch.device("cpu"), 2)
    assert ddp["ddp_backend"] == "gloo" and ddp["ddp_find_unused_parameters"] is False and "fsdp" not in ddp
    assert parallel_fields(None, torch.device("cuda", 0), 2)["ddp_backend"] == "nccl"
    par = ParallelSpec(
        strategy="fsdp",
        timeout_s=60,
        fsdp={"sharding": "shard_grad_op", "wrap_layer": "GPTNeoXLayer", "activation_checkpointing": True},
    )
    fsdp = parallel_fields(par, torch.device("cpu"), 2)
    assert fsdp["fsdp"] is True and fsdp["ddp_timeout"] == 60
    cfg = fsdp["fsdp_config"]
    assert cfg["version"] == 2 and cfg["reshard_after_forward"] is False and cfg["activation_checkpointing"] is True
    assert cfg["transformer_layer_cls_to_wrap"] == ["GPTNeoXLayer"] and cfg["cpu_offload"] is False


def test_parallel_mistakes_are_user_errors():
    with pytest.raises(UserError, match="strategy is `none`"):
        parallel_fields(ParallelSpec(strategy="none"), torch.device("cpu"), 2)
    with pytest.raises(UserError, match="nccl needs CUDA"):
        parallel_fields(ParallelSpec(backend="nccl"), torch.device("cpu"), 2)
    with pytest.raises(ValueError, match="read only with `strategy: fsdp`"):
        ParallelSpec(strategy="ddp", fsdp={"cpu_offload": True})
    with pytest.raises(ValueError, match="parallel.device|pattern"):
        ParallelSpec(device="gpu")


def test_magic_accepts_fsdp():
    """The score job runs the sharded reverse pass under FSDP (tests/test_magic_fsdp.py)."""
    from .test_spec import _data

    data = _data(PKG.parent / "specs" / "magic" / "magic_wmdp.yaml")
    data["parallel"] = {"strategy": "fsdp"}
    assert Spec.model_validate(data).parallel.strategy == "fsdp"


def test_sft_config_device_decides_use_cpu(tmp_path):
    training = TrainingSpec.model_validate(dict(optimizer={"name": "sgd"}, lr=0.1, batch_size=2, max_steps=1))
    assert sft_config(training, 0.1, tmp_path, 4, Placement(device=torch.device("cpu"))).use_cpu is True
    assert sft_config(training, 0.1, tmp_path, 4, Placement(device=torch.device("cuda", 0))).use_cpu is False


# --------------------------------------------------------------------------- MAGIC on the model's device
def _meta_setup(schedule: str = "sqrt"):
    from unlearnspec.magic import RamStore

    from .test_magic import Setup

    setup = Setup(steps=4, batch_size=3)
    trajectory = setup.record(schedule)  # recorded on the CPU
    store = RamStore(device="meta")  # the states as a GPU run would hold them: on another device
    for step in trajectory.store.steps():
        store.put(step, trajectory.store.get(step))
    setup.model.to("meta")
    return setup, dataclasses.replace(trajectory, store=store)


@pytest.mark.parametrize("schedule,rows", [("sqrt", None), ("log", 2)])
def test_magic_scores_run_on_the_models_device(schedule, rows):
    """Model and states on `meta`, grid and query batch on the CPU (as in a GPU run): every tensor the
    reverse pass, the replayed SGD steps and the query create must follow the model, or this raises
    'Tensor on device cpu is not on the expected device meta'."""
    from unlearnspec.magic import magic_scores

    setup, trajectory = _meta_setup(schedule)
    assert setup.grid.input_ids.device.type == "cpu" and setup.query.batch.input_ids.device.type == "cpu"
    scores = magic_scores(setup.model, setup.grid, trajectory, setup.query, dtype=None, micro_batch_rows=rows)
    assert scores.device.type == "meta" and tuple(scores.shape) == tuple(setup.grid.labels.shape)


def test_query_loss_runs_on_the_models_device():
    from unlearnspec.magic import replay_mode

    from .test_magic import Setup

    setup = Setup(steps=1)
    setup.model.to("meta")
    with replay_mode(setup.model):  # the mask code of sdpa/eager reads values (.item()); replays never use them
        assert setup.query.per_question().device.type == "meta"


def test_disk_states_are_moved_to_the_models_device(tmp_path):
    from unlearnspec.magic import DiskStore, magic_scores

    from .test_magic import Setup

    setup = Setup(steps=3, batch_size=3)
    trajectory = setup.record("all", store=DiskStore(tmp_path))  # safetensors load on the CPU
    setup.model.to("meta")
    assert magic_scores(setup.model, setup.grid, trajectory, setup.query, dtype=None).device.type == "meta"


# --------------------------------------------------------------------------- static scan
FACTORIES = {
    "ones",
    "zeros",
    "full",
    "empty",
    "tensor",
    "arange",
    "rand",
    "randn",
    "randint",
    "randperm",
    "eye",
    "linspace",
}
# Host-side creation sites, on purpose: data and indices that the Trainer's dataloader or the replay move per batch.
HOST_SIDE = {
    ("magic/callback.py", "_on_batches"): "row ids gathered from the ranks (indices, recorded on the host)",
    ("magic/query.py", "build_query_batch"): "the tokenized query batch (moved per chunk in QueryLoss._chunk_losses)",
    ("magic/trajectory.py", "plan_steps"): "row-id plans (indices)",
    ("train/trainer.py", "grid_dataset"): "row ids of the datasets.Dataset (host data)",
}


def _factory_calls_without_device(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    found = []
    for func in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        for node in ast.walk(func):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in FACTORIES
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
                and not any(k.arg == "device" for k in node.keywords)
            ):
                found.append((func.name, node.lineno))
    return found


def test_every_tensor_factory_in_magic_and_train_names_a_device():
    offenders = []
    for folder in ("magic", "train"):
        for path in sorted((PKG / folder).glob("*.py")):
            rel = f"{folder}/{path.name}"
            for func, line in _factory_calls_without_device(path):
                if (rel, func) not in HOST_SIDE:
                    offenders.append(f"{rel}:{line} in {func}()")
    # Nested functions are visited with their parents too; a real offender shows up at least once.
    assert not offenders, "tensor created without device= (pass the model's device): " + ", ".join(
        sorted(set(offenders))
    )


def test_static_scan_catches_a_factory_without_device(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\ndef f(x):\n    return torch.ones(3) * x\n")
    assert _factory_calls_without_device(bad) == [("f", 3)]


# --------------------------------------------------------------------------- memory knobs (one process)
@pytest.mark.parametrize("schedule", ["sqrt", "all", "log"])
def test_memory_knobs_do_not_change_scores(schedule):
    from unlearnspec.magic import magic_scores

    from .test_magic import Setup

    setup = Setup(steps=5, batch_size=3)
    trajectory = setup.record(schedule)
    plain = magic_scores(setup.model, setup.grid, trajectory, setup.query, dtype=None)
    knobs = magic_scores(
        setup.model,
        setup.grid,
        trajectory,
        setup.query,
        dtype=None,
        micro_batch_rows=2,
        offload_adjoint=True,
        offload_states=True,
    )
    assert float((knobs - plain).norm() / plain.norm()) <= 1e-12 and float(plain.abs().max()) > 0

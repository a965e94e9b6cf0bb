"""Refuse setups the exact reverse pass cannot differentiate, before any training starts, and read the
optimizer (SGD, Adam, AdamW) into what the replay needs.

Each error says what to change. Spec-level rules live in `spec.Spec._magic_rules`; these check the
live objects (model, optimizer, trainer arguments) that a spec cannot see.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from unlearnspec.errors import UserError
from unlearnspec.magic.optimizers import OPTIMIZERS, OptimizerConfig, optimizer_name

_SOURCE = "magic"
REPLAY_DTYPES = (torch.float32, torch.float64)


def _fail(message: str, loc: str = "") -> UserError:
    return UserError.one(_SOURCE, message, loc=loc)


def check_model_replayable(model: nn.Module, names: Iterable[str] | None = None) -> None:
    """Parameters in float32/float64 and every dropout probability 0."""
    params = dict(model.named_parameters())
    if names is not None:
        missing = [n for n in names if n not in params]
        if missing:
            raise _fail(
                f"the trajectory records parameters the model does not have: {missing[:3]}; "
                "replay on the model that was trained."
            )
    for name, p in params.items():
        if p.dtype not in REPLAY_DTYPES:
            raise _fail(
                f"parameter {name} is {p.dtype}; MAGIC needs float32 or float64 parameters (with bf16/fp16, SGD updates "
                "round away and scores become noise). Load the model with dtype float32.",
                loc="model.dtype",
            )
    for key, value in _dropout_settings(model):
        if value:
            raise _fail(
                f"{key}={value}; MAGIC replays the run deterministically and needs every dropout at 0. "
                "Set the config's dropout fields (and training.dropout) to 0.",
                loc="training.dropout",
            )


def _is_rate(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _dropout_settings(model: nn.Module) -> list[tuple[str, float]]:
    """Dropout rates of the config and modules; heads the LM never runs (classifier, summary) are skipped."""
    found: list[tuple[str, float]] = []
    config = getattr(model, "config", None)
    if config is not None:
        for key, value in sorted(vars(config).items()):
            if (
                ("dropout" in key or key.endswith("pdrop"))
                and not key.startswith(("classifier", "summary"))
                and _is_rate(value)
            ):
                found.append((f"config.{key}", float(value)))
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            found.append((f"{name or 'model'}.p", float(module.p)))
        rate = getattr(module, "attention_dropout", None)
        if _is_rate(rate):
            found.append((f"{name or 'model'}.attention_dropout", float(rate)))  # type: ignore[arg-type]
    return found


def check_optimizer(
    optimizer: torch.optim.Optimizer, named_params: Mapping[str, torch.Tensor] | None = None
) -> float | dict[str, float]:
    """SGD without momentum, Adam or AdamW (no amsgrad/maximize, one betas/eps for all groups).
    Returns the weight decay: one value, or per name when groups differ (the HF Trainer exempts
    biases and norm weights); per-name needs `named_params`."""
    kind = type(optimizer)
    name = optimizer_name(optimizer)
    if name is None:
        classes, names = [k.torch_class.__name__ for k in OPTIMIZERS.values()], list(OPTIMIZERS)
        raise _fail(
            f"the optimizer is {kind.__name__}; the exact reverse pass is implemented for plain "
            f"{', '.join(classes[:-1])} and {classes[-1]}. Use training.optimizer.name: {', '.join(names[:-1])} or {names[-1]}.",
            loc="training.optimizer.name",
        )
    by_id: dict[int, float] = {}
    for group in optimizer.param_groups:
        if group.get("momentum", 0) or group.get("nesterov", False):
            raise _fail(
                "SGD momentum/nesterov is not supported by the reverse pass; set momentum: 0.",
                loc="training.optimizer.momentum",
            )
        if group.get("maximize", False):
            raise _fail(
                f"{kind.__name__}(maximize=True) is not supported; minimise the loss.", loc="training.optimizer"
            )
        if group.get("amsgrad", False):
            raise _fail("Adam(amsgrad=True) is not replayed; use amsgrad=False.", loc="training.optimizer")
        for p in group["params"]:
            by_id[id(p)] = float(group.get("weight_decay", 0.0))
    if OPTIMIZERS[name].hyperparameters == ("betas", "eps"):
        hyper = {(tuple(float(b) for b in g["betas"]), float(g["eps"])) for g in optimizer.param_groups}
        if len(hyper) != 1:
            raise _fail(
                f"parameter groups have different Adam betas/eps {sorted(hyper)}; MAGIC assumes one.",
                loc="training.optimizer",
            )
    decays = set(by_id.values())
    if named_params is not None:
        missing = [n for n, p in named_params.items() if id(p) not in by_id]
        if missing:
            raise _fail(
                f"parameters {missing[:3]} are not in the optimizer; MAGIC records only what the optimizer updates.",
                loc="training",
            )
    if len(decays) <= 1:
        return decays.pop() if decays else 0.0
    if named_params is None:
        raise ValueError("parameter groups have different weight decays; pass named_params to map them to names")
    return {n: by_id[id(p)] for n, p in named_params.items()}


def optimizer_config(optimizer: torch.optim.Optimizer, max_grad_norm: float | None = None) -> OptimizerConfig:
    """The replay's description of a checked torch optimizer (`check_optimizer` first), before its first step."""
    name = optimizer_name(optimizer)
    assert name is not None, "check_optimizer first"
    if not OPTIMIZERS[name].state_names:
        return OptimizerConfig(name, max_grad_norm=max_grad_norm or None)  # type: ignore[arg-type]
    group = optimizer.param_groups[0]
    steps = {int(optimizer_step_count(optimizer, p)) for g in optimizer.param_groups for p in g["params"]}
    if len(steps) != 1:
        raise _fail(
            f"parameters are at different Adam step counts {sorted(steps)}; start MAGIC from one optimizer state.",
            loc="training.optimizer",
        )
    return OptimizerConfig(
        name,
        (float(group["betas"][0]), float(group["betas"][1])),
        float(group["eps"]),  # type: ignore[arg-type]
        initial_step=steps.pop(),
        max_grad_norm=max_grad_norm or None,
    )


def optimizer_step_count(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> int:
    """The optimizer's step count for one parameter (0 before its first step)."""
    step = optimizer.state.get(param, {}).get("step", 0)
    return int(step.item()) if isinstance(step, torch.Tensor) else int(step)


def optimizer_tensors(
    optimizer: torch.optim.Optimizer, named_params: Mapping[str, torch.Tensor], state_names: tuple[str, ...]
) -> dict[str, dict[str, torch.Tensor]]:
    """The optimizer's per-parameter tensors by state name and parameter name (zeros before the first step)."""
    out: dict[str, dict[str, torch.Tensor]] = {s: {} for s in state_names}
    for name, p in named_params.items():
        state = optimizer.state.get(p, {})
        for s in state_names:
            out[s][name] = state[s] if s in state else torch.zeros_like(p, memory_format=torch.preserve_format)
    return out


def check_training_args(
    *,
    packing: bool = False,
    precision: str = "fp32",
    dropout: float = 0.0,
) -> None:
    """Trainer settings that change the update rule the reverse pass assumes (clipping is replayed, not refused)."""
    if packing:
        raise _fail(
            "packing mixes rows inside a sequence, so per-row token scores lose their meaning; disable packing.",
            loc="data",
        )
    if precision != "fp32":
        raise _fail(
            f"mixed precision ({precision}) is not replayed exactly; use training.precision: fp32.",
            loc="training.precision",
        )
    if dropout:
        raise _fail(f"dropout={dropout}; MAGIC needs dropout 0.", loc="training.dropout")

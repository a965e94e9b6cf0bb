"""WeightedSFTTrainer: trl.SFTTrainer whose loss is sum(w * token CE) / normalizer, per spec.

The token grid arrives pre-tokenized with its weights in every row, so TRL's preparation, truncation
and packing never touch it (`skip_prepare_dataset`), and our collator only stacks fixed-length rows.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
from trl import SFTConfig, SFTTrainer

from unlearnspec.data import TokenGrid
from unlearnspec.spec import TrainingSpec
from unlearnspec.spec.batch import BatchLayout, batch_layout, optimizer_steps
from unlearnspec.train.loss import Normalizer, normalizer_count, token_nll, weighted_nll_loss
from unlearnspec.train.objectives import Objective
from unlearnspec.train.parallel import Placement, parallel_fields, world_size

BatchListener = Callable[[list[dict[str, torch.Tensor]], torch.Tensor], None]
CURVES_DIR = "curves"  # a point folder's subfolder for training curves (TensorBoard events, W&B files)


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; training stops before anything is written."""

    def __init__(self, step: int, value: float):
        super().__init__(f"non-finite loss ({value}) at optimizer step {step}; lower the learning rate")
        self.step = step
        self.value = value


class GridCollator:
    """Stack fixed-length grid rows; nothing is padded, truncated or dropped."""

    keys = ("input_ids", "attention_mask", "labels", "token_weights", "row_id")

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return {k: torch.stack([torch.as_tensor(f[k]) for f in features]) for k in self.keys}


def grid_dataset(grid: TokenGrid, weights: torch.Tensor) -> Any:
    """A datasets.Dataset of the grid rows with their weights and row ids (torch format)."""
    import datasets

    if weights.shape != grid.input_ids.shape:
        raise ValueError(f"weights {list(weights.shape)} do not match the grid {list(grid.input_ids.shape)}")
    ds = datasets.Dataset.from_dict(
        {
            "input_ids": grid.input_ids,
            "attention_mask": grid.attention_mask,
            "labels": grid.labels,
            "token_weights": weights.float(),
            "row_id": torch.arange(grid.input_ids.shape[0]),
        }
    )
    return ds.with_format("torch")


def total_steps(training: TrainingSpec, n_rows: int) -> int:
    return optimizer_steps(training, n_rows)


def warmup_steps(training: TrainingSpec, steps: int) -> int:
    if training.warmup_steps is not None:
        return training.warmup_steps
    if training.warmup_ratio is not None:
        return math.ceil(training.warmup_ratio * steps)  # as transformers rounds a ratio
    return 0


DECAY_EXEMPT_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")
"""transformers.Trainer.get_decay_parameter_names: no weight decay on biases and norm weights."""


def decay_parameter_names(model: torch.nn.Module) -> set[str]:
    """Names of the parameters the HF Trainer's default optimizer decays (not in a LayerNorm, not a bias/norm)."""
    from transformers.trainer_pt_utils import get_parameter_names

    return set(get_parameter_names(model, [torch.nn.LayerNorm], list(DECAY_EXEMPT_PATTERNS)))


def build_optimizer(
    training: TrainingSpec, params: torch.nn.Module | Iterable[torch.nn.Parameter], lr: float
) -> torch.optim.Optimizer:
    """The spec's optimizer over the trainable parameters, with weight decay grouped as the HF Trainer
    does: decayed parameters, and an undecayed group of biases and LayerNorm weights.

    Given the model, the groups follow the Trainer's name rule (`decay_parameter_names`); given bare
    parameters, tensors of dimension < 2 form the undecayed group (for GPT-NeoX, with or without
    LoRA, the same split; tested). The MAGIC replay reads the groups back from the optimizer.
    """
    opt = training.optimizer
    if isinstance(params, torch.nn.Module):
        decayed_names = decay_parameter_names(params)
        named = [(n, p) for n, p in params.named_parameters() if p.requires_grad]
        decayed = [p for n, p in named if n in decayed_names]
        exempt = [p for n, p in named if n not in decayed_names]
    else:
        plist = [p for p in params if p.requires_grad]
        decayed = [p for p in plist if p.dim() >= 2]
        exempt = [p for p in plist if p.dim() < 2]
    groups = [
        g
        for g in ({"params": decayed, "weight_decay": opt.weight_decay}, {"params": exempt, "weight_decay": 0.0})
        if g["params"]
    ]
    if opt.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=opt.momentum)
    cls = torch.optim.Adam if opt.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=lr, betas=opt.betas, eps=opt.eps)


def build_scheduler(training: TrainingSpec, optimizer: torch.optim.Optimizer, steps: int) -> Any:
    from transformers import get_scheduler

    warm = warmup_steps(training, steps)
    name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[training.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=warm, num_training_steps=steps)


def curves_run_name(spec_name: str, point: str) -> str:
    """The name of a point's curves (W&B run name, HF `run_name`): `spec/point`, e.g. `exp7/lr=1e-05`."""
    return f"{spec_name}/{point}"


def report_targets(training: TrainingSpec) -> list[str]:
    """HF `report_to` for the spec: [] or one integration, checked to be installed (else a UserError)."""
    target = training.report_to or "none"
    if target == "none":
        return []
    needs = {
        "tensorboard": (("tensorboardX", "tensorboard"), "pip install tensorboardX"),
        "wandb": (("wandb",), "pip install wandb"),
    }[target]
    if not any(importlib.util.find_spec(mod) is not None for mod in needs[0]):
        from unlearnspec.errors import UserError

        raise UserError.one(
            "training",
            f"training.report_to is {target!r} but {' or '.join(needs[0])} is not "
            f"installed; `{needs[1]}`, or set `report_to: none`.",
            loc="training.report_to",
        )
    return [target]


def sft_config(
    training: TrainingSpec,
    lr: float,
    output_dir: Path,
    n_rows: int,
    placement: Placement = Placement(),
    **overrides: Any,
) -> SFTConfig:
    """Every Trainer knob set from the spec; SFTConfig's own defaults (lr 2e-5, max_length 1024,
    gradient checkpointing, clipping 1.0, find_unused_parameters, ...) are never left to apply silently.

    `placement`: the run's resolved device (unset: CUDA when available) and the spec's `parallel` section.
    `overrides`: SFTConfig fields set over these, e.g. `run_name`, which names the point's curves (see
    curves_run_name; where they go is WeightedSFTTrainer's `curves_dir`).
    """
    device = placement.device
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    layout = batch_layout(training, world_size(), launch="this launch", n_rows=n_rows)
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        learning_rate=lr,
        per_device_train_batch_size=layout.micro_batch_size,  # the global batch's share of one rank and pass
        gradient_accumulation_steps=layout.accumulation,
        max_steps=total_steps(training, n_rows),
        seed=training.seed,
        data_seed=training.seed,
        train_sampling_strategy="random" if training.shuffle else "sequential",
        bf16=training.precision == "bf16",
        fp16=training.precision == "fp16",
        max_grad_norm=training.max_grad_norm or 0.0,
        logging_steps=1,
        logging_first_step=True,
        save_strategy="no",
        eval_strategy="no",
        report_to=report_targets(training),
        run_name=None,  # `overrides` names a sweep point's curves
        disable_tqdm=True,
        gradient_checkpointing=False,
        activation_checkpointing=False,
        max_length=None,
        packing=False,
        shuffle_dataset=False,
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        dataloader_num_workers=0,
        dataloader_drop_last=False,
        use_cpu=device.type == "cpu",
        loss_type="nll",
        average_tokens_across_devices=True,
    )
    kwargs.update(parallel_fields(placement.parallel, device, world_size()))
    kwargs.update(overrides)
    try:
        return SFTConfig(**kwargs)
    except ValueError as exc:  # e.g. bf16/fp16 autocast requested on a machine that cannot run it
        from unlearnspec.errors import UserError, first_line

        raise UserError.one(
            "training",
            f"the trainer refused these settings: {first_line(exc, 240)}. "
            "Check training.precision and the parallel section for this machine.",
            loc="training.precision",
        ) from None


@dataclass(frozen=True)
class LossSetup:
    """How `WeightedSFTTrainer` computes a step's loss."""

    normalizer: Normalizer = "valid"
    """What the weighted loss of the accumulation window is divided by (`loss.normalizer` of the spec)."""
    fused_head: bool = True
    """TRL's fused LM head (float32 log-probs without the logits); False: the full logits, as MAGIC replays them."""
    objective: Optional[Objective] = None
    """An unlearning objective (spec `objective`) that computes the loss instead; None: the weighted loss."""


class WeightedSFTTrainer(SFTTrainer):
    """SFTTrainer with signed per-token weights and an explicit loss normalizer.

    loss(step) = sum over the accumulation window of w * CE, divided by the normalizer counted over the
    same window (so bs 8 x ga 1 and bs 4 x ga 2 take the same step). Weights travel inside each row
    (`token_weights`), so they stay aligned with labels whatever the sampler does.
    """

    loss_is_scaled_for_ga: bool = True  # type: ignore[assignment]  # HF declares None; divided by the window's normalizer already

    def __init__(
        self,
        *args: Any,
        loss: LossSetup = LossSetup(),
        curves_dir: Optional[Path] = None,
        training: Optional[TrainingSpec] = None,
        **kwargs: Any,
    ):
        normalizer, fused_head, objective = loss.normalizer, loss.fused_head, loss.objective
        if "data_collator" not in kwargs or kwargs["data_collator"] is None:
            kwargs["data_collator"] = GridCollator()
        # With `training`, the Trainer builds the spec's optimizer and schedule itself (create_optimizer below):
        # FSDP refuses optimizers made before it shards the model, so this is the path that works everywhere.
        self.training_spec = training
        super().__init__(*args, **kwargs)
        if self.args.n_gpu > 1:
            from unlearnspec.errors import UserError

            raise UserError.one(
                "device",
                f"{self.args.n_gpu} GPUs are visible to one process, so the HF Trainer would use "
                "torch.nn.DataParallel, whose loss scaling this trainer does not implement. Launch one "
                "process per GPU (`torchrun --nproc-per-node N`) or set CUDA_VISIBLE_DEVICES to one GPU.",
                loc="parallel",
            )
        if self.args.world_size > 1 and not self.args.average_tokens_across_devices:
            raise ValueError(
                "WeightedSFTTrainer needs average_tokens_across_devices=True under several processes: "
                "the normalizer is counted over the whole global batch"
            )
        from transformers.trainer_callback import PrinterCallback

        self.remove_callback(PrinterCallback)  # the runner reports progress itself
        # Training curves (args.report_to) go to `curves_dir`, by default output_dir/curves. HF 5.x has no
        # logging_dir argument: its TensorBoard callback reads an env var or makes runs/<date_host>.
        self.curves_dir = Path(curves_dir) if curves_dir is not None else Path(str(self.args.output_dir)) / CURVES_DIR
        for cb in self.callback_handler.callbacks:
            if type(cb).__name__ == "TensorBoardCallback":
                cb.logging_dir = str(self.curves_dir / "tensorboard")
        self.normalizer: Normalizer = normalizer
        # TRL's fused LM head computes log-probs in float32 without building the logits (fast, lean);
        # MAGIC runs use the full logits and loss.token_nll so training is exactly what the replay computes.
        self.fused_head = fused_head
        self.batch_listeners: list[BatchListener] = []
        # An unlearning objective (spec `objective`, unlearnspec.train.objectives) computes the loss instead;
        # None is `weighted`, this class's own loss, whose code path stays exactly as it was.
        self.objective: Optional[Objective] = objective

    def train(self, *args: Any, **kwargs: Any) -> Any:
        wandb = "wandb" in (self.args.report_to or []) and self.args.process_index == 0  # HF logs on rank 0
        with _wandb_run(self.curves_dir if wandb else None, self.args.run_name):
            return super().train(*args, **kwargs)

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        plugin_args = getattr(self.args, "fsdp_plugin_args", None)
        if plugin_args is None or self.is_fsdp_enabled:
            return
        # accelerate turns the FSDP plugin on only for GPU-like distributed types; on the CPU (MULTI_CPU) it
        # silently trains with DDP instead (measured: every rank kept all parameters). Promote the state with
        # the same plugin so `parallel.strategy: fsdp` shards on every device (tested on 2 gloo ranks).
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        state = self.accelerator.state
        if state.distributed_type != DistributedType.MULTI_CPU:
            raise RuntimeError(f"FSDP was requested but accelerate runs {state.distributed_type}; it would not shard")
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = FullyShardedDataParallelPlugin(**plugin_args)
        self.is_fsdp_enabled = True

    @property
    def batch_layout(self) -> BatchLayout:
        """This launch's split of each optimizer step: ranks x rows per micro-batch x micro-batches per rank."""
        world = max(1, int(self.args.world_size))
        m, accum = self.args.per_device_train_batch_size, self.args.gradient_accumulation_steps
        return BatchLayout(world * m * accum, world, m, accum)

    def get_train_dataloader(self) -> Any:
        """Every optimizer step trains the same rows at any world size (see train/sampler.py); HF's own
        loader would let accelerate pad an epoch's short last step with repeated rows under several ranks."""
        from unlearnspec.train.sampler import prepared_train_dataloader

        return prepared_train_dataloader(self, self.batch_layout)

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        if self.optimizer is None and self.training_spec is not None:
            target = model if model is not None else self.model
            assert target is not None, "create_optimizer before the Trainer has its model"
            params = [p for p in target.parameters() if p.requires_grad]
            self.optimizer = build_optimizer(self.training_spec, params, self.args.learning_rate)
        return super().create_optimizer(model) if self.optimizer is None else self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        if self.lr_scheduler is None and self.training_spec is not None:
            chosen = optimizer or self.optimizer
            assert chosen is not None, "create_scheduler before create_optimizer"
            self.lr_scheduler = build_scheduler(self.training_spec, chosen, num_training_steps)
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    def _diverged(self, loss: torch.Tensor) -> bool:
        """Non-finite loss on ANY rank. Agreed by an all-reduce, so every rank raises TrainingDiverged at the
        same micro-batch; a rank raising alone would leave the others waiting in DDP's gradient all-reduce."""
        bad = (~torch.isfinite(loss)).to(torch.float32).reshape(1)
        if self.args.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return bool(bad.item() > 0)

    def _data_parallel_factor(self) -> int:
        """How many ranks DDP/FSDP average the gradient over when the denominator is a global count.

        `_get_num_items_in_batch` sums the count over all ranks, so each rank's loss is its local share
        sum(w * CE)_rank / D_global; DDP and FSDP then AVERAGE the gradients over the W ranks, which would
        give grad(L_global) / W. Multiplying the local loss by W makes the averaged gradient the gradient
        of the global loss, as HF's own loss does (`loss *= num_processes` in Trainer.compute_loss).
        """
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            return int(self.accelerator.num_processes)
        return 1

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor:
        if self.objective is not None:  # the objective's divisors over the window, summed over the ranks
            counts = torch.stack([self.objective.counts(b) for b in batch_samples]).sum(0).to(device)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                counts = self.accelerator.gather(counts).view(-1, counts.numel()).sum(0)
            return counts
        count = sum(normalizer_count(b["labels"], b["token_weights"], self.normalizer) for b in batch_samples)
        count = torch.as_tensor(count, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        for listener in self.batch_listeners:
            listener(batch_samples, count)
        return count

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.objective is not None:
            return self._objective_loss(model, inputs, return_outputs, num_items_in_batch)
        weights = inputs.pop("token_weights")
        inputs.pop("row_id", None)
        labels = inputs["labels"]
        if self.fused_head:
            outputs = model(**inputs, use_cache=False, fused_lm_head=True)
            nll = -outputs.log_probs  # [B, S-1], aligned with labels[:, 1:], 0 where ignored
        else:
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
            nll = token_nll(outputs.logits, labels)
        denominator = num_items_in_batch
        if denominator is None:
            denominator = normalizer_count(labels, weights, self.normalizer)
        loss = weighted_nll_loss(nll, weights, torch.as_tensor(denominator, device=nll.device).clamp(min=1e-12))
        if num_items_in_batch is not None:
            loss = loss * self._data_parallel_factor()
        if model.training and self._diverged(loss.detach()):
            raise TrainingDiverged(self.state.global_step, float(loss.detach()))
        return (loss, outputs) if return_outputs else loss

    def _objective_loss(self, model: Any, inputs: dict, return_outputs: bool, counts: Optional[torch.Tensor]) -> Any:
        assert self.objective is not None
        window = counts is not None
        if counts is None:  # called outside the training loop: this micro-batch is the whole step
            counts = self.objective.counts(inputs)
        loss = self.objective.loss(model, inputs, counts.to(inputs["input_ids"].device))
        if window:
            loss = loss * self._data_parallel_factor()
        if model.training and self._diverged(loss.detach()):
            raise TrainingDiverged(self.state.global_step, float(loss.detach()))
        return (loss, None) if return_outputs else loss


@contextlib.contextmanager
def _wandb_run(folder: Optional[Path], name: Optional[str]) -> Iterator[None]:
    """One W&B run per point, started here (files under `folder` unless WANDB_DIR is set) and finished.

    HF's WandbCallback starts a run only if none is active, without a dir, and never finishes it; and wandb
    reads WANDB_DIR once per process. So a second point in the same process would log into the first's run.
    """
    if folder is None:
        yield
        return
    import wandb

    if wandb.run is None:
        where = os.environ.get("WANDB_DIR") or str(folder)
        Path(where).mkdir(parents=True, exist_ok=True)
        wandb.init(dir=where, name=name, project=os.environ.get("WANDB_PROJECT", "huggingface"))
    try:
        yield
    finally:
        if wandb.run is not None:
            wandb.finish()

"""WeightedSFTTrainer: trl.SFTTrainer whose loss is sum(w * token CE) / normalizer, per spec.

The token grid arrives pre-tokenized with its weights in every row, so TRL's preparation, truncation
and packing never touch it (`skip_prepare_dataset`), and our collator only stacks fixed-length rows.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from trl import SFTConfig, SFTTrainer

from unlearnspec.data import TokenGrid
from unlearnspec.train.loss import Normalizer, normalizer_count, token_nll, weighted_nll_loss
from unlearnspec.spec import ParallelSpec, TrainingSpec

BatchListener = Callable[[list[dict[str, torch.Tensor]], torch.Tensor], None]


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
    if training.max_steps is not None:
        return training.max_steps
    per_epoch = math.ceil(math.ceil(n_rows / training.batch_size) / training.grad_accum)
    return max(1, math.ceil(per_epoch * (training.epochs or 1.0)))


def warmup_steps(training: TrainingSpec, steps: int) -> int:
    if training.warmup_steps is not None:
        return training.warmup_steps
    if training.warmup_ratio is not None:
        return math.ceil(training.warmup_ratio * steps)  # as transformers rounds a ratio
    return 0


def build_optimizer(training: TrainingSpec, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The spec's optimizer over the trainable parameters (weight decay on all of them)."""
    opt = training.optimizer
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    cls = torch.optim.Adam if opt.name == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay)


def build_scheduler(training: TrainingSpec, optimizer: torch.optim.Optimizer, steps: int) -> Any:
    from transformers import get_scheduler

    warm = warmup_steps(training, steps)
    name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[training.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=warm, num_training_steps=steps)


def world_size() -> int:
    """Processes in this launch (torchrun / accelerate set WORLD_SIZE; 1 otherwise)."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def parallel_fields(parallel: Optional[ParallelSpec], device: torch.device, processes: int) -> dict[str, Any]:
    """TrainingArguments fields compiled from the spec's `parallel` section (all defaults spelled out).

    One process gets no distributed field at all (HF would otherwise try to join a process group).
    """
    from unlearnspec.errors import UserError

    par = parallel if parallel is not None else ParallelSpec()
    fields: dict[str, Any] = {"ddp_find_unused_parameters": par.find_unused_parameters, "ddp_timeout": par.timeout_s}
    if processes <= 1:
        return fields
    if par.strategy == "none":
        raise UserError.one("spec", f"launched with {processes} processes but parallel.strategy is `none`; "
                            "set `strategy: ddp` (or fsdp), or launch one process.", loc="parallel.strategy")
    if par.backend == "nccl" and device.type != "cuda":
        raise UserError.one("spec", f"backend nccl needs CUDA GPUs (this run is on {device}); use gloo or unset it.",
                            loc="parallel.backend")
    fields["ddp_backend"] = par.backend or ("nccl" if device.type == "cuda" else "gloo")
    if par.strategy == "fsdp":
        fsdp_config: dict[str, Any] = {
            "version": 2,
            "reshard_after_forward": par.fsdp.sharding == "full_shard",
            "cpu_offload": par.fsdp.cpu_offload,
            "activation_checkpointing": par.fsdp.activation_checkpointing,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "state_dict_type": "FULL_STATE_DICT",
            "cpu_ram_efficient_loading": False,
        }
        if par.fsdp.wrap_layer is not None:
            fsdp_config["transformer_layer_cls_to_wrap"] = [par.fsdp.wrap_layer]
        fields.update(fsdp=True, fsdp_config=fsdp_config)
    return fields


def sft_config(training: TrainingSpec, lr: float, output_dir: Path, n_rows: int, *,
               parallel: Optional[ParallelSpec] = None, device: Optional[torch.device] = None,
               **overrides: Any) -> SFTConfig:
    """Every Trainer knob set from the spec; SFTConfig's own defaults (lr 2e-5, max_length 1024,
    gradient checkpointing, clipping 1.0, find_unused_parameters, ...) are never left to apply silently.

    `device` is the run's resolved device (`unlearnspec.train.device.resolve_device`); unset: CUDA when
    available. `parallel` is the spec's `parallel` section (read only under several processes).
    """
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        learning_rate=lr,
        per_device_train_batch_size=training.batch_size,
        gradient_accumulation_steps=training.grad_accum,
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
        report_to=[],
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
    kwargs.update(parallel_fields(parallel, device, world_size()))
    kwargs.update(overrides)
    try:
        return SFTConfig(**kwargs)
    except ValueError as exc:  # e.g. bf16/fp16 autocast requested on a machine that cannot run it
        from unlearnspec.errors import UserError

        raise UserError.one("training", f"the trainer refused these settings: {str(exc).splitlines()[0][:240]}. "
                            "Check training.precision and the parallel section for this machine.",
                            loc="training.precision") from None


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of `model` as a full tensor on the CPU, also when FSDP shards it.

    A collective under FSDP: every rank must call it (then rank 0 can evaluate a plain copy alone).
    """
    out = {}
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor  # DTensor shards -> all-gather
        out[name] = full.detach().cpu()
    return out


class WeightedSFTTrainer(SFTTrainer):
    """SFTTrainer with signed per-token weights and an explicit loss normalizer.

    loss(step) = sum over the accumulation window of w * CE, divided by the normalizer counted over the
    same window (so bs 8 x ga 1 and bs 4 x ga 2 take the same step). Weights travel inside each row
    (`token_weights`), so they stay aligned with labels whatever the sampler does.
    """

    loss_is_scaled_for_ga = True  # divided by the window's normalizer already

    def __init__(self, *args: Any, normalizer: Normalizer = "valid", fused_head: bool = True,
                 training: Optional[TrainingSpec] = None, **kwargs: Any):
        if "data_collator" not in kwargs or kwargs["data_collator"] is None:
            kwargs["data_collator"] = GridCollator()
        # With `training`, the Trainer builds the spec's optimizer and schedule itself (create_optimizer below):
        # FSDP refuses optimizers made before it shards the model, so this is the path that works everywhere.
        self.training_spec = training
        super().__init__(*args, **kwargs)
        if self.args.n_gpu > 1:
            from unlearnspec.errors import UserError

            raise UserError.one("device", f"{self.args.n_gpu} GPUs are visible to one process, so the HF Trainer would use "
                                "torch.nn.DataParallel, whose loss scaling this trainer does not implement. Launch one "
                                "process per GPU (`torchrun --nproc-per-node N`) or set CUDA_VISIBLE_DEVICES to one GPU.",
                                loc="parallel")
        if self.args.world_size > 1 and not self.args.average_tokens_across_devices:
            raise ValueError("WeightedSFTTrainer needs average_tokens_across_devices=True under several processes: "
                             "the normalizer is counted over the whole global batch")
        from transformers.trainer_callback import PrinterCallback

        self.remove_callback(PrinterCallback)  # the runner reports progress itself
        self.normalizer: Normalizer = normalizer
        # TRL's fused LM head computes log-probs in float32 without building the logits (fast, lean);
        # MAGIC runs use the full logits and loss.token_nll so training is exactly what the replay computes.
        self.fused_head = fused_head
        self.batch_listeners: list[BatchListener] = []

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

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        if self.optimizer is None and self.training_spec is not None:
            target = model if model is not None else self.model
            params = [p for p in target.parameters() if p.requires_grad]
            self.optimizer = build_optimizer(self.training_spec, params, self.args.learning_rate)
        return super().create_optimizer(model) if self.optimizer is None else self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        if self.lr_scheduler is None and self.training_spec is not None:
            self.lr_scheduler = build_scheduler(self.training_spec, optimizer or self.optimizer, num_training_steps)
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
        count = sum(normalizer_count(b["labels"], b["token_weights"], self.normalizer) for b in batch_samples)
        count = torch.as_tensor(count, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        for listener in self.batch_listeners:
            listener(batch_samples, count)
        return count

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
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

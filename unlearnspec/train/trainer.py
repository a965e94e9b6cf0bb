"""WeightedSFTTrainer: trl.SFTTrainer whose loss is sum(w * token CE) / normalizer, per spec.

The token grid arrives pre-tokenized with its weights in every row, so TRL's preparation, truncation
and packing never touch it (`skip_prepare_dataset`), and our collator only stacks fixed-length rows.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from trl import SFTConfig, SFTTrainer

from unlearnspec.data import TokenGrid
from unlearnspec.train.loss import Normalizer, normalizer_count, token_nll, weighted_nll_loss
from unlearnspec.spec import TrainingSpec

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
    groups = [g for g in ({"params": decayed, "weight_decay": opt.weight_decay}, {"params": exempt, "weight_decay": 0.0})
              if g["params"]]
    if opt.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=opt.momentum)
    cls = torch.optim.Adam if opt.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=lr, betas=opt.betas, eps=opt.eps)


def build_scheduler(training: TrainingSpec, optimizer: torch.optim.Optimizer, steps: int) -> Any:
    from transformers import get_scheduler

    warm = warmup_steps(training, steps)
    name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[training.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=warm, num_training_steps=steps)


def sft_config(training: TrainingSpec, lr: float, output_dir: Path, n_rows: int, **overrides: Any) -> SFTConfig:
    """Every Trainer knob set from the spec; SFTConfig's own defaults (lr 2e-5, max_length 1024,
    gradient checkpointing, clipping 1.0, ...) are never left to apply silently."""
    use_cpu = not torch.cuda.is_available()
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
        use_cpu=use_cpu,
        loss_type="nll",
        average_tokens_across_devices=True,
    )
    kwargs.update(overrides)
    try:
        return SFTConfig(**kwargs)
    except ValueError as exc:  # e.g. bf16/fp16 autocast requested on a machine that cannot run it
        from unlearnspec.errors import UserError

        raise UserError.one("training", f"the trainer refused these settings: {str(exc).splitlines()[0][:240]}. "
                            "Check training.precision for this machine.", loc="training.precision") from None


class WeightedSFTTrainer(SFTTrainer):
    """SFTTrainer with signed per-token weights and an explicit loss normalizer.

    loss(step) = sum over the accumulation window of w * CE, divided by the normalizer counted over the
    same window (so bs 8 x ga 1 and bs 4 x ga 2 take the same step). Weights travel inside each row
    (`token_weights`), so they stay aligned with labels whatever the sampler does.
    """

    loss_is_scaled_for_ga = True  # divided by the window's normalizer already

    def __init__(self, *args: Any, normalizer: Normalizer = "valid", fused_head: bool = True, **kwargs: Any):
        if "data_collator" not in kwargs or kwargs["data_collator"] is None:
            kwargs["data_collator"] = GridCollator()
        super().__init__(*args, **kwargs)
        from transformers.trainer_callback import PrinterCallback

        self.remove_callback(PrinterCallback)  # the runner reports progress itself
        self.normalizer: Normalizer = normalizer
        # TRL's fused LM head computes log-probs in float32 without building the logits (fast, lean);
        # MAGIC runs use the full logits and loss.token_nll so training is exactly what the replay computes.
        self.fused_head = fused_head
        self.batch_listeners: list[BatchListener] = []

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
        if model.training and not torch.isfinite(loss.detach()):
            raise TrainingDiverged(self.state.global_step, float(loss.detach()))
        return (loss, outputs) if return_outputs else loss

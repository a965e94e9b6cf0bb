"""What the unlearning objectives share: the interface the trainer calls, the paired retain rows, the token
selection read from the token rule's weights, and the forward that gives per-token log-probs.

Every loss is a sum over tokens (or rows) of one optimizer step divided by counts taken over the whole step
(accumulation window and all ranks), so micro-batches and ranks add up to the loss of the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch

from unlearnspec.train.loss import IGNORE_INDEX, Normalizer, token_nll


@dataclass(frozen=True)
class RetainRows:
    """The retain grid [N_r, S] on the CPU. Forget row i is paired with retain row i mod N_r in every step, so the
    pairing travels with the forget row id whatever the sampler, batch split or rank count."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    fingerprint: str

    def paired(self, row_id: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        idx = row_id.detach().to("cpu", torch.long) % self.input_ids.shape[0]
        return {
            "input_ids": self.input_ids[idx].to(device),
            "attention_mask": self.attention_mask[idx].to(device),
            "labels": self.labels[idx].to(device),
        }


def targets(labels: torch.Tensor) -> torch.Tensor:
    """Bool [B, S]: positions that are training targets (label not ignored; column 0 never is)."""
    valid = labels != IGNORE_INDEX
    valid[:, 0] = False
    return valid


def selection(weights: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The token rule's weights read as a selection of forget tokens: |w| at target positions, 0 elsewhere [B, S].

    An unlearning objective sets the direction itself, so only the magnitude counts (`mode: all` gives 1 on every
    valid token; `top` with `rest: mask` gives |selected| on the k chosen tokens and 0 on the rest)."""
    return weights.abs() * targets(labels)


def token_logprobs(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, fused: bool
) -> torch.Tensor:
    """log p(token t | tokens < t) for t = 1..S-1, [B, S-1], 0 where the label is ignored. `fused`: TRL's fused LM
    head (float32 log-probs without the [B, S, V] logits; what the weighted trainer uses), else full logits."""
    if fused:
        out = model(
            input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False, fused_lm_head=True
        )
        return out.log_probs.float() * targets(labels)[:, 1:]
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return -token_nll(logits, labels)


def retain_term(retain_nll: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """sum of retain token cross-entropies / the step's valid retain tokens: alpha times this is descent on retain."""
    return retain_nll.sum() / count.clamp(min=1e-12)


class Objective:
    """An unlearning loss as the trainer sees it. `counts` gives one micro-batch's divisors (the trainer sums them
    over the accumulation window and the ranks); `loss` gives the micro-batch's share of the step's loss."""

    name: ClassVar[str]
    count_names: ClassVar[tuple[str, ...]]
    needs_reference: ClassVar[bool] = False
    """True when the loss reads the frozen base model's log-probs of the forget grid (a ReferenceCache)."""

    def __init__(
        self,
        spec: Any,
        normalizer: Normalizer,
        retain: Optional[RetainRows],
        fused_head: bool = True,
        reference: Any = None,
    ):
        if self.needs_reference and reference is None:
            raise ValueError(f"objective {self.name} needs its reference log-probs (a ReferenceCache)")
        self.reference = reference
        self.spec = spec
        self.normalizer = normalizer
        self.alpha = float(getattr(spec, "alpha", 0.0))
        if self.alpha > 0 and retain is None:
            raise ValueError(f"objective {self.name} with alpha={self.alpha:g} needs the retain rows")
        self.retain = retain if self.alpha > 0 else None
        self.fused_head = fused_head

    def prepare_model(self, model: Any) -> None:
        """Called with the plain model before the trainer is built (before any wrapper or fused head)."""

    def attach(self, trainer: Any) -> None:
        """Called with the built trainer, before training."""

    def counts(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One micro-batch's divisors, float32 [len(count_names)]."""
        raise NotImplementedError

    def loss(self, model: Any, batch: dict[str, torch.Tensor], counts: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What the run records about the objective (objective.json in the point's folder)."""
        out: dict[str, Any] = {"objective": self.spec.model_dump(mode="json")}
        if self.retain is not None:
            out["retain"] = {"rows": int(self.retain.input_ids.shape[0]), "fingerprint": self.retain.fingerprint}
        return out

    # ------------------------------------------------------------------ shared pieces
    def retain_count(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.retain is None:
            return torch.zeros(())
        idx = batch["row_id"].detach().to("cpu", torch.long) % self.retain.labels.shape[0]
        return targets(self.retain.labels[idx]).sum().float()

    def forget_and_retain_logprobs(
        self, model: Any, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Token log-probs [B, S-1] of the forget rows and (with a retain term) their paired retain rows, from one
        forward over both (one forward keeps DDP to one reducer pass per backward)."""
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        if self.retain is None:
            return token_logprobs(model, ids, mask, labels, self.fused_head), None
        r = self.retain.paired(batch["row_id"], ids.device)
        lp = token_logprobs(
            model,
            torch.cat([ids, r["input_ids"]]),
            torch.cat([mask, r["attention_mask"]]),
            torch.cat([labels, r["labels"]]),
            self.fused_head,
        )
        return lp[: ids.shape[0]], lp[ids.shape[0] :]

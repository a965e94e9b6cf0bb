"""The relearning attack's training loop: plain cross-entropy on every valid token of held-out forget rows, a
seeded row order, one cumulative run that hands the model to a callback after each of its step counts."""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Sequence

import torch

from unlearnspec.train.loss import IGNORE_INDEX


def row_fingerprints(input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer_id: str) -> list[str]:
    """One identity per grid row: sha256 of the tokenizer id and the row's unpadded token ids (what the model
    trains on), so two rows are the same row exactly when they put the same tokens in front of the model."""
    out = []
    for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
        kept = [t for t, m in zip(ids, mask) if m]
        h = hashlib.sha256(f"unlearnspec-row-v1|{tokenizer_id}|".encode())
        h.update(",".join(map(str, kept)).encode())
        out.append(h.hexdigest())
    return out


def shared_rows(held_out: Sequence[str], used: Sequence[str]) -> list[int]:
    """Indices of the held-out rows whose fingerprint is also one of `used`."""
    seen = set(used)
    return [i for i, f in enumerate(held_out) if f in seen]


def make_optimizer(spec: Any, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The attack's optimizer (an `OptimizerSpec`) over `params`, with one weight decay for all of them."""
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    cls = torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, betas=tuple(spec.betas), eps=spec.eps, weight_decay=spec.weight_decay)


def batch_order(n_rows: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Rows of each of `steps` optimizer steps: passes over a fresh seeded permutation of the rows, cut into
    batches (a batch may straddle two passes, so every step has `batch_size` rows; repeats only if N < batch)."""
    gen = torch.Generator().manual_seed(seed)
    stream: list[int] = []
    out = []
    for _ in range(steps):
        while len(stream) < batch_size:
            stream += torch.randperm(n_rows, generator=gen, device="cpu").tolist()  # CPU indices into the CPU grid
        out.append(stream[:batch_size])
        stream = stream[batch_size:]
    return out


def token_loss_sum(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the valid targets of a micro-batch, and their count."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    target = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss, int((target != IGNORE_INDEX).sum())


def relearn(model: Any, grid: Any, attack: Any, device: str, after: Callable[[int, Any, list[float]], None]) -> None:
    """Train `model` (in place) on `grid`'s rows for attack.steps[-1] optimizer steps; after each count k in
    attack.steps call `after(k, model, losses so far)`. Each step's loss is the mean cross-entropy over all valid
    target tokens of its rows (micro-batches summed, then divided by the step's token count)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(attack.optimizer, params, attack.lr)
    micro = attack.micro_batch_size or attack.batch_size
    order = batch_order(grid.input_ids.shape[0], attack.batch_size, attack.steps[-1], attack.seed)
    checkpoints, losses = set(attack.steps), []
    model.train()
    for step, rows in enumerate(order, start=1):
        optimizer.zero_grad(set_to_none=True)
        idx = torch.tensor(rows, device="cpu")  # indexes the grid, which stays on the CPU
        tokens = int((grid.labels[idx, 1:] != IGNORE_INDEX).sum())
        total = 0.0
        for chunk in idx.split(micro):
            ids, mask, lab = (t[chunk].to(device) for t in (grid.input_ids, grid.attention_mask, grid.labels))
            loss, _ = token_loss_sum(model, ids, mask, lab)
            (loss / max(tokens, 1)).backward()
            total += float(loss.detach())
        optimizer.step()
        losses.append(total / max(tokens, 1))
        if step in checkpoints:
            after(step, model, list(losses))
            model.train()

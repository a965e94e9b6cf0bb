"""Batched adjoints: K query vectors through one reverse pass (`magic.query.per: question`).

The reverse pass is linear in its starting adjoint, so K starting adjoints (one per question) can share
everything that does not depend on them: the kept and recomputed states, each step's forward and first
backward (the gradient graph of <grad L_t, .>), and, for Adam or clipping, the step's plain gradient. An
adjoint list holds tensors [K, *param.shape]; the optimizer rules' elementwise arithmetic broadcasts over
the leading K, and the double backward of the K dot products <grad L_t, g_bar_k> is one vmapped backward
(`torch.autograd.grad(..., is_grads_batched=True)`), giving H_t g_bar_k and the per-token terms of all K
adjoints at once. Scores are [K, N, S].

Memory: each adjoint tensor is K times a parameter-sized buffer (SGD: theta_bar; Adam/AdamW: theta_bar,
m_bar, v_bar), plus the K-fold H g_bar accumulator and the vmapped double backward's K-fold activations
per micro-batch. So K is bounded by trainable parameters x K x (1 + optimizer tensors) x 4 bytes (float32)
on the device: with LoRA adapters (a few M parameters at 7B) K of 16-64 fits easily; with full fine-tuning
of a 6.86B model each extra question costs 27 GB (SGD) to 82 GB (AdamW) and per-question attribution is
not realistic. `chunk` (the `magic.query.chunk` knob) sets K; questions beyond it run as further passes.
"""

from __future__ import annotations

import torch


def adjoint_dots(grads: list[torch.Tensor] | tuple[torch.Tensor, ...], g_bar: list[torch.Tensor]) -> torch.Tensor:
    """<grads, g_bar>: a scalar for one adjoint (tensors shaped like the parameters), [K] for a batch of K
    ([K, *shape] each). Keeps the graph of `grads` (create_graph) for the double backward."""
    if not g_bar or g_bar[0].dim() == grads[0].dim():
        return torch.stack([(g * d).sum() for g, d in zip(grads, g_bar)]).sum()
    k = g_bar[0].shape[0]
    return torch.stack([torch.mv(d.reshape(k, g.numel()), g.reshape(-1)) for g, d in zip(grads, g_bar)]).sum(0)


def double_backward(dot: torch.Tensor, inputs: list[torch.Tensor], loop: bool = False) -> tuple[torch.Tensor, ...]:
    """d dot / d inputs; for a [K] `dot` one batched backward with [K, *input.shape] results. `loop`: K plain
    backwards through the retained graph instead (the sharded pass: its collectives cannot run under vmap;
    the same arithmetic, K-fold time of the double backward, 1/K of the vmapped activations)."""
    if dot.dim() == 0:
        return torch.autograd.grad(dot, inputs, materialize_grads=True)
    if loop:
        k, outs = dot.shape[0], None
        for i in range(k):
            row = torch.autograd.grad(dot[i], inputs, retain_graph=i + 1 < k, materialize_grads=True)
            if outs is None:
                outs = [x.new_empty((k, *x.shape)) for x in row]
            for out, x in zip(outs, row):
                out[i] = x
        return tuple(outs or ())
    eye = torch.eye(dot.shape[0], dtype=dot.dtype, device=dot.device)
    return torch.autograd.grad(dot, inputs, grad_outputs=eye, is_grads_batched=True, materialize_grads=True)

"""Memory model: bytes per GPU for training and for the MAGIC reverse pass, from counts that are measured.

Activation bytes are measured, not assumed: on the CPU, for small GPT-NeoX models, every tensor autograd
saves (training backward; and the reverse pass's double backward: grad with create_graph, then grad of
<grad, v>) is summed through `torch.autograd.graph.saved_tensors_hooks` (storages counted once). A least-
squares fit per sequence, fp32,  bytes = L*S*(a*d + b*h*S) + c*S*V,  then extrapolates to any shape.
Parameter-sized buffers are counted from the code (see the README table). Evaluates 6.86B on 4 GPUs.

    python benchmarks/memory_model.py [--world 4] [--seq 1024] [--micro 1] [--steps 250]
"""

from __future__ import annotations

import argparse
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

GIB = 2**30


def saved_bytes(fn, exclude: set[int]) -> int:
    """Bytes of distinct storages autograd saves while `fn` runs, except the storages in `exclude`
    (the parameters: they are counted as parameter-sized buffers)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            if storage.data_ptr() not in exclude:
                seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def measure(layers: int, d: int, heads: int, seq: int, vocab: int) -> tuple[int, int]:
    """(training forward, reverse-pass double backward) saved bytes for ONE sequence, fp32."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from unlearnspec.magic.attention import replay_mode
    from unlearnspec.magic.replay import forward_logits
    from unlearnspec.train.loss import weighted_token_loss

    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=4 * d, max_position_embeddings=seq, rotary_pct=0.25,
                           attention_dropout=0.0, hidden_dropout=0.0)
    config._attn_implementation = "eager"
    model = GPTNeoXForCausalLM(config)
    ids = torch.randint(0, vocab, (1, seq))
    mask = torch.ones_like(ids)
    params = dict(model.named_parameters())

    def train() -> None:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        weighted_token_loss(logits, ids, torch.ones(ids.shape), seq - 1)

    theta = [p.detach().requires_grad_() for p in params.values()]
    w = torch.ones(ids.shape, requires_grad=True)
    grads: list[torch.Tensor] = []

    def double() -> None:
        # What the reverse pass keeps alive for the second backward: the forward and the create_graph backward.
        logits = forward_logits(model, dict(zip(params, theta)), ids, mask)
        loss = weighted_token_loss(logits, ids, w, seq - 1)
        grads.extend(torch.autograd.grad(loss, theta, create_graph=True))

    exclude = {p.untyped_storage().data_ptr() for p in params.values()}
    with replay_mode(model):
        train_bytes = saved_bytes(train, exclude)
        double_bytes = saved_bytes(double, exclude)
    dot = sum((g * torch.ones_like(g)).sum() for g in grads)  # the grads themselves are parameter-sized buffers
    torch.autograd.grad(dot, theta + [w])  # runs, so the measured graph is the one the reverse pass uses
    return train_bytes, double_bytes


def fit(rows: list[tuple[tuple[int, int, int, int, int], int]]) -> tuple[float, float, float, float]:
    """Least squares for bytes = L*S*(a*d + b*h*S) + c*S*V + e*S*d (e: embeddings and final norm)."""
    x = torch.tensor([[L * S * d, L * S * h * S, S * V, S * d] for (L, d, h, S, V), _ in rows], dtype=torch.float64)
    y = torch.tensor([float(b) for _, b in rows], dtype=torch.float64)
    coef = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)
    return tuple(float(c) for c in coef)  # type: ignore[return-value]


def model_bytes(f: tuple[float, ...], L: int, d: int, h: int, S: int, V: int) -> float:
    return L * S * (f[0] * d + f[1] * h * S) + f[2] * S * V + f[3] * S * d


SHAPES = [(1, 64, 4, 64, 512), (2, 64, 4, 128, 512), (1, 64, 4, 256, 512), (3, 128, 4, 64, 512), (1, 64, 8, 128, 1024),
          (2, 128, 8, 64, 4096), (1, 192, 4, 96, 2048), (2, 96, 2, 192, 512)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=4)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--micro", type=int, default=1, help="rows per (double) backward on one GPU")
    parser.add_argument("--steps", type=int, default=250, help="T, for the sqrt schedule's recomputed segment")
    args = parser.parse_args()
    torch.set_num_threads(2)
    train_rows, dbl_rows = [], []
    for shape in SHAPES:
        t, d2 = measure(*shape)
        train_rows.append((shape, t))
        dbl_rows.append((shape, d2))
    ft, fd = fit(train_rows), fit(dbl_rows)
    for name, f, rows in (("training forward", ft, train_rows), ("double backward", fd, dbl_rows)):
        worst = max(abs(model_bytes(f, L, d, h, S, V) / b - 1) for (L, d, h, S, V), b in rows)
        print(f"fit {name}: bytes/seq = L*S*({f[0]:.1f}*d + {f[1]:.2f}*h*S) + {f[2]:.2f}*S*V + {f[3]:.1f}*S*d"
              f"  (worst fit error {worst:.1%} over {len(rows)} shapes)")

    # 6.86B GPT-NeoX (Pythia-6.9B shape: deep-ignorance-unfiltered)
    L, d, h, V, P = 32, 4096, 32, 50304, 6.86e9
    S, W, b, T = args.seq, args.world, args.micro, args.steps
    p4 = 4 * P / GIB  # one fp32 parameter-sized buffer
    act_t = b * model_bytes(ft, L, d, h, S, V) / GIB
    act_d = b * model_bytes(fd, L, d, h, S, V) / GIB
    layer = 4 * P / L / GIB
    seg = math.ceil(math.sqrt(T))
    depth = math.ceil(math.log2(max(T // 2, 2)))
    print(f"\n6.86B, W={W} GPUs, S={S}, micro-batch {b}, T={T}; one fp32 copy of the parameters = {p4:.1f} GiB")
    print(f"activations per micro-batch: training {act_t:.1f} GiB, reverse-pass double backward {act_d:.1f} GiB")
    rows = [
        ("training DDP, SGD", 3 * p4 + act_t),
        ("training DDP, AdamW", 5 * p4 + act_t),
        (f"training FSDP full_shard, SGD (W={W})", 2 * p4 / W + 2 * layer + act_t),
        (f"training FSDP full_shard, AdamW (W={W})", 4 * p4 / W + 2 * layer + act_t),
        (f"training FSDP full_shard + activation checkpointing, AdamW (W={W})",
         4 * p4 / W + 2 * layer + act_t / L + b * L * S * d * 4 / GIB),
        # Reverse pass, every rank holds full parameter-sized buffers (magic/reverse.py): the state theta_t, the
        # adjoint v, the H v accumulator, the double backward's output (its create_graph gradients are freed
        # before the second backward), plus the recomputed states of the schedule unless offloaded.
        (f"reverse pass DDP (any W), log schedule (~{depth} recursion states on the GPU)", (4 + depth) * p4 + act_d),
        (f"reverse pass DDP, sqrt schedule (segment of up to {seg} states on the GPU)", (seg + 3) * p4 + act_d),
        ("reverse pass DDP, sqrt, offload_states", 4 * p4 + act_d),
        ("reverse pass DDP, sqrt, offload_states + offload_adjoint", 3 * p4 + act_d),
    ]
    for name, gib in rows:
        print(f"| {name} | {gib:.0f} GiB |")


if __name__ == "__main__":
    main()

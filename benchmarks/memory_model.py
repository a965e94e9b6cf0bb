"""Memory model: bytes per GPU for training and for the MAGIC reverse pass, from counts that are measured.

Activation bytes are measured, not assumed: on the CPU, for small GPT-NeoX models, every tensor autograd
saves (training backward; and the reverse pass's double backward: grad with create_graph, then grad of
<grad, v>) is summed through `torch.autograd.graph.saved_tensors_hooks` (storages counted once). A least-
squares fit per sequence, fp32,  bytes = L*S*(a*d + b*h*S) + c*S*V,  then extrapolates to any shape.
Parameter-sized buffers of the reverse pass are fitted to tracked peaks (unlearnspec/doctor/memory_model.py,
tests/test_memory_model.py). Evaluates 6.86B on W GPUs (DDP and FSDP) and the nine recorded score specs on 4 and
8 GPUs of 80 GB (what `doctor --cluster` says).

    python benchmarks/memory_model.py [--world 4] [--seq 1024] [--micro 1] [--steps 250] [--no-fit]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import unlearnspec.toy  # noqa: E402,F401 - registers the embedded toy world, as the `unlearnspec` command does at start

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
    config = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=d,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * d,
        max_position_embeddings=seq,
        rotary_pct=0.25,
        attention_dropout=0.0,
        hidden_dropout=0.0,
    )
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


SHAPES = [
    (1, 64, 4, 64, 512),
    (2, 64, 4, 128, 512),
    (1, 64, 4, 256, 512),
    (3, 128, 4, 64, 512),
    (1, 64, 8, 128, 1024),
    (2, 128, 8, 64, 4096),
    (1, 192, 4, 96, 2048),
    (2, 96, 2, 192, 512),
]


def model_rows(W: int, S: int, b: int, T: int) -> list[tuple[str, float]]:
    """The README table (GiB per GPU) from unlearnspec/doctor/memory_model.py, the model `doctor` uses."""
    from unlearnspec.doctor.memory_model import Setting, gib, resident_bytes, reverse_bytes, train_bytes
    from unlearnspec.doctor.memory_rules import KNOWN_SHAPES

    m = KNOWN_SHAPES["EleutherAI/deep-ignorance-unfiltered"]
    ddp, fsdp = Setting(world=W, rows=b, steps=T), Setting(world=W, fsdp=True, rows=b, steps=T)
    rev = lambda s: gib(reverse_bytes(m, S, s) + (0 if s.fsdp else resident_bytes(m, s)))  # noqa: E731
    return [
        ("training DDP, SGD", gib(train_bytes(m, S, ddp))),
        ("training DDP, AdamW", gib(train_bytes(m, S, Setting(world=W, rows=b, optimizer="adamw")))),
        (f"training FSDP full_shard, SGD (W={W})", gib(train_bytes(m, S, fsdp))),
        (
            f"training FSDP full_shard, AdamW (W={W})",
            gib(train_bytes(m, S, Setting(world=W, fsdp=True, rows=b, optimizer="adamw"))),
        ),
        ("reverse pass DDP, sqrt", rev(ddp)),
        ("reverse pass DDP, sqrt, offload_states", rev(Setting(world=W, rows=b, steps=T, offload_states=True))),
        ("reverse pass DDP, log", rev(Setting(world=W, rows=b, steps=T, schedule="log"))),
        (f"reverse pass FSDP (W={W}), sqrt", rev(fsdp)),
        (
            f"reverse pass FSDP (W={W}), sqrt, offload_states",
            rev(Setting(world=W, fsdp=True, rows=b, steps=T, offload_states=True)),
        ),
        (f"reverse pass FSDP (W={W}), log", rev(Setting(world=W, fsdp=True, rows=b, steps=T, schedule="log"))),
        (
            f"reverse pass FSDP (W={W}), sqrt, offload_states, per question K=4",
            rev(Setting(world=W, fsdp=True, rows=b, steps=T, offload_states=True, questions=4)),
        ),
    ]


def recorded_runs() -> None:
    """The nine recorded score specs on 4 and 8 GPUs of 80 GB, as `doctor --cluster` estimates them."""
    from pathlib import Path

    from unlearnspec.doctor.memory_rules import fit_report
    from unlearnspec.spec.load import load_spec

    print("| score spec | T | rows/GPU step | 4 x 80 GB | 8 x 80 GB |\n|---|---|---|---|---|")
    for path in sorted((Path(__file__).resolve().parents[1] / "specs" / "magic").glob("*.yaml")):
        spec = load_spec(path)
        cells = []
        for gpus in (4, 8):
            ok, now, _, fix = fit_report(spec, "score", gpus, 80.0, 1100.0)
            cells.append(("fits: " if ok else "no: ") + now.replace(" per GPU", "").replace(f" on {gpus} GPU(s)", ""))
        print(f"| {spec.name} | {spec.training.max_steps} | {spec.training.batch_size} | {cells[0]} | {cells[1]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=4)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--micro", type=int, default=1, help="rows per (double) backward on one GPU")
    parser.add_argument("--steps", type=int, default=250, help="T, for the sqrt schedule's recomputed segment")
    parser.add_argument(
        "--no-fit", action="store_true", help="skip measuring the activations (print the model's tables)"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    if not args.no_fit:
        train_rows, dbl_rows = [], []
        for shape in SHAPES:
            t, d2 = measure(*shape)
            train_rows.append((shape, t))
            dbl_rows.append((shape, d2))
        ft, fd = fit(train_rows), fit(dbl_rows)
        for name, f, rows in (("training forward", ft, train_rows), ("double backward", fd, dbl_rows)):
            worst = max(abs(model_bytes(f, L, d, h, S, V) / b - 1) for (L, d, h, S, V), b in rows)
            print(
                f"fit {name}: bytes/seq = L*S*({f[0]:.1f}*d + {f[1]:.2f}*h*S) + {f[2]:.2f}*S*V + {f[3]:.1f}*S*d"
                f"  (worst fit error {worst:.1%} over {len(rows)} shapes)"
            )
    print(
        f"\n6.86B (Pythia-6.9B shape), fp32, W={args.world} GPUs, S={args.seq}, {args.micro} row(s) per (double) "
        f"backward, T={args.steps} (unlearnspec/doctor/memory_model.py)"
    )
    for name, value in model_rows(args.world, args.seq, args.micro, args.steps):
        print(f"| {name} | {value:.0f} GiB |")
    print()
    recorded_runs()


if __name__ == "__main__":
    main()

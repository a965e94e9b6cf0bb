"""Cost of exact MAGIC scores relative to plain training, on CPU, for SGD and AdamW.

GPT-NeoX (4 layers, d=128, 4 heads, vocab 4096), seq 64, batch 8, T=20 steps, fp32, random
tokens. Five ways alternate for several rounds in one process: (a) plain training with a stock
torch.optim.SGD loop, (b) SGD training with recording on the `all` schedule (RAM) + reverse pass,
(c) the same on the `sqrt` schedule, (d) plain training with a stock torch.optim.AdamW loop
(lr 1e-3, weight decay 0.01), (e) AdamW training with recording (theta, m, v) on `sqrt` + reverse
pass. The line before the last is `magic_adam_over_train=<median (e)/(d)>`; the last line is
`magic_over_train=<median sqrt ratio> magic_all_over_train=<median all ratio>` (SGD).

    python benchmarks/bench_magic.py [--rounds 3] [--threads 2] [--profile] [--profile-adam]
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from unlearnspec.magic import (
    OptimizerConfig,
    ReferenceRun,
    ReplayStats,
    TrajectoryRecorder,
    magic_scores,
    plan_steps,
    sgd_train,
    trainable_params,
)
from unlearnspec.magic.query import QueryBatch, QueryLoss
from unlearnspec.train.loss import IGNORE_INDEX, weighted_token_loss

VOCAB, SEQ, BATCH, STEPS, LR = 4096, 64, 8, 20, 1e-2
ADAM_LR, ADAM_DECAY = 1e-3, 0.01
ADAMW = OptimizerConfig("adamw")


@dataclass
class Grid:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_rss(out: list[int]) -> Iterator[None]:
    """Samples the resident set every 5 ms; appends the peak (bytes) to `out`."""
    peak, stop = [_rss_bytes()], threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            peak[0] = max(peak[0], _rss_bytes())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        out.append(max(peak[0], _rss_bytes()))


def build():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=512,
        max_position_embeddings=SEQ,
        attention_dropout=0.0,
        hidden_dropout=0.0,
    )
    model = GPTNeoXForCausalLM(config)
    n_rows = BATCH * STEPS
    ids = torch.randint(0, VOCAB, (n_rows, SEQ))
    grid = Grid(ids, torch.ones_like(ids), ids.clone())
    q_ids = torch.randint(0, VOCAB, (8, SEQ))
    q_labels = torch.full_like(q_ids, IGNORE_INDEX)
    q_labels[:, -8:] = q_ids[:, -8:]
    keys = tuple(map(str, range(8)))
    query = QueryLoss(
        model, QueryBatch(q_ids, torch.ones_like(q_ids), q_labels, "random", "answer_continuation", 0, keys), 8
    )
    plan = plan_steps(n_rows, STEPS, BATCH, LR, seed=0)
    theta0 = {n: p.detach().clone() for n, p in trainable_params(model).items()}
    return model, grid, query, plan, theta0


def reset(model: torch.nn.Module, theta0: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in trainable_params(model).items():
            p.copy_(theta0[name])


def plain_train(model, grid, plan) -> None:
    """The baseline: a stock SGD loop with the trainer's loss, nothing recorded."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    for step in plan:
        optimizer.zero_grad(set_to_none=True)
        (rows,) = step.micro_batches
        labels = grid.labels[rows]
        logits = model(input_ids=grid.input_ids[rows], attention_mask=grid.attention_mask[rows], use_cache=False).logits
        denom = (labels[:, 1:] != IGNORE_INDEX).sum()
        weighted_token_loss(logits, labels, torch.ones(labels.shape), denom).backward()
        optimizer.step()


def plain_adamw(model, grid, plan) -> None:
    """The AdamW baseline: a stock torch.optim.AdamW loop (torch's default implementation choice)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=ADAM_LR, weight_decay=ADAM_DECAY)
    for step in plan:
        optimizer.zero_grad(set_to_none=True)
        (rows,) = step.micro_batches
        labels = grid.labels[rows]
        logits = model(input_ids=grid.input_ids[rows], attention_mask=grid.attention_mask[rows], use_cache=False).logits
        denom = (labels[:, 1:] != IGNORE_INDEX).sum()
        weighted_token_loss(logits, labels, torch.ones(labels.shape), denom).backward()
        optimizer.step()


def adam_plan(plan):
    from unlearnspec.magic import Step

    return [Step(ADAM_LR, s.micro_batches) for s in plan]


def train_and_score(model, grid, query, plan, schedule: str, stats: ReplayStats, adam: bool = False) -> torch.Tensor:
    if adam:
        plan = adam_plan(plan)
        recorder = TrajectoryRecorder(len(plan), schedule, weight_decay=ADAM_DECAY, optimizer=ADAMW)  # type: ignore[arg-type]
        trajectory = sgd_train(
            model, grid, ReferenceRun(plan, weight_decay=ADAM_DECAY, optimizer=ADAMW), recorder=recorder
        )
    else:
        trajectory = sgd_train(model, grid, ReferenceRun(plan), recorder=TrajectoryRecorder(len(plan), schedule))  # type: ignore[arg-type]
    assert trajectory is not None
    return magic_scores(model, grid, trajectory, query, stats=stats)


def profile_reverse(model, grid, query, plan, theta0, adam: bool = False) -> None:
    from torch.profiler import ProfilerActivity, profile

    reset(model, theta0)
    if adam:
        recorder = TrajectoryRecorder(len(plan), "sqrt", weight_decay=ADAM_DECAY, optimizer=ADAMW)
        trajectory = sgd_train(
            model, grid, ReferenceRun(adam_plan(plan), weight_decay=ADAM_DECAY, optimizer=ADAMW), recorder=recorder
        )
    else:
        trajectory = sgd_train(model, grid, ReferenceRun(plan), recorder=TrajectoryRecorder(len(plan), "all"))
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        magic_scores(model, grid, trajectory, query)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of one `all` reverse pass")
    parser.add_argument("--profile-adam", action="store_true", help="the same for one AdamW `sqrt` reverse pass")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, grid, query, plan, theta0 = build()
    n_params = sum(p.numel() for p in theta0.values())
    print(
        f"GPT-NeoX 4x128 vocab {VOCAB}: {n_params / 1e6:.2f}M params ({n_params * 4 / 2**20:.1f} MiB per copy); "
        f"seq {SEQ} batch {BATCH} T={STEPS} fp32, {args.threads} threads, {args.rounds} rounds"
    )
    if args.profile or args.profile_adam:
        profile_reverse(model, grid, query, plan, theta0, adam=args.profile_adam)

    times: dict[str, list[float]] = {"train": [], "all": [], "sqrt": [], "adam_train": [], "adam_sqrt": []}
    cpu: dict[str, list[float]] = {k: [] for k in times}  # process CPU time: less sensitive to a shared CPU
    rss: dict[str, list[int]] = {k: [] for k in times}
    stats: dict[str, ReplayStats] = {}
    for r in range(args.rounds + 1):  # round 0 warms up and is not counted
        for way in times:
            reset(model, theta0)
            start, start_cpu = time.perf_counter(), time.process_time()
            with peak_rss(rss[way]):
                if way == "train":
                    plain_train(model, grid, plan)
                elif way == "adam_train":
                    plain_adamw(model, grid, plan)
                else:
                    stats[way] = ReplayStats()
                    train_and_score(
                        model, grid, query, plan, way.removeprefix("adam_"), stats[way], adam=way.startswith("adam")
                    )
            elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
            if r:
                times[way].append(elapsed)
                cpu[way].append(elapsed_cpu)
        if r:
            t = {k: v[-1] for k, v in times.items()}
            print(
                f"round {r}: train {t['train']:.2f}s  all {t['all']:.2f}s (x{t['all'] / t['train']:.2f})  "
                f"sqrt {t['sqrt']:.2f}s (x{t['sqrt'] / t['train']:.2f})  adamw train {t['adam_train']:.2f}s  "
                f"adamw sqrt {t['adam_sqrt']:.2f}s (x{t['adam_sqrt'] / t['adam_train']:.2f})",
                flush=True,
            )

    ratio = {k: statistics.median(a / b for a, b in zip(times[k], times["train"])) for k in ("all", "sqrt")}
    cpu_ratio = {k: statistics.median(a / b for a, b in zip(cpu[k], cpu["train"])) for k in ("all", "sqrt")}
    mib = {k: max(v) / 2**20 for k, v in rss.items()}
    print(f"train: median {statistics.median(times['train']):.2f}s peak_rss={mib['train']:.0f}MiB")
    for way in ("all", "sqrt"):
        s = stats[way]
        print(
            f"{way}: median {statistics.median(times[way]):.2f}s ratio={ratio[way]:.2f} "
            f"cpu_time_ratio={cpu_ratio[way]:.2f} peak_rss={mib[way]:.0f}MiB "
            f"peak_param_copies={s.peak_state_copies} recomputed_steps={s.recomputed_steps} reverse_pass={s.seconds:.2f}s"
        )
    step_ratio = stats["all"].seconds / STEPS / (statistics.median(times["train"]) / STEPS)
    print(f"one reverse step (double backward: H v and per-token terms) = {step_ratio:.2f} x one training step")
    adam_ratio = statistics.median(a / b for a, b in zip(times["adam_sqrt"], times["adam_train"]))
    adam_cpu = statistics.median(a / b for a, b in zip(cpu["adam_sqrt"], cpu["adam_train"]))
    s = stats["adam_sqrt"]
    print(
        f"adamw train: median {statistics.median(times['adam_train']):.2f}s peak_rss={mib['adam_train']:.0f}MiB; "
        f"adamw sqrt: median {statistics.median(times['adam_sqrt']):.2f}s cpu_time_ratio={adam_cpu:.2f} "
        f"peak_rss={mib['adam_sqrt']:.0f}MiB peak_param_copies={s.peak_state_copies} (sgd sqrt: {stats['sqrt'].peak_state_copies}) "
        f"recomputed_steps={s.recomputed_steps} reverse_pass={s.seconds:.2f}s"
    )
    print(f"magic_adam_over_train={adam_ratio:.2f}")
    print(f"magic_over_train={ratio['sqrt']:.2f} magic_all_over_train={ratio['all']:.2f}")


if __name__ == "__main__":
    main()

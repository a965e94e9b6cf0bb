"""GPU smoke test: the checks a CUDA machine must pass, one line each, in about 5 minutes on one GPU.

    python benchmarks/gpu_smoke.py                # on a CUDA machine (refuses to run without one)
    python benchmarks/gpu_smoke.py --dry-run      # anywhere: tiny sizes, "device" = the CPU (exercises the code)

Checks (each prints `CHECK <name>: ok|FAIL ...`, figures print as `FIGURE <name>=<value>`):
1. toy_exp7: the first point of specs/exp7_all_tokens.yaml --toy trained and evaluated on the device gives the
   CPU run's metrics (equal accuracies, or within one question, printed).
2. magic_float64: exact MAGIC scores of a float64 tiny GPT-NeoX on the device equal the CPU scores to 1e-10.
3. pythia160m_shape (12 layers, d=768, 12 heads, vocab 50304, seq 1024, random weights and tokens):
   `weighted_over_stock` (WeightedSFTTrainer step time / stock trl.SFTTrainer), tokens/s and peak GPU memory
   of training, `magic_over_train` for the `sqrt` and `all` schedules (record + reverse pass / plain SGD
   training) and the reverse pass's peak GPU memory.
4. fsdp_magic_w1 / fsdp_magic_w2 (benchmarks/gpu_smoke_fsdp.py): the sharded (FSDP) reverse pass on the device
   equals the plain pass on the CPU to 1e-10 (float64, SGD and AdamW with clipping), on one rank and on two ranks
   under torchrun (nccl; skipped with fewer than two GPUs; gloo on the CPU in a dry run).
Exit code 1 when a check fails. --dry-run shrinks every size (toy point: 2 steps, 16 questions per task).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

import unlearnspec.toy  # noqa: E402,F401 - registers the embedded toy world, as the `unlearnspec` command does at start

REPO = Path(__file__).resolve().parents[1]
FAILED: list[str] = []


def line(kind: str, name: str, text: str) -> None:
    print(f"{kind} {name}: {text}" if kind == "CHECK" else f"{kind} {name}={text}", flush=True)


def check(name: str, fn: Callable[[], str]) -> None:
    started = time.perf_counter()
    try:
        detail = fn()
        line("CHECK", name, f"ok ({detail}; {time.perf_counter() - started:.1f}s)")
    except Exception as exc:  # a smoke script reports every check, whatever fails
        FAILED.append(name)
        line("CHECK", name, f"FAIL {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- 1. toy exp7 point
def toy_point(device: torch.device, dry: bool) -> dict[str, float]:
    """Train and evaluate the first sweep point of exp7 on the toy world on `device`, through the tool's
    own plan and recipe (the job `unlearnspec run` would run); task -> acc."""
    from unlearnspec.run.plan import PlanOptions, build_plan
    from unlearnspec.run.recipes import run_job
    from unlearnspec.run.study import RunOptions, make_context
    from unlearnspec.spec.profile import default_toy_profile

    lr = ["training.lr=[1.0e-4]"]
    overrides = lr + (["training.max_steps=2", "eval.tasks.0.limit=16", "eval.tasks.1.limit=16"] if dry else [])
    with tempfile.TemporaryDirectory() as tmp:
        options = RunOptions(
            profile=default_toy_profile(), overrides=overrides, out=Path(tmp) / "out", device=str(device)
        )
        ctx = make_context(options, say=lambda _m: None)
        plan = build_plan(
            [REPO / "specs" / "exp7_all_tokens.yaml"],
            PlanOptions(
                profile=options.profile,
                overrides=tuple(overrides),
                out=options.out,
                device=device.type,
                cache_root=Path(tmp) / "cache",
            ),
            ctx.assets,
        )
        job = next(j for j in plan.jobs if j.kind == "point")
        work = Path(tmp) / "work"
        work.mkdir()
        record = run_job(job, ctx, work)
    if record.status != "ok":
        raise AssertionError(f"the toy point failed on {device}: {record.reason}")
    return {task: float(m.acc) for task, m in record.metrics.items()} | {
        f"{task}.n": float(m.n) for task, m in record.metrics.items()
    }


def check_toy(device: torch.device, dry: bool) -> str:
    on_device = toy_point(device, dry)
    on_cpu = toy_point(torch.device("cpu"), dry)
    parts = []
    for task in sorted(k for k in on_cpu if not k.endswith(".n")):
        a, b, n = on_device[task], on_cpu[task], on_cpu[f"{task}.n"]
        parts.append(f"{task} {a:.4f} vs cpu {b:.4f}")
        if abs(a - b) * n > 1.0 + 1e-9:  # one question may flip on float noise; more means a real difference
            raise AssertionError("; ".join(parts) + f" (differs by more than one of {int(n)} questions)")
    return "; ".join(parts)


# --------------------------------------------------------------------------- 2. MAGIC float64
def tiny_magic_setup(seed: int = 0):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from unlearnspec.magic import ReferenceRun, TrajectoryRecorder, plan_steps, sgd_train
    from unlearnspec.magic.query import QueryBatch, QueryLoss
    from unlearnspec.train.loss import IGNORE_INDEX

    class Grid:
        def __init__(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor):
            self.input_ids, self.attention_mask, self.labels = ids, mask, labels

    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        attention_dropout=0.0,
        hidden_dropout=0.0,
    )
    model = GPTNeoXForCausalLM(config).double()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (6, 8), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    grid = Grid(ids, mask, ids.masked_fill(mask == 0, IGNORE_INDEX))
    q_ids = torch.randint(0, 50, (3, 7), generator=gen)
    q_labels = torch.full_like(q_ids, IGNORE_INDEX)
    q_labels[:, 4:] = q_ids[:, 4:]
    query = QueryLoss(
        model,
        QueryBatch(q_ids, torch.ones_like(q_ids), q_labels, "tiny", "answer_continuation", 0, ("a", "b", "c")),
        batch_size=2,
    )
    plan = plan_steps(6, 4, 3, [2.0, 1.8, 1.6, 1.4], seed=3)
    trajectory = sgd_train(
        model,
        grid,
        ReferenceRun(plan, weight_decay=0.01),
        recorder=TrajectoryRecorder(len(plan), "sqrt", weight_decay=0.01),
        use_replay_attention=True,
    )
    return model, grid, query, trajectory


def check_magic(device: torch.device) -> str:
    from unlearnspec.magic import magic_scores

    model, grid, query, trajectory = tiny_magic_setup()
    on_cpu = magic_scores(model, grid, trajectory, query, dtype=None)
    model.to(device)  # the states stay in host RAM; the reverse pass moves each to the model's device
    on_device = magic_scores(model, grid, trajectory, query, dtype=None)
    if on_device.device.type != device.type:
        raise AssertionError(f"scores came back on {on_device.device}")
    rel = float((on_device.cpu() - on_cpu).norm() / on_cpu.norm())
    if not rel <= 1e-10:
        raise AssertionError(f"relative difference {rel:.2e} > 1e-10")
    return f"relative difference {rel:.1e}"


# --------------------------------------------------------------------------- 3. Pythia-160m-shaped model
def pythia_shape(dry: bool) -> dict[str, int]:
    if dry:
        return dict(layers=2, hidden=64, heads=4, vocab=512, seq=32, batch=2, steps=4)
    return dict(layers=12, hidden=768, heads=12, vocab=50304, seq=1024, batch=4, steps=8)


def build_model(shape: dict[str, int], device: torch.device):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        intermediate_size=4 * shape["hidden"],
        max_position_embeddings=shape["seq"],
        rotary_pct=0.25,
        attention_dropout=0.0,
        hidden_dropout=0.0,
    )
    return GPTNeoXForCausalLM(config).to(device)


def word_tokenizer(vocab: int):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t1"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="t0", pad_token="t0", unk_token="t1")


def check_trainers(device: torch.device, dry: bool) -> str:
    import datasets
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from unlearnspec.data import TokenGrid, grid_fingerprint
    from unlearnspec.spec import TrainingSpec
    from unlearnspec.train.parallel import Placement
    from unlearnspec.train.trainer import WeightedSFTTrainer, build_optimizer, build_scheduler, grid_dataset, sft_config

    shape = pythia_shape(dry)
    seq, batch, steps = shape["seq"], shape["batch"], shape["steps"]
    n_rows = batch * steps
    ids = torch.randint(2, shape["vocab"], (n_rows, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    grid = TokenGrid(ids, mask, ids.clone(), grid_fingerprint(ids, mask, "smoke"), "smoke")
    training = TrainingSpec.model_validate(
        dict(optimizer={"name": "adamw"}, lr=1e-5, batch_size=batch, max_steps=steps, shuffle=False, seed=0)
    )
    tok = word_tokenizer(shape["vocab"])
    base = build_model(shape, torch.device("cpu"))
    datasets.disable_progress_bars()
    stock_ds = datasets.Dataset.from_dict({"input_ids": ids.tolist()})

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            sync(device)
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            sync(device)
            self.times.append(time.perf_counter() - self._t)

    def run(kind: str) -> tuple[float, float]:
        from transformers.trainer_callback import PrinterCallback

        timer = Timer()
        model = copy.deepcopy(base).to(device)
        opt = build_optimizer(training, list(model.parameters()), 1e-5)
        both = dict(processing_class=tok, callbacks=[timer], optimizers=(opt, build_scheduler(training, opt, steps)))
        reset_peak(device)
        with tempfile.TemporaryDirectory() as out:
            if kind == "stock":
                cfg = sft_config(
                    training,
                    1e-5,
                    Path(out),
                    n_rows,
                    Placement(device=device),
                    max_length=seq,
                    dataset_kwargs=None,
                    remove_unused_columns=True,
                )
                trainer = SFTTrainer(model=model, args=cfg, train_dataset=stock_ds, **both)
            else:
                cfg = sft_config(training, 1e-5, Path(out), n_rows, Placement(device=device))
                trainer = WeightedSFTTrainer(
                    model=model, args=cfg, train_dataset=grid_dataset(grid, grid.valid_targets.float()), **both
                )
            trainer.remove_callback(PrinterCallback)  # same (silent) logging for both
            trainer.train()
        return statistics.median(timer.times[2:] or timer.times), peak_gib(device)

    stock, _ = run("stock")
    weighted, peak = run("weighted")
    tokens_per_s = batch * seq / weighted
    line("FIGURE", "weighted_over_stock", f"{weighted / stock:.3f}")
    line("FIGURE", "train_tokens_per_s", f"{tokens_per_s:.0f}")
    line("FIGURE", "train_peak_gib", f"{peak:.2f}")
    return f"{weighted * 1e3:.1f} vs {stock * 1e3:.1f} ms/step, {tokens_per_s:.0f} tokens/s, peak {peak:.2f} GiB"


def check_magic_cost(device: torch.device, dry: bool) -> str:
    from unlearnspec.magic import (
        ReferenceRun,
        TrajectoryRecorder,
        magic_scores,
        plan_steps,
        sgd_train,
        trainable_params,
    )
    from unlearnspec.magic.query import QueryBatch, QueryLoss
    from unlearnspec.train.loss import IGNORE_INDEX

    shape = pythia_shape(dry)
    seq, batch, steps, vocab = shape["seq"], shape["batch"], shape["steps"], shape["vocab"]
    model = build_model(shape, device)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch * steps, seq), generator=gen)

    class Grid:
        input_ids, attention_mask, labels = ids, torch.ones_like(ids), ids.clone()

    q_ids = torch.randint(0, vocab, (4, min(seq, 64)), generator=gen)
    q_labels = torch.full_like(q_ids, IGNORE_INDEX)
    q_labels[:, -2:] = q_ids[:, -2:]
    query = QueryLoss(
        model,
        QueryBatch(q_ids, torch.ones_like(q_ids), q_labels, "random", "answer_continuation", 0, tuple("abcd")),
        batch_size=4,
    )
    plan = plan_steps(batch * steps, steps, batch, 1e-4, seed=0)
    theta0 = {n: p.detach().clone() for n, p in trainable_params(model).items()}

    def reset() -> None:
        with torch.no_grad():
            for n, p in trainable_params(model).items():
                p.copy_(theta0[n])

    reset()
    sync(device)
    start = time.perf_counter()
    sgd_train(model, Grid, ReferenceRun(plan), use_replay_attention=True)
    sync(device)
    train_s = time.perf_counter() - start
    out = []
    for schedule in ("sqrt", "all"):
        reset()
        reset_peak(device)
        sync(device)
        start = time.perf_counter()
        trajectory = sgd_train(
            model, Grid, ReferenceRun(plan), recorder=TrajectoryRecorder(steps, schedule), use_replay_attention=True
        )
        magic_scores(model, Grid, trajectory, query)
        sync(device)
        ratio = (time.perf_counter() - start) / train_s
        peak = peak_gib(device)
        key = "magic_over_train" if schedule == "sqrt" else "magic_all_over_train"
        line("FIGURE", key, f"{ratio:.2f}")
        line("FIGURE", f"magic_{schedule}_peak_gib", f"{peak:.2f}")
        out.append(f"{schedule} {ratio:.2f}x (peak {peak:.2f} GiB)")
    return f"T={steps} bs={batch} seq={seq}: " + ", ".join(out)


def fsdp_checks():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_smoke_fsdp

    return gpu_smoke_fsdp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (no GPU needed)")
    parser.add_argument("--skip", action="append", default=[], help="skip a check by name (repeatable)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from unlearnspec.train.device import resolve_device

    device = torch.device("cpu") if args.dry_run else resolve_device("cuda")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    print(
        f"device {device} ({name}), torch {torch.__version__}, dry_run={args.dry_run}"
        + (" (tiny sizes: the FIGURE lines mean nothing)" if args.dry_run else ""),
        flush=True,
    )
    started = time.perf_counter()
    checks: list[tuple[str, Callable[[], str]]] = [
        ("toy_exp7", lambda: check_toy(device, args.dry_run)),
        ("magic_float64", lambda: check_magic(device)),
        ("pythia160m_trainers", lambda: check_trainers(device, args.dry_run)),
        ("pythia160m_magic", lambda: check_magic_cost(device, args.dry_run)),
        ("fsdp_magic_w1", lambda: fsdp_checks().check_one_rank(device)),
        ("fsdp_magic_w2", lambda: fsdp_checks().check_two_ranks(device)),
    ]
    for name, fn in checks:
        if name not in args.skip:
            check(name, fn)
    print(
        f"TOTAL {time.perf_counter() - started:.1f}s, {len(FAILED)} failed{': ' + ', '.join(FAILED) if FAILED else ''}"
    )
    raise SystemExit(1 if FAILED else 0)


if __name__ == "__main__":
    main()

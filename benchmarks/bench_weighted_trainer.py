"""Wall time per optimizer step: WeightedSFTTrainer (all-ones weights) vs stock trl.SFTTrainer.

Same GPT-NeoX (4 layers, d=128, seq 128, batch 8) and data, alternated in one process for several
rounds. Last line: `weighted_over_stock=<median over rounds of the ratio of median step times>`.
Target: <= 1.03. Usage: python benchmarks/bench_weighted_trainer.py [--rounds 5] [--steps 12] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast, TrainerCallback  # noqa: E402


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._t = 0.0

    def on_step_begin(self, args, state, control, **kw):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._t)


def _tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t1"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="t0", pad_token="t0", unk_token="t1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier on a shared CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import datasets
    from trl import SFTTrainer

    from unlearnspec.data import TokenGrid, grid_fingerprint
    from unlearnspec.spec import TrainingSpec
    from unlearnspec.train.trainer import (
        LossSetup,
        WeightedSFTTrainer,
        build_optimizer,
        build_scheduler,
        grid_dataset,
        sft_config,
    )

    vocab, seq, batch = 4096, 128, 8
    n_rows = batch * args.steps
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=512,
        max_position_embeddings=seq,
        attention_dropout=0.0,
        hidden_dropout=0.0,
    )
    base = GPTNeoXForCausalLM(config)
    ids = torch.randint(2, vocab, (n_rows, seq))
    mask = torch.ones_like(ids)
    grid = TokenGrid(ids, mask, ids.clone(), grid_fingerprint(ids, mask, "bench"), "bench")
    tok = _tokenizer(vocab)
    training = TrainingSpec.model_validate(
        dict(optimizer={"name": "adamw"}, lr=1e-4, batch_size=batch, max_steps=args.steps, shuffle=False, seed=0)
    )
    stock_ds = datasets.Dataset.from_dict({"input_ids": ids.tolist()})
    weighted_ds = grid_dataset(grid, grid.valid_targets.float())

    def run(kind: str) -> float:
        model = copy.deepcopy(base)
        timer = StepTimer()
        opt = build_optimizer(training, list(model.parameters()), 1e-4)
        sched = build_scheduler(training, opt, args.steps)
        with tempfile.TemporaryDirectory() as out:
            if kind == "stock":
                cfg = sft_config(
                    training, 1e-4, out, n_rows, max_length=seq, dataset_kwargs=None, remove_unused_columns=True
                )
                trainer = SFTTrainer(
                    model=model,
                    args=cfg,
                    train_dataset=stock_ds,
                    processing_class=tok,
                    optimizers=(opt, sched),
                    callbacks=[timer],
                )
            else:
                cfg = sft_config(training, 1e-4, out, n_rows)
                trainer = WeightedSFTTrainer(
                    model=model,
                    args=cfg,
                    train_dataset=weighted_ds,
                    processing_class=tok,
                    optimizers=(opt, sched),
                    callbacks=[timer],
                    loss=LossSetup(normalizer="valid"),
                )
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)  # same (silent) logging for both
            trainer.train()
        return statistics.median(timer.times[2:])  # skip warm-up steps

    ratios = []
    for r in range(args.rounds):
        order = ("stock", "weighted") if r % 2 == 0 else ("weighted", "stock")
        t = {kind: run(kind) for kind in order}
        ratios.append(t["weighted"] / t["stock"])
        print(
            f"round {r}: stock {t['stock'] * 1e3:.1f} ms/step, weighted {t['weighted'] * 1e3:.1f} ms/step, ratio {ratios[-1]:.3f}"
        )
    print(f"threads={torch.get_num_threads()} rounds={args.rounds} steps={args.steps}")
    print(f"weighted_over_stock={statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()

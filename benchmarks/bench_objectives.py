"""Time per optimizer step of each objective relative to the all-tokens control (`weighted`, every token).

The toy world's shapes by default (GPT-NeoX 4 layers d=128, vocab 4096, 250 rows x 64 tokens, batch 4; a random
init: timing does not depend on the weights), `--shape pythia70m` for a Pythia-70m-shaped model at 256 tokens.
Every variant trains `--steps` SGD steps through WeightedSFTTrainer as a point does (RMU: AdamW, as its paper); each
retain term reads a retain set of the same size. The variants alternate within each round; a round's ratio is the
median step time of the variant over the control's median step time in that round (a busy shared CPU moves
whole rounds, not the ratio), and the reported ratio is the median over rounds. `npo_reference` is NPO's one-off
reference computation (one forward over the forget grid, cached per grid) over one epoch of the control's training
(the toy world's points train 62 steps, about one epoch).
Last line: `ratios vs all_tokens: weighted=1.00 grad_ascent=... grad_diff=... npo=... simnpo=... rmu=... npo_reference=...`
Usage: python benchmarks/bench_objectives.py [--rounds 5] [--steps 20] [--shape toy|pythia70m] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast, TrainerCallback  # noqa: E402

SHAPES = {
    "toy": dict(layers=4, hidden=128, heads=4, vocab=4096, seq=64, batch=4, rows=250, rmu_layer=2),
    "pythia70m": dict(layers=6, hidden=512, heads=8, vocab=50304, seq=256, batch=8, rows=64, rmu_layer=3),
}
VARIANTS = {
    "weighted": None,
    "grad_ascent": {"name": "grad_diff", "alpha": 0.0},
    "grad_diff": {"name": "grad_diff", "alpha": 1.0},
    "npo": {"name": "npo", "beta": 0.1, "alpha": 1.0},
    "simnpo": {"name": "simnpo", "beta": 2.5, "gamma": 0.0, "alpha": 1.0},
    "rmu": {"name": "rmu", "layer": 0, "steering_coef": 6.5, "alpha": 100.0, "seed": 0},
}


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


def _grid(shape: dict, seed: int):
    from unlearnspec.data import TokenGrid, grid_fingerprint

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, shape["vocab"], (shape["rows"], shape["seq"]), generator=g)
    mask = torch.ones_like(ids)
    return TokenGrid(ids, mask, ids.clone(), grid_fingerprint(ids, mask, "bench"), "bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="toy")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier on a shared CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from pydantic import TypeAdapter

    from unlearnspec.spec import ObjectiveSpec, TrainingSpec
    from unlearnspec.train.objectives import OBJECTIVES, ReferenceCache, RetainRows, build_objective
    from unlearnspec.train.parallel import Placement
    from unlearnspec.train.trainer import LossSetup, WeightedSFTTrainer, grid_dataset, sft_config

    shape = SHAPES[args.shape]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        intermediate_size=4 * shape["hidden"],
        max_position_embeddings=shape["seq"],
        attention_dropout=0.0,
        hidden_dropout=0.0,
    )
    config._attn_implementation = "eager"
    base = GPTNeoXForCausalLM(config)
    forget, retain = _grid(shape, 0), _grid(shape, 1)
    weights = forget.valid_targets.float()
    tok = _tokenizer(shape["vocab"])
    rows = RetainRows(retain.input_ids, retain.attention_mask, retain.labels, retain.fingerprint)
    ratios: dict[str, list[float]] = {name: [] for name in VARIANTS}
    ref_ratios: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            medians = {}
            for name, raw in VARIANTS.items():
                spec = TypeAdapter(ObjectiveSpec).validate_python(
                    {**raw, "layer": shape["rmu_layer"]} if name == "rmu" else raw or {"name": "weighted"}
                )
                optimizer = "adamw" if name == "rmu" else "sgd"
                training = TrainingSpec.model_validate(
                    dict(
                        optimizer={"name": optimizer},
                        lr=1e-4,
                        batch_size=shape["batch"],
                        max_steps=args.steps,
                        seed=0,
                        shuffle=False,
                    )
                )
                model = copy.deepcopy(base).to(device)
                reference = None
                if OBJECTIVES.get(spec.name) is not None and OBJECTIVES[spec.name].needs_reference:
                    reference = ReferenceCache(
                        forget.input_ids,
                        forget.attention_mask,
                        forget.labels,
                        forget.fingerprint,
                        {"bench": time.time_ns()},
                        Path(tmp),
                        shape["batch"],
                        say=lambda _m: None,
                    )
                objective = build_objective(spec, "valid", rows if getattr(spec, "alpha", 0) else None, True, reference)
                if objective is not None:
                    objective.prepare_model(model)
                timer = StepTimer()
                trainer = WeightedSFTTrainer(
                    model=model,
                    args=sft_config(training, 1e-4, Path(tmp) / name, shape["rows"], Placement(device=device)),
                    train_dataset=grid_dataset(forget, weights),
                    processing_class=tok,
                    training=training,
                    callbacks=[timer],
                    loss=LossSetup(objective=objective),
                )
                if objective is not None:
                    start = time.perf_counter()
                    objective.attach(trainer)
                    reference_seconds = time.perf_counter() - start
                trainer.train()
                medians[name] = statistics.median(timer.times[1:])  # the first step warms caches
                if name == "npo":
                    npo_reference = reference_seconds
            for name in VARIANTS:
                ratios[name].append(medians[name] / medians["weighted"])
            epoch = -(-shape["rows"] // shape["batch"])  # control steps in one pass over the forget grid
            ref_ratios.append(npo_reference / (medians["weighted"] * epoch))
            print(
                "round: "
                + " ".join(f"{k}={v * 1000:.1f}ms" for k, v in medians.items())
                + f" npo_reference={npo_reference:.2f}s",
                flush=True,
            )
    final = {name: statistics.median(r) for name, r in ratios.items()}
    final["npo_reference"] = statistics.median(ref_ratios)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    print(f"shape {args.shape} on {where}, {args.steps} steps x {args.rounds} rounds")
    print("ratios vs all_tokens: " + " ".join(f"{k}={v:.2f}" for k, v in final.items()))


if __name__ == "__main__":
    main()

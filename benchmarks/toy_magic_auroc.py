"""Do exact MAGIC scores find the tokens that teach the queried facts? (toy analogue of magic_wmdp)

Runs `unlearnspec run specs/magic/magic_wmdp.yaml --toy` (WikiText-like corpus, toy_wmdp query) into a
temp dir, then ranks tokens by -score (strongest proponents first):
- token AUROC: answer tokens of the queried forget-domain facts (the attribute values, wherever they
  appear in the corpus, from the generator's spans) vs every other valid token;
- passage AUROC: per-passage score sums, forget-domain passages vs retain passages.
Last two lines: `passage_auroc=<v>` then `auroc=<v>` (target >= 0.85).
Usage: python benchmarks/toy_magic_auroc.py [--set magic.checkpoints=all ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def auroc(scores: list[float], positive: list[bool]) -> float:
    """Mann-Whitney AUROC with average ranks for ties: P(score of a positive > score of a negative)."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    n_pos = sum(positive)
    n_neg = len(positive) - n_pos
    rank_sum = sum(r for r, p in zip(ranks, positive) if p)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    spec_path = REPO / "specs" / "magic" / "magic_wmdp.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "scores"
        sets = [x for o in args.overrides for x in ("--set", o)]
        subprocess.run([sys.executable, "-m", "unlearnspec", "run", str(spec_path), "--toy", "--out", str(out), "--no-report", *sets],
                       cwd=REPO, env=env, check=True)
        import torch

        scores = torch.load(out / "per_token_scores.pt", weights_only=True)
        sidecar = json.loads((out / "scores.json").read_text())

    from unlearnspec.data import load_texts
    from unlearnspec.train.modeling import load_tokenizer
    from unlearnspec.spec.profile import default_toy_profile
    from unlearnspec.run.runner import RunOptions, toy_world
    from unlearnspec.spec.load import load_spec

    profile = default_toy_profile()
    spec = load_spec(spec_path, overrides=args.overrides, profile=profile)
    world = toy_world(RunOptions(profile=profile, say=lambda m: None))
    tokenizer = load_tokenizer(spec.model, toy=world)
    texts, rows = load_texts(spec.data, spec_path, tokenizer, toy=world)
    corpus = [json.loads(line) for line in world.corpus_path(spec.data.toy.corpus).read_text().splitlines() if line]
    queried = {json.loads(line)["fact"] for line in (world.task_dir / "toy_wmdp.jsonl").read_text().splitlines() if line}

    n, s = scores.shape
    token_scores, token_pos, passage_sums, passage_pos = [], [], [], []
    for i, (text, row_id) in enumerate(zip(texts, rows)):
        row = corpus[row_id]
        spans = [(f["start"], f["end"]) for f in row["facts"] if f["fact"] in queried and f.get("correct", True)]
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
        offsets = enc["offset_mapping"][:s]
        for t in range(1, len(offsets)):  # target alignment: column t scores token t
            a, b = offsets[t]
            token_scores.append(-float(scores[i, t]))
            token_pos.append(any(a < e and b > st for st, e in spans))
        passage_sums.append(-float(scores[i].sum()))
        passage_pos.append(row["domain"] == "forget")
    print(f"scores: N={n} S={s} query={sidecar['query']} steps={sidecar['steps']} lr={sidecar['optimizer']['lr']}")
    print(f"answer tokens: {sum(token_pos)} of {len(token_pos)} valid; forget passages: {sum(passage_pos)} of {len(passage_pos)}")
    print(f"passage_auroc={auroc(passage_sums, passage_pos):.4f}")
    print(f"auroc={auroc(token_scores, token_pos):.4f}")


if __name__ == "__main__":
    main()

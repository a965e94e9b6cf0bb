"""unlearnspec.magic as a library: train a tiny model with a recorded trajectory, score every training token
by d(query loss)/d(token weight), check the scores against autograd through the unrolled run, write them.
Run from any folder: `python docs/examples/magic_library.py` (writes ./scores_out/). tests/test_docs_example.py
runs it."""

from dataclasses import dataclass

import torch
from torch.func import functional_call
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from unlearnspec.magic import (
    ReferenceRun,
    ScoreProvenance,
    TrajectoryRecorder,
    magic_scores,
    plan_steps,
    sgd_train,
    unrolled_scores,
    write_scores,
)


@dataclass
class Grid:  # any object with these three [N, S] tensors (labels: -100 where a token has no loss)
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


torch.manual_seed(0)
config = GPTNeoXConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=16, max_position_embeddings=16, attention_dropout=0.0, hidden_dropout=0.0)
model = GPTNeoXForCausalLM(config)  # float32 and no dropout: the reverse pass refuses anything else
ids = torch.randint(0, 32, (4, 6))
grid = Grid(ids, torch.ones_like(ids), ids.clone())
theta0 = {name: p.detach().clone() for name, p in model.named_parameters()}  # only for the check below

# Train 3 SGD steps of 2 rows each, recording the trajectory (`sqrt`: O(sqrt T) stored states).
plan = plan_steps(n_rows=4, steps=3, batch_size=2, lr=0.1)
trajectory = sgd_train(model, grid, ReferenceRun(plan), recorder=TrajectoryRecorder(3, "sqrt"))


def query(params):
    """Any scalar loss of the parameters: here the mean next-token loss of rows 0 and 1."""
    logits = functional_call(model, dict(params), (), {"input_ids": ids[:2], "use_cache": False}).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 32), ids[:2, 1:].reshape(-1))


scores = magic_scores(model, grid, trajectory, query)  # [N, S]: d(query loss)/d(token weight)

# What the tests check on every change (tiny models only): autograd through the unrolled run agrees.
oracle = unrolled_scores(model, grid, ReferenceRun(plan), query, theta0)
assert torch.allclose(scores, oracle, rtol=1e-4, atol=1e-6), (scores - oracle).abs().max()
print(f"scores {tuple(scores.shape)}, max |MAGIC - unrolled autograd| = {(scores - oracle).abs().max().item():.1e}")

# per_token_scores.pt, per_example_scores.pt and the scores.json sidecar that specs' token rules read.
provenance = ScoreProvenance(fingerprint="my-data-v1", query={"task": "my_query", "loss": "mean_nll", "n_questions": 2},
                             dtype="float32", lr=0.1)
paths = write_scores("scores_out", scores, trajectory, provenance)
print("wrote", ", ".join(sorted(str(p) for p in paths.values())))

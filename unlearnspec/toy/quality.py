"""Attribution quality of a score matrix against the toy world's ground truth (`unlearnspec.toy.truth`).

Over the grid's valid target tokens only: AUROC of proponent-ness (-score) for the truth tokens (the values
of the facts the query task asks) against all other valid tokens, ties counted half (Mann-Whitney), and
precision@k: the share of truth tokens among the k most negative scores (ties broken by grid position), for
k = the number of truth tokens and k = FIXED_K. A diagnostic of how well the scores find what the query
asks, not a target: a MAGIC score measures the effect of training on a token, which the value tokens
need not dominate. Written as `attribution_quality` into a toy score run's scores.json, by the score job
and by `unlearnspec toy quality RUN_DIR`; `doctor --toy` shows it (D12).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import torch

from unlearnspec.errors import UserError

if TYPE_CHECKING:
    from unlearnspec.data import SpecGrid
    from unlearnspec.magic.output import QueryScores
    from unlearnspec.spec.assets import Assets

FIXED_K = 60
"""The second precision@k: the forget-fact token count of the toy specs/fixed/magic_wmdp.yaml grid, so runs
on grids of other sizes report one comparable figure."""
QUALITY_KEY = "attribution_quality"
"""Key of the figures in scores.json."""


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of `x` (ascending), tied values sharing their average rank."""
    order = torch.argsort(x, stable=True)
    _, counts = torch.unique_consecutive(x[order], return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)
    avg = ends - (counts.to(torch.float64) - 1) / 2  # mean of ranks end-count+1 .. end
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks[order] = torch.repeat_interleave(avg, counts)
    return ranks


def auroc(proponency: torch.Tensor, positive: torch.Tensor) -> Optional[float]:
    """P(a positive outranks a negative) + P(tie)/2, for 1-D `proponency` and bool `positive`; None when
    either class is empty."""
    n_pos = int(positive.sum())
    n_neg = int(positive.numel() - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(proponency.to(torch.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def precision_at_k(scores: torch.Tensor, positive: torch.Tensor, k: int) -> Optional[float]:
    """Share of `positive` among the k most negative of the 1-D `scores` (ties: earlier position first)."""
    k = min(k, scores.numel())
    if k <= 0:
        return None
    top = torch.argsort(scores.to(torch.float64), stable=True)[:k]
    return float(positive[top].double().mean())


def attribution_quality(scores: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor) -> dict[str, Any]:
    """Figures for scores [N, S] against the bool truth mask [N, S], over the bool `valid` [N, S] tokens."""
    s, t = scores.float()[valid], truth[valid]
    n_truth = int(t.sum())
    ks = sorted({n_truth, FIXED_K} - {0})
    return {
        "auroc": auroc(-s, t),
        "precision_at_k": {str(k): precision_at_k(s, t, k) for k in ks},
        "truth_tokens": n_truth,
        "valid_tokens": int(t.numel()),
        "truth_proponents": float((s[t] < 0).double().mean()) if n_truth else None,
        "base_rate": n_truth / max(int(t.numel()), 1),
    }


# --------------------------------------------------------------------------- a score run
def grid_quality(
    on: "SpecGrid",
    task: str,
    scores: torch.Tensor,
    per_task: Optional[Mapping[str, tuple[str, torch.Tensor]]] = None,
    per_question: Optional[torch.Tensor] = None,
) -> dict[str, Any]:
    """`attribution_quality` of a toy score run on the grid `on`: the mean scores against the facts `task` (the
    query task) asks, each leaf (`per_task`: leaf -> (leaf task, scores)) against the facts its own task asks, and
    each aggregation over the questions of `per_question` [Q, N, S] (`min_q`, `rank_q`, `wsum_q`) or over the
    leaves (`min_t`, ...) against the query task's facts."""
    from unlearnspec.toy.truth import grid_truth

    grid = on.grid

    def one(for_task: str, matrix: torch.Tensor) -> dict[str, Any]:
        truth = grid_truth(on, for_task)
        return {
            **attribution_quality(matrix, truth.forget_mask, truth.valid),
            "task": for_task,
            "world": truth.info["world"],
        }

    from unlearnspec.scores import valid_targets
    from unlearnspec.scores.aggregate import AGGREGATES

    def aggregates(units: torch.Tensor, suffix: str) -> dict[str, Any]:
        valid = valid_targets(grid.labels)
        return {f"{kind}_{suffix}": one(task, fn(units, valid, f"{kind}_{suffix}")) for kind, fn in AGGREGATES.items()}

    out = one(task, scores)
    if per_task:
        out["per_task"] = {leaf: one(leaf_task, matrix) for leaf, (leaf_task, matrix) in per_task.items()}
        if len(per_task) > 1:  # min_t, rank_t, wsum_t over the leaves (sorted, as rules stack them)
            out["per_task_aggregates"] = aggregates(
                torch.stack([per_task[k][1] for k in sorted(per_task)]).float(), "t"
            )
    if per_question is not None:
        out["per_question"] = aggregates(per_question, "q")
    return out


def run_quality(run_dir: Path, assets: Optional["Assets"] = None) -> dict[str, Any]:
    """Compute `attribution_quality` of a finished toy score run folder (per_token_scores.pt, scores.json and
    the resolved spec.yaml a score job writes) and write it into its scores.json; returns it."""
    from unlearnspec.data import SpecGrid, build_grid, load_texts
    from unlearnspec.safeio import read_json, write_json_atomic
    from unlearnspec.scores import SCORES_FILE, SIDECAR_FILE, checked_scores, leaf_score_path, load_score_file
    from unlearnspec.spec import ScoreSourceSpec
    from unlearnspec.spec.assets import Assets
    from unlearnspec.spec.load import load_spec
    from unlearnspec.toy.truth import require_toy
    from unlearnspec.train.modeling import load_tokenizer

    if not run_dir.is_dir():
        raise UserError.one(
            str(run_dir),
            "no such folder. Give the folder of a finished toy score run (it holds "
            f"{SCORES_FILE}, {SIDECAR_FILE} and spec.yaml), e.g. runs/toy/fixed/magic_wmdp.",
        )
    missing = [f for f in (SCORES_FILE, SIDECAR_FILE, "spec.yaml") if not (run_dir / f).is_file()]
    if missing:
        raise UserError.one(
            str(run_dir),
            f"not a finished score run: {', '.join(missing)} missing. Give the output folder "
            "of a MAGIC spec run with --toy (or run it first).",
        )
    sidecar = read_json(run_dir / SIDECAR_FILE, "score sidecar", "missing.", "Rescore, or delete the folder.")
    query = sidecar.get("query") if isinstance(sidecar, dict) else None
    if not isinstance(query, dict) or not isinstance(query.get("task"), str):
        raise UserError.one(
            str(run_dir / SIDECAR_FILE),
            "the sidecar names no query task (`query.task`), so it is unknown "
            "which facts the scores should find. Only MAGIC score runs can be rated.",
        )
    spec_path = run_dir / "spec.yaml"
    spec = load_spec(spec_path, check_refs=False)
    require_toy(spec, str(spec_path))
    assets = assets or Assets()
    tokenizer = load_tokenizer(spec.model, assets)
    texts, rows = load_texts(spec.data, spec_path, tokenizer, assets)
    grid = build_grid(
        texts, tokenizer, spec.data.max_seq_len, assets.tokenizer_id(spec.model), spec.data.append_eos, rows
    )
    source = ScoreSourceSpec(path=SCORES_FILE)

    def fingerprint_at(width: int) -> str:
        return build_grid(texts, tokenizer, width, assets.tokenizer_id(spec.model), spec.data.append_eos).fingerprint

    def load(path: Path, name: str) -> torch.Tensor:
        return checked_scores(load_score_file(path), source, name, grid.labels, grid.fingerprint, fingerprint_at)

    mean_path = run_dir / SCORES_FILE
    leaves = {
        leaf: (str(entry.get("task", leaf)), load(leaf_score_path(mean_path, "scores", leaf), f"scores.{leaf}"))
        for leaf, entry in sorted((sidecar.get("per_task") or {}).items())
    }
    per_question = None
    if isinstance(sidecar.get("per_question"), dict):
        from unlearnspec.scores.aggregate import checked_question_scores

        per_question = checked_question_scores(
            mean_path, source, "min_q(scores)", grid.labels, grid.fingerprint, fingerprint_at
        )
    on = SpecGrid(spec, spec_path, assets, grid, tokenizer)
    quality = grid_quality(on, query["task"], load(mean_path, "scores"), leaves, per_question)
    write_json_atomic(run_dir / SIDECAR_FILE, {**sidecar, QUALITY_KEY: quality})
    return quality


def score_job_quality(on: "SpecGrid", scored: "QueryScores", say: Callable[[str], None] = print) -> dict[str, Any]:
    """The sidecar entry a score job adds, `{attribution_quality: ...}`, for a spec on the toy world whose query
    task asks recorded facts; `{}` otherwise. Reuses the job's grid and tokenizer (`on`; a fraction of a second on
    the toy grids). A grid whose texts the fact spans cannot index is reported through `say` and skipped: the
    diagnostic never fails a finished score run."""
    from unlearnspec.toy.truth import is_toy_spec, task_known

    task_dir = Path(on.assets.world.task_dir)
    if not is_toy_spec(on.spec) or not task_known(task_dir, scored.task):
        return {}
    leaves = {
        leaf: (entry.task, entry.scores) for leaf, entry in scored.per_task.items() if task_known(task_dir, entry.task)
    }
    try:
        return {QUALITY_KEY: grid_quality(on, scored.task, scored.scores, leaves, scored.per_question)}
    except UserError as exc:
        say(f"[{on.spec.name}] attribution quality skipped: {exc.problems[0].message}")
        return {}

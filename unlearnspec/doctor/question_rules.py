"""D15 (per-question-scores): are the units an aggregate rule reads usable, and not noise?

A rule naming `min_q(x)`, `rank_q(x)` or `wsum_q(x)` reads `per_question_scores.pt` [Q, N, S] of score
source x (`magic.query.per: question`); one naming `min_t(x)`, `rank_t(x)` or `wsum_t(x)` reads x's leaf
files `per_token_scores.<leaf>.pt` (`magic.query.per: task`), stacked [T, N, S]. When x's score folder
exists, doctor opens those files with the run's own loader and checks (error when they cannot be used:
missing `per_question` / `per_task` entry, wrong Q, not 3-D, NaN, a pickle with code, ...), then counts the
units (questions, leaf tasks) whose scores are all near zero: max |s_u| over the tokens the spec reads
(columns below max_seq_len, column 0 excluded; a score run writes 0 where its grid has no target) below
`near_zero` x the median over the units of that max, or exactly 0. Such a unit's normalised scores are
noise, yet `min` and `rank` still let it contribute its own top tokens; a warning names how many of the
units they are. Reads the files only for specs that name an aggregate.
"""

from __future__ import annotations

from typing import Iterator

from unlearnspec.doctor.context import Entry, Workspace, display
from unlearnspec.doctor.findings import Finding
from unlearnspec.errors import UserError
from unlearnspec.spec.load import resolve_path
from unlearnspec.spec.rules import AGGREGATION_PER, aggregation_parts, parse_source

DEFAULT_NEAR_ZERO = 1e-3
"""Default of `doctor --near-zero`: a unit whose max |score| is below this x the median unit's is near zero."""
SHOWN = 8
"""Near-zero units named in the evidence."""
_UNIT = {
    "q": ("question", "questions", "per-question", "out of the query"),
    "t": ("leaf task", "leaf tasks", "leaf-task", "out of the query group"),
}


def question_findings(entry: Entry, ws: Workspace, near_zero: float = DEFAULT_NEAR_ZERO) -> Iterator[Finding]:
    spec = entry.spec
    if spec is None or spec.magic is not None:
        return
    groups: dict[tuple[str, str], list[str]] = {}  # (source, family suffix) -> the aggregates read
    for full in sorted(spec.tokens.referenced_sources()):
        agg, name, _ = parse_source(full)
        if agg is not None and name in spec.scores:
            groups.setdefault((name, aggregation_parts(agg)[1]), []).append(full)
    for (name, fam), fulls in sorted(groups.items()):
        src = spec.scores[name]
        if ws.sidecar(entry, src) is None:
            continue  # no score folder yet (or a built-in source, refused by validation)
        import torch

        from unlearnspec.scores import SCORES_FILE
        from unlearnspec.scores.aggregate import READERS, near_zero_questions

        one, many, scores_of, leave_out = _UNIT[fam]
        mean_path = (
            resolve_path(entry.path, src.path) if src.path is not None else ws.score_dir(entry, src) / SCORES_FILE
        )
        n, s_data = spec.data.select.count, spec.data.max_seq_len
        reads = ", ".join(f"`{f}`" for f in fulls)
        valid = torch.ones(n, s_data, dtype=torch.bool)
        valid[:, 0] = False
        try:
            units = READERS[fam](mean_path, src, fulls[0], n, s_data, valid)
        except UserError as exc:
            per = AGGREGATION_PER[fam]
            yield Finding(
                "D15",
                "error",
                entry.shown,
                f"the token rule reads {reads}, but the {scores_of} scores of `{name}` cannot be used",
                tuple(p.render() for p in exc.problems),
                f"Fix what the evidence names (usually: set `per: {per}` under magic.query of the producing "
                "spec and rerun it); the run would stop there.",
            )
            continue
        low, median = near_zero_questions(units.scores, valid, near_zero)
        if not low:
            continue
        named = ", ".join(units.names[u] for u in low[:SHOWN])
        more = f" and {len(low) - SHOWN} more" if len(low) > SHOWN else ""
        yield Finding(
            "D15",
            "warning",
            entry.shown,
            f"score source `{name}`: {len(low)} of {len(units.names)} {many} have near-zero scores, so {reads} over "
            "them is noise-driven",
            (
                f"max |s_u| over the tokens the spec reads is below --near-zero {near_zero:g} x the median {one}'s "
                f"({median:.3g}), or 0, for: {named}{more}",
                f"scores: {display(units.shown)}",
            ),
            f"min_{fam} and rank_{fam} still let each such {one} contribute its own top tokens (noise ranked like another "
            f"{one}'s signal); wsum_{fam} weights it by its strongest proponent, so hardly at all. Leave those {many} "
            f"{leave_out} and rescore, read `wsum_{fam}({name})` or plain `{name}`, or set --near-zero.",
        )

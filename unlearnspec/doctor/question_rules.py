"""D15 (per-question-scores): are the per-question scores an aggregate rule reads usable, and not noise?

A rule naming `min_q(x)`, `rank_q(x)` or `wsum_q(x)` reads `per_question_scores.pt` [Q, N, S] of score
source x (`magic.query.per: question`). When x's score folder exists, doctor opens that file with the run's
own loader and checks (error when it cannot be used: missing `per_question` entry, wrong Q, not 3-D, NaN, a
pickle with code, ...), then counts the questions whose scores are all near zero: max |s_q| over the tokens
the spec reads (columns below max_seq_len, column 0 excluded; a score run writes 0 where its grid has no
target) below `near_zero` x the median over the questions of that max, or exactly 0. Such a question's
normalised scores are noise, yet `min_q` and `rank_q` still let it contribute its own top tokens; a
warning names how many of the Q questions they are. Reads the file only for specs that name an aggregate.
"""

from __future__ import annotations

from typing import Iterator

from unlearnspec.doctor.context import Entry, Workspace, display
from unlearnspec.doctor.findings import Finding
from unlearnspec.errors import UserError
from unlearnspec.spec.load import resolve_path
from unlearnspec.spec.rules import parse_source

DEFAULT_NEAR_ZERO = 1e-3
"""Default of `doctor --near-zero`: a question whose max |score| is below this x the median question's is near zero."""
SHOWN = 8
"""Near-zero questions named in the evidence."""


def question_findings(entry: Entry, ws: Workspace, near_zero: float = DEFAULT_NEAR_ZERO) -> Iterator[Finding]:
    spec = entry.spec
    if spec is None or spec.magic is not None:
        return
    by_source: dict[str, list[str]] = {}
    for full in sorted(spec.tokens.referenced_sources()):
        agg, name, _ = parse_source(full)
        if agg is not None and name in spec.scores:
            by_source.setdefault(name, []).append(full)
    for name, fulls in sorted(by_source.items()):
        src = spec.scores[name]
        if ws.sidecar(entry, src) is None:
            continue  # no score folder yet (or a built-in source, refused by validation)
        import torch

        from unlearnspec.aggregate import near_zero_questions, read_question_scores, to_target
        from unlearnspec.scores import SCORES_FILE

        mean_path = resolve_path(entry.path, src.path) if src.path is not None else ws.score_dir(entry, src) / SCORES_FILE
        n, s_data = spec.data.select.count, spec.data.max_seq_len
        reads = ", ".join(f"`{f}`" for f in fulls)
        try:
            sf, block, alignment = read_question_scores(mean_path, src, fulls[0], n, s_data)
        except UserError as exc:
            yield Finding("D15", "error", entry.shown, f"the token rule reads {reads}, but the per-question scores of "
                          f"`{name}` cannot be used", tuple(p.render() for p in exc.problems),
                          "Fix what the evidence names (usually: set `per: question` under magic.query of the producing "
                          "spec and rerun it); the run would stop there.")
            continue
        valid = torch.ones(n, s_data, dtype=torch.bool)
        valid[:, 0] = False
        low, median = near_zero_questions(to_target(sf.scores, alignment, s_data, valid), valid, near_zero)
        if not low:
            continue
        keys = block.doc_keys or []
        named = ", ".join(f"q{q}" + (f" ({str(keys[q])[:60]})" if q < len(keys) else "") for q in low[:SHOWN])
        more = f" and {len(low) - SHOWN} more" if len(low) > SHOWN else ""
        yield Finding(
            "D15", "warning", entry.shown,
            f"score source `{name}`: {len(low)} of {block.questions} questions have near-zero scores, so {reads} over "
            "them is noise-driven",
            (f"max |s_q| over the tokens the spec reads is below --near-zero {near_zero:g} x the median question's "
             f"({median:.3g}), or 0, for: {named}{more}", f"scores: {display(block.path)}"),
            "min_q and rank_q still let each such question contribute its own top tokens (noise ranked like another "
            "question's signal); wsum_q weights it by its strongest proponent, so hardly at all. Leave those questions "
            f"out of the query and rescore, read `wsum_q({name})` or plain `{name}`, or set --near-zero.",
        )

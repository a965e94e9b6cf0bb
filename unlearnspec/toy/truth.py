"""Ground-truth attribution on the toy world: the tokens of a spec's grid that state the facts a toy task asks.

The generator records, for every corpus row, the character span of each fact value it states (`facts`:
[{fact, start, end, correct}] in the cached corpus JSONL; see `unlearnspec.toy.world`). For a spec's own
token grid (the grid `unlearnspec.run.steps.prepare` builds: its toy corpus rows, tokenizer, max_seq_len),
each span is mapped to the tokens it overlaps through the tokenizer's character offsets. A token that states
a value of a fact the query task asks (by default toy_wmdp: the forget-domain facts) is marked
`FORGET_MARK` (-1): by construction a proponent of the hazard query (training on it lowers the query loss),
in the scores' sign convention. Optionally the values of the facts a retain task asks (toy_mmlu) are marked
`RETAIN_MARK` (+1). Lie-corpus spans (`correct: false`, a wrong value) are never marked. Everything else is 0.

The result is a standard score file (`per_token_scores.pt` [N, S], target alignment, `scores.json` with the
grid's data fingerprint), so a token rule reads it as a `path:` score source like any MAGIC scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import torch

from unlearnspec.errors import UserError
from unlearnspec.toy.world import row_text

if TYPE_CHECKING:
    from unlearnspec.data import SpecGrid, TokenGrid
    from unlearnspec.spec import Spec
    from unlearnspec.spec.assets import Assets

FORGET_MARK = -1.0
"""Score of a token stating a value of a queried forget fact: a proponent of the hazard query."""
RETAIN_MARK = 1.0
"""Score of a token stating a value of a fact the retain task asks (only with a retain task)."""
DEFAULT_TASK = "toy_wmdp"
"""The query task whose facts count as queried by default (the WMDP analogue)."""
RETAIN_TASK = "toy_mmlu"
"""The retain task (the MMLU analogue) whose facts the optional retain marks cover."""
SOURCE_NAME = "toy:truth"
"""`produced_by` recorded in the sidecar of a truth score file."""


@dataclass(frozen=True)
class Truth:
    """Truth scores [N, S] of one grid (target alignment, 0 wherever the grid has no target)."""

    scores: torch.Tensor
    fingerprint: str
    valid: torch.Tensor
    """Bool [N, S]: the grid's valid target positions."""
    info: dict[str, Any] = field(default_factory=dict)
    """Counts and provenance for the sidecar."""

    @property
    def forget_mask(self) -> torch.Tensor:
        """Bool [N, S]: valid target tokens stating a queried forget fact's value."""
        return (self.scores == FORGET_MARK) & self.valid


# --------------------------------------------------------------------------- facts a task asks
def toy_tasks(task_dir: Path) -> dict[str, list[Path]]:
    """The toy world's tasks by name, from a listing of its task folder (a name given by a user or a sidecar is
    looked up here, never joined into a path): a task `<task>.jsonl`, and a group `_<task>.yaml` whose leaves
    are `<task>_*.jsonl`."""
    files = sorted(p for p in task_dir.glob("*.jsonl") if p.is_file()) if task_dir.is_dir() else []
    tasks: dict[str, list[Path]] = {p.stem: [p] for p in files}
    for group in sorted(task_dir.glob("_*.yaml")) if task_dir.is_dir() else []:
        name = group.stem[1:]
        if name not in tasks:
            tasks[name] = [p for p in files if p.stem.startswith(f"{name}_")]
    return {k: v for k, v in tasks.items() if v}


def asked_facts(task_dir: Path, task: str) -> set[str]:
    """Fact ids a toy task asks: the `fact` of each doc in `<task>.jsonl`; for a group (`_<task>.yaml`,
    e.g. toy_wmdp_by_attribute) the union over its leaves `<task>_*.jsonl`."""
    tasks = toy_tasks(task_dir)
    if task not in tasks:
        raise UserError.one(
            str(task_dir),
            f"the toy world has no task {task[:80]!r}, so it is unknown which facts it asks "
            f"(a task is named, never given as a path). Name one of: {', '.join(sorted(tasks))}.",
        )
    facts: set[str] = set()
    for path in tasks[task]:
        for row in _jsonl(path, "toy task file"):
            fact = row.get("fact") if isinstance(row, dict) else None
            if not isinstance(fact, (str, int)):
                raise UserError.one(str(path), f"a doc names no `fact`; the toy world is damaged. {DAMAGED}")
            facts.add(str(fact))
    return facts


def task_known(task_dir: Path, task: str) -> bool:
    """True when `asked_facts(task_dir, task)` finds the task's docs (a task or group of this toy world)."""
    return task in toy_tasks(task_dir)


DAMAGED = "Rebuild the toy world: `unlearnspec toy build --force`."


def _jsonl(path: Path, what: str) -> list[Any]:
    from unlearnspec.safeio import MAX_JSON_BYTES, read_text

    text = read_text(path, what, DAMAGED, MAX_JSON_BYTES)
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as exc:
        raise UserError.one(str(path), f"the {what} is not JSON Lines ({str(exc)[:100]}). {DAMAGED}") from None


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a cached toy corpus (JSON Lines, in dataset order)."""
    return _jsonl(path, "toy corpus")


# --------------------------------------------------------------------------- spans -> tokens
def overlapping_tokens(offsets: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Positions of the tokens whose character range [a, b) overlaps [start, end). A zero-width range (a lone
    space between the words of a value, trimmed by the byte-level tokenizer) counts when strictly inside the
    span; special tokens such as BOS, at (0, 0), never do."""
    return [t for t, (a, b) in enumerate(offsets) if a < end and b > start]


def truth_for_grid(
    grid: "TokenGrid", tokenizer: Any, rows: Sequence[Mapping[str, Any]], marks: Mapping[str, float]
) -> torch.Tensor:
    """Truth scores [N, S] of `grid`: `marks[fact]` on every valid target token that overlaps a correct
    value span of that fact, 0 elsewhere. `rows` are the corpus rows the grid's `source_rows` index; the
    grid's texts must be those rows' texts (spans index `row_text`), else a UserError."""
    n, s = grid.input_ids.shape
    if len(grid.source_rows) != n or len(grid.texts) != n:
        raise ValueError(
            "the grid does not record its texts and source rows; build it with unlearnspec.data.build_grid"
        )
    out = torch.zeros((n, s), dtype=torch.float32)
    for i, (text, r) in enumerate(zip(grid.texts, grid.source_rows)):
        row = rows[r]
        if row_text(row) != text:
            raise UserError.one(
                f"row {r} ({row.get('id', '?')})",
                "the spec's training text differs from the toy corpus "
                "row the fact spans index (a chat template or separator other than the recorded "
                '`join_contents` with "\\n"?). Use the toy profile\'s data mapping unchanged.',
            )
        enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"])[:s], list(enc["offset_mapping"])[:s]
        if ids != grid.input_ids[i, : len(ids)].tolist():
            raise ValueError(f"row {i}: tokens differ from the grid's (another tokenizer?)")
        for span in row.get("facts", ()):
            mark = marks.get(span["fact"])
            if mark is None or not span.get("correct", True):
                continue
            for t in overlapping_tokens(offsets, int(span["start"]), int(span["end"])):
                out[i, t] = mark
    return out.masked_fill(~grid.valid_targets, 0.0)


# --------------------------------------------------------------------------- a spec's truth
def is_toy_spec(spec: "Spec") -> bool:
    """True when the spec trains the embedded toy model on a toy corpus (e.g. any shipped spec under --toy)."""
    return spec.data.toy is not None and spec.model.toy is not None


def require_toy(spec: "Spec", where: str) -> None:
    """Refuse a spec that does not run on the toy world: its data states no recorded facts."""
    if not is_toy_spec(spec):
        raise UserError.one(
            where,
            f"spec {spec.name!r} does not run on the embedded toy world (data.toy and model.toy "
            "unset), so no fact spans exist for its tokens. Ground truth exists only for toy runs: "
            "map the spec with --toy (or a toy profile).",
            loc="data",
        )


def spec_truth(
    spec: "Spec", spec_path: Path, assets: "Assets", task: str = DEFAULT_TASK, retain_task: Optional[str] = None
) -> Truth:
    """The truth of a toy spec's grid (built here; `grid_truth` reuses a job's): FORGET_MARK on the values of the
    facts `task` asks, RETAIN_MARK on those `retain_task` asks (when given)."""
    marks = _marks(spec, spec_path, assets, task, retain_task)  # first: an unknown task is refused before the grid
    from unlearnspec.data import SpecGrid, build_grid, load_texts
    from unlearnspec.train.modeling import load_tokenizer

    tokenizer = load_tokenizer(spec.model, assets)
    texts, rows_chosen = load_texts(spec.data, spec_path, tokenizer, assets)
    grid = build_grid(
        texts, tokenizer, spec.data.max_seq_len, assets.tokenizer_id(spec.model), spec.data.append_eos, rows_chosen
    )
    return _truth(SpecGrid(spec, spec_path, assets, grid, tokenizer), marks, task, retain_task)


def grid_truth(on: "SpecGrid", task: str = DEFAULT_TASK, retain_task: Optional[str] = None) -> Truth:
    """`spec_truth` of the grid a job already built (`on`: a score job's, a built-in producer's)."""
    return _truth(on, _marks(on.spec, on.spec_path, on.assets, task, retain_task), task, retain_task)


def _marks(spec: "Spec", spec_path: Path, assets: "Assets", task: str, retain_task: Optional[str]) -> dict[str, float]:
    """fact value -> its mark; refuses a spec off the toy world and an unknown task."""
    require_toy(spec, str(spec_path))
    task_dir = Path(assets.world.task_dir)
    marks: dict[str, float] = {}
    if retain_task is not None:
        marks.update(dict.fromkeys(asked_facts(task_dir, retain_task), RETAIN_MARK))
    marks.update(dict.fromkeys(asked_facts(task_dir, task), FORGET_MARK))
    return marks


def _truth(on: "SpecGrid", marks: dict[str, float], task: str, retain_task: Optional[str]) -> Truth:
    spec, assets, grid = on.spec, on.assets, on.grid
    assert spec.data.toy is not None
    scores = truth_for_grid(grid, on.tokenizer, read_rows(assets.corpus_path(spec.data.toy.corpus)), marks)
    valid = grid.valid_targets
    n_valid = int(valid.sum())
    forget = int(((scores == FORGET_MARK) & valid).sum())
    info: dict[str, Any] = {
        "produced_by": SOURCE_NAME,
        "spec": spec.name,
        "corpus": spec.data.toy.corpus,
        "world": assets.world_key,
        "task": task,
        "retain_task": retain_task,
        "valid_tokens": n_valid,
        "forget_tokens": forget,
        "forget_fraction": forget / max(n_valid, 1),
    }
    if retain_task is not None:
        info["retain_tokens"] = int(((scores == RETAIN_MARK) & valid).sum())
    from unlearnspec.data import grid_inputs

    info["data_fingerprint_inputs"] = grid_inputs(grid, spec.data)  # so a fingerprint mismatch names what differs
    return Truth(scores, grid.fingerprint, valid, info)


def claim_truth_folder(out: Path) -> None:
    """`out` may be new, empty, or a folder `toy truth` wrote before (only its two files, and a sidecar naming
    it); anything else is refused before any work, so no file the tool did not create is overwritten."""
    from unlearnspec.safeio import read_json_lenient
    from unlearnspec.scores import SCORES_FILE, SIDECAR_FILE

    if not out.is_dir():
        return  # new (a file in the way is refused by --out's check and the write path)
    names = {p.name for p in out.iterdir()}
    side = read_json_lenient(out / SIDECAR_FILE) if SIDECAR_FILE in names else None
    ours = isinstance(side, dict) and side.get("produced_by") == SOURCE_NAME
    foreign = sorted(names - {SCORES_FILE, SIDECAR_FILE} if ours else names)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise UserError.one(
            str(out),
            f"this folder holds files `toy truth` did not write ({shown}); it will not write "
            "into it (it could overwrite them). Pass a new or empty folder with --out.",
            loc="--out",
        )


def write_truth(out: Path, truth: Truth) -> dict[str, Path]:
    """Write `per_token_scores.pt` and `scores.json` (last: its presence marks a complete set) into `out`,
    which `claim_truth_folder` accepted."""
    from unlearnspec.safeio import write_json, write_with
    from unlearnspec.scores import SCORES_FILE, SIDECAR_FILE

    claim_truth_folder(out)
    n, s = truth.scores.shape
    sidecar = {
        "format_version": 1,
        "alignment": "target",
        "sign": (
            f"ground truth: {FORGET_MARK:g} on tokens stating a value of a fact the task asks (proponents of its "
            f"query loss), {RETAIN_MARK:g} on the retain task's fact values when marked, 0 elsewhere"
        ),
        "N": n,
        "S": s,
        "data_fingerprint": truth.fingerprint,
        **truth.info,
    }
    paths = {"per_token": out / SCORES_FILE, "sidecar": out / SIDECAR_FILE}
    write_with(paths["per_token"], lambda fh: torch.save(truth.scores.contiguous(), fh))
    write_json(paths["sidecar"], sidecar)
    return paths

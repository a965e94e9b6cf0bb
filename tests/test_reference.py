"""reports/reference/*.json reproduce the seed's seven recorded tables, cell by cell.

The seed lives beside the repository (`<repo>/../shared/seed/attribution_unlearning.md`, also in a
fresh CI clone); without it the comparison with the seed is skipped, the rendering tests still run.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from unlearnspec.report.reference import all_references, load_reference, render_reference_markdown

from .conftest import REPO

SEED = REPO.parent / "shared" / "seed" / "attribution_unlearning.md"
REFERENCES = all_references()
needs_seed = pytest.mark.skipif(
    not SEED.is_file(), reason=f"seed log not found at {SEED} (expected <repo>/../shared/seed/)"
)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_tables(text: str) -> dict[str, dict]:
    """Each `## heading` with its first Markdown table: raw lines, header cells, row cells, body text."""
    sections: dict[str, dict] = {}
    for block in re.split(r"^## ", text, flags=re.M)[1:]:
        title, _, body = block.partition("\n")
        lines = [l for l in body.splitlines() if l.startswith("|")]
        if len(lines) < 2:
            continue
        sections[title.strip()] = {
            "lines": lines,
            "header": _cells(lines[0]),
            "rows": [_cells(l) for l in lines[2:]],
            "body": body,
        }
    return sections


@pytest.fixture(scope="module")
def seed_text() -> str:
    return SEED.read_text(encoding="utf-8")


def test_seven_reference_files():
    assert len(REFERENCES) == 7
    assert {r.spec.split("_")[0] for r in REFERENCES} == {f"exp{i}" for i in range(1, 8)}


@needs_seed
@pytest.mark.parametrize("ref", REFERENCES, ids=lambda r: r.spec)
def test_every_cell_matches_the_seed(ref, seed_text):
    seed = parse_tables(seed_text)
    assert ref.title in seed, f"no seed section titled {ref.title!r}"
    table = seed[ref.title]
    assert table["header"] == list(ref.columns.values())
    keys = list(ref.columns)
    assert len(table["rows"]) == len(ref.rows)
    for seed_row, row in zip(table["rows"], ref.rows):
        assert seed_row == [row.lr if k == "lr" else row.metrics[k] for k in keys]
    if ref.script:
        assert f"Script: `{ref.script}`" in table["body"]
    assert "invalid due to bad HPs" in table["body"]


@needs_seed
def test_baseline_and_token_stats_match_the_seed(seed_text):
    m = re.search(r"Baseline: WMDP Bio Robust=(\S+), MMLU=(\S+)", seed_text)
    assert m is not None
    for ref in REFERENCES:
        assert ref.baseline == {"wmdp_bio_robust": m.group(1), "mmlu": m.group(2)}
    exp5 = next(r for r in REFERENCES if r.spec == "exp5_selective")
    assert exp5.token_stats is not None
    assert f"{100 * exp5.token_stats.selected_fraction:.1f}% of the {exp5.token_stats.valid_tokens:,}" in seed_text


@needs_seed
@pytest.mark.parametrize("ref", REFERENCES, ids=lambda r: r.spec)
def test_rendering_reproduces_the_seed_table(ref, seed_text):
    seed = parse_tables(seed_text)[ref.title]
    rendered = parse_tables(render_reference_markdown(ref))[ref.title]
    assert rendered["header"] == seed["header"] and rendered["rows"] == seed["rows"]
    # Where the seed's table is padded to column width (all but one), the lines are identical too.
    if len({len(l) for l in seed["lines"]}) == 1:
        assert rendered["lines"] == seed["lines"]


def test_rendering_is_labelled_recorded_and_padded():
    ref = load_reference(REPO / "reports" / "reference" / "exp6_compatible.json")
    text = render_reference_markdown(ref)
    assert "recorded (invalid: bad HPs)" in text
    table = [l for l in text.splitlines() if l.startswith("|")]
    assert len({len(l) for l in table}) == 1
    assert table[2] == "| 1e-5 | 0.4240          | 0.4511 |"


def test_cli_reference_only_prints_all_seven_tables(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "unlearnspec", "report", "--reference-only"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    for ref in REFERENCES:
        assert f"## {ref.title}" in out.stdout
        assert render_reference_markdown(ref) in out.stdout

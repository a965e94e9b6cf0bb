"""Doctor findings: rule, severity, evidence and fix; rendering as a rich table or JSON; exit code."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

Severity = Literal["error", "warning", "info"]
"""`info` states a measured fact (e.g. a score source's LDS); it never changes the exit code."""

RULES: dict[str, str] = {
    "D0": "invalid-spec",
    "D1": "unmatched-control",
    "D2": "score-data-mismatch",
    "D3": "score-regime-mismatch",
    "D4": "precision",
    "D5": "alignment-ambiguity",
    "D6": "effective-lr-shift",
    "D7": "collapse",
    "D8": "within-noise",
    "D9": "control-moves-metrics",
    "D10": "score-file",
    "D11": "lds",
    "D12": "attribution-quality",
    "D13": "no-positive-control",
    "D14": "underpowered",
    "D15": "per-question-scores",
    "D16": "gpu-memory",
    "D17": "no-attack",
}


@dataclass(frozen=True)
class Finding:
    """One problem of one spec, with the evidence that shows it and how to fix it."""

    code: str
    severity: Severity
    spec: str
    message: str
    evidence: tuple[str, ...] = field(default_factory=tuple)
    fix: str = ""

    @property
    def rule(self) -> str:
        return RULES[self.code]

    def to_json(self) -> dict:
        out = asdict(self)
        out["rule"] = self.rule
        out["evidence"] = list(self.evidence)
        return {k: out[k] for k in ("code", "rule", "severity", "spec", "message", "evidence", "fix")}


def sort_findings(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (f.spec, f.code, f.severity, f.message))


def problems(findings: list[Finding]) -> list[Finding]:
    """Errors and warnings (what the exit code counts)."""
    return [f for f in findings if f.severity != "info"]


def exit_code(findings: list[Finding], strict: bool = False) -> int:
    """0 clean, 1 warnings only, 2 errors (warnings count as errors with --strict)."""
    if any(f.severity == "error" for f in findings):
        return 2
    if problems(findings):
        return 2 if strict else 1
    return 0


def summary(findings: list[Finding], n_specs: int) -> dict[str, int]:
    return {
        "specs": n_specs,
        "errors": sum(f.severity == "error" for f in findings),
        "warnings": sum(f.severity == "warning" for f in findings),
        "info": sum(f.severity == "info" for f in findings),
    }


def to_json(findings: list[Finding], n_specs: int, strict: bool) -> str:
    payload = {
        "summary": summary(findings, n_specs),
        "exit_code": exit_code(findings, strict),
        "findings": [f.to_json() for f in findings],
    }
    return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"


def print_findings(findings: list[Finding], n_specs: int, console) -> None:
    from rich.table import Table
    from rich.text import Text

    counts = summary(findings, n_specs)
    if not findings:
        console.print(f"[green]clean[/green]: no problems in {n_specs} spec(s)")
        return
    colours = {"error": "red", "warning": "yellow", "info": "cyan"}
    table = Table(show_lines=True, title="unlearnspec doctor")
    table.add_column("severity", no_wrap=True)
    table.add_column("rule", no_wrap=True)
    table.add_column("spec", overflow="fold")
    table.add_column("finding and evidence", overflow="fold", ratio=3)
    table.add_column("fix", overflow="fold", ratio=2)
    for f in findings:
        body = Text(f.message, style="bold")
        for line in f.evidence:
            body.append("\n  • " + line, style="")
        table.add_row(Text(f.severity, style=colours[f.severity]), f"{f.code} {f.rule}", f.spec, body, f.fix)
    console.print(table)
    console.print(
        f"{counts['errors']} error(s), {counts['warnings']} warning(s), {counts['info']} note(s) in {n_specs} spec(s)"
    )


def print_summary(findings: list[Finding], n_specs: int, console, command: str) -> None:
    """The doctor's verdict in a few lines (what `run` prints at its end): the counts, then one line per error and
    warning (rule, spec, finding); `command` is the doctor call that shows the evidence and the fixes."""
    counts = summary(findings, n_specs)
    head = (
        f"doctor: {counts['errors']} error(s), {counts['warnings']} warning(s), {counts['info']} note(s) in "
        f"{n_specs} spec(s)"
    )
    console.print(head + ("" if problems(findings) else ": clean"), markup=False, highlight=False)
    colours = {"error": "red", "warning": "yellow"}
    for f in problems(findings):
        console.print(f"  [{colours[f.severity]}]{f.severity}[/] {f.code} {f.rule} {f.spec}: ", end="")
        console.print(f.message, markup=False, highlight=False)
    if problems(findings):
        console.print(f"  evidence and fixes: {command}", markup=False, highlight=False)

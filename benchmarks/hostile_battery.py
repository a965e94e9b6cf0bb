"""A hostile battery over issue 22's classes and their neighbours: new cases, not the issue's reproducers.

Every case runs one command (in-process through typer's CliRunner under an alarm, or as a subprocess where
a real process is the point: the pull-request script, a full or read-only disk, PATH without srun, a toy
run) in a sandbox project, and is checked for: a traceback, an exit code outside the expected ones, a lost
or changed file the tool did not create (user files planted in the project and a canary folder beside it,
which planted links point at), and executed code (a marker file injected text would create).

    python benchmarks/hostile_battery.py [--out battery.json] [--skip-slow] [--only "1 "]

Prints one line per class and the totals; `--skip-slow` leaves out the cases that train (where-rule runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

from battery_cases import build_cases  # noqa: E402  (benchmarks/battery_cases.py)


@dataclass
class Case:
    """One hostile input: a command line (or a callable returning (exit code, output)) and what it may exit with."""

    cls: str
    what: str
    argv: list[str] = field(default_factory=list)
    expect: tuple[int, ...] = (2,)
    subprocess: bool = False
    env: Optional[dict[str, str]] = None
    prefix: list[str] = field(default_factory=list)
    """Wrapper of a subprocess case (e.g. `unshare -rm sh -c ...`)."""
    call: Optional[Callable[[], tuple[int, str]]] = None
    must_say: Optional[str] = None
    """Text the output must hold (the refusal names the field or file)."""
    timeout: int = 300


@dataclass
class Sandbox:
    root: Path
    outside: Path
    marker: Path
    user_files: dict[Path, bytes] = field(default_factory=dict)

    def plant(self, path: Path, data: bytes | str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        self.user_files[path] = path.read_bytes()
        return path

    def lost(self) -> list[Path]:
        return [p for p, data in self.user_files.items() if not p.is_file() or p.is_symlink() or p.read_bytes() != data]

    def outside_changed(self, before: set[str]) -> bool:
        return {p.name for p in self.outside.iterdir()} != before


def _alarm(signum: int, frame: Any) -> None:
    raise TimeoutError("case timed out (a read that blocks?)")


def run_case(case: Case, box: Sandbox) -> dict[str, Any]:
    start = time.perf_counter()
    if case.call is not None:
        try:
            code, output = case.call()
        except Exception as exc:  # noqa: BLE001 - an escaped exception is a traceback
            code, output = -1, f"Traceback: {exc!r}"
    elif case.subprocess:
        cmd = case.prefix + (
            [sys.executable, "-m", "unlearnspec", *case.argv] if case.argv and not case.prefix else case.argv
        )
        env = {**os.environ, "PYTHONPATH": str(REPO), **(case.env or {})}
        try:
            proc = subprocess.run(
                cmd, cwd=box.root, env=env, capture_output=True, text=True, errors="replace", timeout=case.timeout
            )
            code, output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired:
            code, output = -1, "TIMEOUT (a read that blocks?)"
    else:
        from typer.testing import CliRunner

        from unlearnspec.cli import app

        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(case.timeout)
        try:
            result = CliRunner().invoke(app, case.argv)
            code, output = result.exit_code, result.output
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                output += f"\nTraceback (escaped): {result.exception!r}"
        except TimeoutError as exc:
            code, output = -1, f"Traceback: {exc}"
        finally:
            signal.alarm(0)
    return {"code": code, "output": output, "seconds": round(time.perf_counter() - start, 2)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip-slow", action="store_true")
    parser.add_argument("--only", default="", help="Run only the classes whose label starts with this (e.g. `1 `).")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hostile-"))
    box = Sandbox(root=tmp / "project", outside=tmp / "outside", marker=tmp / "project" / "PWNED")
    box.outside.mkdir(parents=True)
    box.plant(box.outside / "canary.txt", "outside the project: never written\n")
    box.plant(box.outside / "notes.md", "# a user's markdown file outside the project\n")
    os.chdir(tmp)
    cases = [c for c in build_cases(box, Case, skip_slow=args.skip_slow) if c.cls.startswith(args.only)]
    os.chdir(box.root)
    counts: Counter = Counter()
    per_class: dict[str, Counter] = defaultdict(Counter)
    failures = []
    for case in cases:
        before = {p.name for p in box.outside.iterdir()}
        res = run_case(case, box)
        out = res["output"]
        bad = {
            "tracebacks": "Traceback" in out or res["code"] == -1,
            "wrong_exit_codes": res["code"] not in case.expect
            or (case.must_say is not None and case.must_say not in out),
            "lost_files": bool(box.lost()) or box.outside_changed(before),
            "executed_code": box.marker.exists() or any(box.root.rglob("PWNED*")),
        }
        counts["cases"] += 1
        per_class[case.cls]["cases"] += 1
        for key, hit in bad.items():
            counts[key] += hit
            per_class[case.cls][key] += hit
        if any(bad.values()):
            failures.append(
                {
                    "class": case.cls,
                    "what": case.what,
                    "argv": case.argv,
                    "code": res["code"],
                    "expect": case.expect,
                    "must_say": case.must_say,
                    "why": [k for k, v in bad.items() if v],
                    "output": out[-1500:],
                }
            )
            for p in box.lost():  # restore, so one failure is counted once
                p.parent.mkdir(parents=True, exist_ok=True)
                p.unlink(missing_ok=True) if p.is_symlink() else None
                p.write_bytes(box.user_files[p])
            box.marker.unlink(missing_ok=True)
            for pwned in box.root.rglob("PWNED*"):  # so one execution is counted once
                pwned.unlink()
    for cls in sorted(per_class):
        c = per_class[cls]
        print(
            f"{cls:<28} cases {c['cases']:>4}  tracebacks {c['tracebacks']}  wrong exit {c['wrong_exit_codes']}  "
            f"lost files {c['lost_files']}  executed {c['executed_code']}"
        )
    print(
        f"TOTAL cases={counts['cases']} tracebacks={counts['tracebacks']} wrong_exit_codes={counts['wrong_exit_codes']} "
        f"lost_files={counts['lost_files']} executed_code={counts['executed_code']}"
    )
    for f in failures[:20]:
        print(json.dumps(f, default=str)[:2000])
    if args.out:
        args.out.write_text(
            json.dumps({"totals": counts, "per_class": per_class, "failures": failures}, indent=2, default=str)
        )
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

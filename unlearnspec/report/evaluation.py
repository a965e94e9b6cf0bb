"""One evaluated model as the report's statistics see it: acc, stderr and n per task, with
per-question correctness when it was logged (for paired tests and intervals)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from unlearnspec.report.stats import TestResult, binomial_stderr, mcnemar, two_proportion_z


@dataclass
class Evaluation:
    """Accuracy, stderr and n per task of one evaluated model, with per-question correctness if logged."""

    acc: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    n: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[int]] = field(default_factory=dict)
    samples_problem: Optional[str] = None
    """Why logged per-question correctness could not be used (its tests are then unpaired)."""

    def add(
        self, task: str, acc: float, n: int, stderr: Optional[float] = None, samples: Optional[list[int]] = None
    ) -> None:
        """Record one task (samples are kept only when there is one answer per question)."""
        self.acc[task] = acc
        self.n[task] = n
        self.stderr[task] = stderr if stderr is not None and stderr > 0 else binomial_stderr(acc, n)
        if samples is not None and len(samples) == n:
            self.samples[task] = samples

    def paired_with(self, other: "Evaluation", task: str) -> Optional[tuple[list[int], list[int]]]:
        """Both sides' per-question correctness on `task` when both logged it for the same questions."""
        a, b = self.samples.get(task), other.samples.get(task)
        return (a, b) if a is not None and b is not None and len(a) == len(b) else None

    def test_against(self, ref: "Evaluation", task: str) -> TestResult:
        """This model minus `ref` on `task`: McNemar when both logged per-question correctness on the same questions,
        else the unpaired two-proportion z test (the one test every comparison in a report uses)."""
        paired = self.paired_with(ref, task)
        if paired is not None:
            return mcnemar(*paired)
        return two_proportion_z(self.acc[task], self.n[task], ref.acc[task], ref.n[task])

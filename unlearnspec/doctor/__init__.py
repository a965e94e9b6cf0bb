"""`unlearnspec doctor`: find what made the recorded experiments invalid — unmatched controls, scores
from other data or another regime, low precision, ambiguous alignment, masked-LR shifts, collapse,
effects within noise — in specs, score sidecars, results.json and the recorded tables.

Imports no torch/transformers/lm_eval: it reads YAML and JSON only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from unlearnspec.doctor.attack_rules import missing_attack
from unlearnspec.doctor.batch_rules import score_batch_mismatch
from unlearnspec.doctor.context import Workspace
from unlearnspec.doctor.findings import RULES, Finding, exit_code, print_findings, sort_findings, to_json
from unlearnspec.doctor.lds_rules import DEFAULT_LDS_FRACTION_FACTOR, DEFAULT_LDS_MIN, lds_findings
from unlearnspec.doctor.memory_rules import memory_findings
from unlearnspec.doctor.power_rules import study_findings
from unlearnspec.doctor.quality_rules import quality_findings
from unlearnspec.doctor.question_rules import DEFAULT_NEAR_ZERO, question_findings
from unlearnspec.doctor.result_rules import result_findings
from unlearnspec.doctor.spec_rules import (
    alignment_ambiguity,
    invalid_spec,
    score_data_mismatch,
    score_file_unusable,
    score_regime_mismatch,
    sidecar_precision,
    unmatched_control,
)
from unlearnspec.doctor.step_rules import lr_shift
from unlearnspec.errors import Problem, UserError
from unlearnspec.report.stats import DEFAULT_POWER
from unlearnspec.spec.load import find_spec_files, is_profile_path

DEFAULT_LR_FACTOR = 1.25


@dataclass(frozen=True)
class Thresholds:
    """The cut-offs of the rules that judge numbers (each is a `doctor` option of the same name)."""

    lr_factor: float = DEFAULT_LR_FACTOR
    """D6: the largest per-token LR ratio to the control that is not a shift."""
    lds_min: float = DEFAULT_LDS_MIN
    """D11: a score source whose LDS (Spearman) is below this is an error."""
    lds_fraction_factor: float = DEFAULT_LDS_FRACTION_FACTOR
    """D11: how far the LDS's dropped fraction may be from the selection's before it warns."""
    power: float = DEFAULT_POWER
    """D14 (and the tables' MDE): the power the minimum detectable effect is stated at."""
    near_zero: float = DEFAULT_NEAR_ZERO
    """D15: the share of the median unit's max |score| below which a unit (question, leaf task) is near zero."""

    def check(self) -> None:
        """A UserError naming the option when a threshold is out of its range."""
        if not self.lr_factor >= 1.0:
            raise UserError.one(
                "--lr-factor", f"must be >= 1 (got {self.lr_factor}); it bounds the per-token LR ratio to the control."
            )
        if not -1.0 <= self.lds_min <= 1.0:
            raise UserError.one("--lds-min", f"must be a correlation in [-1, 1] (got {self.lds_min}).")
        if not self.lds_fraction_factor >= 1.0:
            raise UserError.one("--lds-fraction-factor", f"must be >= 1 (got {self.lds_fraction_factor}).")
        if not 0.5 <= self.power < 1.0:
            raise UserError.one(
                "--power",
                f"must be in [0.5, 1) (got {self.power}); it is the probability of detecting an effect of the MDE's "
                "size.",
            )
        if not 0.0 <= self.near_zero < 1.0:
            raise UserError.one(
                "--near-zero",
                f"must be in [0, 1) (got {self.near_zero}); it is a share of the median question's (leaf task's) "
                "max |score|.",
            )


def diagnose(
    paths: Iterable[str | Path],
    thresholds: Thresholds = Thresholds(),
    profile: Optional[Path] = None,
    cluster: Optional[Path] = None,
    gpu_mem_gb: Optional[float] = None,
) -> tuple[list[Finding], int]:
    """All findings for the spec files under `paths` (profiles skipped) and how many specs were read.
    With a `profile` (e.g. the toy profile), specs are read as mapped, so results of `run --toy` are checked.
    The specs of one call that share a control form a study (D13, D14). `thresholds`: the rules' cut-offs.
    `cluster` (a site file) and `gpu_mem_gb` (wins over the site's `gpu_mem_gb`): D16, whether each job fits its GPUs."""
    thresholds.check()
    lr_factor, power, near_zero = thresholds.lr_factor, thresholds.power, thresholds.near_zero
    lds_min, lds_fraction_factor = thresholds.lds_min, thresholds.lds_fraction_factor
    if gpu_mem_gb is not None and not gpu_mem_gb > 0:
        raise UserError.one("--gpu-mem-gb", f"must be a GPU's memory in GB, > 0 (got {gpu_mem_gb}).")
    site = None
    if cluster is not None:
        from unlearnspec.spec.profile import slurm_settings

        site, _ = slurm_settings(cluster, None)
    files, problems = find_spec_files(paths)
    if problems:
        raise UserError(problems)
    files = [f for f in files if not is_profile_path(f)]
    if not files:
        raise UserError([Problem(" ".join(map(str, paths)), "", "no .yaml/.yml spec files found.")])
    ws = Workspace(profile)
    findings: list[Finding] = []
    entries = [ws.spec(path) for path in files]
    for entry in entries:
        findings += invalid_spec(entry)
        if entry.spec is None:
            continue
        findings += unmatched_control(entry, ws)
        findings += score_file_unusable(entry, ws)
        findings += score_data_mismatch(entry, ws)
        findings += score_regime_mismatch(entry, ws)
        findings += score_batch_mismatch(entry, ws)
        findings += sidecar_precision(entry, ws)
        findings += alignment_ambiguity(entry, ws)
        findings += lr_shift(entry, ws, lr_factor, study=entries)
        findings += result_findings(entry, ws, power)
        findings += lds_findings(entry, ws, lds_min, lds_fraction_factor)
        findings += quality_findings(entry, ws)
        findings += question_findings(entry, ws, near_zero)
        findings += memory_findings(entry, site, gpu_mem_gb)
        findings += missing_attack(entry)
    findings += study_findings(entries, ws, power)
    return sort_findings(findings), len(files)


__all__ = [
    "DEFAULT_LDS_FRACTION_FACTOR",
    "DEFAULT_LDS_MIN",
    "DEFAULT_LR_FACTOR",
    "DEFAULT_NEAR_ZERO",
    "DEFAULT_POWER",
    "RULES",
    "Thresholds",
    "Finding",
    "diagnose",
    "exit_code",
    "print_findings",
    "to_json",
]

"""Small pure statistics for accuracy tables: Wilson intervals, two-proportion z test, McNemar's
test on paired per-question correctness, and the chance-level check. Standard library only."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal, Optional, Sequence

Z95 = 1.959963984540054
ALPHA = 0.05
"""Two-sided level of every test in a report (vs baseline, vs control, the attack's drop)."""
"""Two-sided 95% normal quantile."""

CHANCE = 0.25
"""Chance accuracy of a four-choice task answered at random."""

CHANCE_TOLERANCE = 0.02
"""Half-width of the chance band. A collapsed model often answers one letter and then scores that
letter's frequency, not 0.25: on MMLU (14,042 questions) 0.2295 (A) to 0.2689 (D), both recorded
in the seed. So "at chance" means the interval touches [0.23, 0.27], not just 0.25."""

EXACT_BELOW = 25
"""McNemar uses the exact binomial test when there are fewer discordant pairs than this, else
the chi-square statistic with Edwards' continuity correction (the usual rule of thumb)."""

DEFAULT_POWER = 0.8
"""Default of `report --power` and `doctor --power`: the power at which the minimum detectable effect
(MDE) is stated (the usual 80%)."""

TestName = Literal["mcnemar-exact", "mcnemar-chi2", "z-unpaired"]


@dataclass(frozen=True)
class TestResult:
    """Outcome of one significance test of acc_a - acc_b."""

    test: TestName
    p: float
    statistic: float
    b: int | None = None
    """Paired tests: questions right in a, wrong in b."""
    c: int | None = None
    """Paired tests: questions wrong in a, right in b."""

    @property
    def paired(self) -> bool:
        return self.test != "z-unpaired"

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p < alpha


def binomial_stderr(acc: float, n: int) -> float:
    """sqrt(p(1-p)/n); 0 for n <= 0."""
    return math.sqrt(max(acc * (1.0 - acc), 0.0) / n) if n > 0 else 0.0


def wilson_interval(acc: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion `acc` observed on `n` trials (95% by default).

    Unlike acc +- z*stderr it stays inside [0, 1] and keeps its coverage near 0 and 1."""
    if n <= 0:
        return (0.0, 1.0)
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (acc + z2 / (2 * n)) / denom
    half = z * math.sqrt(max(acc * (1.0 - acc), 0.0) / n + z2 / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def normal_two_sided_p(z: float) -> float:
    """P(|Z| >= |z|) for a standard normal Z."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def chi2_1df_sf(x: float) -> float:
    """Survival function of the chi-square distribution with one degree of freedom."""
    return math.erfc(math.sqrt(max(x, 0.0) / 2.0))


def two_proportion_z(acc_a: float, n_a: int, acc_b: float, n_b: int) -> TestResult:
    """Unpaired two-proportion z test with pooled variance (H0: equal accuracies).

    For two evaluations on the same questions it ignores their correlation and is conservative;
    use McNemar when per-question correctness is available."""
    if n_a <= 0 or n_b <= 0:
        return TestResult("z-unpaired", 1.0, 0.0)
    pooled = (acc_a * n_a + acc_b * n_b) / (n_a + n_b)
    se = math.sqrt(max(pooled * (1.0 - pooled), 0.0) * (1.0 / n_a + 1.0 / n_b))
    if se == 0.0:
        return TestResult("z-unpaired", 1.0 if acc_a == acc_b else 0.0, 0.0)
    z = (acc_a - acc_b) / se
    return TestResult("z-unpaired", normal_two_sided_p(z), z)


def binomial_two_sided_p(k: int, n: int) -> float:
    """Exact two-sided p of k successes in n fair coin flips: 2 * P(X <= min(k, n-k)), capped at 1."""
    if n == 0:
        return 1.0
    low = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(low + 1))
    return min(1.0, 2.0 * tail / 2.0**n)


def mcnemar(a: Sequence[int], b: Sequence[int]) -> TestResult:
    """McNemar's test on paired per-question correctness (0/1) of two evaluations.

    Exact binomial test on the discordant pairs when there are fewer than EXACT_BELOW of them,
    otherwise chi-square (1 df) with continuity correction: (|b - c| - 1)^2 / (b + c)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length ({len(a)} vs {len(b)})")
    right_a = sum(1 for x, y in zip(a, b) if x and not y)
    right_b = sum(1 for x, y in zip(a, b) if y and not x)
    disc = right_a + right_b
    if disc < EXACT_BELOW:
        return TestResult("mcnemar-exact", binomial_two_sided_p(right_a, disc), float(right_a), right_a, right_b)
    stat = (abs(right_a - right_b) - 1.0) ** 2 / disc
    return TestResult("mcnemar-chi2", chi2_1df_sf(stat), stat, right_a, right_b)


def at_chance(acc: float, n: int, chance: float = CHANCE, tolerance: float = CHANCE_TOLERANCE, z: float = Z95) -> bool:
    """True when the Wilson interval of acc overlaps [chance - tolerance, chance + tolerance]:
    the accuracy cannot be told apart from guessing or from always answering one letter."""
    low, high = wilson_interval(acc, n, z)
    return low <= chance + tolerance and high >= chance - tolerance


def beyond_noise(old: float, se_old: float, new: float, se_new: float, z: float = Z95) -> bool:
    """|new - old| > z * sqrt(se_old^2 + se_new^2): a change larger than two independent
    measurements with these standard errors would show by chance (95%). A NaN or infinite value
    on either side is always beyond noise: every comparison with NaN is False, so without this a
    NaN regression would pass as "within noise"."""
    if not all(math.isfinite(x) for x in (old, se_old, new, se_new)):
        return True
    return abs(new - old) > z * math.sqrt(se_old**2 + se_new**2)


def normal_quantile(p: float) -> float:
    """The standard normal quantile z with P(Z <= z) = p, for 0 < p < 1."""
    return NormalDist().inv_cdf(p)


def discordant_counts(a: Sequence[int], b: Sequence[int]) -> tuple[int, int]:
    """(questions right in a and wrong in b, questions wrong in a and right in b)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length ({len(a)} vs {len(b)})")
    return sum(1 for x, y in zip(a, b) if x and not y), sum(1 for x, y in zip(a, b) if y and not x)


def paired_difference_variance(b: int, c: int, n: int) -> float:
    """Variance of the paired accuracy difference d = (b - c) / n of two evaluations on the same n
    questions (b: right only in the first, c: right only in the second).

    Per question the difference is +1, -1 or 0, so with the discordance rate psi = (b + c) / n:
    Var(d) = (psi - d^2) / n (the plug-in variance of a mean of n such differences; it is what
    McNemar's test is built on, and it is 0 when no question changed)."""
    if n <= 0:
        return 0.0
    d = (b - c) / n
    return max((b + c) / n - d * d, 0.0) / n


def mcnemar_mde(discordance: float, n: int, alpha: float = 0.05, power: float = DEFAULT_POWER) -> Optional[float]:
    """Minimum detectable effect of McNemar's test: the smallest |acc_a - acc_b| it detects with
    probability `power` at two-sided level `alpha`, on n paired questions with discordance rate psi.

    Connor's (1987) sample size for McNemar's test, n = (z_a sqrt(psi) + z_b sqrt(psi - d^2))^2 / d^2
    with z_a = z(1 - alpha/2) and z_b = z(power), solved for d (a quadratic in d):

        MDE = sqrt(psi) * (z_a * sqrt(n) + z_b * sqrt(n - z_a^2 + z_b^2)) / (n + z_b^2)

    (about (z_a + z_b) * sqrt(psi / n) for large n). psi is held at its observed value; an effect d
    larger than psi needs more discordant questions (|d| <= psi), so an MDE above psi is a lower bound.
    None when psi = 0 (nothing changed, so nothing estimates the noise) or n is too small for the formula."""
    if n <= 0 or not discordance > 0.0:
        return None
    za, zb = normal_quantile(1.0 - alpha / 2.0), normal_quantile(power)
    inner = n - za * za + zb * zb
    if inner <= 0:
        return None
    return math.sqrt(discordance) * (za * math.sqrt(n) + zb * math.sqrt(inner)) / (n + zb * zb)


def unpaired_mde(acc: float, n: int, alpha: float = 0.05, power: float = DEFAULT_POWER) -> Optional[float]:
    """Minimum detectable effect of the unpaired two-proportion z test with n questions per side at
    accuracy about `acc`: MDE = (z(1 - alpha/2) + z(power)) * sqrt(2 * acc * (1 - acc) / n)
    (normal approximation, equal variances). None for n <= 0 or acc at 0 or 1."""
    if n <= 0 or not 0.0 < acc < 1.0:
        return None
    za, zb = normal_quantile(1.0 - alpha / 2.0), normal_quantile(power)
    return (za + zb) * math.sqrt(2.0 * acc * (1.0 - acc) / n)


__all__ = [
    "CHANCE",
    "DEFAULT_POWER",
    "CHANCE_TOLERANCE",
    "EXACT_BELOW",
    "Z95",
    "TestResult",
    "TestName",
    "at_chance",
    "beyond_noise",
    "binomial_stderr",
    "binomial_two_sided_p",
    "chi2_1df_sf",
    "discordant_counts",
    "mcnemar",
    "mcnemar_mde",
    "normal_quantile",
    "paired_difference_variance",
    "unpaired_mde",
    "normal_two_sided_p",
    "two_proportion_z",
    "wilson_interval",
]

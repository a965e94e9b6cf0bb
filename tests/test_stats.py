"""unlearnspec.report.stats against hand-computed values: Wilson intervals, z test, McNemar, chance check."""

from __future__ import annotations

import math

import pytest

from unlearnspec.report.stats import (
    at_chance,
    beyond_noise,
    binomial_two_sided_p,
    mcnemar,
    two_proportion_z,
    wilson_interval,
)


def test_wilson_known_values():
    # 50/100: the textbook interval 0.4038-0.5962.
    low, high = wilson_interval(0.5, 100)
    assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)
    # 0/10: lower bound 0, upper z^2/(n+z^2) = 3.8415/13.8415.
    low, high = wilson_interval(0.0, 10)
    assert low == 0.0 and high == pytest.approx(3.841459 / 13.841459, abs=1e-6)


def test_wilson_is_asymmetric_near_zero_and_inside_unit_interval():
    low, high = wilson_interval(0.02, 50)
    assert 0.0 < low < 0.02 < high < 1.0
    assert (0.02 - low) < (high - 0.02)


def test_two_proportion_z_hand_computed():
    # 0.4666 vs 0.4297 on 868 questions each: pooled 0.44815, se 0.023873, z 1.5457, p 0.1222.
    res = two_proportion_z(0.4666, 868, 0.4297, 868)
    pooled = (0.4666 + 0.4297) / 2
    se = math.sqrt(pooled * (1 - pooled) * 2 / 868)
    assert res.statistic == pytest.approx((0.4666 - 0.4297) / se)
    assert res.p == pytest.approx(0.1222, abs=1e-4)
    assert res.test == "z-unpaired" and not res.paired and not res.significant()


def test_mcnemar_exact_hand_computed():
    # b=10 (right only in a), c=2: exact two-sided p = 2 * (C(12,0)+C(12,1)+C(12,2)) / 2^12 = 158/4096.
    a = [1] * 10 + [0] * 2 + [1] * 5 + [0] * 3
    b = [0] * 10 + [1] * 2 + [1] * 5 + [0] * 3
    res = mcnemar(a, b)
    assert (res.b, res.c) == (10, 2)
    assert res.test == "mcnemar-exact" and res.paired
    assert res.p == pytest.approx(158 / 4096)
    assert res.significant()


def test_mcnemar_chi2_with_continuity_correction_hand_computed():
    # b=30, c=15: (|30-15|-1)^2/45 = 196/45 = 4.3556, p = erfc(sqrt(4.3556/2)) = 0.03689.
    a = [1] * 30 + [0] * 15 + [1] * 100
    b = [0] * 30 + [1] * 15 + [1] * 100
    res = mcnemar(a, b)
    assert res.test == "mcnemar-chi2"
    assert res.statistic == pytest.approx(196 / 45)
    assert res.p == pytest.approx(0.03689, abs=1e-5)


def test_mcnemar_ignores_concordant_pairs_and_rejects_unpaired_lengths():
    same = [1, 0, 1, 1, 0]
    assert mcnemar(same, same).p == 1.0
    with pytest.raises(ValueError):
        mcnemar([1, 0], [1])


def test_binomial_p_symmetric_and_capped():
    assert binomial_two_sided_p(3, 10) == binomial_two_sided_p(7, 10)
    assert binomial_two_sided_p(5, 10) == 1.0
    assert binomial_two_sided_p(0, 0) == 1.0


@pytest.mark.parametrize(
    "acc,n,expected",
    [
        (0.2350, 868, True),  # exp2 collapse (WMDP)
        (0.2465, 14042, True),  # exp2 collapse (MMLU)
        (0.2689, 14042, True),  # always answering "D" on MMLU
        (0.3027, 14042, False),
        (0.4297, 868, False),
        (0.20, 20, True),  # tiny n: anything is within noise of chance
    ],
)
def test_at_chance(acc, n, expected):
    assert at_chance(acc, n) is expected


def test_at_chance_tolerance_zero_is_interval_contains_quarter():
    assert at_chance(0.2689, 14042, tolerance=0.0) is False
    assert at_chance(0.2523, 868, tolerance=0.0) is True


def test_beyond_noise():
    se = 0.0168
    assert not beyond_noise(0.4297, se, 0.4332, se)  # 0.0035 < 1.96*0.0238
    assert not beyond_noise(0.4297, se, 0.3975, se)  # 0.0322 < 0.0466: even this is noise on 868 questions
    assert beyond_noise(0.4297, se, 0.3548, se)

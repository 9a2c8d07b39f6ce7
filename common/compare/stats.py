"""The statistics of an ablation table, from scipy: intervals over seeds and tests of a difference.

Seeds are the unit of replication: a row's mean and its 95% confidence interval use
Student's t with n - 1 degrees of freedom. A difference between two rows whose runs of one seed
share a random draw (the same initial weights or data order) is a paired t over those seeds:
each seed's difference is one observation, since the two runs are not independent. Between rows
that share no draw it is Welch's t (unequal variances), with its confidence interval from the
Welch-Satterthwaite degrees of freedom. With one seed on a side there is no spread to estimate, so two *recipes* get no
test. An exact McNemar test on the shared test images compares two given *networks* (a
two-sided binomial test on the images exactly one of the two gets right): two seeds of one
recipe differ by it, so it is never read as a recipe's effect.

A table runs several tests; `holm` adjusts their p-values together. `detectable_difference`
says how large a true difference a two-sample t-test with the table's n and spread finds
with 80% power (noncentral t), so a "not distinguishable from zero" comes with its reach.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import optimize
from scipy import stats as scipy_stats

LEVEL = 0.95
POWER = 0.80


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float | None   # None: undefined (a single value has no interval)
    high: float | None


def mean_ci(values: list, level: float = LEVEL) -> Interval:
    """Mean and its Student-t confidence interval over `values` (n >= 2 with some spread: identical
    values give no zero-width interval, which would claim certainty)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2 or statistics.stdev(values) == 0:
        return Interval(mean, None, None)
    half = scipy_stats.t.ppf((1 + level) / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half)


@dataclass(frozen=True)
class Difference:
    estimate: float        # mean of `a` minus mean of `b`
    low: float | None
    high: float | None
    p_value: float | None
    test: str              # "paired t", "Welch's t", "exact McNemar" (two networks) or "none: ..." (why not)


def welch(a: list, b: list, level: float = LEVEL) -> Difference:
    """mean(a) - mean(b), its Welch confidence interval and two-sided p-value (both sides n >= 2)."""
    estimate = statistics.fmean(a) - statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return Difference(estimate, None, None, None, NO_SPREAD)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = scipy_stats.t.ppf((1 + level) / 2, df) * math.sqrt(va + vb)
    p = scipy_stats.ttest_ind(a, b, equal_var=False).pvalue
    return Difference(estimate, estimate - half, estimate + half, float(p), "Welch's t")


def paired(a: list, b: list, level: float = LEVEL) -> Difference:
    """mean(a_i - b_i) over pairs of runs that share their random draws, its Student-t interval on the
    differences (n - 1 df) and two-sided p (scipy's ttest_rel); two or more pairs."""
    differences = [x - y for x, y in zip(a, b, strict=True)]
    interval = mean_ci(differences, level)
    if interval.low is None:
        return Difference(interval.mean, None, None, None, NO_SPREAD_PAIRED)
    p = scipy_stats.ttest_rel(a, b).pvalue
    return Difference(interval.mean, interval.low, interval.high, float(p), PAIRED)


def mcnemar(correct_a, correct_b) -> Difference:
    """Accuracy of a minus b on the same images, and the exact McNemar p-value: under 'no
    difference' each image that only one run gets right is that run's with probability 1/2."""
    only_a = sum(1 for x, y in zip(correct_a, correct_b) if x and not y)
    only_b = sum(1 for x, y in zip(correct_a, correct_b) if y and not x)
    n = len(correct_a)
    estimate = (only_a - only_b) / n
    discordant = only_a + only_b
    p = scipy_stats.binomtest(only_a, discordant, 0.5).pvalue if discordant else 1.0
    return Difference(estimate, None, None, float(p), "exact McNemar")


PAIRED = "paired t"
ONE_SEED = "none: one seed on a side has no spread to test two recipes with"
ONE_PAIR = "none: the rows share random draws in one seed only, too few to test two recipes with"
NO_SPREAD = "none: every seed gave the same value on both sides, so there is no spread to test with"
NO_SPREAD_PAIRED = "none: every seed's two runs differ by the same amount, so there is no spread to test with"
NO_SPREADS = (NO_SPREAD, NO_SPREAD_PAIRED)


def difference(a: list, b: list) -> Difference:
    """Two recipes' difference over seeds: Welch where both sides have two or more, else no test."""
    if len(a) >= 2 and len(b) >= 2:
        return welch(a, b)
    return Difference(statistics.fmean(a) - statistics.fmean(b), None, None, None, ONE_SEED)


def holm(p_values: list) -> list:
    """Holm's step-down adjustment of a family of p-values (None, no test, passes through): the
    i-th smallest of m is multiplied by m - i + 1, then made monotone; the family-wise error
    rate stays at most alpha."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted, running = list(p_values), 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def noncentrality_for_power(df: float, level: float = LEVEL, power: float = POWER) -> float:
    """The true difference, in standard errors, that a two-sided t-test at 1 - level with `df`
    degrees of freedom detects with probability `power` (noncentral t)."""
    critical = scipy_stats.t.ppf((1 + level) / 2, df)

    def shortfall(ncp):
        wrong_side = scipy_stats.nct.cdf(-critical, df, ncp)  # NaN far out, where it is below 1e-15
        return scipy_stats.nct.sf(critical, df, ncp) + (0.0 if math.isnan(wrong_side) else wrong_side) - power

    high = critical  # power is about 1/2 here; doubled until past `power` (nct is unstable far out)
    while shortfall(high) < 0:
        high *= 2
    return float(optimize.brentq(shortfall, 0.0, high))


def detectable_difference(a: list, b: list, level: float = LEVEL, power: float = POWER) -> float | None:
    """The smallest true difference of means a two-sample t-test (pooled sd of `a` and `b`) detects
    with `power` at 1 - level; None without a spread on both sides."""
    df = len(a) + len(b) - 2
    if len(a) < 2 or len(b) < 2:
        return None
    pooled = math.sqrt(((len(a) - 1) * statistics.variance(a) + (len(b) - 1) * statistics.variance(b)) / df)
    if pooled == 0:
        return None  # no spread: nothing to say what a test could find
    return pooled * math.sqrt(1 / len(a) + 1 / len(b)) * noncentrality_for_power(df, level, power)


def detectable_paired(differences: list, level: float = LEVEL, power: float = POWER) -> float | None:
    """The smallest true difference a paired t-test on these per-seed differences detects with `power`
    at 1 - level; None below two pairs or without spread."""
    n = len(differences)
    if n < 2 or statistics.stdev(differences) == 0:
        return None
    return statistics.stdev(differences) / math.sqrt(n) * noncentrality_for_power(n - 1, level, power)


def gap(values: list, reference: float, level: float = LEVEL) -> Interval:
    """reference - mean(values), with the 95% CI of our mean carried over (the reference is one
    fixed number: the report's single run, whose own noise is unknown)."""
    ours = mean_ci(values, level)
    if ours.low is None:
        return Interval(reference - ours.mean, None, None)
    return Interval(reference - ours.mean, reference - ours.high, reference - ours.low)


def welch_power(sd_a: float, sd_b: float, n: int, effect: float, alpha: float) -> float:
    """Power of a two-sided Welch t-test at `alpha` with n runs per arm, for a true difference `effect`
    between arms with these standard deviations (noncentral t at the Welch-Satterthwaite df)."""
    va, vb = sd_a ** 2 / n, sd_b ** 2 / n
    df = (va + vb) ** 2 / (va ** 2 / (n - 1) + vb ** 2 / (n - 1))
    ncp = abs(effect) / math.sqrt(va + vb)
    critical = scipy_stats.t.ppf(1 - alpha / 2, df)
    wrong_side = scipy_stats.nct.cdf(-critical, df, ncp)
    return float(scipy_stats.nct.sf(critical, df, ncp) + (0.0 if math.isnan(wrong_side) else wrong_side))


def paired_power(sd_differences: float, n: int, effect: float, alpha: float) -> float:
    """Power of a two-sided paired t-test at `alpha` over n pairs whose differences have this standard
    deviation, for a true mean difference `effect` (noncentral t, n - 1 df)."""
    df, ncp = n - 1, abs(effect) / (sd_differences / math.sqrt(n))
    critical = scipy_stats.t.ppf(1 - alpha / 2, df)
    wrong_side = scipy_stats.nct.cdf(-critical, df, ncp)
    return float(scipy_stats.nct.sf(critical, df, ncp) + (0.0 if math.isnan(wrong_side) else wrong_side))


SEEDS_LIMIT = 10_000


def seeds_needed(sd_a: float, sd_b: float, effect: float, alpha: float, power: float = POWER) -> int | None:
    """The fewest runs per arm (equal arms) with which a Welch t-test at `alpha` finds a true
    difference `effect` with at least `power`, the spreads taken as the pilot's (Colas et al. 2018,
    "How many random seeds?"); None for no effect, no spread, or beyond SEEDS_LIMIT."""
    if not effect or not (sd_a or sd_b):
        return None
    return _fewest(lambda n: welch_power(sd_a, sd_b, n, effect, alpha), power)


def pairs_needed(sd_differences: float, effect: float, alpha: float, power: float = POWER) -> int | None:
    """The fewest seeds, each run in both rows (pairs sharing their draws), with which a paired t-test at
    `alpha` finds a true difference `effect` with at least `power`, the differences' spread taken as the
    pilot's; None for no effect, no spread, or beyond SEEDS_LIMIT."""
    if not effect or not sd_differences:
        return None
    return _fewest(lambda n: paired_power(sd_differences, n, effect, alpha), power)


def _fewest(power_at, power: float) -> int | None:
    """The smallest n >= 2 with power_at(n) >= power (power rises with n): doubling, then bisection."""
    low, high = 2, 2
    while power_at(high) < power:
        low, high = high, high * 2
        if high > SEEDS_LIMIT:
            return None
    while low < high:
        middle = (low + high) // 2
        low, high = (middle + 1, high) if power_at(middle) < power else (low, middle)
    return high


def linear_trend(values: list) -> tuple:
    """scipy's least-squares line through (0, values[0]), (1, values[1]), ...: (slope, intercept, r, p, stderr)."""
    result = scipy_stats.linregress(range(len(values)), values)
    return result.slope, result.intercept, result.rvalue, result.pvalue, result.stderr


def prediction(values: list, reference: float, level: float = LEVEL) -> tuple:
    """(Interval, p): where one more run of ours falls with probability `level` (Student t, n - 1 df,
    mean ± t s sqrt(1 + 1/n)), and the two-sided p of a single run as far from our mean as `reference`
    (the report's one run, compared as one run, not as a mean). (None-interval, None) below two values
    or without spread."""
    n, mean = len(values), statistics.fmean(values)
    if n < 2 or statistics.stdev(values) == 0:
        return Interval(mean, None, None), None
    scale = statistics.stdev(values) * math.sqrt(1 + 1 / n)
    half = scipy_stats.t.ppf((1 + level) / 2, n - 1) * scale
    p = 2 * scipy_stats.t.sf(abs(reference - mean) / scale, n - 1)
    return Interval(mean, mean - half, mean + half), float(p)

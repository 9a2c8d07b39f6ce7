"""The statistics of an ablation table, from scipy: intervals over seeds and tests of a difference.

Seeds are the unit of replication: a row's mean and its 95% confidence interval use
Student's t with n - 1 degrees of freedom; a difference between two rows uses Welch's t
(unequal variances), with its confidence interval from the Welch-Satterthwaite degrees of
freedom. With one seed on each side there is no spread to estimate; the two runs are then
compared image by image on the shared test set with an exact McNemar test (a two-sided
binomial test on the images exactly one of the two gets right).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats as scipy_stats

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float | None   # None: undefined (a single value has no interval)
    high: float | None


def mean_ci(values: list, level: float = LEVEL) -> Interval:
    """Mean and its Student-t confidence interval over `values` (n >= 2)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return Interval(mean, None, None)
    half = scipy_stats.t.ppf((1 + level) / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half)


def prediction_interval(values: list, level: float = LEVEL) -> Interval:
    """Where one more seed's value would fall with probability `level`, if seeds are normal:
    mean +- t(n - 1) * s * sqrt(1 + 1/n)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return Interval(mean, None, None)
    half = scipy_stats.t.ppf((1 + level) / 2, n - 1) * statistics.stdev(values) * math.sqrt(1 + 1 / n)
    return Interval(mean, mean - half, mean + half)


@dataclass(frozen=True)
class Difference:
    estimate: float        # mean of `a` minus mean of `b`
    low: float | None
    high: float | None
    p_value: float | None
    test: str              # "Welch's t", "exact McNemar" or "none"


def welch(a: list, b: list, level: float = LEVEL) -> Difference:
    """mean(a) - mean(b), its Welch confidence interval and two-sided p-value (both sides n >= 2)."""
    estimate = statistics.fmean(a) - statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return Difference(estimate, estimate, estimate, 0.0 if estimate else 1.0, "Welch's t")
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = scipy_stats.t.ppf((1 + level) / 2, df) * math.sqrt(va + vb)
    p = scipy_stats.ttest_ind(a, b, equal_var=False).pvalue
    return Difference(estimate, estimate - half, estimate + half, float(p), "Welch's t")


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


def difference(a: list, b: list, correct_a=None, correct_b=None) -> Difference:
    """Welch over seeds where both sides have two or more, else McNemar on per-image correctness
    (given for one seed a side), else nothing to test."""
    if len(a) >= 2 and len(b) >= 2:
        return welch(a, b)
    if correct_a is not None and correct_b is not None:
        return mcnemar(correct_a, correct_b)
    return Difference(statistics.fmean(a) - statistics.fmean(b), None, None, None, "none")

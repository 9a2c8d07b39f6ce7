"""Main effects of a two-level factorial ablation, by a linear model over all its runs.

A design is a set of runs that vary k >= 2 recipe fields at two values each, every value
appearing in half the cells and the fields' columns orthogonal: a full factorial (all 2^k
cells, e.g. `--sweep model=a,b --sweep augment=none,crop_flip ...`) or a regular fraction
of one. Each field is coded -1 at its first value and +1 at its second, in the field's
stated order (`value_order`: its flag's choices, numbers ascending, off before on).

The model, fitted by least squares (numpy) over every run (seeds are replicates):
    accuracy = b0 + sum_i b_i x_i + sum_{i<j} b_ij x_i x_j + noise,
the two-way terms chosen whatever the order of the fields: a pair whose column equals a main
effect's (a resolution-III fraction) is not fitted and the main effect is shown with it; pairs
whose columns equal each other's (resolution IV) are one term, shown with all its names; and
the estimable terms are fitted all together, or none of them when all would leave fewer than
MIN_RESIDUAL_DF residual degrees of freedom (said, not chosen by order). Three- and more-way
interactions are assumed zero; with seeds repeated in cells, a lack-of-fit F test (the residual
beyond the seeds' own spread) checks that. A field's main
effect is 2 b_i: the mean at its second value minus the mean at its first, averaged over
the other fields; an interaction's is 2 b_ij: how much field i's effect grows from field
j's first value to its second, halved. Each comes with a 95% CI and a p-value from the
fit's t statistics (scipy), p-values Holm-adjusted over the table's terms, and the smallest
true effect the design detects with 80% power (its standard error times the noncentral-t
factor at the residual degrees of freedom).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

from common.compare import stats

MIN_RESIDUAL_DF = 4   # below this the residual spread, and so every interval, means little


@dataclass(frozen=True)
class Factor:
    name: str
    levels: tuple          # (first, second): coded -1, +1


@dataclass(frozen=True)
class Effect:
    term: tuple            # (field,) for a main effect, (field, field) for an interaction
    estimate: float        # accuracy at the second value minus at the first (fraction)
    low: float
    high: float
    p_value: float
    p_holm: float
    detectable: float      # smallest true |effect| found with 80% power at 0.05, unadjusted (fraction)
    aliases: tuple = ()    # the terms this one cannot be told from in this design, e.g. (("model", "augment"),)


@dataclass(frozen=True)
class Fit:
    factors: list
    effects: list          # main effects in the factors' order, then the interactions fitted
    n: int                 # runs
    residual_df: int
    residual_sd: float
    left_out: str = ""             # why estimable two-way terms were not fitted, if any were not
    lack_of_fit: tuple | None = None  # (F, df between, df within, p) where seeds repeat in cells


def value_order(name: str, values) -> list:
    """The stated order of a field's values: its flag's choices, else numbers ascending, off before on."""
    from common.config import Recipe, knobs

    declared = knobs(Recipe).get(name)
    options = getattr(declared[0].rule, "options", None) if declared else None
    if options:
        return sorted(values, key=lambda v: options.index(v) if v in options else len(options))
    return sorted(values, key=lambda v: (isinstance(v, str), v if not isinstance(v, (list, tuple)) else tuple(v)))


def find_factors(cells: list) -> list | None:
    """The design's factors, if `cells` (one {field: value} per distinct recipe, only the fields that
    vary) form a two-level factorial, full or a balanced orthogonal fraction; else None."""
    names = list(cells[0]) if cells else []
    if len(names) < 2 or any(set(cell) != set(names) for cell in cells):
        return None
    factors = []
    for name in names:
        values = {_hashable(cell[name]) for cell in cells}
        if len(values) != 2:
            return None
        factors.append(Factor(name, tuple(value_order(name, list(values)))))
    coded = code([{n: _hashable(v) for n, v in cell.items()} for cell in cells], factors)
    if np.any(coded.sum(0) != 0) or np.any(np.triu(coded.T @ coded, 1) != 0):
        return None  # unbalanced, or main effects confounded with each other
    return factors


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def code(settings: list, factors: list) -> np.ndarray:
    """Each run's -1/+1 coding, a column per factor."""
    return np.array([[1.0 if _hashable(s[f.name]) == f.levels[1] else -1.0 for f in factors] for s in settings])


def model_terms(coded: np.ndarray, factors: list) -> tuple:
    """(terms, aliases, why some were left out): the main effects, then one term per group of two-way
    interactions whose columns are equal up to sign, all of them or none; pairs equal to a main
    effect are not fitted but listed as its aliases. Independent of the factors' order."""
    mains = [(i,) for i in range(len(factors))]
    aliases = {term: [] for term in mains}
    groups = {}   # column (sign-normalised) -> pairs
    for pair in itertools.combinations(range(len(factors)), 2):
        column = _normalised(np.prod(coded[:, list(pair)], axis=1))
        same_main = [m for m in mains if np.array_equal(_normalised(coded[:, m[0]]), column)]
        if same_main:
            aliases[same_main[0]].append(pair)
        else:
            groups.setdefault(column.tobytes(), []).append(pair)
    pairs = []
    for group in groups.values():
        pairs.append(group[0])
        aliases[group[0]] = group[1:]
    if not pairs:
        return mains, aliases, ""
    matrix = design_matrix(coded, mains + pairs)
    if np.linalg.matrix_rank(matrix) < matrix.shape[1]:
        return mains, aliases, f"the {len(pairs)} two-way terms are not separable from each other here"
    if len(coded) - matrix.shape[1] < MIN_RESIDUAL_DF:
        return mains, aliases, (f"fitting its {len(pairs)} estimable two-way terms would leave fewer than "
                                f"{MIN_RESIDUAL_DF} residual degrees of freedom, so none was fitted (assumed zero)")
    return mains + pairs, aliases, ""


def _normalised(column: np.ndarray) -> np.ndarray:
    """A -1/+1 column with its first entry made +1: two columns equal up to sign compare equal."""
    return column * column[0]


def lack_of_fit(x: np.ndarray, y: np.ndarray, coded: np.ndarray) -> tuple | None:
    """(F, df between, df within, p): the model's residual beyond the spread of runs in the same cell
    (pure error); None without repeated cells, or with no df left for the omitted terms."""
    cells = {}
    for row, value in zip(map(tuple, coded), y):
        cells.setdefault(row, []).append(value)
    pure_ss = sum(float(np.sum((np.array(v) - np.mean(v)) ** 2)) for v in cells.values())
    pure_df = len(y) - len(cells)
    lack_df = len(cells) - x.shape[1]
    if pure_df < 1 or lack_df < 1 or pure_ss == 0:
        return None
    coefficients, *_ = np.linalg.lstsq(x, y, rcond=None)
    residual_ss = float(np.sum((y - x @ coefficients) ** 2))
    f = ((residual_ss - pure_ss) / lack_df) / (pure_ss / pure_df)
    return float(f), lack_df, pure_df, float(scipy_stats.f.sf(f, lack_df, pure_df))


def design_matrix(coded: np.ndarray, terms: list) -> np.ndarray:
    columns = [np.ones(len(coded))] + [np.prod(coded[:, list(term)], axis=1) for term in terms]
    return np.column_stack(columns)


def fit(factors: list, settings: list, values: list, level: float = stats.LEVEL) -> Fit | None:
    """The linear model over every run; None when too few runs leave no residual to judge by, or
    the runs have no spread at all around it (no p-value or interval could mean anything)."""
    coded = code(settings, factors)
    terms, aliases, left_out = model_terms(coded, factors)
    x, y = design_matrix(coded, terms), np.asarray(values, dtype=float)
    df = len(y) - x.shape[1]
    if df < 1 or np.linalg.matrix_rank(x) < x.shape[1]:
        return None
    coefficients, *_ = np.linalg.lstsq(x, y, rcond=None)
    residual = y - x @ coefficients
    sd = math.sqrt(float(residual @ residual) / df)
    if sd < 1e-12:
        return None
    errors = 2 * sd * np.sqrt(np.diag(np.linalg.inv(x.T @ x)))[1:]   # of 2 b: an effect's scale
    estimates = 2 * coefficients[1:]
    t_critical = scipy_stats.t.ppf((1 + level) / 2, df)
    p_values = [float(2 * scipy_stats.t.sf(abs(e / se), df)) for e, se in zip(estimates, errors)]
    power_factor = stats.noncentrality_for_power(df, level)
    names = lambda term: tuple(factors[i].name for i in term)  # noqa: E731
    effects = [Effect(names(term), float(e), float(e - t_critical * se), float(e + t_critical * se), p, p_adj,
                      float(power_factor * se), tuple(names(a) for a in aliases.get(term, ())))
               for term, e, se, p, p_adj in zip(terms, estimates, errors, p_values, stats.holm(p_values))]
    return Fit(factors, effects, len(y), df, sd, left_out, lack_of_fit(x, y, coded))


def cell_means(factors: list, settings: list, values: list, pair: tuple) -> dict:
    """{(value of pair[0], value of pair[1]): mean over runs} for an interaction plot."""
    by_name = {f.name: f for f in factors}
    out = {}
    for a in by_name[pair[0]].levels:
        for b in by_name[pair[1]].levels:
            chosen = [v for s, v in zip(settings, values) if _hashable(s[pair[0]]) == a and _hashable(s[pair[1]]) == b]
            out[(a, b)] = float(np.mean(chosen)) if chosen else None
    return out

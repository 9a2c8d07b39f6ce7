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
from dataclasses import dataclass, replace

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
    stratum: str = "runs"  # the error it was tested against: "runs", "initialisations", "runs within ..."
    df: int = 0            # that error's degrees of freedom
    standard_error: float = float("nan")
    weights: tuple = ()    # per run: estimate = sum(weights * run values), for the test images' own noise
    image_se: float | None = None     # the test images' standard error of the estimate (predictions.npz)
    any_test_set: tuple | None = None  # (low, high): 95% CI with seeds' and test images' noise together


@dataclass(frozen=True)
class Stratum:
    name: str              # what the error is the spread of
    df: int
    sd: float              # of one unit: a run, or an initialisation group's mean
    units: int


@dataclass(frozen=True)
class Fit:
    factors: list
    effects: list          # main effects in the factors' order, then the interactions fitted
    n: int                 # runs
    residual_df: int
    residual_sd: float
    left_out: str = ""             # why estimable two-way terms were not fitted, if any were not
    lack_of_fit: tuple | None = None  # (F, df between, df within, p) where seeds repeat in cells
    strata: tuple = ()             # (Stratum, ...): the errors the terms were tested against


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


def fit(factors: list, settings: list, values: list, groups: list | None = None, blocks: list | None = None,
        level: float = stats.LEVEL) -> Fit | None:
    """The linear model over every run, in error strata; None when no term could be tested (too few runs
    for a residual, or no spread at all around the model: no p-value or interval could mean anything).

    groups: per run, a key of its initial weights (runs with equal keys start alike); blocks: per run, a
    key of its data order (its seed). Blocks are fitted as fixed effects. A term constant within every
    group (a whole-plot term, e.g. the model when the seed and model decide the weights) is estimated and
    tested on the groups' means, against the spread between groups; the others within groups, against
    the runs' spread around their group (a split-plot analysis). Without groups every run is its own."""
    coded = code(settings, factors)
    terms, aliases, left_out = model_terms(coded, factors)
    y = np.asarray(values, dtype=float)
    group_of = _index(groups if groups is not None else range(len(y)))
    block = _dummies(_index(blocks)) if blocks is not None else np.zeros((len(y), 0))
    columns = {term: np.prod(coded[:, list(term)], axis=1) for term in terms}
    whole = [t for t in terms if _constant_within(columns[t], group_of)]
    split = [t for t in terms if t not in whole]
    means = _means_matrix(group_of)
    shared = means.shape[0] < len(y)
    strata, found = [], {}
    if whole or not split:
        nested = _constant_within_all(block, group_of)
        x = np.column_stack([np.ones(means.shape[0]), *([means @ block] if nested and block.size else []),
                             *[means @ columns[t] for t in whole]])
        strata.append(_stratum("initialisations" if shared else "runs", x, means, y, whole, found, level))
    if split:
        x = np.column_stack([_dummies(group_of, drop_first=False),
                             *([] if _constant_within_all(block, group_of) or not block.size else [block]),
                             *[columns[t] for t in split]])
        strata.append(_stratum("runs within initialisations", x, np.eye(len(y)), y, split, found, level))
    if strata and any(s is None for s in strata):
        return None
    tested = [found[t] for t in terms if found[t]["p_value"] is not None]
    if not tested:
        return None
    for entry, adjusted in zip(tested, stats.holm([e["p_value"] for e in tested])):
        entry["p_holm"] = adjusted
    names = lambda term: tuple(factors[i].name for i in term)  # noqa: E731
    effects = [Effect(names(t), aliases=tuple(names(a) for a in aliases.get(t, ())),
                      **{k: v for k, v in found[t].items()}) for t in terms]
    main = max(strata, key=lambda s: s.df)
    plain = design_matrix(coded, terms)
    return Fit(factors, effects, len(y), main.df, main.sd, left_out, lack_of_fit(plain, y, coded), tuple(strata))


def with_test_images(result: Fit, correct: np.ndarray, level: float = stats.LEVEL) -> Fit:
    """The fit with each effect's test-image standard error and an interval for any test set drawn like
    this one. correct: (runs x images) 0/1, the runs in the fit's order. An effect is a weighted sum of
    run accuracies, so per image it is the same weighted sum of right answers: its spread over the
    images is the test set's own noise (paired, images fixed across runs). The wider interval adds it
    to the seeds' variance, at the seeds' degrees of freedom (the test images' SE is known far better:
    Welch-Satterthwaite would add df and could make the wider variance a narrower interval)."""
    effects = []
    for effect in result.effects:
        per_image = np.asarray(effect.weights) @ correct
        image_se = float(per_image.std(ddof=1) / math.sqrt(correct.shape[1]))
        wider = None
        if effect.p_value is not None:
            half = scipy_stats.t.ppf((1 + level) / 2, effect.df) * math.hypot(effect.standard_error, image_se)
            wider = (float(effect.estimate - half), float(effect.estimate + half))
        effects.append(replace(effect, image_se=image_se, any_test_set=wider))
    return replace(result, effects=effects)


def _stratum(name: str, x: np.ndarray, averaging: np.ndarray, y: np.ndarray, terms: list, found: dict,
             level: float):
    """Least squares of (averaging @ y) on x, its last len(terms) columns the terms: each term's estimate
    (2 b), interval, p and per-run weights into `found`; the Stratum, or None if x is not of full rank."""
    if np.linalg.matrix_rank(x) < x.shape[1]:
        return None
    inverse = np.linalg.inv(x.T @ x)
    weights = inverse @ x.T @ averaging                     # coefficients = weights @ y
    residual = (np.eye(x.shape[0]) - x @ inverse @ x.T) @ averaging @ y
    df = x.shape[0] - x.shape[1]
    sd = math.sqrt(float(residual @ residual) / df) if df > 0 else float("nan")
    testable = df > 0 and sd > 1e-12
    t_critical = scipy_stats.t.ppf((1 + level) / 2, df) if testable else float("nan")
    power_factor = stats.noncentrality_for_power(df, level) if testable else float("nan")
    for k, term in enumerate(terms, start=x.shape[1] - len(terms)):
        estimate = float(2 * weights[k] @ y)
        se = 2 * sd * math.sqrt(inverse[k, k]) if testable else float("nan")
        p = float(2 * scipy_stats.t.sf(abs(estimate / se), df)) if testable else None
        found[term] = {"estimate": estimate, "low": estimate - t_critical * se, "high": estimate + t_critical * se,
                       "p_value": p, "p_holm": p, "detectable": power_factor * se, "stratum": name, "df": df,
                       "standard_error": se, "weights": tuple(2 * weights[k])}
    return Stratum(name, df, sd, x.shape[0])


def _index(keys) -> np.ndarray:
    """Each key's position among the distinct keys, in first-seen order."""
    positions = {}
    return np.array([positions.setdefault(key, len(positions)) for key in keys])


def _dummies(index: np.ndarray, drop_first: bool = True) -> np.ndarray:
    levels = range(1 if drop_first else 0, int(index.max()) + 1) if len(index) else range(0)
    return np.column_stack([(index == level).astype(float) for level in levels]) if levels else np.zeros((len(index), 0))


def _means_matrix(group_of: np.ndarray) -> np.ndarray:
    """(groups x runs): row g averages the runs of group g."""
    indicator = _dummies(group_of, drop_first=False).T
    return indicator / indicator.sum(1, keepdims=True)


def _constant_within(column: np.ndarray, group_of: np.ndarray) -> bool:
    return all(np.ptp(column[group_of == g]) == 0 for g in np.unique(group_of))


def _constant_within_all(matrix: np.ndarray, group_of: np.ndarray) -> bool:
    return all(_constant_within(matrix[:, j], group_of) for j in range(matrix.shape[1]))


def cell_means(factors: list, settings: list, values: list, pair: tuple) -> dict:
    """{(value of pair[0], value of pair[1]): mean over runs} for an interaction plot."""
    by_name = {f.name: f for f in factors}
    out = {}
    for a in by_name[pair[0]].levels:
        for b in by_name[pair[1]].levels:
            chosen = [v for s, v in zip(settings, values) if _hashable(s[pair[0]]) == a and _hashable(s[pair[1]]) == b]
            out[(a, b)] = float(np.mean(chosen)) if chosen else None
    return out

"""Two-level factorial designs among a table's rows, fitted by common.compare.factorial: the
main-effects table and its JSON."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from common.compare import factorial
from common.compare.runs import data_order, initialisation
from common.runfolder import short
from common.compare.rows import (correct_per_image, context_line, differing_fields, getattr_any, is_still_improving, metric_value,
                                 summarize_row)

EFFECT_METRICS = (("test_accuracy", "test acc"), ("val_accuracy", "best val acc"))


@dataclass(frozen=True)
class Design:
    """One table's rows as a two-level factorial: its factors, each run's setting and metric values,
    and the linear model's fit per metric (EFFECT_METRICS)."""
    context: tuple
    summary: dict           # the first row's summary: its dataset, experiment and context words
    row_summaries: list     # every row's summary (their layouts)
    factors: list           # [factorial.Factor]
    settings: list          # per run, {field: value}
    cells: int
    seeds: list
    values: dict            # {metric: per-run values, in settings' order}
    fits: dict              # {metric: factorial.Fit, or None where it could not be fitted}
    improving: tuple = (0, 0)  # (cells marked still improving, cells)
    cell_seeds: tuple = ()  # the seeds of each cell, in the cells' order
    shared_init: dict | None = None  # runs that start from the same weights: see shared_initialisations
    test_images: int = 0    # images in the test set all runs were scored on (0: predictions.npz missing)

    @property
    def fitted(self) -> bool:
        return all(self.fits.values())


def designs(rows: list) -> list:
    """Each table whose rows form a two-level factorial, fitted where it can be: [Design]."""
    found = []
    for context in dict.fromkeys(row.context for row in rows):
        members = [row for row in rows if row.context == context]
        varying = differing_fields([r.record for r in members])
        factors = factorial.find_factors([{n: getattr_any(r.record, n) for n in varying} for r in members])
        if factors is None:
            continue
        runs = [run for row in members for run in row.runs]
        settings = [{n: getattr_any(run.record, n) for n in varying} for run in runs]
        values = {metric: [metric_value(run, metric) for run in runs] for metric, _ in EFFECT_METRICS}
        groups, blocks = [initialisation(run) for run in runs], [data_order(run) for run in runs]
        fits = {metric: factorial.fit(factors, settings, values[metric], groups, blocks)
                for metric, _ in EFFECT_METRICS}
        correct = correct_matrix(runs)
        if fits["test_accuracy"] and correct is not None:
            fits["test_accuracy"] = factorial.with_test_images(fits["test_accuracy"], correct)
        found.append(Design(context, summarize_row(members[0]), [summarize_row(m) for m in members], factors, settings, len(members),
                            sorted({run.record.options.seed for run in runs}), values, fits,
                            (sum(map(is_still_improving, members)), len(members)),
                            tuple(tuple(run.record.options.seed for run in row.runs) for row in members),
                            shared_initialisations(runs, factors), 0 if correct is None else correct.shape[1]))
    return found


def correct_matrix(runs: list):
    """(runs x test images) 0/1 from every run's predictions.npz, or None if one lacks it, disagrees with
    its test.json or the test sets differ (the test-image noise needs the same images, paired)."""
    correct = [correct_per_image(run) for run in runs]
    if any(c is None for c in correct) or len({len(c) for c in correct}) != 1:
        return None
    if any(abs(sum(c) / len(c) - metric_value(run, "test_accuracy")) > 1e-6 for c, run in zip(correct, runs)):
        return None
    return np.array(correct, dtype=float)


def shared_initialisations(runs: list, factors: list) -> dict | None:
    """{"groups", "size", "constant", "inferred"} when runs share initial weights: how many groups, the
    largest, and the factors constant within every group (their effects are confounded with the
    initialisation, so their error is the groups', not the runs'); None when every run starts alone."""
    groups = {}
    for run in runs:
        groups.setdefault(initialisation(run), []).append(run)
    shared = [g for g in groups.values() if len(g) > 1]
    if not shared:
        return None
    constant = [f.name for f in factors
                if all(len({json.dumps(getattr_any(r.record, f.name)) for r in g}) == 1 for g in shared)]
    return {"groups": len(groups), "size": max(map(len, shared)), "constant": constant,
            "inferred": any(key[0] == "inferred" for key in groups)}


def seeds_words(design: Design) -> str:
    """'seeds 0,1 of each cell', or what each cell has when they differ (a run missing or failed)."""
    counts = {}
    for seeds in design.cell_seeds:
        counts[seeds] = counts.get(seeds, 0) + 1
    if len(counts) == 1:
        return f"seeds {','.join(map(str, next(iter(counts))))} of each cell"
    parts = [f"seeds {','.join(map(str, seeds))} in {n} cell{'s' * (n > 1)}" for seeds, n in
             sorted(counts.items(), key=lambda item: -item[1])]
    return "unbalanced: " + "; ".join(parts)


def _term(term: tuple) -> str:
    return " × ".join(term)


def _levels(design: Design, term: tuple) -> str:
    if len(term) > 1:
        return "interaction"
    (factor,) = [f for f in design.factors if f.name == term[0]]
    return f"{short(factor.levels[0])} → {short(factor.levels[1])}"


def _significant(effect) -> bool:
    return effect.p_holm is not None and effect.p_holm < 0.05


def shown_interactions(design: Design) -> list:
    """The two-way terms that stand out: Holm p < 0.05 on either metric, and always the largest |test effect|."""
    test, val = (design.fits[m].effects for m, _ in EFFECT_METRICS)
    pairs = [(t, v) for t, v in zip(test, val) if len(t.term) == 2]
    if not pairs:
        return []
    largest = max(pairs, key=lambda p: abs(p[0].estimate))
    return [p for p in pairs if p is largest or _significant(p[0]) or _significant(p[1])]


def _interval(effect, low=None, high=None) -> str:
    low, high = (effect.low, effect.high) if low is None else (low, high)
    if effect.p_value is None:
        return f"{effect.estimate:+.4f} (no error df)"
    dagger = " †" if effect.df < factorial.MIN_RESIDUAL_DF else ""
    return f"{effect.estimate:+.4f} [{low:+.4f}, {high:+.4f}]{dagger}"


def _p(effect) -> str:
    return "—" if effect.p_value is None else f"{effect.p_holm:.3g} (raw {effect.p_value:.3g})"


def _error(effect) -> str:
    return f"{'groups' if effect.stratum == 'initialisations' else 'runs'} ({effect.df})"


def effects_markdown(design: Design) -> str:
    """The main-effects table of one design, with what its model was, what it assumed and could detect."""
    head = f"**Main effects** · {context_line(design.summary, design.row_summaries)} · {len(design.settings)} runs in {design.cells} cells"
    if not design.fitted:
        return (f"{head}: not fitted: too few runs for a residual, or no spread at all around the model "
                "(every run of a cell alike), so no interval or p-value could mean anything.\n")
    test_fit, val_fit = (design.fits[m] for m, _ in EFFECT_METRICS)
    images = test_fit.effects[0].image_se is not None
    header = ["field", "from → to", "Δ test acc [unadjusted 95% CI, seeds]", "error (df)", "p, test (Holm)"]
    header += ["test-image SE", "Δ test, any test set [unadjusted 95% CI]"] if images else []
    header += ["Δ best val acc [unadjusted 95% CI, seeds]", "p, val (Holm)", "detectable Δ test (80% power, unadjusted)"]
    lines = [head, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    pairs = [(t, v) for t, v in zip(test_fit.effects, val_fit.effects) if len(t.term) == 1]
    pairs += shown_interactions(design)
    for t, v in pairs:
        cells = [_term(t.term) + "".join(f" = {_term(a)}" for a in t.aliases), _levels(design, t.term),
                 _interval(t), _error(t), _p(t)]
        if images:
            cells += [f"{t.image_se:.4f}", _interval(t, *t.any_test_set) if t.any_test_set else "—"]
        cells += [_interval(v), _p(v), "—" if t.p_value is None else f"{t.detectable:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + effects_footer(design, test_fit, val_fit, images)) + "\n"


def strata_words(design: Design, fit) -> str:
    """Which error each term was tested against, with its df and sd."""
    if len(fit.strata) == 1 and fit.strata[0].name == "runs":
        (only,) = fit.strata
        return (f"every term is tested against the runs' spread around the model: {only.df} degrees of freedom, "
                f"residual sd {only.sd:.4f}")
    words = []
    for stratum in fit.strata:
        names = ", ".join(_term(e.term) for e in fit.effects if e.stratum == stratum.name) or "no term"
        if stratum.name == "initialisations":
            words.append(f"{names} on the {stratum.units} groups of runs that start from the same weights (their "
                         f"means' spread: {stratum.df} df, sd {stratum.sd:.4f}; error 'groups')")
        else:
            words.append(f"{names} against the runs' spread within those groups ({stratum.df} df, sd "
                         f"{stratum.sd:.4f}; error 'runs')")
    return "split-plot errors: " + "; ".join(words)


def effects_footer(design: Design, test_fit, val_fit, images: bool) -> list:
    interactions = [t for t in test_fit.effects if len(t.term) == 2]
    hidden = len(interactions) - len(shown_interactions(design))
    blocks = len(design.seeds) > 1
    words = [f"Linear model over {test_fit.n} runs ({seeds_words(design)})"
             + (", each seed (its data order, shared by its runs) a block" if blocks else "")
             + f": {len(design.factors)} main effects and {len(interactions)} two-way interactions; three- and "
             f"more-way interactions are assumed zero; {strata_words(design, test_fit)}. An effect is the mean at "
             "the second value minus the mean at the first, averaged over the other fields; an interaction is half "
             f"the change of one field's effect across the other's values. p: t-test of each term against its "
             f"error, Holm-adjusted per metric over the design's {len(test_fit.effects)} terms (raw p beside; the rule: "
             "docs/ablations.md, 'Multiplicity'); brackets: "
             "unadjusted 95% CIs over seeds, on this one test set. Detectable: the smallest true effect this design "
             "finds with 80% power at 0.05 against the term's error, unadjusted."
             + (f" The other {hidden} interactions are not distinguishable from zero." if hidden > 0 else "")]
    if images:
        words.append(f"Test images: the seeds' intervals are about these {design.test_images} test images. "
                     "Test-image SE is the noise the images themselves add (paired: each effect's per-image "
                     "contrast of right answers, from predictions.npz); 'any test set' adds it to the seeds' "
                     "variance, for claims about images drawn like these rather than about this test set.")
    if any(t.aliases for t in test_fit.effects):
        words.append("A = B: this fraction cannot tell A from B; the estimate is their sum, read as either.")
    if test_fit.left_out:
        words.append(f"Two-way interactions: {test_fit.left_out}.")
    if test_fit.lack_of_fit:
        f, between, within, p = test_fit.lack_of_fit
        words.append(f"Lack of fit (what the model leaves out, against the seeds' own spread), test accuracy: "
                     f"F({between}, {within}) = {f:.2f}, p {p:.3g}.")
    if any(e.df < factorial.MIN_RESIDUAL_DF for e in test_fit.effects):
        words.append(f"† an error with fewer than {factorial.MIN_RESIDUAL_DF} degrees of freedom: the interval "
                     "rests on very few units' spread and says little.")
    if design.shared_init and design.shared_init["constant"]:
        shared = design.shared_init
        source = "inferred from each run's seed and model" if shared["inferred"] else "config.json's draws"
        words.append(f"Shared initial weights ({source}): the runs form {shared['groups']} groups of up to "
                     f"{shared['size']} that start from the same weights, and {', '.join(shared['constant'])} is "
                     "constant within each; so its effect is tested on the groups (error 'groups'), not on the runs "
                     "as if they were independent, and has far fewer degrees of freedom.")
    marked, cells = design.improving
    if marked:
        words.append(f"{marked} of {cells} cells were still improving when their runs stopped (marked ↑ in "
                     "compare's row tables): more epochs may change these effects.")
    return [w for word in words for w in (word, "")][:-1]


def design_json(design: Design) -> dict:
    out = {"dataset": design.summary["dataset"], "experiment": design.summary["experiment"],
           "context": context_line(design.summary, design.row_summaries), "cells": design.cells, "fitted": design.fitted,
           "cell_seeds": [list(seeds) for seeds in design.cell_seeds], "shared_initial_weights": design.shared_init,
           "factors": [{"name": f.name, "levels": list(f.levels)} for f in design.factors], "metrics": {}}
    for metric, _ in EFFECT_METRICS:
        fit = design.fits[metric]
        if fit is None:
            continue
        out["metrics"][metric] = {
            "runs": fit.n, "residual_df": fit.residual_df, "residual_sd": fit.residual_sd,
            "interactions_left_out": fit.left_out or None, "lack_of_fit": fit.lack_of_fit,
            "strata": [{"name": st.name, "df": st.df, "sd": st.sd, "units": st.units} for st in fit.strata],
            "effects": [effect_json(e) for e in fit.effects]}
    return out


def effect_json(effect) -> dict:
    tested = effect.p_value is not None
    return {"term": list(effect.term), "estimate": effect.estimate,
            "ci95": [effect.low, effect.high] if tested else [None, None], "p": effect.p_value,
            "p_holm": effect.p_holm, "error": effect.stratum, "df": effect.df,
            "standard_error": effect.standard_error if tested else None,
            "detectable_80": effect.detectable if tested else None, "test_image_se": effect.image_se,
            "ci95_any_test_set": list(effect.any_test_set) if effect.any_test_set else None,
            "aliases": [list(a) for a in effect.aliases]}

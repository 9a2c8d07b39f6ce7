"""Two-level factorial designs among a table's rows, fitted by common.compare.factorial: the
main-effects table and its JSON."""
from __future__ import annotations

import json
from dataclasses import dataclass

from common.compare import factorial
from common.runfolder import short
from common.compare.rows import (context_line, differing_fields, getattr_any, is_still_improving, metric_value,
                                 summarize_row)

EFFECT_METRICS = (("test_accuracy", "test acc"), ("val_accuracy", "best val acc"))


@dataclass(frozen=True)
class Design:
    """One table's rows as a two-level factorial: its factors, each run's setting and metric values,
    and the linear model's fit per metric (EFFECT_METRICS)."""
    context: tuple
    summary: dict           # the first row's summary: its dataset, experiment and context words
    factors: list           # [factorial.Factor]
    settings: list          # per run, {field: value}
    cells: int
    seeds: list
    values: dict            # {metric: per-run values, in settings' order}
    fits: dict              # {metric: factorial.Fit, or None where it could not be fitted}
    improving: tuple = (0, 0)  # (cells marked still improving, cells)
    cell_seeds: tuple = ()  # the seeds of each cell, in the cells' order
    shared_init: dict | None = None  # runs that start from the same weights: see shared_initialisations

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
        fits = {metric: factorial.fit(factors, settings, values[metric]) for metric, _ in EFFECT_METRICS}
        found.append(Design(context, summarize_row(members[0]), factors, settings, len(members),
                            sorted({run.record.options.seed for run in runs}), values, fits,
                            (sum(map(is_still_improving, members)), len(members)),
                            tuple(tuple(run.record.options.seed for run in row.runs) for row in members),
                            shared_initialisations(runs, factors)))
    return found


def initialisation(run) -> tuple:
    """What decides a run's initial weights: config.json's fingerprint, or for runs from before it was
    recorded, what the code derives them from (the seed, the model and its shape, pretrained or not)."""
    recorded = (run.record.raw.get("draws") or {}).get("initial_weights_sha256")
    if recorded:
        return ("recorded", recorded)
    r = run.record
    return ("inferred", r.options.seed, r.recipe.model, r.recipe.pretrained, r.recipe.image_size, r.dataset)


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


def shown_interactions(design: Design) -> list:
    """The two-way terms that stand out: Holm p < 0.05 on either metric, and always the largest |test effect|."""
    test, val = (design.fits[m].effects for m, _ in EFFECT_METRICS)
    pairs = [(t, v) for t, v in zip(test, val) if len(t.term) == 2]
    if not pairs:
        return []
    largest = max(pairs, key=lambda p: abs(p[0].estimate))
    return [p for p in pairs if p is largest or p[0].p_holm < 0.05 or p[1].p_holm < 0.05]


def effects_markdown(design: Design) -> str:
    """The main-effects table of one design, with what its model was, what it assumed and could detect."""
    head = f"**Main effects** · {context_line(design.summary)} · {len(design.settings)} runs in {design.cells} cells"
    if not design.fitted:
        return (f"{head}: not fitted: too few runs for a residual, or no spread at all around the model "
                "(every run of a cell alike), so no interval or p-value could mean anything.\n")
    test_fit, val_fit = (design.fits[m] for m, _ in EFFECT_METRICS)
    few = test_fit.residual_df < factorial.MIN_RESIDUAL_DF
    lines = [head, "", "| field | from → to | Δ test acc [95% CI] | p, test (Holm) | Δ best val acc [95% CI] "
             "| p, val (Holm) | detectable Δ test (80% power, unadjusted) |", "|" + "---|" * 7]
    pairs = [(t, v) for t, v in zip(test_fit.effects, val_fit.effects) if len(t.term) == 1]
    pairs += shown_interactions(design)
    for t, v in pairs:
        aliased = "".join(f" = {_term(a)}" for a in t.aliases)
        lines.append(f"| {_term(t.term)}{aliased} | {_levels(design, t.term)} "
                     f"| {t.estimate:+.4f} [{t.low:+.4f}, {t.high:+.4f}]{' †' if few else ''} "
                     f"| {t.p_holm:.3g} (raw {t.p_value:.3g}) | {v.estimate:+.4f} [{v.low:+.4f}, {v.high:+.4f}] "
                     f"| {v.p_holm:.3g} (raw {v.p_value:.3g}) | {t.detectable:.4f} |")
    return "\n".join(lines + [""] + effects_footer(design, test_fit, val_fit, few)) + "\n"


def effects_footer(design: Design, test_fit, val_fit, few: bool) -> list:
    interactions = [t for t in test_fit.effects if len(t.term) == 2]
    hidden = len(interactions) - len(shown_interactions(design))
    words = [f"Linear model over {test_fit.n} runs ({seeds_words(design)}): {len(design.factors)} main effects and "
             f"{len(interactions)} two-way interactions, {test_fit.residual_df} residual degrees of freedom (residual "
             f"sd {test_fit.residual_sd:.4f} test, {val_fit.residual_sd:.4f} val); three- and more-way interactions "
             "are assumed zero. An effect is the mean at the second value minus the mean at the first, averaged over "
             "the other fields; an interaction is half the change of one field's effect across the other's values. "
             f"p: t-test of each term, Holm-adjusted over the {len(test_fit.effects)} terms of each metric (raw p "
             "beside); brackets: unadjusted 95% CIs. Detectable: the smallest true effect this design finds with 80% "
             "power at 0.05, unadjusted." + (f" The other {hidden} interactions are not distinguishable from zero."
                                             if hidden > 0 else "")]
    if any(t.aliases for t in test_fit.effects):
        words.append("A = B: this fraction cannot tell A from B; the estimate is their sum, read as either.")
    if test_fit.left_out:
        words.append(f"Two-way interactions: {test_fit.left_out}.")
    if test_fit.lack_of_fit:
        f, between, within, p = test_fit.lack_of_fit
        words.append(f"Lack of fit (what the model leaves out, against the seeds' own spread), test accuracy: "
                     f"F({between}, {within}) = {f:.2f}, p {p:.3g}.")
    if few:
        words.append(f"† only {test_fit.residual_df} residual degrees of freedom: the intervals rest on very few "
                     "runs' spread and say little.")
    if design.shared_init and design.shared_init["constant"]:
        shared = design.shared_init
        words.append(f"Shared initial weights ({'inferred from each run' + chr(39) + 's seed and model' if shared['inferred'] else 'config.json' + chr(39) + 's draws'}"
                     f"): the runs form {shared['groups']} groups of up to {shared['size']} that start from "
                     f"the same weights, and {', '.join(shared['constant'])} is constant within each; its interval "
                     "above counts the runs as independent and is too narrow (its error is the groups', with far "
                     "fewer degrees of freedom). The fields that vary within the groups are tested correctly.")
    marked, cells = design.improving
    if marked:
        words.append(f"{marked} of {cells} cells were still improving when their runs stopped (marked ↑ in "
                     "compare's row tables): more epochs may change these effects.")
    return [w for word in words for w in (word, "")][:-1]


def design_json(design: Design) -> dict:
    out = {"dataset": design.summary["dataset"], "experiment": design.summary["experiment"],
           "context": context_line(design.summary), "cells": design.cells, "fitted": design.fitted,
           "cell_seeds": [list(seeds) for seeds in design.cell_seeds], "shared_initial_weights": design.shared_init,
           "factors": [{"name": f.name, "levels": list(f.levels)} for f in design.factors], "metrics": {}}
    for metric, _ in EFFECT_METRICS:
        fit = design.fits[metric]
        if fit is None:
            continue
        out["metrics"][metric] = {
            "runs": fit.n, "residual_df": fit.residual_df, "residual_sd": fit.residual_sd,
            "interactions_left_out": fit.left_out or None, "lack_of_fit": fit.lack_of_fit,
            "effects": [{"term": list(e.term), "estimate": e.estimate, "ci95": [e.low, e.high], "p": e.p_value,
                         "p_holm": e.p_holm, "detectable_80": e.detectable,
                         "aliases": [list(a) for a in e.aliases]} for e in fit.effects]}
    return out

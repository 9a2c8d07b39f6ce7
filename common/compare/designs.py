"""Two-level factorial designs among a table's rows, fitted by common.compare.factorial: the
main-effects table and its JSON."""
from __future__ import annotations

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
    fits: dict              # {metric: factorial.Fit}
    improving: tuple = (0, 0)  # (cells marked still improving, cells)


def designs(rows: list) -> list:
    """Each table whose rows form a two-level factorial, fitted: [Design]."""
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
        if all(fits.values()):
            found.append(Design(context, summarize_row(members[0]), factors, settings, len(members),
                                sorted({run.record.options.seed for run in runs}), values, fits,
                                (sum(map(is_still_improving, members)), len(members))))
    return found


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
    """The main-effects table of one design, with what its model was and what it could detect."""
    test_fit, val_fit = (design.fits[m] for m, _ in EFFECT_METRICS)
    seeds = design.seeds
    lines = [f"**Main effects** · {context_line(design.summary)} · {test_fit.n} runs in {design.cells} cells",
             "", "| field | from → to | Δ test acc [95% CI] | p, test (Holm) | Δ best val acc [95% CI] | p, val (Holm) "
             "| detectable Δ test (80% power) |", "|" + "---|" * 7]
    pairs = [(t, v) for t, v in zip(test_fit.effects, val_fit.effects) if len(t.term) == 1]
    pairs += shown_interactions(design)
    for t, v in pairs:
        lines.append(f"| {_term(t.term)} | {_levels(design, t.term)} | {t.estimate:+.4f} [{t.low:+.4f}, {t.high:+.4f}] "
                     f"| {t.p_holm:.3g} | {v.estimate:+.4f} [{v.low:+.4f}, {v.high:+.4f}] | {v.p_holm:.3g} "
                     f"| {t.detectable:.4f} |")
    interactions = [t for t in test_fit.effects if len(t.term) == 2]
    hidden = len(interactions) - len(shown_interactions(design))
    lines += ["", f"Linear model over {test_fit.n} runs (seeds {','.join(map(str, seeds))} of each cell): "
                  f"{len(design.factors)} main effects and {len(interactions)} two-way interactions, "
                  f"{test_fit.residual_df} residual degrees of freedom (residual sd {test_fit.residual_sd:.4f} test, "
                  f"{val_fit.residual_sd:.4f} val). An effect is the mean at the second value minus the mean at the "
                  "first, averaged over the other fields; an interaction is half the change of one field's effect "
                  "across the other's values. p: t-test of each term, Holm-adjusted over the "
                  f"{len(test_fit.effects)} terms of each metric. Detectable: the smallest true effect this design "
                  "finds with 80% power at 0.05, unadjusted."
                  + (f" The other {hidden} interactions are not distinguishable from zero." if hidden > 0 else "")]
    marked, cells = design.improving
    if marked:
        lines += ["", f"{marked} of {cells} cells were still improving when their runs stopped (marked ↑ in "
                      "compare's row tables): more epochs may change these effects."]
    return "\n".join(lines) + "\n"


def design_json(design: Design) -> dict:
    out = {"dataset": design.summary["dataset"], "experiment": design.summary["experiment"],
           "context": context_line(design.summary), "cells": design.cells,
           "factors": [{"name": f.name, "levels": list(f.levels)} for f in design.factors], "metrics": {}}
    for metric, _ in EFFECT_METRICS:
        fit = design.fits[metric]
        out["metrics"][metric] = {
            "runs": fit.n, "residual_df": fit.residual_df, "residual_sd": fit.residual_sd,
            "effects": [{"term": list(e.term), "estimate": e.estimate, "ci95": [e.low, e.high], "p": e.p_value,
                         "p_holm": e.p_holm, "detectable_80": e.detectable} for e in fit.effects]}
    return out

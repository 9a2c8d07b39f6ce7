"""compare's figures: validation curves per row, each swept field's effect, each factorial design's
effects; written inside the compared folder, a file tracked by git only when --figure names it."""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

from common.compare import factorial
from common.compare.designs import EFFECT_METRICS, Design
from common.runfolder import short
from common.compare.rows import differing_fields, getattr_any, summarize_row
from common.errors import UserError, os_reason
from common.plots import integer_epoch_axis, save_figure  # before pyplot: it sets the Agg backend

import matplotlib.pyplot as plt  # noqa: E402  (isort: after common.plots)
import numpy as np  # noqa: E402

def row_label(summary: dict) -> str:
    """A figure's name for a row: what changed, and where and in what numerics it ran (bf16 and fp32
    rows of one recipe are two lines)."""
    changes = "" if summary["changes"] == "—" else f" ({summary['changes']})"
    numerics = ", ".join(x for x in (summary["precision"], summary["layout"]) if x)
    return f"{summary['experiment']}{changes}, {summary['hardware']}, {numerics} (n={summary['n']})"


def val_curve_series(rows: list) -> dict:
    """{dataset label: [(row label, per-seed validation curves)]} for plot_val_curves."""
    series = defaultdict(list)
    for row in rows:
        summary = summarize_row(row)
        series[summary["dataset"]].append((row_label(summary), [[e["val_accuracy"] for e in r.train["epochs"]]
                                                                 for r in row.runs]))
    return dict(series)


def swept_fields(rows: list) -> dict:
    """{field: {context: [(value, row summary)]}} for each field on which rows of one context differ
    while agreeing on everything else but the seed."""
    out = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row.baseline is None:
            continue
        differing = differing_fields([row.record, row.baseline.record])
        if len(differing) == 1:
            name = differing[0]
            group = out[name][row.context]
            if not group:
                group.append((getattr_any(row.baseline.record, name), summarize_row(row.baseline)))
            group.append((getattr_any(row.record, name), summarize_row(row)))
    return {name: dict(groups) for name, groups in out.items()}


@dataclass(frozen=True)
class Figure:
    path: str
    draw: Callable[[str], None]   # writes the figure to the path it is given


def figure_targets(rows: list, found: list, figure: str | None, paths: list, effects_only: bool = False) -> list:
    """[Figure]: the validation curves (compare_val_accuracy.png, or --figure F.png), each swept field
    (F_FIELD.png) and each factorial design (F_effects.png); effects_only (--block effects): only the
    designs' figures, at --figure's path when given for one design."""
    folder = default_figure_folder(paths) if figure is None else os.path.dirname(os.path.abspath(figure))
    stem = "compare" if figure is None else os.path.splitext(os.path.basename(figure))[0]
    effects = [Figure(os.path.join(folder, f"{stem}_effects{'' if len(found) == 1 else f'_{i + 1}'}.png"),
                      lambda path, d=design: plot_effects(effects_figure_data(d), path))
               for i, design in enumerate(found)]
    if effects_only:
        return [Figure(figure, f.draw) for f in effects] if figure and len(found) == 1 else effects
    swept = swept_fields(rows)
    return ([Figure(figure or os.path.join(folder, "compare_val_accuracy.png"),
                    lambda path: plot_val_curves(val_curve_series(rows), path))]
            + [Figure(os.path.join(folder, f"{stem}_{name}.png"), lambda path, n=name: plot_swept_field(n, swept[n], path))
               for name in swept] + effects)


def write_figures(rows: list, found: list, figure: str | None, paths: list, effects_only: bool = False) -> list:
    """The figures of figure_targets; a file tracked by git is written only when --figure names it."""
    written = []
    for target in figure_targets(rows, found, figure, paths, effects_only):
        if figure is None and is_tracked(target.path):  # --figure F.png names F_FIELD.png and F_effects.png too
            print(f"figure not written: {target.path} is tracked by git; name it with --figure to rewrite it")
            continue
        try:
            os.makedirs(os.path.dirname(os.path.abspath(target.path)), exist_ok=True)
            target.draw(target.path)
        except (OSError, UserError) as e:
            reason = os_reason(e) if isinstance(e, OSError) else str(e)
            raise UserError(f"cannot write the figure {target.path} ({reason}); the table above is complete: name "
                            f"another place with --figure PATH, or give --no-figures") from None
        written.append(target.path)
    return written


def effects_figure_data(design: Design) -> dict:
    """What plot_effects draws: each term's effects with CIs on both metrics, and the cell means
    of the interaction with the largest test effect."""
    test_fit = design.fits["test_accuracy"]
    terms = [(e.term, {m: design.fits[m].effects[i] for m, _ in EFFECT_METRICS})
             for i, e in enumerate(test_fit.effects)]
    interactions = [e for e in test_fit.effects if len(e.term) == 2]
    pair = max(interactions, key=lambda e: abs(e.estimate)).term if interactions else None
    by_name = {f.name: f for f in design.factors}
    return {"title": f"{design.summary['dataset']}, {design.summary['experiment']}: {test_fit.n} runs",
            "terms": terms, "labels": dict(EFFECT_METRICS),
            "levels": {name: [short(v) for v in f.levels] for name, f in by_name.items()},
            "pair": pair, "cells": {(short(a), short(b)): mean for (a, b), mean in factorial.cell_means(
                design.factors, design.settings, design.values["test_accuracy"], pair).items()}
            if pair else None}


def default_figure_folder(paths: list) -> str:
    """Inside the compared folder; for several, the folder they share (the current one if only '/')."""
    shared = os.path.commonpath([os.path.abspath(p) for p in paths])
    return os.getcwd() if os.path.dirname(shared) == shared else shared


def is_tracked(path: str) -> bool:
    """Whether git tracks `path` (False outside a repository or without git)."""
    import subprocess

    folder = os.path.dirname(os.path.abspath(path))
    try:
        return subprocess.run(["git", "ls-files", "--error-unmatch", os.path.abspath(path)], cwd=folder,
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False



def plot_val_curves(series: dict, path: str) -> None:
    """Validation accuracy per epoch, a panel per dataset: each row's mean over seeds, shaded min..max
    in the line's colour. series: {dataset: [(label, per-seed curves)]}."""
    fig, axes = plt.subplots(1, max(1, len(series)), figsize=(6.4 * max(1, len(series)), 4.2), squeeze=False)
    for ax, (dataset, lines) in zip(axes[0], series.items()):
        for label, curves in lines:
            length = min(len(c) for c in curves)
            curves = np.array([c[:length] for c in curves])
            x = np.arange(1, length + 1)
            (line,) = ax.plot(x, curves.mean(0), marker=".", label=label)
            if len(curves) > 1:
                ax.fill_between(x, curves.min(0), curves.max(0), alpha=0.2, color=line.get_color())
        ax.set_title(f"{dataset}: validation accuracy\nline: mean over seeds; band: lowest to highest seed",
                     fontsize="medium")
        integer_epoch_axis(ax)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14))  # below: never over a curve
    save_figure(fig, path)


def plot_swept_field(name: str, groups: dict, path: str) -> None:
    """Best validation and test accuracy against one swept field's value, mean with 95% CI error bars
    (none where n = 1), the two metrics side by side; a panel per context. Numbers are placed on
    their scale and joined; named values (augment none / crop_flip) are separate points in their
    stated order. groups: {context: [(value, row summary)]}."""
    fig, axes = plt.subplots(1, len(groups), figsize=(6.4 * len(groups), 4.2), squeeze=False)
    for ax, points in zip(axes[0], groups.values()):
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v, _ in points)
        order = factorial.value_order(name, [v for v, _ in points]) if not numeric else sorted(v for v, _ in points)
        points = sorted(points, key=lambda p: order.index(p[0]))
        x = np.array([v for v, _ in points] if numeric else range(len(points)), dtype=float)
        log = numeric and min(x) > 0 and max(x) / min(x) >= 10
        for side, (metric, label) in zip((-1, 1), (("val_accuracy", "best validation accuracy"),
                                                   ("test_accuracy", "test accuracy"))):
            shift = x * 10 ** (0.02 * side) if log else x + (0.06 * side * (np.ptp(x) or 1) if numeric else 0.1 * side)
            means = np.array([s[metric]["mean"] for _, s in points])
            lows = np.array([s[metric]["ci95"][0] if s[metric]["ci95"][0] is not None else s[metric]["mean"]
                             for _, s in points])
            highs = np.array([s[metric]["ci95"][1] if s[metric]["ci95"][1] is not None else s[metric]["mean"]
                              for _, s in points])
            ax.errorbar(shift, means, yerr=[means - lows, highs - means], marker="o", capsize=4, label=label,
                        linestyle="-" if numeric else "none")
        if log:
            ax.set_xscale("log")
            ax.minorticks_off()  # only the swept values are labelled
        ax.set_xticks(x, [f"{v:g}" if numeric else str(v) for v, _ in points])
        if not numeric:
            ax.set_xlim(-0.5, len(points) - 0.5)
        first = points[0][1]
        ax.set_title(f"{first['dataset']}, {first['experiment']}: {name} (n = "
                     f"{'/'.join(str(s['n']) for _, s in points)}; bars: 95% CI)")
        ax.set_xlabel(name)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    save_figure(fig, path)


def plot_effects(data: dict, path: str) -> None:
    """A factorial design: left, each term's effect on test and best-validation accuracy with its 95%
    CI (zero marked); right, the interaction with the largest test effect as cell means. data: see
    effects_figure_data."""
    pair = data["pair"]
    fig, axes = plt.subplots(1, 2 if pair else 1, figsize=(13 if pair else 7, 0.45 * len(data["terms"]) + 2.2),
                             squeeze=False, gridspec_kw={"width_ratios": [1.6, 1]} if pair else None)
    ax = axes[0][0]
    y = np.arange(len(data["terms"]))[::-1]
    for side, (metric, label) in zip((0.15, -0.15), data["labels"].items()):
        effects = [by_metric[metric] for _, by_metric in data["terms"]]
        ax.errorbar([e.estimate for e in effects], y + side,
                    xerr=[[e.estimate - e.low for e in effects], [e.high - e.estimate for e in effects]],
                    marker="o", linestyle="none", capsize=3, label=f"{label} (95% CI)")
    ax.axvline(0, color="grey", linewidth=1)
    names = [" × ".join(term) if len(term) > 1 else
             f"{term[0]}: {data['levels'][term[0]][0]} → {data['levels'][term[0]][1]}" for term, _ in data["terms"]]
    ax.set_yticks(y, names, fontsize="small")
    ax.set_xlabel("effect on accuracy (second value minus first, averaged over the other fields)")
    ax.set_title(f"{data['title']}: effects", fontsize="medium")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize="small")
    if pair:
        ax = axes[0][1]
        first, second = pair
        for b in data["levels"][second]:
            means = [data["cells"][key] for key in data["cells"] if key[1] == b]
            ax.plot(range(len(means)), means, marker="o", label=f"{second} {b}")
        ax.set_xticks(range(2), data["levels"][first])
        ax.set_xlim(-0.3, 1.3)
        ax.set_xlabel(first)
        ax.set_ylabel("mean test accuracy")
        ax.set_title(f"largest interaction: {first} × {second}", fontsize="medium")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    save_figure(fig, path)

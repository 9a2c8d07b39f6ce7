"""Compare runs from their run folders: an ablation table per dataset, figures, JSON.

    python -m common.compare                   # your runs: every ex_N/ beside the scripts
    python -m common.compare ex_1/sweeps/lr    # any folders: every run folder below them
    python -m common.compare RUNS --baseline lr=0.001 --json table.json
    python -m common.compare results/ex_1 --readme README.md --figure images/compare_val_accuracy.png

A row is one recipe run with several seeds. Runs share a row only when, by their config.json,
they agree on the experiment, the dataset, every recipe field and every option that can
change the numbers (common.config.recipe_key_fields), the data (test file's sha256), the
hardware (GPU name, or CPU model and its vector ISA), the torch build and CUDA version, the
precision, and the threads x processes; only the seed differs, and a seed repeated in a row
counts once (the newest folder; the table says which it kept). A row lists the code versions its runs came
from, a `*` marking a run started from a modified tree.

Per row: n seeds, the best validation accuracy (the selection metric) and the test accuracy,
each as mean and 95% confidence interval (Student t over seeds), and the differences from the
baseline row (the row nearest the script's own recipe, or --baseline FIELD=VALUE) in both,
with 95% intervals, p-values (Welch's t over seeds) Holm-adjusted over the table's tests,
and the smallest test difference the two rows' n and spread detect with 80% power. One seed
on a side gets no p-value (it cannot separate a recipe from its seed; --json keeps an exact
McNemar test of the two networks, labelled as such). Incomplete, failed or damaged runs are
listed apart and never averaged.

When the rows of a table vary k >= 2 fields at two values each (a factorial --sweep), a
main-effects table follows (common/factorial.py): each field's effect averaged over the
others, from a linear model over every run, with its 95% CI, Holm-adjusted p and the
effect the design detects with 80% power; the two-way interactions that stand out; a figure.
Figures go inside the compared folder. Nothing tracked by git is rewritten unless named
(--readme, --figure).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field

if __name__ == "__main__":  # python path/to/common/compare.py from any folder
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import REPO_ROOT, factorial, runfolder, stats  # noqa: E402
from common.config import Options, Recipe, knobs, recipe_key_fields, to_dict  # noqa: E402
from common.errors import UserError, first_line, os_reason  # noqa: E402
from common.models import MODELS  # noqa: E402
from common.reference import REPORT  # noqa: E402

DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
RESULTS_BLOCK, EFFECTS_BLOCK = "results", "effects"   # --block names with their own text
BLOCK_NAME = r"[a-z0-9][a-z0-9_-]{0,40}"


def markers(block: str) -> tuple:
    """The pair of lines in a README between which --readme writes the block."""
    return f"<!-- {block}:start -->", f"<!-- {block}:end -->"
METRICS = ("val_accuracy", "test_accuracy", "f1", "auc", "auc_hard_labels", "best_epoch", "train_time_s",
           "test_time_s")


# --- reading run folders -------------------------------------------------------------------

@dataclass
class Run:
    dir: str
    status: str                       # completed, running, interrupted, failed, "damaged: ...", ...
    record: runfolder.RunRecord | None = None
    train: dict | None = None
    test: dict | None = None

    @property
    def complete(self) -> bool:
        return self.status == runfolder.COMPLETED


def read_run(run_dir: str) -> Run:
    """One run folder through the run folder's validators; any problem is its status, never an exception."""
    try:
        record = runfolder.read_config(run_dir)
    except UserError as e:
        return Run(run_dir, f"damaged: {first_line(e)}")
    if not os.path.exists(runfolder.path(run_dir, runfolder.TRAIN)):
        return Run(run_dir, "not started (no train.json)", record)
    try:
        train = runfolder.read_train(run_dir)
        if train["status"] != runfolder.COMPLETED:
            return Run(run_dir, train["status"], record, train)
        if len(train["epochs"]) != record.recipe.epochs:
            return Run(run_dir, "damaged: train.json's epochs do not match config.json", record, train)
        if not runfolder.is_complete(run_dir):
            return Run(run_dir, "no test.json (stopped while testing?)", record, train)
        return Run(run_dir, runfolder.COMPLETED, record, train, runfolder.read_test(run_dir))
    except UserError as e:
        return Run(run_dir, f"damaged: {first_line(e)}", record)


def run_folders(root: str) -> list:
    """Every run folder at or below `root` (a folder holding config.json or train.json), sorted."""
    found = []
    for folder, subfolders, files in os.walk(root):
        if runfolder.CONFIG in files or runfolder.TRAIN in files:
            found.append(folder)
            subfolders.clear()  # a run folder holds no runs
        subfolders.sort()
    return sorted(found)


def collect(paths: list) -> list:
    runs, seen = [], set()
    for root in paths:
        for run_dir in run_folders(root):
            if os.path.realpath(run_dir) not in seen:
                seen.add(os.path.realpath(run_dir))
                runs.append(read_run(run_dir))
    return runs


# --- what a row shares ------------------------------------------------------------------------

def data_label(record) -> str:
    """'synthetic', or the first 8 hex digits of the test file's sha256: runs on different data never mix."""
    if record.options.smoke:
        return "synthetic"
    return f"data sha {record.data_sha256[:8]}" if record.data_sha256 else "data unrecorded"


def hardware_label(env: dict) -> str:
    """The GPU's name, or the CPU's model and the vector ISA its kernels used (where recorded)."""
    if env.get("gpu"):
        return str(env["gpu"])
    if env.get("device", "cpu") != "cpu":
        return str(env.get("device"))
    model = f"CPU {env['cpu']}" if env.get("cpu") else "CPU (model not recorded)"
    return model + (f" {env['cpu_capability']}" if env.get("cpu_capability") else "")  # absent from older run folders


def software_label(env: dict) -> str:
    return f"torch {env.get('torch', '?')}" + (f" CUDA {env['cuda']}" if env.get("cuda") else "")


def experiment_label(record) -> str:
    """A model with pretrained weights trained without them is a different experiment from the recipe."""
    scratch = MODELS[record.recipe.model].weights is not None and not record.recipe.pretrained
    return record.experiment + (" from scratch" if scratch else "")


def recipe_key(record) -> tuple:
    values = {**to_dict(record.recipe), **to_dict(record.options)}
    return tuple(json.dumps(values[name]) for name in recipe_key_fields())


def precision_label(record) -> str:
    """What the arithmetic ran in (config.json's environment); for runs from before it was recorded:
    float32 on a CPU or without --amp, else CUDA autocast in bf16 or fp16."""
    if record.environment.get("precision"):
        return str(record.environment["precision"])
    on_gpu = str(record.environment.get("device", "cpu")).startswith("cuda")
    return "autocast (bf16 or float16)" if on_gpu and record.options.amp else "float32"


def threads_label(record) -> str:
    """torch threads x processes: on a CPU the thread count changes the sums' order, so the numbers."""
    threads = record.environment.get("torch_threads", "?")
    return f"{threads} thread{'s' * (threads != 1)} x {record.processes} process{'es' * (record.processes > 1)}"


def context_key(run: Run) -> tuple:
    """What rows that may be compared with each other share: all but the recipe."""
    r = run.record
    return (r.dataset, r.experiment, data_label(r), hardware_label(r.environment), software_label(r.environment),
            r.processes, threads_label(r), precision_label(r))


def recipe_changes(record) -> dict:
    """{field: value} where the run's recipe differs from its script's own (recorded in config.json)."""
    if record.script_recipe is None:
        return {}
    ours, theirs = to_dict(record.recipe), to_dict(record.script_recipe)
    changes = {name: ours[name] for name in knobs(Recipe) if ours[name] != theirs[name]}
    if record.options.smoke:
        changes.pop("pretrained", None)  # --smoke never downloads weights
    for name, (k, default) in knobs(Options).items():  # options that change the numbers, where not the default
        if k.changes_results and name not in ("smoke", "weights") and getattr(record.options, name) != default:
            changes[name] = getattr(record.options, name)
    return changes


def describe_changes(record, changes: dict) -> str:
    if record.script_recipe is None:
        return f"{record.recipe.epochs} epochs; recipe not recorded"
    words = []
    for name, value in changes.items():
        if name == "epochs":
            words.append(f"{value} of {record.script_recipe.epochs} epochs")
        elif name == "pretrained":
            words.append("ImageNet weights" if value else "no ImageNet weights")
        else:
            words.append(f"{name.replace('_', ' ')} {_short(value)}")
    if record.processes > 1:
        words.append(f"{record.processes} processes")
    return "; ".join(words) or "—"


def _short(value) -> str:
    if isinstance(value, list):
        return "/".join(_short(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


# --- rows ------------------------------------------------------------------------------------------

@dataclass
class Row:
    context: tuple
    key: tuple
    runs: list                        # complete runs, one per seed, by seed
    duplicates: list = field(default_factory=list)  # [{"seed", "kept", "dropped": [...]}]
    baseline: "Row | None" = None

    @property
    def record(self):
        return self.runs[0].record

    @property
    def changes(self) -> dict:
        return recipe_changes(self.record)

    def values(self, metric: str) -> list:
        return [metric_value(run, metric) for run in self.runs if metric_value(run, metric) is not None]


def metric_value(run: Run, metric: str):
    if metric == "val_accuracy":
        return run.train["best_val_accuracy"]
    if metric in ("best_epoch", "train_time_s"):
        return run.train[metric]
    value = run.test.get("accuracy" if metric == "test_accuracy" else metric)
    if metric == "auc_hard_labels" and value is None:  # runs from before test.json recorded it
        from common.metrics import hard_label_auc
        value = hard_label_auc(run.test["confusion_matrix"]) if "confusion_matrix" in run.test else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def build_rows(runs: list) -> list:
    """Complete runs grouped into rows; a repeated seed keeps its newest folder (by start time, then name)."""
    groups = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run.complete:
            groups[(context_key(run), recipe_key(run.record))][run.record.options.seed].append(run)
    rows = []
    for (context, key), by_seed in groups.items():
        row = Row(context, key, [])
        for seed in sorted(by_seed):
            copies = sorted(by_seed[seed], key=lambda r: (str(r.record.raw.get("start_time", "")), r.dir))
            row.runs.append(copies[-1])
            if len(copies) > 1:
                row.duplicates.append({"seed": seed, "kept": copies[-1].dir, "dropped": [c.dir for c in copies[:-1]]})
        rows.append(row)
    return sorted(rows, key=_row_order)


def _row_order(row: Row) -> tuple:
    """Per context: the baseline first, then fewer changes first, then by the changed fields' values."""
    changes = sorted(row.changes.items())
    values = tuple((name, (0, float(v), "") if isinstance(v, (int, float)) else (1, 0.0, json.dumps(v)))
                   for name, v in changes)
    return (row.context[0], json.dumps(row.context[1:]), row.baseline is not None, len(changes), values)


def choose_baselines(rows: list, baseline: tuple | None = None) -> None:
    """Each row's baseline: in its context, the row with FIELD=VALUE (--baseline), else the row that
    differs from the script's recipe in the fewest of the fields on which the context's rows differ."""
    by_context = defaultdict(list)
    for row in rows:
        by_context[row.context].append(row)
    found = False
    for members in by_context.values():
        varying = {name for name in recipe_key_fields()
                   if len({json.dumps(getattr_any(r.record, name)) for r in members}) > 1}
        candidates = [r for r in members if baseline is None or _matches(r, *baseline)]
        if not candidates:
            continue
        found = True
        chosen = min(candidates, key=lambda r: (len(set(r.changes) & varying), _row_order(r)))
        for row in members:
            row.baseline = chosen if row is not chosen else None
    if baseline is not None and rows and not found:
        values = sorted({json.dumps(getattr_any(r.record, baseline[0])) for r in rows})
        raise UserError(f"--baseline {baseline[0]}={json.dumps(baseline[1])} matches no compared run; their "
                        f"{baseline[0]} values: {', '.join(values)}")
    rows.sort(key=_row_order)


def getattr_any(record, name: str):
    return getattr(record.recipe, name) if hasattr(record.recipe, name) else getattr(record.options, name)


def _matches(row: Row, name: str, value) -> bool:
    return json.dumps(getattr_any(row.record, name)) == json.dumps(value)


def parse_baseline(text: str) -> tuple:
    """--baseline FIELD=VALUE, the value read by the field's own flag rules."""
    name, _, value = text.partition("=")
    name = name.strip().replace("-", "_")
    fields = {**knobs(Recipe), **knobs(Options)}
    if name not in fields or not value:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE with a recipe field, got {text!r}")
    k = fields[name][0]
    try:
        parsed = k.rule(k.parse(value) if k.parse is not bool else value.lower() in ("1", "true", "yes", "on"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{name}: {e}") from None
    return name, list(parsed) if isinstance(parsed, tuple) else parsed


def summarize_row(row: Row) -> dict:
    """A row as numbers: n, seeds, folders, each metric's mean / sample std / 95% CI, the baseline difference."""
    out = {"dataset": DATASET_LABELS[row.context[0]], "experiment": experiment_label(row.record),
           "changes": describe_changes(row.record, row.changes), "changed_fields": row.changes,
           "data": row.context[2], "hardware": row.context[3], "software": row.context[4],
           "processes": row.context[5], "threads": row.context[6], "precision": row.context[7], "n": len(row.runs), "seeds": [r.record.options.seed for r in row.runs],
           "runs": [r.dir for r in row.runs], "duplicates": row.duplicates, "code": code_versions(row),
           "parameters": row.record.raw.get("parameters")}
    for metric in METRICS:
        values = row.values(metric)
        if values:
            interval = stats.mean_ci(values)
            out[metric] = {"mean": interval.mean, "std": statistics.stdev(values) if len(values) > 1 else None,
                           "ci95": [interval.low, interval.high], "n": len(values)}
    out["vs_baseline"] = baseline_differences(row) if row.baseline is not None else None
    return out


def code_versions(row: Row) -> list:
    """Short commits of the row's runs; '*' marks a run started from a modified tree."""
    versions = []
    for run in row.runs:
        git = run.record.git
        version = (str(git.get("commit") or "unknown")[:7]) + ("*" if git.get("dirty") else "")
        if version not in versions:
            versions.append(version)
    return versions


def baseline_differences(row: Row) -> dict:
    """This row minus its baseline, for validation and test accuracy (p_holm: see table_summaries)."""
    base = row.baseline
    out = {"baseline": describe_changes(base.record, base.changes), "baseline_runs": [r.dir for r in base.runs]}
    for metric in ("val_accuracy", "test_accuracy"):
        a, b = row.values(metric), base.values(metric)
        d = stats.difference(a, b)
        out[metric] = {"difference": d.estimate, "ci95": [d.low, d.high], "p": d.p_value, "p_holm": d.p_value,
                       "test": d.test, "detectable_80": stats.detectable_difference(a, b)}
    if len(row.runs) == 1 and len(base.runs) == 1:
        out["networks"] = networks_test(row.runs[0], base.runs[0])
    return out


def networks_test(run: Run, base: Run) -> dict | None:
    """Whether these two trained networks differ on the shared test images (not their recipes)."""
    a, b = _correct(run), _correct(base)
    if a is None or b is None:
        return None
    d = stats.mcnemar(a, b)
    return {"difference": d.estimate, "p": d.p_value, "test": "exact McNemar: these two networks, not their recipes"}


def table_summaries(rows: list) -> list:
    """summarize_row for each row, with p_holm: Holm's adjustment over every p-value of its table."""
    summaries = [summarize_row(row) for row in rows]
    by_context = defaultdict(list)
    for row, summary in zip(rows, summaries):
        for metric in ("val_accuracy", "test_accuracy"):
            if summary["vs_baseline"] and summary["vs_baseline"][metric]["p"] is not None:
                by_context[row.context].append(summary["vs_baseline"][metric])
    for tests in by_context.values():
        for test, adjusted in zip(tests, stats.holm([t["p"] for t in tests])):
            test["p_holm"] = adjusted
            test["holm_family"] = len(tests)
    return summaries


def _correct(run: Run):
    """Per test image, whether the run got it right (predictions.npz); None if the file is missing."""
    try:
        kept = runfolder.read_predictions(run.dir)
    except UserError:
        return None
    return (kept["predicted"] == kept["labels"]).tolist()


# --- markdown ----------------------------------------------------------------------------------

SMALL_N = 2   # at n <= 2 a 95% CI spans +-12.7 standard errors (t with 1 df): marked, not read


def _ci(summary: dict | None, digits: int = 4) -> str:
    """'0.7004 ± 0.0340' (mean ± 95% CI half-width), the single value, or '†' marked where n is too small."""
    if not summary:
        return "—"
    low, high = summary["ci95"]
    if low is None:
        return f"{summary['mean']:.{digits}f}"
    mark = " †" if summary["n"] <= SMALL_N else ""
    return f"{summary['mean']:.{digits}f} ± {(high - low) / 2:.{digits}f}{mark}"


def _difference(diff: dict | None) -> tuple:
    """('+0.0123 [+0.0050, +0.0196]', '0.004') for the table: the difference and its Holm-adjusted p."""
    if not diff:
        return "—", "—"
    low, high = diff["ci95"]
    text = f"{diff['difference']:+.4f}" + (f" [{low:+.4f}, {high:+.4f}]" if low is not None else "")
    return text, "— (one seed on a side)" if diff["p"] is None else f"{diff['p_holm']:.3g}"


HEADER = ("| experiment | changed from the script's recipe | n (seeds) | best val acc ± 95% CI | test acc ± 95% CI "
          "| Δ val vs baseline [95% CI] | p, val (Holm) | Δ test vs baseline [95% CI] | p, test (Holm) "
          "| detectable Δ test (80% power) | macro F1 | AUC | best epoch | train time s | code |")


def context_line(summary: dict) -> str:
    return (f"**{summary['dataset']}** · {summary['experiment'].split()[0]} · {summary['data']} · "
            f"{summary['hardware']} · {summary['software']} · {summary['threads']} · {summary['precision']}")


def table_row(row: Row, summary: dict, rows: list) -> str:
    base = summary["vs_baseline"]
    val_diff, val_p = _difference(base["val_accuracy"] if base else None)
    test_diff, test_p = _difference(base["test_accuracy"] if base else None)
    detectable = base["test_accuracy"]["detectable_80"] if base else None
    if row.baseline is None and any(r.baseline is row for r in rows):
        val_diff, val_p, test_diff, test_p = "baseline", "", "baseline", ""
    return (f"| {summary['experiment']} | {summary['changes']} | {summary['n']} "
            f"({','.join(map(str, summary['seeds']))}) | {_ci(summary.get('val_accuracy'))} "
            f"| {_ci(summary.get('test_accuracy'))} | {val_diff} | {val_p} | {test_diff} | {test_p} "
            f"| {'—' if detectable is None else f'{detectable:.4f}'} | {_ci(summary.get('f1'))} "
            f"| {_ci(summary.get('auc'))} | {_ci(summary.get('best_epoch'), 1)} "
            f"| {_ci(summary.get('train_time_s'), 0)} | {', '.join(summary['code'])} |")


def table_notes(summaries: list) -> list:
    tests = max((s["vs_baseline"][m].get("holm_family", 0) for s in summaries if s["vs_baseline"]
                 for m in ("val_accuracy", "test_accuracy")), default=0)
    notes = [f"p: Welch's t over seeds, Holm-adjusted over the table's {tests} tests; detectable Δ: the smallest "
             "true test difference a t-test with the two rows' n and pooled spread finds with 80% power at "
             "0.05." if tests else "No p-values: a comparison needs two or more seeds on each side."]
    if any(s[m]["n"] <= SMALL_N for s in summaries for m in ("val_accuracy", "test_accuracy") if m in s):
        notes.append(f"† n ≤ {SMALL_N}: a 95% CI from so few seeds spans ±12.7 standard errors or more; it says "
                     "little beyond the values themselves.")
    return notes


def markdown(rows: list, runs: list, designs: list | None = None) -> str:
    """A table per context (dataset, data, hardware, software, threads, precision), its notes, the
    main effects of any factorial design among its rows, then repeated seeds and incomplete runs."""
    out, repeated = [], []
    summaries = table_summaries(rows)
    for context in dict.fromkeys(row.context for row in rows):
        members = [(row, s) for row, s in zip(rows, summaries) if row.context == context]
        out += ["", context_line(members[0][1]), "", HEADER, "|" + "---|" * 15]
        out += [table_row(row, summary, rows) for row, summary in members]
        out += [""] + table_notes([s for _, s in members])
        repeated += [f"- {s['experiment']} ({s['changes']}), seed {d['seed']}: kept {display_path(d['kept'])}, "
                     f"not {', '.join(display_path(x) for x in d['dropped'])}" for _, s in members
                     for d in s["duplicates"]]
    for design in designs or []:
        out += ["", effects_markdown(design)]
    if repeated:
        out += ["", "Repeated seeds (each counts once):", *repeated]
    incomplete = [r for r in runs if not r.complete]
    if incomplete:
        out += ["", "Not averaged (incomplete, failed or damaged):", ""]
        out += [f"- {display_path(r.dir)}: {r.status}" for r in incomplete]
    if not rows:
        out += ["", "No complete runs found."]
    return "\n".join(out).strip() + "\n"


# --- factorial designs -------------------------------------------------------------------------

EFFECT_METRICS = (("test_accuracy", "test acc"), ("val_accuracy", "best val acc"))


def designs(rows: list) -> list:
    """Each table whose rows form a two-level factorial, with its fits: [{context, summary, factors,
    settings, values: {metric: [...]}, fits: {metric: Fit}}]."""
    found = []
    for context in dict.fromkeys(row.context for row in rows):
        members = [row for row in rows if row.context == context]
        varying = [name for name in recipe_key_fields()
                   if len({json.dumps(getattr_any(r.record, name)) for r in members}) > 1]
        factors = factorial.find_factors([{n: getattr_any(r.record, n) for n in varying} for r in members])
        if factors is None:
            continue
        runs = [run for row in members for run in row.runs]
        settings = [{n: getattr_any(run.record, n) for n in varying} for run in runs]
        design = {"context": context, "summary": summarize_row(members[0]), "factors": factors,
                  "settings": settings, "cells": len(members), "values": {}, "fits": {},
                  "seeds": sorted({run.record.options.seed for run in runs})}
        for metric, _ in EFFECT_METRICS:
            values = [metric_value(run, metric) for run in runs]
            design["values"][metric] = values
            design["fits"][metric] = factorial.fit(factors, settings, values)
        if all(design["fits"].values()):
            found.append(design)
    return found


def _term(term: tuple) -> str:
    return " × ".join(term)


def _levels(design: dict, term: tuple) -> str:
    if len(term) > 1:
        return "interaction"
    (factor,) = [f for f in design["factors"] if f.name == term[0]]
    return f"{_short(factor.levels[0])} → {_short(factor.levels[1])}"


def shown_interactions(design: dict) -> list:
    """The two-way terms that stand out: Holm p < 0.05 on either metric, and always the largest |test effect|."""
    test, val = (design["fits"][m].effects for m, _ in EFFECT_METRICS)
    pairs = [(t, v) for t, v in zip(test, val) if len(t.term) == 2]
    if not pairs:
        return []
    largest = max(pairs, key=lambda p: abs(p[0].estimate))
    return [p for p in pairs if p is largest or p[0].p_holm < 0.05 or p[1].p_holm < 0.05]


def effects_markdown(design: dict) -> str:
    """The main-effects table of one design, with what its model was and what it could detect."""
    test_fit, val_fit = (design["fits"][m] for m, _ in EFFECT_METRICS)
    seeds = design["seeds"]
    lines = [f"**Main effects** · {context_line(design['summary'])} · {test_fit.n} runs in {design['cells']} cells",
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
                  f"{len(design['factors'])} main effects and {len(interactions)} two-way interactions, "
                  f"{test_fit.residual_df} residual degrees of freedom (residual sd {test_fit.residual_sd:.4f} test, "
                  f"{val_fit.residual_sd:.4f} val). An effect is the mean at the second value minus the mean at the "
                  "first, averaged over the other fields; an interaction is half the change of one field's effect "
                  "across the other's values. p: t-test of each term, Holm-adjusted over the "
                  f"{len(test_fit.effects)} terms of each metric. Detectable: the smallest true effect this design "
                  "finds with 80% power at 0.05."
                  + (f" The other {hidden} interactions are not distinguishable from zero." if hidden > 0 else "")]
    return "\n".join(lines) + "\n"


def design_json(design: dict) -> dict:
    out = {"dataset": design["summary"]["dataset"], "experiment": design["summary"]["experiment"],
           "context": context_line(design["summary"]), "cells": design["cells"],
           "factors": [{"name": f.name, "levels": list(f.levels)} for f in design["factors"]], "metrics": {}}
    for metric, _ in EFFECT_METRICS:
        fit = design["fits"][metric]
        out["metrics"][metric] = {
            "runs": fit.n, "residual_df": fit.residual_df, "residual_sd": fit.residual_sd,
            "effects": [{"term": list(e.term), "estimate": e.estimate, "ci95": [e.low, e.high], "p": e.p_value,
                         "p_holm": e.p_holm, "detectable_80": e.detectable} for e in fit.effects]}
    return out


def reference_rows(rows: list) -> list:
    """The rows of each script's own recipe, on real data: what README's results compare with the report."""
    return [row for row in rows if row.record.script_recipe is not None and not row.changes
            and not row.record.options.smoke and row.record.experiment in REPORT]


def headline_rank(row: Row) -> tuple:
    """Which row of a cell README's results show: the most seeds, then the most runs that keep
    predictions.npz (paired tests need it), then the newest start (the first of full equals)."""
    kept = sum(os.path.exists(runfolder.path(run.dir, runfolder.PREDICTIONS)) for run in row.runs)
    return len(row.runs), kept, max(str(run.record.raw.get("start_time", "")) for run in row.runs)


def reference_table(rows: list) -> str:
    """README's results: each script's own recipe (on real data) beside the report's figure, per cell,
    with the gap (report minus our mean) and its 95% CI: our mean's interval, the report's one run fixed."""
    lines = ["| experiment | dataset | n (seeds) | test acc, mean ± std | 95% CI of the mean | report "
             "| gap: report − ours [95% CI] |", "|" + "---|" * 7]
    measured = {}
    for row in reference_rows(rows):
        key = (row.record.experiment, row.record.dataset)
        if key not in measured or headline_rank(row) > headline_rank(measured[key]):
            measured[key] = row
    for experiment, cells in REPORT.items():
        for dataset, report in cells.items():
            row = measured.get((experiment, dataset))
            head = f"| {experiment} | {DATASET_LABELS[dataset]} |"
            if row is None:
                lines.append(f"{head} 0 | not measured | — | {report['accuracy']:.4f} | — |")
                continue
            accs = row.values("test_accuracy")
            ci, gap = stats.mean_ci(accs), stats.gap(accs, report["accuracy"])
            lines.append(f"{head} {len(accs)} ({','.join(str(r.record.options.seed) for r in row.runs)}) "
                         f"| {_mean_std(accs)} | {'—' if ci.low is None else f'[{ci.low:.4f}, {ci.high:.4f}]'} "
                         f"| {report['accuracy']:.4f} | {gap.mean:+.4f}"
                         f"{'' if gap.low is None else f' [{gap.low:+.4f}, {gap.high:+.4f}]'} |")
    return "\n".join(lines) + "\n"


def _mean_std(values: list) -> str:
    if not values:
        return "—"
    return f"{statistics.fmean(values):.4f}" + (f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else "")


def display_path(path: str) -> str:
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO_ROOT) if path.startswith(REPO_ROOT + os.sep) else path


# --- figures -----------------------------------------------------------------------------------

def row_label(summary: dict) -> str:
    changes = "" if summary["changes"] == "—" else f" ({summary['changes']})"
    return f"{summary['experiment']}{changes}, {summary['hardware']} (n={summary['n']})"


def val_curve_series(rows: list) -> dict:
    """{dataset label: [(row label, per-seed validation curves)]} for plots.plot_val_curves."""
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
        differing = [n for n in recipe_key_fields()
                     if json.dumps(getattr_any(row.record, n)) != json.dumps(getattr_any(row.baseline.record, n))]
        if len(differing) == 1:
            name = differing[0]
            group = out[name][row.context]
            if not group:
                group.append((getattr_any(row.baseline.record, name), summarize_row(row.baseline)))
            group.append((getattr_any(row.record, name), summarize_row(row)))
    return {name: dict(groups) for name, groups in out.items()}


def figure_targets(rows: list, found: list, figure: str | None, paths: list, block: str) -> dict:
    """{what: path}: 'val' (compare_val_accuracy.png, or --figure F.png), each swept field (F_FIELD.png)
    and each factorial design ('effects': F_effects.png); with --block effects, only the effects
    figure, at --figure's path when given."""
    folder = default_figure_folder(paths) if figure is None else os.path.dirname(os.path.abspath(figure))
    stem = "compare" if figure is None else os.path.splitext(os.path.basename(figure))[0]
    effects = {f"effects:{i}": os.path.join(folder, f"{stem}_effects{'' if len(found) == 1 else f'_{i + 1}'}.png")
               for i in range(len(found))}
    if block == EFFECTS_BLOCK:
        return {what: figure if figure and len(found) == 1 else target for what, target in effects.items()}
    targets = {"val": figure or os.path.join(folder, "compare_val_accuracy.png")}
    targets.update({name: os.path.join(folder, f"{stem}_{name}.png") for name in swept_fields(rows)})
    return {**targets, **effects}


def write_figures(rows: list, found: list, figure: str | None, paths: list, block: str = "compare") -> list:
    """The figures of figure_targets; a file tracked by git is written only when --figure names it."""
    from common import plots

    written = []
    for what, target in figure_targets(rows, found, figure, paths, block).items():
        if figure is None and is_tracked(target):  # --figure F.png names F_FIELD.png and F_effects.png too
            print(f"figure not written: {target} is tracked by git; name it with --figure to rewrite it")
            continue
        try:
            os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
            if what == "val":
                plots.plot_val_curves(val_curve_series(rows), target)
            elif what.startswith("effects:"):
                plots.plot_effects(effects_figure_data(found[int(what.split(":")[1])]), target)
            else:
                plots.plot_swept_field(what, swept_fields(rows)[what], target)
        except (OSError, UserError) as e:
            reason = os_reason(e) if isinstance(e, OSError) else str(e)
            raise UserError(f"cannot write the figure {target} ({reason}); the table above is complete: name "
                            f"another place with --figure PATH, or give --no-figures") from None
        written.append(target)
    return written


def effects_figure_data(design: dict) -> dict:
    """What plots.plot_effects draws: each term's effects with CIs on both metrics, and the cell means
    of the interaction with the largest test effect."""
    test_fit = design["fits"]["test_accuracy"]
    terms = [(e.term, {m: design["fits"][m].effects[i] for m, _ in EFFECT_METRICS})
             for i, e in enumerate(test_fit.effects)]
    interactions = [e for e in test_fit.effects if len(e.term) == 2]
    pair = max(interactions, key=lambda e: abs(e.estimate)).term if interactions else None
    by_name = {f.name: f for f in design["factors"]}
    return {"title": f"{design['summary']['dataset']}, {design['summary']['experiment']}: {test_fit.n} runs",
            "terms": terms, "labels": dict(EFFECT_METRICS),
            "levels": {name: [_short(v) for v in f.levels] for name, f in by_name.items()},
            "pair": pair, "cells": {(_short(a), _short(b)): mean for (a, b), mean in factorial.cell_means(
                design["factors"], design["settings"], design["values"]["test_accuracy"], pair).items()}
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


# --- files named on the command line --------------------------------------------------------------

def update_readme(readme: str, block: str, text: str) -> None:
    """Replace the text between the block's markers; both must be there, in order."""
    from common.files import write_bytes

    content, i, j = read_readme(readme, block)
    start, end = markers(block)
    write_bytes(readme, (content[:i] + f"{start}\n{text}{end}" + content[j + len(end):]).encode())


def read_readme(readme: str, block: str) -> tuple:
    """(its text, where the block's start marker is, where its end marker is)."""
    try:
        with open(readme) as f:
            content = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--readme {readme}: cannot read it ({type(e).__name__}: {first_line(e)})") from None
    start, end = markers(block)
    i, j = content.find(start), content.find(end)
    if i < 0 or j < 0 or j < i:
        raise UserError(f"--readme {readme}: needs the markers {start} and then {end}")
    return content, i, j


def write_json_summary(path: str, rows: list, runs: list, found: list) -> None:
    runfolder.write_json(path, {"rows": table_summaries(rows), "designs": [design_json(d) for d in found],
                                "incomplete": [{"dir": r.dir, "status": r.status} for r in runs if not r.complete]})


def default_paths() -> list:
    """The user's own runs: every ex_N/ beside the scripts (the shipped ones are under results/)."""
    return sorted(d for d in glob.glob(os.path.join(REPO_ROOT, "ex_*"))
                  if os.path.isdir(d) and re.fullmatch(r"ex_\d+", os.path.basename(d)))


def block_name(text: str) -> str:
    if not re.fullmatch(BLOCK_NAME, text):
        raise argparse.ArgumentTypeError(f"a block name is lowercase letters, digits, - and _, got {text!r}")
    return text


def main(argv=None) -> None:
    from common.cli import Parser  # a usage error is one line

    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="*", help="folders holding run folders at any depth (default: your own runs, "
                                              "every ex_N/ beside the scripts)")
    p.add_argument("--baseline", type=parse_baseline, metavar="FIELD=VALUE",
                   help="the row each difference is measured from, e.g. lr=0.001 (default: the row nearest the "
                        "script's own recipe)")
    p.add_argument("--figure", help="where to write the validation-accuracy figure, F.png (default: "
                                    "compare_val_accuracy.png inside the compared folder); per swept field also "
                                    "F_FIELD.png beside it (default: compare_FIELD.png), per factorial design "
                                    "F_effects.png (with --block effects: F.png itself)")
    p.add_argument("--no-figures", action="store_true", help="write no figure")
    p.add_argument("--json", help="also write the table as JSON (numbers as numbers, each row's run folders)")
    p.add_argument("--readme", help="replace the text between a block's markers in this file (see --block)")
    p.add_argument("--block", default="compare", type=block_name,
                   help="which block --readme fills, between <!-- NAME:start --> and <!-- NAME:end -->: 'results' "
                        "gets each script's own recipe beside the report's figures, 'effects' the main-effects "
                        "tables of the factorial designs, any other name the whole output (default: compare)")
    args = p.parse_args(argv)
    paths = args.folders or default_paths()
    if not paths:
        p.error(f"no folders given and no ex_N/ in {REPO_ROOT}: run an experiment first")
    missing = [d for d in paths if not os.path.isdir(d)]
    if missing:
        p.error(f"no such folder: {', '.join(missing)}")
    try:
        report(paths, args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def report(paths: list, args) -> None:
    if args.readme:  # before anything is written: a missing file or markers fail at once
        read_readme(args.readme, args.block)
    runs = collect(paths)
    rows = build_rows(runs)
    choose_baselines(rows, args.baseline)
    found = designs(rows)
    if args.block == EFFECTS_BLOCK and not found:
        raise UserError(f"--block {EFFECTS_BLOCK}: the compared runs form no two-level factorial design (two or "
                        "more recipe fields at two values each, balanced)")
    text = markdown(rows, runs, found)
    print(text)
    if args.json:
        write_json_summary(args.json, rows, runs, found)
    shown = reference_rows(rows) if args.block == RESULTS_BLOCK else rows  # the figures behind the block
    if shown and not args.no_figures:
        for written in write_figures(shown, found if args.block != RESULTS_BLOCK else [], args.figure, paths,
                                     args.block):
            print(f"figure: {written}")
    if args.readme:
        blocks = {RESULTS_BLOCK: lambda: reference_table(rows),
                  EFFECTS_BLOCK: lambda: "\n".join(effects_markdown(d) for d in found)}
        update_readme(args.readme, args.block, blocks.get(args.block, lambda: text)())


if __name__ == "__main__":
    main()

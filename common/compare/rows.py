"""Complete runs grouped into rows (one recipe, several seeds, on one data set, hardware and
software), each row's baseline, and a row as numbers: means, 95% CIs, differences from its baseline."""
from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from common import runfolder
from common.compare import stats
from common.compare.runs import Run, share_draws
from common.config import Options, Recipe, boolean, knobs, recipe_key_fields, to_dict
from common.runfolder import describe_changes, recipe_changes
from common.errors import UserError
from common.models import MODELS

DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
METRICS = ("val_accuracy", "test_accuracy", "f1", "auc", "auc_hard_labels", "best_epoch", "train_time_s",
           "test_time_s")



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


def recipe_key(record, leave_out: tuple = ()) -> tuple:
    values = {**to_dict(record.recipe), **to_dict(record.options)}
    return tuple(json.dumps(values[name]) for name in recipe_key_fields() if name not in leave_out)


CHOSEN_BY = {"precision": ("precision",)}  # context parts that an option asks for: --precision fp32 vs auto


def precision_label(record) -> str:
    """What the arithmetic ran in (config.json's environment): runs in bf16 and fp32 are never averaged
    together. For runs from before precision was recorded: float32 on a CPU or without --amp, else CUDA
    autocast in bf16 or fp16."""
    env = record.environment
    if env.get("precision"):
        return str(env["precision"])
    on_gpu = str(env.get("device", "cpu")).startswith("cuda")
    amp = (record.raw.get("config") or {}).get("amp", True)
    return "autocast (bf16 or float16)" if on_gpu and amp else "float32"


def layout_label(record) -> str:
    """The tensors' memory layout ('' before it was recorded). The model's registry entry picks it for
    each precision, so it is part of the row (one recipe in two layouts: two rows, never averaged), not of
    the context: a sweep over models, each in its own layout, stays one table and one design."""
    return str(record.environment.get("layout") or "")


def precision_words(summaries: list) -> str:
    """A table's arithmetic and its rows' layouts: the one layout, or each model's."""
    layouts = {s["model"]: s["layout"] for s in summaries if s.get("layout")}
    words = summaries[0]["precision"]
    if len(set(layouts.values())) == 1:
        return f"{words}, {next(iter(layouts.values()))}"
    if layouts:
        return f"{words}, each model's layout: " + ", ".join(f"{m} {layout}" for m, layout in layouts.items())
    return words


def threads_label(record) -> str:
    """torch threads x processes: on a CPU the thread count changes the sums' order, so the numbers."""
    threads = record.environment.get("torch_threads", "?")
    return f"{threads} thread{'s' * (threads != 1)} x {record.processes} process{'es' * (record.processes > 1)}"


CONTEXT_PARTS = ("dataset", "experiment", "data", "hardware", "software", "processes", "threads", "precision")


def context_key(run: Run) -> tuple:
    """What rows that may be compared with each other share: all but the recipe."""
    r = run.record
    return (r.dataset, r.experiment, data_label(r), hardware_label(r.environment), software_label(r.environment),
            r.processes, threads_label(r), precision_label(r))


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

    @property
    def plan(self) -> str | None:
        """The plan all its runs come from (None for lone runs or a row that mixes plans)."""
        plans = {run.plan for run in self.runs}
        return plans.pop() if len(plans) == 1 else None

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


RECENT_SHARE, RECENT_MIN = 1 / 3, 4  # the window of last epochs in which a still-rising curve shows
RISING_T = 2.0                       # its least-squares slope's t (slope / its standard error) above this: rising


def still_improving(val_accuracies: list) -> bool:
    """Whether a run had not settled when it stopped: its best validation accuracy came in its last epoch,
    or over its last third of epochs (at least 4) the validation accuracy still rises beyond its own
    epoch-to-epoch noise (least-squares slope more than RISING_T standard errors above zero)."""
    n = len(val_accuracies)
    if n and val_accuracies.index(max(val_accuracies)) == n - 1:
        return True
    window = val_accuracies[-max(RECENT_MIN, math.ceil(RECENT_SHARE * n)):]
    if len(window) < 3:
        return False
    slope, _, _, _, se = stats.linear_trend(window)
    return bool(slope > 0 and (se == 0 or slope / se > RISING_T))


def improving_runs(row) -> int:
    return sum(still_improving([e["val_accuracy"] for e in run.train["epochs"]]) for run in row.runs)


def is_still_improving(row) -> bool:
    """A row whose runs, half of them or more, were still improving at their last epoch (marked ↑)."""
    return 2 * improving_runs(row) >= len(row.runs)


def build_rows(runs: list) -> list:
    """Complete runs grouped into rows; a repeated seed keeps its newest folder (by start time, then name)."""
    groups = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run.complete:
            groups[(context_key(run), recipe_key(run.record) + (layout_label(run.record),))][run.record.options.seed].append(run)
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
    """Each row's baseline, in its context: a plan's rows are compared with a row of the same plan, the
    others with the context's; the chosen row has FIELD=VALUE (--baseline), else it differs from the
    script's recipe in the fewest of the fields on which its group's rows differ. So a comparison, and the
    Holm family it belongs to (table_summaries), is the same whichever other folders are compared with it."""
    by_context = defaultdict(list)
    for row in rows:
        by_context[row.context].append(row)
    found = False
    for members in by_context.values():
        context_choice = _closest(members, baseline)
        by_plan = defaultdict(list)
        for row in members:
            by_plan[row.plan].append(row)
        for plan, group in by_plan.items():
            chosen = (_closest(group, baseline) if plan is not None and len(group) > 1 else None) or context_choice
            found = found or chosen is not None
            for row in group:
                row.baseline = chosen if row is not chosen else None
    if baseline is not None and rows and not found:
        values = sorted({json.dumps(getattr_any(r.record, baseline[0])) for r in rows})
        raise UserError(f"--baseline {baseline[0]}={json.dumps(baseline[1])} matches no compared run; their "
                        f"{baseline[0]} values: {', '.join(values)}")
    rows.sort(key=_row_order)


def _closest(members: list, baseline: tuple | None) -> "Row | None":
    """The row of these with FIELD=VALUE (--baseline), else the one nearest the script's recipe."""
    varying = set(differing_fields([r.record for r in members]))
    candidates = [r for r in members if baseline is None or _matches(r, *baseline)]
    return min(candidates, key=lambda r: (len(set(r.changes) & varying), _row_order(r)), default=None)


def context_line(summary: dict, rows: list | None = None) -> str:
    """One table's shared context; rows: the summaries of its rows (their layouts), default this one."""
    return (f"**{summary['dataset']}** · {summary['experiment'].split()[0]} · {summary['data']} · "
            f"{summary['hardware']} · {summary['software']} · {summary['threads']} · "
            f"{precision_words(rows or [summary])}")


def differing_fields(records: list) -> list:
    """The recipe fields (and options that change the numbers) on which these runs do not all agree."""
    return [name for name in recipe_key_fields() if len({json.dumps(getattr_any(r, name)) for r in records}) > 1]


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
        parsed = k.rule(k.parse(value) if k.parse is not bool else boolean(value))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{name}: {e}") from None
    return name, list(parsed) if isinstance(parsed, tuple) else parsed


def summarize_row(row: Row) -> dict:
    """A row as numbers: n, seeds, folders, each metric's mean / sample std / 95% CI, the baseline difference."""
    out = {"dataset": DATASET_LABELS[row.context[0]], "experiment": experiment_label(row.record),
           "changes": describe_changes(row.record, row.changes), "changed_fields": row.changes,
           "data": row.context[2], "hardware": row.context[3], "software": row.context[4],
           "processes": row.context[5], "threads": row.context[6], "precision": row.context[7], "layout": layout_label(row.record),
           "model": row.record.recipe.model, "n": len(row.runs), "seeds": [r.record.options.seed for r in row.runs],
           "runs": [r.dir for r in row.runs], "plan": row.plan, "duplicates": row.duplicates, "code": code_versions(row),
           "parameters": row.record.raw.get("parameters"),
           "still_improving": {"runs": improving_runs(row), "of": len(row.runs), "marked": is_still_improving(row)}}
    for metric in METRICS:
        values = row.values(metric)
        if values:
            interval = stats.mean_ci(values)
            out[metric] = {"mean": interval.mean, "std": statistics.stdev(values) if len(values) > 1 else None,
                           "ci95": [interval.low, interval.high], "n": len(values)}
    out["vs_baseline"] = baseline_differences(row) if row.baseline is not None else None
    return out


def one_part_apart(rows: list, parts: tuple) -> list:
    """[(context a, context b, part)]: the pairs of the rows' contexts that differ in one of `parts` only."""
    pairs, contexts = [], list(dict.fromkeys(row.context for row in rows))
    for i, a in enumerate(contexts):
        for b in contexts[i + 1:]:
            differ = [name for name, x, y in zip(CONTEXT_PARTS, a, b) if x != y]
            if len(differ) == 1 and differ[0] in parts:
                pairs.append((a, b, differ[0]))
    return pairs


def contrasts(rows: list, parts: tuple) -> list:
    """One recipe's rows in two tables that differ in one of `parts` of their context only (precision,
    threads, hardware, ...): never averaged together, but their difference is what that part changed."""
    return [c for a, b, part in one_part_apart(rows, parts) for c in contrasts_between(rows, a, b, part)]


def contrasts_between(rows: list, a: tuple, b: tuple, part: str) -> list:
    """[{"dataset", "experiment", "part", "sides", "changes", "n", "runs", "val_accuracy", "test_accuracy",
    "paired_seeds"}] for each recipe both contexts ran (the option that asked for the part, --precision auto
    or fp32, aside): the first side minus the second (differences: paired where seeds share draws), unadjusted."""
    k, out, asked = CONTEXT_PARTS.index(part), [], CHOSEN_BY.get(part, ())
    for row in (r for r in rows if r.context == a):
        same = recipe_key(row.record, asked)
        for other in (r for r in rows if r.context == b and recipe_key(r.record, asked) == same):
            out.append({"dataset": DATASET_LABELS[a[0]], "experiment": experiment_label(row.record), "part": part,
                        "sides": [_side(row, k), _side(other, k)], "changes": describe_changes(row.record, row.changes),
                        "n": [len(row.runs), len(other.runs)],
                        "runs": [[r.dir for r in row.runs], [r.dir for r in other.runs]], **differences(row, other)})
    return out


def _side(row: Row, part: int) -> str:
    """A contrast's side: its context's value there, with the row's layout beside a precision."""
    layout = layout_label(row.record)
    return str(row.context[part]) + (f", {layout}" if CONTEXT_PARTS[part] == "precision" and layout else "")


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
    out = {"baseline": describe_changes(base.record, base.changes), "baseline_runs": [r.dir for r in base.runs],
           **differences(row, base)}
    if len(row.runs) == 1 and len(base.runs) == 1:
        out["networks"] = networks_test(row.runs[0], base.runs[0])
    return out


def differences(row: Row, other: Row) -> dict:
    """row minus other in validation and test accuracy: paired over the seeds whose runs share draws
    (shared_draw_pairs), else Welch over seeds; with each test's reach (detectable_80)."""
    pairs = shared_draw_pairs(row, other)
    out = {"paired_seeds": [run.record.options.seed for run, _ in pairs] or None}
    for metric in ("val_accuracy", "test_accuracy"):
        if pairs:
            a, b = ([metric_value(run, metric) for run in side] for side in zip(*pairs))
            d = stats.paired(a, b) if len(pairs) >= 2 else _one_pair(a, b)
            detectable = stats.detectable_paired([x - y for x, y in zip(a, b)])
        else:
            a, b = row.values(metric), other.values(metric)
            d, detectable = stats.difference(a, b), stats.detectable_difference(a, b)
        out[metric] = {"difference": d.estimate, "ci95": [d.low, d.high], "p": d.p_value, "p_holm": d.p_value,
                       "test": d.test, "detectable_80": detectable, "seeds_needed": None}
    return out


def shared_draw_pairs(row: Row, base: Row) -> list:
    """[(run, baseline run)] of each seed both rows ran whose two runs share a random draw (initial weights
    or data order, runs.share_draws): such runs are not independent, so each seed's difference is one
    observation. Empty when no seed's runs share one (then the rows are independent samples)."""
    by_seed = {run.record.options.seed: run for run in base.runs}
    return [(run, by_seed[seed]) for run in row.runs
            if (seed := run.record.options.seed) in by_seed and share_draws(run, by_seed[seed])]


def _one_pair(a: list, b: list) -> stats.Difference:
    return stats.Difference(a[0] - b[0], None, None, None, stats.ONE_PAIR)


def networks_test(run: Run, base: Run) -> dict | None:
    """Whether these two trained networks differ on the shared test images (not their recipes)."""
    a, b = correct_per_image(run), correct_per_image(base)
    if a is None or b is None:
        return None
    d = stats.mcnemar(a, b)
    return {"difference": d.estimate, "p": d.p_value, "test": "exact McNemar: these two networks, not their recipes"}


def table_summaries(rows: list, effect: float | None = None) -> list:
    """summarize_row for each row, with p_holm: Holm's adjustment within its family (one metric's
    comparisons with one baseline, which is one plan's rows where they come from a plan), and the
    seeds per arm a Welch test needs for 80% power at 0.05 / (the family's size) for `effect` (--effect)
    or the observed test difference, from the two rows' own spread."""
    summaries = [summarize_row(row) for row in rows]
    families = defaultdict(list)
    for row, summary in zip(rows, summaries):
        for metric in ("val_accuracy", "test_accuracy"):
            if summary["vs_baseline"] and summary["vs_baseline"][metric]["p"] is not None:
                families[(id(row.baseline), metric)].append(summary["vs_baseline"][metric])
    for tests in families.values():
        for test, adjusted in zip(tests, stats.holm([t["p"] for t in tests])):
            test["p_holm"] = adjusted
            test["holm_family"] = len(tests)
    for row, summary in zip(rows, summaries):
        test = (summary["vs_baseline"] or {}).get("test_accuracy")
        if test and test["p"] is not None:
            test["seeds_needed"] = seeds_for(row, effect if effect is not None else test["difference"],
                                             test["holm_family"], given=effect is not None)
    return summaries


def seeds_for(row: Row, effect: float, family: int, given: bool) -> dict:
    """{"n", "effect", "alpha", "family", "given"}: seeds per arm for this row against its baseline, for the
    test its difference used (paired t on the shared seeds' differences, else Welch)."""
    alpha = (1 - stats.LEVEL) / family
    pairs = shared_draw_pairs(row, row.baseline)
    if pairs:
        differences = [metric_value(run, "test_accuracy") - metric_value(base, "test_accuracy") for run, base in pairs]
        n = stats.pairs_needed(statistics.stdev(differences), effect, alpha)
    else:
        n = stats.seeds_needed(*(statistics.stdev(r.values("test_accuracy")) for r in (row, row.baseline)), effect, alpha)
    return {"n": n, "effect": effect, "alpha": alpha, "family": family, "given": given}


def correct_per_image(run: Run):
    """Per test image, whether the run got it right (predictions.npz); None if the file is missing."""
    try:
        kept = runfolder.read_predictions(run.dir)
    except UserError:
        return None
    return (kept["predicted"] == kept["labels"]).tolist()

"""The markdown compare prints: a table per context, README's results beside the report's figures,
and the README blocks --readme rewrites."""
from __future__ import annotations

import os
import statistics
from collections import defaultdict

from common import REPO_ROOT, runfolder
from common.compare import stats
from common.compare.reference import REPORT
from common.compare.designs import effects_markdown, correct_matrix
from common.compare.rows import (CONTEXT_PARTS, DATASET_LABELS, Row, context_line, contrasts_between, one_part_apart,
                                 summarize_row,
                                 table_summaries)
from common.errors import UserError, first_line

RESULTS_BLOCK, EFFECTS_BLOCK = "results", "effects"   # --block names with their own text
BLOCK_NAME = r"[a-z0-9][a-z0-9_-]{0,40}"


def markers(block: str) -> tuple:
    """The pair of lines in a README between which --readme writes the block."""
    return f"<!-- {block}:start -->", f"<!-- {block}:end -->"

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
    """('+0.0123 [+0.0050, +0.0196]', '0.012 (raw 0.004)') for the table: the difference and its p, Holm-adjusted
    then raw (Holm makes neighbouring p-values equal; the raw one tells them apart)."""
    if not diff:
        return "—", "—"
    low, high = diff["ci95"]
    text = f"{diff['difference']:+.4f}" + (f" [{low:+.4f}, {high:+.4f}]" if low is not None else "")
    if diff["p"] is None:
        return text, {stats.ONE_SEED: "— (one seed on a side)", stats.ONE_PAIR: "— (one shared seed)"}.get(
            diff["test"], "— (no spread)")
    return text, f"{diff['p_holm']:.3g} (raw {diff['p']:.3g})"


HEADER = ("| experiment | changed from the script's recipe | n (seeds) | best val acc ± 95% CI | test acc ± 95% CI "
          "| Δ val vs baseline [unadjusted 95% CI] | p, val (Holm) | Δ test vs baseline [unadjusted 95% CI] "
          "| p, test (Holm) | detectable Δ test (80% power, unadjusted) | seeds per arm for 80% power | macro F1 | AUC | best epoch "
          "| train time s | code |")
COLUMNS = HEADER.count("|") - 1
IMPROVING = "↑"  # beside a row's best epoch: its runs were still improving when they stopped


def table_row(row: Row, summary: dict, rows: list) -> str:
    base = summary["vs_baseline"]
    val_diff, val_p = _difference(base["val_accuracy"] if base else None)
    test_diff, test_p = _difference(base["test_accuracy"] if base else None)
    detectable = base["test_accuracy"]["detectable_80"] if base else None
    seeds = _seeds(base["test_accuracy"]["seeds_needed"]) if base else "—"
    if row.baseline is None and any(r.baseline is row for r in rows):
        val_diff, val_p, test_diff, test_p = "baseline", "", "baseline", ""
    improving = summary["still_improving"]
    best_epoch = _ci(summary.get("best_epoch"), 1) + (f" {IMPROVING}" if improving["marked"] else "")
    return (f"| {summary['experiment']} | {summary['changes']} | {summary['n']} "
            f"({','.join(map(str, summary['seeds']))}) | {_ci(summary.get('val_accuracy'))} "
            f"| {_ci(summary.get('test_accuracy'))} | {val_diff} | {val_p} | {test_diff} | {test_p} "
            f"| {'—' if detectable is None else f'{detectable:.4f}'} | {seeds} | {_ci(summary.get('f1'))} "
            f"| {_ci(summary.get('auc'))} | {best_epoch} "
            f"| {_ci(summary.get('train_time_s'), 0)} | {', '.join(summary['code'])} |")


def _seeds(needed: dict | None) -> str:
    if not needed or needed["n"] is None:
        return "—"
    return f"{needed['n']} (Δ {needed['effect']:+.4f})"


def families(members: list) -> list:
    """[(row, summary)] of one context split by baseline: each list is one table and one Holm family per metric."""
    groups = defaultdict(list)
    for row, summary in members:
        groups[id(row.baseline or row)].append((row, summary))
    return list(groups.values())


def table_notes(summaries: list) -> list:
    tests = max((s["vs_baseline"][m].get("holm_family", 0) for s in summaries if s["vs_baseline"]
                 for m in ("val_accuracy", "test_accuracy")), default=0)
    notes = [f"± is the 95% CI half-width over seeds (the fixed test images' own noise not included). p: "
             f"{_tests_used(summaries)}, Holm-adjusted per metric over this table's {tests} comparison{'s' * (tests > 1)} "
             "with its baseline (raw p beside it; the rule: docs/ablations.md, 'Multiplicity'); brackets: unadjusted 95% "
             "CIs; detectable Δ: the smallest true test difference the same test, with these n and spread, finds with "
             "80% power at 0.05, unadjusted." if tests else
             "± is the 95% CI half-width over seeds. No p-values: "
             + ("the table's only row, nothing to compare it with." if len(summaries) == 1 else
                "a comparison needs two or more seeds on each side.")]
    partial = [s for s in summaries if s["vs_baseline"] and s["vs_baseline"]["paired_seeds"]
               and len(s["vs_baseline"]["paired_seeds"]) < max(s["n"], len(s["vs_baseline"]["baseline_runs"]))]
    if partial:
        notes.append("Paired over the seeds both rows ran only (the rest of a row's seeds count in its mean, not in "
                     "its Δ): " + "; ".join(f"{s['changes']}: seeds {','.join(map(str, s['vs_baseline']['paired_seeds']))}"
                                            for s in partial) + ".")
    needed = [s["vs_baseline"]["test_accuracy"]["seeds_needed"] for s in summaries if s["vs_baseline"]]
    needed = [n for n in needed if n and n["n"] is not None]
    if needed:
        notes.append(f"Seeds per arm for 80% power: how many seeds each of the two rows needs for the same test to find "
                     f"the Δ test shown ({'--effect' if needed[0]['given'] else 'the observed difference'}) at "
                     f"α = {needed[0]['alpha']:.3g} (0.05 over the {needed[0]['family']} comparisons of a metric: Holm's "
                     "strictest step), if the rows' spread is what these seeds show; it rests on a pilot's spread, "
                     "itself uncertain with so few seeds (Colas et al. 2018).")
    marked = [s for s in summaries if s["still_improving"]["marked"]]
    if marked:
        notes.append(f"{IMPROVING} still improving: in {sum(s['still_improving']['runs'] for s in marked)} of "
                     f"{sum(s['still_improving']['of'] for s in marked)} runs of the {len(marked)} marked row(s) the "
                     "best validation accuracy came in the last epoch, or the last third of the epochs still rises "
                     "(least-squares slope over 2 standard errors). More epochs may change this table's answer.")
    if any(s[m]["n"] <= SMALL_N for s in summaries for m in ("val_accuracy", "test_accuracy") if m in s):
        notes.append(f"† n ≤ {SMALL_N}: a 95% CI from so few seeds spans ±12.7 standard errors or more; it says "
                     "little beyond the values themselves.")
    return notes


PAIRED_WORDS = ("paired t over the seeds a row shares with its baseline (the two runs of a seed start from the same "
                "weights or see the same data order, config.json's draws, so they are not independent: each seed's "
                "difference is one observation, n − 1 df; Δ is the mean of those differences)")
WELCH_WORDS = "Welch's t over seeds (no run shares a random draw with a baseline run)"


def _tests_used(summaries: list) -> str:
    """The tests behind a table's p-values: paired where a row shares draws with its baseline, else Welch."""
    compared = [s["vs_baseline"] for s in summaries if s["vs_baseline"]]
    paired, welch = any(c["paired_seeds"] for c in compared), any(not c["paired_seeds"] for c in compared)
    if paired and welch:
        return f"{PAIRED_WORDS}; for the rows that share none, {WELCH_WORDS}"
    return PAIRED_WORDS if paired else WELCH_WORDS


def markdown(rows: list, runs: list, designs: list | None = None, effect: float | None = None) -> str:
    """The main effects of any factorial design first, then a table per context (dataset, data, hardware,
    software, threads, precision) with its notes, why tables were not compared, repeated seeds and
    incomplete runs. effect: --effect, the test difference the seeds-per-arm column is for."""
    out, repeated = [], []
    for design in designs or []:
        out += ["", effects_markdown(design).rstrip()]
    summaries = table_summaries(rows, effect)
    for context in dict.fromkeys(row.context for row in rows):
        members = [(row, s) for row, s in zip(rows, summaries) if row.context == context]
        for family in families(members):
            plan = family[0][0].plan if len({row.plan for row, _ in family}) == 1 else None
            out += ["", context_line(family[0][1], [s for _, s in family]) + (f" · plan {display_path(plan)}" if plan else ""), "",
                    HEADER, "|" + "---|" * COLUMNS]
            out += [table_row(row, summary, rows) for row, summary in family]
            out += [""] + table_notes([s for _, s in family])
        repeated += [f"- {s['experiment']} ({s['changes']}), seed {d['seed']}: kept {display_path(d['kept'])}, "
                     f"not {', '.join(display_path(x) for x in d['dropped'])}" for _, s in members
                     for d in s["duplicates"]]
    out += unmatched_notes(rows)
    if repeated:
        out += ["", "Repeated seeds (each counts once):", *repeated]
    incomplete = [r for r in runs if not r.complete]
    if incomplete:
        out += ["", "Not averaged (incomplete, failed or damaged):", ""]
        out += [f"- {display_path(r.dir)}: {r.status}" for r in incomplete]
    if not rows:
        out += ["", "No complete runs found."]
    return "\n".join(out).strip() + "\n"



WHY_APART = {  # what differs between two tables of one experiment, why they are not compared, how to match them
    "threads": "a CPU's thread count changes the order of its sums, so the numbers. A lone run uses every core "
               "(torch's default), a --jobs N member cores / N threads, a Slurm task --slurm-cpus: to match, run "
               "both the same way, or give the lone run OMP_NUM_THREADS=T (docs/usage.md)",
    "precision": "bf16 and fp32 round differently: run both with one --precision",
    "hardware": "another CPU model, vector ISA or GPU gives other numbers for the same seed "
                "(docs/reproducibility.md): run both on one kind of machine",
    "software": "another torch or CUDA build gives other numbers: run both on one",
    "data": "their data files differ (the test file's sha256): run both on the same copy",
    "processes": "another torchrun process count: run both with the same --nproc_per_node",
}


def unmatched_notes(rows: list) -> list:
    """A line for each two tables of one dataset and experiment that differ in one thing only: what it is,
    why their rows were not averaged together, how to make runs that can be; then, for each recipe that
    both tables ran, the difference that one thing made (rows.contrasts)."""
    lines = []
    for a, b, part in one_part_apart(rows, tuple(WHY_APART)):
        k = CONTEXT_PARTS.index(part)
        lines.append(f"- {DATASET_LABELS[a[0]]} · {a[1]}: the tables with {a[k]} and with {b[k]} differ only "
                     f"in {part}, so their rows were not averaged together: {WHY_APART[part]}.")
        lines += [contrast_line(c) for c in contrasts_between(rows, a, b, part)]
    return ["", "Not compared with each other:", *lines] if lines else []


def contrast_line(contrast: dict) -> str:
    """'  - the script's recipe (5 and 5 seeds): Δ test acc bfloat16, nchw − float32, nchw +0.0012 [...] (paired t
    over seeds 0,1,2,3,4, p 0.49, unadjusted); Δ best val acc ...'"""
    test, val = contrast["test_accuracy"], contrast["val_accuracy"]
    if test["p"] is None:
        how = _difference(test)[1].strip("— ()") + ": no test"
    else:
        seeds = contrast["paired_seeds"]
        how = (f"paired t over seeds {','.join(map(str, seeds))}" if seeds else "Welch's t over seeds") + \
            f", p {test['p']:.3g}, unadjusted"
    recipe = contrast["changes"] if contrast["changes"] != "—" else "the script's recipe"
    return (f"  - {recipe} ({contrast['n'][0]} and {contrast['n'][1]} seeds): Δ test acc {contrast['sides'][0]} − "
            f"{contrast['sides'][1]} {_difference(test)[0]} ({how}); Δ best val acc {_difference(val)[0]}")


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
    """README's results: each script's own recipe (on real data) beside the report's figure, one line per
    cell and machine (most seeds first; machines round differently, so their runs are never pooled),
    with the gap (report minus our mean) and its 95% CI: our mean's interval, the report's one run fixed."""
    lines = ["| experiment | dataset | machine | n (seeds) | test acc, mean ± 95% CI | sd over seeds | test-image SE "
             "| report | gap: report − ours [95% CI] | one run of ours, 95% prediction interval | p, report as one run |",
             "|" + "---|" * 11]
    measured = defaultdict(list)
    for row in reference_rows(rows):
        measured[(row.record.experiment, row.record.dataset)].append(row)
    for experiment, cells in REPORT.items():
        for dataset, report in cells.items():
            head = f"| {experiment} | {DATASET_LABELS[dataset]} |"
            cell = sorted(measured[(experiment, dataset)], key=headline_rank, reverse=True)
            if not cell:
                lines.append(f"{head} — | 0 | not measured | — | — | {report['accuracy']:.4f} | — | — | — |")
            lines += [f"{head} {_machine(row, cell)} | {_reference_cells(row, report)}" for row in cell]
    return "\n".join(lines) + "\n"


def _machine(row: Row, cell: list) -> str:
    """The row's hardware, with its threads where another row of the cell has the same hardware."""
    summary = summarize_row(row)
    alike = [r for r in cell if summarize_row(r)["hardware"] == summary["hardware"]]
    return summary["hardware"] + (f", {summary['threads']}" if len(alike) > 1 else "")


def _reference_cells(row: Row, report: dict) -> str:
    accs = row.values("test_accuracy")
    gap = stats.gap(accs, report["accuracy"])
    return (f"{len(accs)} ({','.join(str(r.record.options.seed) for r in row.runs)}) "
            f"| {_ci(summarize_row(row)['test_accuracy'])} "
            f"| {f'{statistics.stdev(accs):.4f}' if len(accs) > 1 else '—'} | {_image_se(row)} "
            f"| {report['accuracy']:.4f} | {gap.mean:+.4f}"
            f"{'' if gap.low is None else f' [{gap.low:+.4f}, {gap.high:+.4f}]'} | {_prediction(accs, report)}")


def _image_se(row: Row) -> str:
    """The standard error the fixed test images add to the row's mean: the spread over images of the
    runs' mean right answer, over the square root of the images (from predictions.npz); '—' without it."""
    correct = correct_matrix(row.runs)
    if correct is None:
        return "—"
    per_image = correct.mean(0)
    return f"{per_image.std(ddof=1) / len(per_image) ** 0.5:.4f}"


def _prediction(values: list, report: dict) -> str:
    """'[0.6574, 0.7298] | 0.08 |': where one run of ours falls, and how unusual the report's run is as one."""
    interval, p = stats.prediction(values, report["accuracy"])
    if p is None:
        return "— | — |"
    return f"[{interval.low:.4f}, {interval.high:.4f}] | {p:.2g} |"


def display_path(path: str) -> str:
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO_ROOT) if path.startswith(REPO_ROOT + os.sep) else path



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

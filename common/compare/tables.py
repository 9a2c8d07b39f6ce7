"""The markdown compare prints: a table per context, README's results beside the report's figures,
and the README blocks --readme rewrites."""
from __future__ import annotations

import os
import statistics

from common import REPO_ROOT, runfolder
from common.compare import stats
from common.compare.reference import REPORT
from common.compare.designs import effects_markdown
from common.compare.rows import DATASET_LABELS, Row, context_line, table_summaries
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
    """('+0.0123 [+0.0050, +0.0196]', '0.004') for the table: the difference and its Holm-adjusted p."""
    if not diff:
        return "—", "—"
    low, high = diff["ci95"]
    text = f"{diff['difference']:+.4f}" + (f" [{low:+.4f}, {high:+.4f}]" if low is not None else "")
    return text, "— (one seed on a side)" if diff["p"] is None else f"{diff['p_holm']:.3g}"


HEADER = ("| experiment | changed from the script's recipe | n (seeds) | best val acc ± 95% CI | test acc ± 95% CI "
          "| Δ val vs baseline [95% CI] | p, val (Holm) | Δ test vs baseline [95% CI] | p, test (Holm) "
          "| detectable Δ test (80% power) | macro F1 | AUC | best epoch | train time s | code |")


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

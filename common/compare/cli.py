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
baseline row (the row nearest the script's own recipe, or --baseline FIELD=VALUE; a plan's rows
against their own plan's baseline) in both, with unadjusted 95% intervals, p-values (a paired t over
the seeds whose two runs share a draw, initial weights or data order; else Welch's t over seeds)
Holm-adjusted per metric over the comparisons with that baseline (the raw p beside; the rule:
docs/ablations.md, 'Multiplicity'), the smallest test difference the two rows' n and spread detect with 80% power,
and the seeds per arm that test needs for 80% power at its family's level for the observed
difference (or --effect), from the rows' spread as a pilot. "±" is always a 95% CI half-width.
A row whose runs were still improving when they stopped is marked ↑ (common.compare.rows.
still_improving), and its table says that more epochs may change the answer. Tables that differ
in one thing only (threads, precision, hardware, ...) are said to, with how to match them and, for
each recipe both ran, what that one thing changed (first minus second, paired where seeds share
draws, unadjusted; --json: contrasts). One seed
on a side gets no p-value (it cannot separate a recipe from its seed; --json keeps an exact
McNemar test of the two networks, labelled as such). Incomplete, failed or damaged runs are
listed apart and never averaged.

When the rows of a table vary k >= 2 fields at two values each (a factorial --sweep), a
main-effects table follows (common/compare/factorial.py): each field's effect averaged over the
others, from a linear model over every run, with its unadjusted 95% CI, p Holm-adjusted over the design's terms and
the effect the design detects with 80% power; the two-way interactions that stand out; a figure.
Figures go inside the compared folder. Nothing tracked by git is rewritten unless named
(--readme, --figure).
"""
from __future__ import annotations

import argparse
import os
import re
import sys

from common import REPO_ROOT, runfolder
from common.compare.designs import design_json, designs, effects_markdown
from common.compare.figures import write_figures
from common.compare.rows import build_rows, choose_baselines, contrasts, parse_baseline, table_summaries
from common.compare.runs import collect
from common.compare.tables import (BLOCK_NAME, EFFECTS_BLOCK, RESULTS_BLOCK, WHY_APART, markdown, read_readme,
                                   reference_rows, reference_table, update_readme)
from common.console import guard_console
from common.errors import UserError


def write_json_summary(path: str, rows: list, runs: list, found: list, effect: float | None = None) -> None:
    runfolder.write_json(path, {"rows": table_summaries(rows, effect), "designs": [design_json(d) for d in found],
                                "contrasts": contrasts(rows, tuple(WHY_APART)),
                                "incomplete": [{"dir": r.dir, "status": r.status} for r in runs if not r.complete]})


def default_paths() -> list:
    return runfolder.experiment_folders(REPO_ROOT)


def accuracy_difference(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < abs(value) <= 1:
        raise argparse.ArgumentTypeError(f"an accuracy difference is a share in (0, 1], e.g. 0.01 for one point, "
                                         f"got {text}")
    return value


def block_name(text: str) -> str:
    if not re.fullmatch(BLOCK_NAME, text):
        raise argparse.ArgumentTypeError(f"a block name is lowercase letters, digits, - and _, got {text!r}")
    return text


def output_file(text: str) -> str:
    """An output file's path as the file system takes it: not empty, each part at most NAME_MAX bytes."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path names no file")
    longest = max(len(part.encode()) for part in text.split("/"))
    if longest > 255 or len(text.encode()) > 4095:
        raise argparse.ArgumentTypeError(f"a path of {len(text.encode())} bytes with a {longest}-byte part is longer "
                                         f"than file systems allow (255 bytes a part, 4095 in all)")
    return text


def main(argv=None) -> None:
    from common.cli import Parser  # a usage error is one line

    guard_console(warn=False)  # `| head`, a full disk or an ASCII-only console end no comparison in a traceback

    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="*", help="folders holding run folders at any depth (default: your own runs, "
                                              "every ex_N/ beside the scripts)")
    p.add_argument("--baseline", type=parse_baseline, metavar="FIELD=VALUE",
                   help="the row each difference is measured from, e.g. lr=0.001 (default: the row nearest the "
                        "script's own recipe)")
    p.add_argument("--figure", type=output_file, help="where to write the validation-accuracy figure, F.png (default: "
                                    "compare_val_accuracy.png inside the compared folder); per swept field also "
                                    "F_FIELD.png beside it (default: compare_FIELD.png), per factorial design "
                                    "F_effects.png (with --block effects: F.png itself)")
    p.add_argument("--effect", type=accuracy_difference, metavar="DELTA",
                   help="the test-accuracy difference (e.g. 0.01: one point) the 'seeds per arm for 80%% power' "
                        "column is for (default: each row's observed difference from its baseline)")
    p.add_argument("--no-figures", action="store_true", help="write no figure")
    p.add_argument("--json", type=output_file, help="also write the table as JSON (numbers as numbers, each row's run folders)")
    p.add_argument("--readme", type=output_file, help="replace the text between a block's markers in this file (see --block)")
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
    fitted = [d for d in found if d.fitted]
    if args.block == EFFECTS_BLOCK and not fitted:
        raise UserError(f"--block {EFFECTS_BLOCK}: the compared runs form no two-level factorial design (two or "
                        "more recipe fields at two values each, balanced)")
    text = markdown(rows, runs, found, args.effect)
    print(text)
    if args.json:
        write_json_summary(args.json, rows, runs, found, args.effect)
    shown = reference_rows(rows) if args.block == RESULTS_BLOCK else rows  # the figures behind the block
    if shown and not args.no_figures:
        for written in write_figures(shown, fitted if args.block != RESULTS_BLOCK else [], args.figure, paths,
                                     effects_only=args.block == EFFECTS_BLOCK):
            print(f"figure: {written}")
    if args.readme:
        blocks = {RESULTS_BLOCK: lambda: reference_table(rows),
                  EFFECTS_BLOCK: lambda: "\n".join(effects_markdown(d) for d in fitted)}
        update_readme(args.readme, args.block, blocks.get(args.block, lambda: text)())


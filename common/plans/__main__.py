"""Every plan and run at a glance, now: status, how it differs from its script's recipe, test
accuracy, training time.

    python -m common.plans                 # your runs: every ex_N/ and ex_N_smoke/ beside the scripts
    python -m common.plans ex_1/sweeps/lr  # one plan: each member
    python -m common.plans results         # any folders: every plan and run folder below them

A plan (a folder holding sweep.json) lists its members in its order, with a count per status;
run folders that belong to no plan follow under "runs". Reads only; `... | head` ends quietly."""
import collections
import os
import sys

from common import REPO_ROOT, runfolder
from common.console import duration, guard_console
from common.errors import UserError
from common.plans.plan import PLAN_FILE, describe, read_plan, statuses


def run_line(run_dir: str, status: str, label: str, swept: tuple = ()) -> str:
    """'status  test 0.6936  train 18m20s  label  changes' (what the run folder holds; a plan member's
    swept fields are in its label, so its changes leave them out)."""
    try:
        record = runfolder.read_config(run_dir)
        changes = {k: v for k, v in runfolder.recipe_changes(record).items() if k not in swept}
        changes = runfolder.describe_changes(record, changes)
    except UserError:
        changes = ""
    result, seconds = "", None
    try:
        train = runfolder.read_train(run_dir)
        seconds = sum(epoch["train_time_s"] for epoch in train["epochs"])
        result = f"{train['epochs_done']}/{train['epochs_planned']} epochs"
        if status == runfolder.COMPLETED:
            result = f"test {runfolder.read_test(run_dir)['accuracy']:.4f}"
    except (UserError, KeyError, TypeError):
        pass
    return (f"  {status:<12} {result:<15} {'train ' + duration(seconds) if seconds else '':<12} {label}"
            f"{'  (' + changes + ')' if changes and changes != '—' else ''}")


def plan_lines(plan_dir: str) -> tuple:
    """(the plan's lines, the run folders it owns)."""
    the_plan = read_plan(plan_dir)
    now = statuses(the_plan)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(collections.Counter(now.values()).items()))
    lines = [f"{describe(the_plan)}: {counts}"]
    swept = tuple(name for name, _ in the_plan.sweep)
    lines += [run_line(m.run_dir, now[m.id], shown(m.run_dir) if m.id.startswith('..') else m.id, swept)
              for m in the_plan.members]
    return lines, {os.path.realpath(m.run_dir) for m in the_plan.members}


def overview(paths: list) -> list:
    """The lines for these folders: each plan below them, then the run folders no plan owns."""
    lines, owned, plans = [], set(), []
    for root in paths:
        for folder, subfolders, files in os.walk(root):
            subfolders.sort()
            if PLAN_FILE in files:
                plans.append(folder)
    for plan_dir in sorted(set(plans)):
        try:
            more, members = plan_lines(plan_dir)
        except UserError as e:
            more, members = [f"{plan_dir}: {e}"], set()
        lines += more + [""]
        owned |= members
    lone = [d for root in paths for d in runfolder.run_folders(root) if os.path.realpath(d) not in owned]
    if lone:
        lines.append(f"runs in no plan: {len(lone)}")
        lines += [run_line(d, runfolder.status(d), shown(d)) for d in dict.fromkeys(lone)]
    return lines or ["no plans or run folders found"]


def shown(path: str) -> str:
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def main(argv: list) -> None:
    guard_console(warn=False)  # `... | head` closes the pipe: no traceback
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return
    if any(a.startswith("-") for a in argv):
        print("usage: python -m common.plans [FOLDER ...]", file=sys.stderr)
        sys.exit(2)
    paths = argv or runfolder.experiment_folders(REPO_ROOT, smoke=True)
    missing = [p for p in paths if not os.path.isdir(p)]
    if missing or not paths:
        sys.exit(f"error: no such folder: {', '.join(missing)}" if missing else
                 f"error: no ex_N/ or ex_N_smoke/ in {REPO_ROOT} yet: run an experiment first")
    print("\n".join(overview(paths)).rstrip())


if __name__ == "__main__":
    main(sys.argv[1:])

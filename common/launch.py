"""The command line of every ex_N.py: `main(RECIPE, __doc__, __file__)`.

It does four things: resolve the command (common.cli), build or read its plan (common.plans:
every command is one), pick the executor (inline, --jobs processes, or Slurm), and print the
outcome and the next command. Around them: SIGINT, SIGTERM and SIGHUP become a clean stop
(common.stopping), a closed or full console never kills the run, torchrun's process group is
joined. Exit codes: 0; 1 for a user's mistake (one line, `error: ...`); 2 for a bad flag;
128 + the signal's number when stopped, after the one command that continues.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import sys

from common import REPO_ROOT, distributed, runfolder, stopping
from common.cli import resolve, resume_command
from common.plans import command as plan_command
from common.plans import estimate
from common.plans import plan
from common.config import to_dict
from common.console import guard_console
from common.devices import request_huge_pages
from common.errors import UserError, first_line
from common.files import check_writable


def main(recipe, description: str, script_file: str, argv: list | None = None) -> list:
    """Parse the command line, run its plan, return the run folders; exits 1 on a user's mistake."""
    guard_console()
    name = os.path.splitext(os.path.basename(script_file))[0]
    command = resolve(name, recipe, description, argv, REPO_ROOT)  # usage errors exit 2 here
    if command.launch.dry_run:
        planned = dry_run(command)
        print(json.dumps(planned, indent=2))
        print(estimate.words(planned["estimate"]), file=sys.stderr, flush=True)  # stdout stays JSON
        return []
    request_huge_pages()  # before the data is loaded
    stopping.stop_on_signals()
    distributed.setup()
    if not distributed.is_main():
        sys.stdout = open(os.devnull, "w")  # one process speaks; errors still reach stderr
    the_plan = None
    try:
        the_plan = plan_command.of_command(command)
        return report(the_plan, execute(the_plan))
    except UserError as e:
        _fail(f"error: {e}")
    except KeyboardInterrupt as e:
        print(stop_message(the_plan), file=sys.stderr, flush=True)
        stopping.exit_decided(128 + getattr(e, "signum", signal.SIGINT))
    except RuntimeError as e:
        if not distributed.peer_failure(e):
            raise
        _fail(f"error: another process of this torchrun job stopped ({first_line(e, 160)}); its run folder "
              f"keeps the last finished epoch: resume it with torchrun and the same --nproc_per_node")
    finally:
        distributed.cleanup()


def dry_run(command) -> dict:
    """What would run, written nowhere: the first member's resolved recipe, the options and flags, and every
    member with the recipe fields where it differs from that one (a swept model brings its own normalization)."""
    the_plan = plan.make_plan(command, runfolder.stamp())
    members = the_plan.members
    first = to_dict(members[0].recipe)
    return {"experiment": command.experiment, "recipe": first,
            **{k: to_dict(getattr(command, k)) for k in ("options", "launch")},
            "member_count": len(members),
            "members": [{"id": m.id, "dataset": m.dataset, "seed": m.options.seed, "run_dir": m.run_dir,
                         "recipe": {k: v for k, v in to_dict(m.recipe).items() if v != first[k]}} for m in members],
            "estimate": estimate.estimate(members, plan_command.launcher_settings(the_plan, command), command.options.out)}


def _fail(message: str):
    """Exit 1 with one line; a stop signal after it (torchrun stopping the workers left) ends the process silently."""
    print(message, file=sys.stderr, flush=True)
    stopping.exit_decided(1)


def execute(the_plan: plan.Plan) -> list:
    """Hand what is left of the plan (plan.todo) to its executor, `(plan, members) -> [Outcome]`."""
    is_new = not os.path.isfile(os.path.join(the_plan.folder, plan.PLAN_FILE))
    for folder in sorted({os.path.dirname(m.run_dir) for m in the_plan.members}) if distributed.is_main() else ():
        check_writable(folder)  # before any training
    if the_plan.kept:
        if distributed.is_main():
            plan.write_plan(the_plan, plan.statuses(the_plan))
        print(plan.describe(the_plan), flush=True)
    members = plan.todo(the_plan) if the_plan.kept else list(the_plan.members)
    for skipped in (m for m in the_plan.members if m not in members):
        print(f"{skipped.id}: {runfolder.status(skipped.run_dir)} (skipped)", flush=True)
    if the_plan.launcher["kind"] == "slurm":
        from common.plans.slurm import submit as executor
    elif the_plan.launcher["jobs"] > 1 and the_plan.kept:
        from common.plans.jobs import run_parallel as executor
    else:
        from common.plans.member import run_inline as executor
    try:
        return executor(the_plan, members)
    except UserError:
        if the_plan.kept and is_new and distributed.is_main():
            plan.remove_if_unstarted(the_plan)  # a mistake before any training leaves nothing behind
        raise


def report(the_plan: plan.Plan, outcomes: list) -> list:
    """sweep.json's statuses and a summary line; a member that failed makes the command fail, after the others ran."""
    if not the_plan.kept or the_plan.launcher["kind"] == "slurm":
        return [o.member.run_dir for o in outcomes]
    statuses = plan.statuses(the_plan)
    plan.write_plan(the_plan, statuses)
    elsewhere = list(statuses.values()).count(runfolder.RUNNING)
    print(f"{plan.describe(the_plan)}: {list(statuses.values()).count(runfolder.COMPLETED)} of {len(statuses)} complete"
          + (f", {elsewhere} running in another process" if elsewhere else ""), flush=True)
    unfinished = [o for o in outcomes if o.status not in (runfolder.COMPLETED, runfolder.RUNNING)]
    if not unfinished:
        if list(statuses.values()).count(runfolder.COMPLETED) == len(statuses):
            print(f"compare them: {compare_command(the_plan)}", flush=True)
        return [m.run_dir for m in the_plan.members]
    failed = [o for o in unfinished if o.status == runfolder.FAILED]
    stopped = [o.member.id for o in unfinished if o.status != runfolder.FAILED]  # a signal or a kill: nothing to fix
    diverged = [o.member.id for o in failed if o.diverged]  # a nan loss fails again on resume; anything else may not
    resume = resume_command(the_plan.experiment, the_plan.folder)
    raise UserError(
        (f"{len(failed)} of {len(the_plan.members)} members failed ({', '.join(o.member.id for o in failed)}); "
         f"see their train.json. " if failed else "")
        + (f"{len(stopped)} of {len(the_plan.members)} members were stopped ({', '.join(stopped)}). " if stopped else "")
        + (f"{', '.join(diverged)}: the loss diverged, so resuming cannot help; start a new plan (another "
           f"--name) with other values, e.g. a lower --lr. " if diverged else "")
        + ("The rest are done. " if len(unfinished) < len(outcomes) else "")
        + ("" if len(diverged) == len(failed) and not stopped else
           f"{'After a fix, c' if len(failed) > len(diverged) else 'C'}ontinue the plan with: {resume}"))


def compare_command(the_plan: plan.Plan) -> str:
    """python -m common.compare with the plan's folder, or (an unnamed plan, whose runs sit beside lone
    runs) its members' run folders."""
    inside = all(m.run_dir.startswith(the_plan.folder + os.sep) for m in the_plan.members)
    folders = [the_plan.folder] if inside else [m.run_dir for m in the_plan.members]
    return "python -m common.compare " + " ".join(shlex.quote(_shown(f)) for f in folders)


def _shown(path: str) -> str:
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def stop_message(the_plan: plan.Plan | None) -> str:
    """Where the stop left things, and the one command that continues."""
    with stopping.cleaning_up():
        if the_plan is not None and the_plan.kept and distributed.is_main() and \
                os.path.isfile(os.path.join(the_plan.folder, plan.PLAN_FILE)):
            plan.write_plan(the_plan, plan.statuses(the_plan))
            return (f"\ninterrupted; the plan continues where it stopped with:\n"
                    f"  {resume_command(the_plan.experiment, the_plan.folder)}")
        run_dir = the_plan.members[0].run_dir if the_plan is not None else None
        if run_dir is None or not os.path.isfile(runfolder.path(run_dir, runfolder.CONFIG)):
            return "\ninterrupted before anything was written"
        if runfolder.is_complete(run_dir):
            return f"\ninterrupted after the run was complete: {run_dir} holds its {runfolder.TEST}; nothing to resume"
        try:
            epochs = runfolder.read_train(run_dir)["epochs_done"]
        except UserError:
            epochs = 0
        return (f"\ninterrupted; {epochs} epochs are saved in {run_dir}/{runfolder.LAST}. Resume with:\n"
                f"  {resume_command(the_plan.experiment, run_dir)}")

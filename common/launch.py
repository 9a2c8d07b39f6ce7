"""The command line of every ex_N.py: `main(RECIPE, __doc__, __file__)`.

It does four things: resolve the command (common.cli), build or read its plan (common.plan:
every command is one, a lone run a plan of one member), pick the executor (inline, --jobs
processes, or Slurm), and print the outcome and the next command. Around them: SIGINT,
SIGTERM and SIGHUP become a clean stop (common.stopping), a closed or full console never
kills the run, and torchrun's process group is joined. Exit codes: 0; 1 for a user's mistake
(one line, `error: ...`); 2 for a bad flag; 128 + the signal's number when stopped, after the
one command that continues.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import sys

from common import REPO_ROOT, distributed, plan, runfolder, stopping
from common.cli import Command, resolve
from common.config import to_dict
from common.console import guard_console
from common.devices import request_huge_pages
from common.errors import UserError, first_line

def main(recipe, description: str, script_file: str, argv: list | None = None) -> list:
    """Parse the command line, run its plan, return the run folders; exits 1 on a user's mistake."""
    guard_console()
    name = os.path.splitext(os.path.basename(script_file))[0]
    command = resolve(name, recipe, description, argv, REPO_ROOT)  # usage errors exit 2 here
    if command.launch.dry_run:
        print(json.dumps(dry_run(command), indent=2))
        return []
    request_huge_pages()  # before the data is loaded
    stopping.stop_on_signals()
    distributed.setup()
    if not distributed.is_main():
        sys.stdout = open(os.devnull, "w")  # one process speaks; errors still reach stderr
    script, the_plan = _script_words(script_file), None
    try:
        the_plan = plan.of_command(command, script)
        return report(the_plan, execute(the_plan, script), script)
    except UserError as e:
        _fail(f"error: {e}")
    except KeyboardInterrupt as e:
        print(stop_message(the_plan, script), file=sys.stderr, flush=True)
        sys.exit(128 + getattr(e, "signum", signal.SIGINT))
    except RuntimeError as e:
        if not distributed.peer_failure(e):
            raise
        _fail(f"error: another process of this torchrun job stopped ({first_line(e, 160)}); its run folder "
              f"keeps the last finished epoch: resume it with torchrun and the same --nproc_per_node")
    finally:
        distributed.cleanup()


def _fail(message: str):
    """Exit 1 with one line; a stop signal after it (torchrun stopping the workers left) ends the process silently."""
    stopping.end_quietly()
    print(message, file=sys.stderr, flush=True)
    sys.exit(1)


def _script_words(script_file: str) -> str:
    """How to name the script in a printed command: relative to the current folder when inside it."""
    path = os.path.abspath(script_file)
    relative = os.path.relpath(path)
    return shlex.quote(relative if not relative.startswith("..") else path)


# --- 1 and 2: the command and its plan (common.plan.of_command) -------------------------------------------------------------------

def dry_run(command: Command) -> dict:
    """What would run: the resolved recipe, options and flags, and the plan's members (written nowhere)."""
    the_plan = plan.make_plan(command, plan.stamp())
    return {"experiment": command.experiment, "recipe": to_dict(command.recipe), "options": to_dict(command.options),
            "launch": to_dict(command.launch), "member_count": len(the_plan.members),
            "members": [{"id": m.id, "dataset": m.dataset, "seed": m.options.seed, "run_dir": m.run_dir}
                        for m in the_plan.members]}


# --- 3: the executor -------------------------------------------------------------------------------

def execute(the_plan: plan.Plan, script: str) -> list:
    """Run what is left of the plan: inline, as --jobs processes, or on Slurm; the members' Outcomes."""
    _check_writable(the_plan)
    members, is_new = list(the_plan.members), not os.path.isfile(os.path.join(the_plan.folder, plan.PLAN_FILE))
    if the_plan.kept:
        if distributed.is_main():
            plan.write_plan(the_plan, plan.statuses(the_plan))
        print(plan.describe(the_plan), flush=True)
        members = plan.todo(the_plan)
        for member in the_plan.members:
            if member not in members:
                print(f"{member.id}: {plan.member_status(member)} (skipped)", flush=True)
    try:
        if the_plan.launcher["kind"] == "slurm":
            from common import slurm

            return slurm.submit(the_plan, members, the_plan.launcher, script)
        if the_plan.launcher["jobs"] > 1 and the_plan.kept:
            from common import jobs

            return jobs.run_parallel(the_plan, members, the_plan.launcher["jobs"])
        from common import member

        return member.run_inline(the_plan, members)
    except UserError:
        if the_plan.kept and is_new and distributed.is_main():
            plan.remove_if_unstarted(the_plan)
        raise


def _check_writable(the_plan: plan.Plan) -> None:
    """Fail on an unwritable output folder before any training."""
    if not distributed.is_main():
        return
    from common.files import check_writable

    for folder in sorted({os.path.dirname(m.run_dir) for m in the_plan.members}):
        check_writable(folder)


# --- 4: the outcome and the next command -----------------------------------------------------------

def report(the_plan: plan.Plan, outcomes: list, script: str) -> list:
    """sweep.json's statuses and a summary line; a member that failed makes the command fail, after the others ran."""
    if not the_plan.kept or the_plan.launcher["kind"] == "slurm":
        return [o.member.run_dir for o in outcomes]
    statuses = plan.statuses(the_plan)
    plan.write_plan(the_plan, statuses)
    done = sum(s == runfolder.COMPLETED for s in statuses.values())
    elsewhere = sum(s == runfolder.RUNNING for s in statuses.values())
    print(f"{plan.describe(the_plan)}: {done} of {len(statuses)} complete"
          + (f", {elsewhere} running in another process" if elsewhere else ""), flush=True)
    failed = [o for o in outcomes if o.status not in (runfolder.COMPLETED, runfolder.RUNNING)]
    if failed:
        raise UserError(f"{len(failed)} of {len(the_plan.members)} members failed "
                        f"({', '.join(o.member.id for o in failed)}); see their train.json; the rest are done. "
                        f"{_advice(the_plan, failed, script)}")
    return [m.run_dir for m in the_plan.members]


def _advice(the_plan: plan.Plan, failed: list, script: str) -> str:
    """What to do next: a diverged recipe (nan loss) fails again on resume; anything else may not."""
    diverged = [o.member.id for o in failed if o.diverged]
    words = "" if len(diverged) == len(failed) else f"After a fix: {plan.resume_command(script, the_plan.folder)}"
    return (f"{', '.join(diverged)}: the loss diverged, so resuming cannot help; start a new plan (another --name) "
            f"with other values, e.g. a lower --lr. " if diverged else "") + words


def stop_message(the_plan: plan.Plan | None, script: str) -> str:
    """Where the stop left things, and the one command that continues."""
    with stopping.cleaning_up():
        if the_plan is not None and the_plan.kept and distributed.is_main() and \
                os.path.isfile(os.path.join(the_plan.folder, plan.PLAN_FILE)):
            plan.write_plan(the_plan, plan.statuses(the_plan))
            return f"\ninterrupted; the plan continues where it stopped with:\n  {plan.resume_command(script, the_plan.folder)}"
        run_dir = the_plan.members[0].run_dir if the_plan is not None else None
        if run_dir is None or not os.path.isfile(runfolder.path(run_dir, runfolder.CONFIG)):
            return "\ninterrupted before anything was written"
        try:
            epochs = runfolder.read_train(run_dir)["epochs_done"]
        except UserError:
            epochs = 0
        return (f"\ninterrupted; {epochs} epochs are saved in {run_dir}/{runfolder.LAST}. Resume with:\n"
                f"  {plan.resume_command(script, run_dir)}")

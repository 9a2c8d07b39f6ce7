"""The command line of every ex_N.py: `main(RECIPE, __doc__, __file__)`.

The thin process wrapper around common.experiment and common.plan: it resolves the flags,
turns SIGINT, SIGTERM (kill, Slurm, Kubernetes) and SIGHUP (the terminal closed) into a
clean stop, keeps a closed or full console from killing the run, joins torchrun's process
group, runs what the command asks for (one run, or a plan of several: in this process, as
--jobs N processes, or as a Slurm job array), and maps the outcome to an exit code: 0, 1
for a user's mistake (one line, `error: ...`), 2 for a bad flag, 128 + the signal's number
when stopped (after printing the one command that continues).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import sys

from common import REPO_ROOT, distributed, plan, runfolder
from common.cli import Command, check_combination, resolve
from common.config import to_dict
from common.console import guard_console
from common.devices import request_huge_pages
from common.errors import UserError, first_line
from common import stopping
from common.stopping import end_quietly, stop_on_signals

def main(recipe, description: str, script_file: str, argv: list | None = None) -> list:
    """Parse the command line, run it, return the run folders; exits 1 on a user's mistake."""
    guard_console()
    name = os.path.splitext(os.path.basename(script_file))[0]
    command = resolve(name, recipe, description, argv, REPO_ROOT)  # usage errors exit 2 here
    if command.launch.dry_run:
        print(json.dumps({"experiment": command.experiment, "recipe": to_dict(command.recipe),
                          "options": to_dict(command.options), "launch": to_dict(command.launch)}, indent=2))
        return []
    request_huge_pages()  # before the data is loaded
    stop_on_signals()
    distributed.setup()
    if not distributed.is_main():
        sys.stdout = open(os.devnull, "w")  # one process speaks; errors still reach stderr
    script = _script_words(script_file)
    try:
        return run_command(command, script)
    except UserError as e:
        _fail(f"error: {e}")
    except KeyboardInterrupt as e:  # the stop signals are ignored from the first one on
        print(stop_message(e, script), file=sys.stderr, flush=True)
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
    end_quietly()
    print(message, file=sys.stderr, flush=True)
    sys.exit(1)


def _script_words(script_file: str) -> str:
    """How to name the script in a printed command: relative to the current folder when inside it."""
    path = os.path.abspath(script_file)
    relative = os.path.relpath(path)
    return shlex.quote(relative if not relative.startswith("..") else path)


def stop_message(e: KeyboardInterrupt, script: str) -> str:
    if getattr(e, "plan_dir", None):
        return f"\ninterrupted; the plan continues where it stopped with:\n  python {script} --resume {shlex.quote(e.plan_dir)}"
    if getattr(e, "run_dir", None):
        return (f"\ninterrupted; {e.saved_epochs} epochs are saved in {e.run_dir}/{runfolder.LAST}. Resume with:\n"
                f"  python {script} --resume {shlex.quote(e.run_dir)}")
    return "\ninterrupted before anything was written"


def run_command(command: Command, script: str) -> list:
    """--resume (a run or a plan), one run, or a plan of several runs."""
    from common import experiment  # imported once the flags are good: --help and usage errors stay quick

    launch = command.launch
    if launch.resume:
        target = os.path.abspath(launch.resume)
        if os.path.isfile(os.path.join(target, plan.PLAN_FILE)):
            the_plan = plan.read_plan(target)
            if the_plan.experiment != command.experiment:
                raise UserError(f"{target} is a plan of {the_plan.experiment}, not {command.experiment}; continue it "
                                f"with python {experiment.script_path(the_plan.experiment)} --resume "
                                f"{shlex.quote(target)}")
            return run_plan(the_plan, command, script)
        device = command.options.device if "device" in command.given else None
        return [experiment.resume(target, device, command.experiment)]
    the_plan = _new_plan(command)
    if len(the_plan.members) == 1 and not (launch.sweep or launch.name) and launch.launcher == "local":
        _check_writable(the_plan)
        member = the_plan.members[0]
        return [experiment.run(command.experiment, member.recipe, member.options, member.dataset,
                               script_recipe=command.script_recipe)]
    is_new = not os.path.isfile(os.path.join(the_plan.folder, plan.PLAN_FILE))
    if not is_new:
        stored = plan.read_plan(the_plan.folder)
        if not plan.same_members(stored, the_plan):
            raise UserError(f"{the_plan.folder} holds another plan named {the_plan.name!r} (other members); give "
                            f"another --name, or continue it with python {script} --resume "
                            f"{shlex.quote(the_plan.folder)}")
        the_plan = stored
    _check_writable(the_plan)
    try:
        return run_plan(the_plan, command, script)
    except UserError:
        if is_new and distributed.is_main():
            plan.remove_if_unstarted(the_plan)
        raise


def _new_plan(command: Command) -> plan.Plan:
    """The command's plan; an unnamed one gets the start time, and a suffix if that is taken."""
    def check(recipe, options):
        given = command.given | {name for name, _ in command.launch.sweep}
        check_combination(lambda message: _usage_error(message), recipe, options, given)

    now = plan.stamp()
    for n in range(100):
        candidate = plan.make_plan(command, now if n == 0 else f"{now}_{n}", check)
        taken = os.path.exists(candidate.folder) or any(os.path.exists(m.run_dir) for m in candidate.members)
        if command.launch.name or not taken:
            return candidate
    raise UserError(f"could not name a plan under {command.options.out}")


def _usage_error(message: str):
    prog = os.path.basename(sys.argv[0])
    print(f"{prog}: error: {message} (see {prog} --help)", file=sys.stderr)
    sys.exit(2)


def _check_writable(the_plan: plan.Plan) -> None:
    """Fail on an unwritable output folder before any training."""
    if not distributed.is_main():
        return
    from common.files import check_writable

    for folder in sorted({os.path.dirname(m.run_dir) for m in the_plan.members}):
        check_writable(folder)


def run_plan(the_plan: plan.Plan, command: Command, script: str) -> list:
    """Run every member that is not complete and not running elsewhere: here, as --jobs processes, or on Slurm."""
    launch = _launcher_settings(the_plan, command)
    the_plan = dataclasses.replace(the_plan, launcher=launch, members=_where_members_run(the_plan, command))
    if distributed.is_main():
        plan.write_plan(the_plan, _statuses(the_plan))
    print(plan.describe(the_plan), flush=True)
    if launch["kind"] == "slurm":
        from common import slurm

        return slurm.submit(the_plan, launch, script)
    if launch["jobs"] > 1:
        from common import jobs

        return _finish(the_plan, jobs.run_parallel(the_plan, launch["jobs"]), script)
    return _finish(the_plan, _run_here(the_plan, command), script)


LAUNCHER_FIELDS = {"kind": "launcher", "jobs": "jobs", "slurm_partition": "slurm_partition",
                   "slurm_time": "slurm_time", "slurm_gpus": "slurm_gpus", "slurm_cpus": "slurm_cpus",
                   "slurm_parallel": "slurm_parallel"}


def _launcher_settings(the_plan: plan.Plan, command: Command) -> dict:
    """The flags given now, else what the plan's last launcher used, else the defaults."""
    stored = the_plan.launcher
    settings = {key: stored.get(key, getattr(command.launch, name)) for key, name in LAUNCHER_FIELDS.items()}
    settings.update({key: getattr(command.launch, name) for key, name in LAUNCHER_FIELDS.items()
                     if name in command.given})
    if stored.get("slurm_jobs"):
        settings["slurm_jobs"] = stored["slurm_jobs"]  # the array tasks submitted so far (common.slurm)
    return settings


def _where_members_run(the_plan: plan.Plan, command: Command) -> tuple:
    """The members, with the --device given now (sweep.json keeps it, so every executor's members see it)."""
    if "device" not in command.given:
        return the_plan.members
    return tuple(dataclasses.replace(m, options=dataclasses.replace(m.options, device=command.options.device))
                 for m in the_plan.members)


def _statuses(the_plan: plan.Plan) -> dict:
    return {m.id: plan.member_status(m) for m in the_plan.members}


def _run_here(the_plan: plan.Plan, command: Command) -> dict:
    """Members one after another in this process; {member id: error or None} of those it ran."""
    from common import experiment

    outcomes = {}
    for member in the_plan.members:
        status = plan.member_status(member)
        if status in ("completed", "running"):
            print(f"{member.id}: {status}{' (skipped)' if status == 'completed' else ' elsewhere (skipped)'}",
                  flush=True)
            continue
        try:
            experiment.run(the_plan.experiment, member.recipe, member.options, member.dataset, run_dir=member.run_dir,
                           script_recipe=the_plan.script_recipe)
            outcomes[member.id] = None
        except KeyboardInterrupt as e:
            with stopping.cleaning_up():
                plan.write_plan(the_plan, _statuses(the_plan))
            e.plan_dir = the_plan.folder
            raise
        except UserError as e:
            if not _failed_in_training(member):
                raise  # before its training: the same would stop every other member
            print(f"error: {member.id}: {e}", file=sys.stderr, flush=True)
            outcomes[member.id] = str(e)
    return outcomes


def _advice(the_plan: plan.Plan, failed: list, script: str) -> str:
    """What to do next: a diverged recipe (nan loss) fails again on resume; anything else may not."""
    diverged = [m.id for m in the_plan.members if m.id in failed and _train_record(m).get("diverged")]
    resume = f"python {script} --resume {shlex.quote(the_plan.folder)}"
    if len(diverged) == len(failed):
        return ("Their loss diverged: resuming cannot help; start a new plan (another --name) with other values, "
                "e.g. a lower --lr")
    if diverged:
        return (f"{', '.join(diverged)} diverged (a new plan with other values, e.g. a lower --lr, is needed for "
                f"those); for the others, after a fix: {resume}")
    return f"After a fix: {resume}"


def _train_record(member: plan.Member) -> dict:
    try:
        record = runfolder.read_json(runfolder.path(member.run_dir, runfolder.TRAIN))
    except UserError:
        return {}
    return record if isinstance(record, dict) else {}


def _failed_in_training(member: plan.Member) -> bool:
    return plan.member_status(member) == "failed"


def _finish(the_plan: plan.Plan, outcomes: dict, script: str) -> list:
    """sweep.json's statuses; a member that failed makes the whole command fail, after the others ran."""
    statuses = _statuses(the_plan)
    plan.write_plan(the_plan, statuses)
    failed = [m for m, error in outcomes.items() if error is not None]
    done = sum(s == "completed" for s in statuses.values())
    elsewhere = sum(s == "running" for s in statuses.values())
    print(f"{plan.describe(the_plan)}: {done} of {len(statuses)} complete"
          + (f", {elsewhere} running in another process" if elsewhere else ""), flush=True)
    if failed:
        raise UserError(f"{len(failed)} of {len(the_plan.members)} members failed ({', '.join(failed)}); see their "
                        f"train.json; the rest are done. {_advice(the_plan, failed, script)}")
    return [m.run_dir for m in the_plan.members]


"""The one member runner: every command's runs go through `run_member`, whatever executes them.

    run_member(plan, member)     # run or resume it, under its lock; returns its Outcome
    run_inline(plan, members)    # the inline executor: one after another in this process
    python -m common.plans.member PLAN_DIR MEMBER_ID   # one member in a process of its own (--jobs, Slurm)

`run_member` decides run or resume once (a config.json in its folder: resume, on the member's
device), takes the folder's lock once (a second process is refused: Busy), sends the console
to the folder's log.txt for a plan's member in a process of its own, and reads the Outcome
back from train.json. A failure in training is the member's (its train.json says failed); one
before training (data, device, disk) would stop every member alike, so it propagates. In a
process of its own, a member stops (as on SIGTERM) once the launcher that started it is gone;
it exits 0, 1, 128 + signal, or runfolder.BUSY_EXIT when another process holds its lock.
"""
from __future__ import annotations

from common.stopping import MEMBER_SIGNALS, stop_while_starting
stop_while_starting(__name__, MEMBER_SIGNALS)  # python -m common.plans.member: before torch loads

import contextlib
import os
import signal
import sys

from common import distributed, experiment, runfolder
from common.plans import plan
from common.config import to_dict
from common.console import output_to
from common.devices import request_huge_pages
from common.errors import UserError
from common.stopping import Stopped, exit_decided, launcher_pid, stop_on_signals



def run_member(the_plan: plan.Plan, member: plan.Member, log: bool = False, when_stopped=lambda: "",
               queued: tuple = (0, 0)) -> plan.Outcome:
    """Run or resume one member under its lock; `log`: its console to log.txt; `when_stopped()`: what
    its log says happens next if a signal stops it. Busy and failures before training propagate
    for a lone run; for a kept plan, Busy is the outcome RUNNING (another process trains it). queued:
    (runs, epochs) this process runs after it (the epoch lines' overall ETA)."""
    created = not os.path.isdir(member.run_dir)
    os.makedirs(member.run_dir, exist_ok=True)
    try:
        with _lock(member.run_dir):
            # another launcher on the plan may have finished it between this one's choice and its lock
            if not (the_plan.kept and runfolder.is_complete(member.run_dir)):
                with output_to(runfolder.path(member.run_dir, runfolder.LOG) if log else None):
                    if log:
                        print(f"=== {member.id} ({runfolder.holder_description()})", flush=True)
                    _run_or_resume(the_plan, member, log, when_stopped, queued)
    except runfolder.Busy:
        if not the_plan.kept:
            raise
        return plan.Outcome(member, runfolder.RUNNING)
    except UserError:
        if not the_plan.kept or runfolder.status(member.run_dir) != runfolder.FAILED:
            raise  # a lone run's error is the command's; one before training would stop every member alike
    finally:
        if created:
            runfolder.remove_if_unused(member.run_dir)  # stopped or refused before anything was written
    return plan.outcome(member)


def _lock(run_dir: str):
    """The member's lock: taken by torchrun's rank 0 alone (its peers follow it)."""
    return runfolder.locked(run_dir) if distributed.is_main() else contextlib.nullcontext()


def _run_or_resume(the_plan: plan.Plan, member: plan.Member, log: bool, when_stopped, queued: tuple) -> None:
    try:
        if os.path.isfile(runfolder.path(member.run_dir, runfolder.CONFIG)):
            if the_plan.kept:
                check_same_run(member)
            experiment.resume(member.run_dir, member.options.device, queued)
        else:
            experiment.run(the_plan.experiment, member.recipe, member.options, member.dataset, run_dir=member.run_dir,
                           script_recipe=the_plan.script_recipe, queued=queued)
    except Stopped as e:
        if log:
            print(f"{member.id}: stopped by {signal.Signals(e.signum).name}{when_stopped()}", flush=True)
        raise
    except UserError as e:
        if log:
            print(f"error: {e}", file=sys.stderr, flush=True)  # in log.txt, beside what led to it
        raise


def check_same_run(member: plan.Member) -> None:
    """A kept plan's member resumed from its folder: sweep.json and the folder's config.json must
    describe the same run, or the plan was edited after the run started."""
    record = runfolder.read_config(member.run_dir)
    wanted = {**to_dict(member.recipe), "seed": member.options.seed}
    started = {**to_dict(record.recipe), "seed": record.options.seed}
    differ = [name for name in wanted if wanted[name] != started.get(name)]
    if differ:
        raise UserError(f"{member.run_dir} was started with {', '.join(f'{n} {started.get(n)!r}' for n in differ)}, "
                        f"but its plan now says {', '.join(f'{n} {wanted[n]!r}' for n in differ)}: put the plan back, "
                        f"or start a new plan for the new values")


def run_inline(the_plan: plan.Plan, members: list) -> list:
    """The inline executor: the members one after another in this process; their Outcomes."""
    outcomes = []
    for i, member in enumerate(members):
        later = members[i + 1:]
        outcomes.append(run_member(the_plan, member, queued=(len(later), sum(map(epochs_left, later)))))
        if outcomes[-1].status == runfolder.FAILED:
            print(f"error: {member.id}: {outcomes[-1].error}", file=sys.stderr, flush=True)
    return outcomes


def epochs_left(member: plan.Member) -> int:
    """The member's epochs still to train (all of them before its first, as its train.json says after)."""
    try:
        return max(0, member.recipe.epochs - int(runfolder.read_train(member.run_dir)["epochs_done"]))
    except (UserError, KeyError, TypeError, ValueError):
        return member.recipe.epochs


def run_alone(plan_dir: str, member_id: str, when_stopped=lambda: "") -> plan.Outcome:
    """One member in a process of its own (a --jobs child, a Slurm task: its threads are OMP_NUM_THREADS), its
    console in log.txt."""
    the_plan = plan.read_plan(plan_dir)
    return run_member(the_plan, the_plan.member(member_id), log=True, when_stopped=when_stopped)


def main(argv: list) -> None:
    if len(argv) != 2:
        sys.exit("usage: python -m common.plans.member PLAN_DIR MEMBER_ID")
    request_huge_pages()
    stop_on_signals(MEMBER_SIGNALS, parent=launcher_pid())  # gone already: check() stops it
    # the member's process ends here, so without the interpreter's teardown (exit_decided's tear_down)
    try:
        result = run_alone(*argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        exit_decided(1, MEMBER_SIGNALS, tear_down=False)  # the launcher may stop it while it exits: no traceback
    except KeyboardInterrupt as e:
        exit_decided(128 + getattr(e, "signum", signal.SIGINT), MEMBER_SIGNALS, tear_down=False)
    exit_decided({runfolder.RUNNING: runfolder.BUSY_EXIT, runfolder.FAILED: 1}.get(result.status, 0), MEMBER_SIGNALS,
                 tear_down=False)


if __name__ == "__main__":
    main(sys.argv[1:])

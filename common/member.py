"""One member of a plan, in a process of its own: `python -m common.member PLAN_DIR MEMBER_ID`.

What `--jobs N` starts for each member and what each Slurm array task runs: it takes the
member's lock (a second process on the same run folder is refused in one line and changes
nothing), sends its console output to the run folder's log.txt, and runs or resumes the
member with the recipe and options that sweep.json holds. Exit codes as the scripts', and
runfolder.BUSY_EXIT when another process holds the member's lock (it is running elsewhere: no failure).
A member started by --jobs also stops (as on SIGTERM) once its launcher is gone.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys

from common import experiment, plan, runfolder
from common.devices import request_huge_pages
from common.errors import UserError
from common.files import FILE_MODE
from common.stopping import STOP_SIGNALS, Stopped, end_quietly, stop_on_signals


@contextlib.contextmanager
def output_to(log_path: str):
    """stdout and stderr (the file descriptors, so tqdm and C libraries too) appended to log_path,
    put back afterwards."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for target, original in zip((1, 2), saved):
            os.dup2(original, target)
            os.close(original)


def run_member(plan_dir: str, member_id: str, when_stopped=lambda: "") -> str:
    """Run (or resume, or skip if complete) one member under its lock, its output in log.txt;
    `when_stopped()`: what its log says happens next if a signal stops it (asked once it stopped)."""
    the_plan = plan.read_plan(plan_dir)
    member = the_plan.member(member_id)
    if runfolder.is_complete(member.run_dir):
        print(f"{member.id}: complete (skipped)")
        return member.run_dir
    os.makedirs(member.run_dir, exist_ok=True)
    threads = os.environ.get("SLURM_CPUS_PER_TASK")
    if threads:  # a Slurm task uses the CPUs it was given
        import torch

        torch.set_num_threads(int(threads))
    with runfolder.locked(member.run_dir), output_to(runfolder.path(member.run_dir, runfolder.LOG)):
        print(f"=== {member.id} ({runfolder.holder_description()})", flush=True)
        try:
            return experiment.run(the_plan.experiment, member.recipe, member.options, member.dataset,
                                  run_dir=member.run_dir, script_recipe=the_plan.script_recipe)
        except Stopped as e:
            print(f"{member.id}: stopped by {signal.Signals(e.signum).name}{when_stopped()}", flush=True)
            raise
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)  # in log.txt too, beside what led to it
            raise


def main(argv: list) -> None:
    if len(argv) != 2:
        sys.exit("usage: python -m common.member PLAN_DIR MEMBER_ID")
    request_huge_pages()
    stop_on_signals(STOP_SIGNALS + (signal.SIGUSR2,), parent=os.getppid())
    try:
        run_member(*argv)
    except runfolder.Busy as e:
        end_quietly(STOP_SIGNALS + (signal.SIGUSR2,))
        print(f"busy: {e}", file=sys.stderr, flush=True)
        sys.exit(runfolder.BUSY_EXIT)
    except UserError as e:
        end_quietly(STOP_SIGNALS + (signal.SIGUSR2,))  # the launcher may stop it while it exits: no traceback
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt as e:
        sys.exit(128 + getattr(e, "signum", signal.SIGINT))


if __name__ == "__main__":
    main(sys.argv[1:])

"""--jobs N: a plan's members as N processes at once on this machine, one live line each.

Each member runs as `python -m common.plans.member PLAN_DIR ID` with OMP_NUM_THREADS = cores / N
(on a GPU they share it), its console in its run folder's log.txt. The console shows the last
line of each running member's log and the plan's progress (done / running / left, elapsed, an
ETA from the epochs done). Ctrl-C or SIGTERM stops every member cleanly (each marks its run
interrupted); if this process is killed outright, the kernel sends each member SIGTERM
(PR_SET_PDEATHSIG), so no member trains on unwatched. A member that fails in training does not
stop the others; one that fails before training (data, device, disk) stops new starts, since
every other would fail the same way. Outcomes are read from the members' run folders.
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import subprocess
import sys
import time

from common import REPO_ROOT, runfolder, stopping
from common.console import LOG_INTERVAL_ENV, duration, last_line
from common.plans import plan
from common.errors import UserError

STOP_WAIT_S = 120  # a member stops within seconds of SIGTERM; past this it is killed


def _die_with(launcher: int):
    """In the child, before exec: SIGTERM when the launcher dies, however it dies (Linux). A launcher
    gone between the fork and this call sends nothing, so the child checks that it is still there."""
    def set_up() -> None:
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass
        if os.getppid() != launcher:
            os._exit(128 + signal.SIGTERM)  # orphaned before it started: never train unwatched
    return set_up


def start_member(the_plan: plan.Plan, member: plan.Member, threads: int) -> subprocess.Popen:
    """`python -m common.plans.member`: its console goes to its log.txt; an error before that reaches ours.
    It is told the launcher's PID (stopping.LAUNCHER_ENV) and stops once its parent is another process."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1",
               **{LOG_INTERVAL_ENV: "5", stopping.LAUNCHER_ENV: str(os.getpid())})
    return subprocess.Popen([sys.executable, "-m", "common.plans.member", the_plan.folder, member.id], cwd=REPO_ROOT,
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            preexec_fn=_die_with(os.getpid()))


def run_parallel(the_plan: plan.Plan, members: list) -> list:
    """The local-processes executor: `members`, the plan's --jobs at a time; their Outcomes."""
    jobs = the_plan.launcher["jobs"]
    todo, threads, start = list(members), max(1, (os.cpu_count() or 1) // jobs), time.monotonic()
    view, running, outcomes, stopping_error = LiveView(), {}, [], None
    print(f"{the_plan.name}: {len(todo)} member(s) to run, {jobs} at once, {threads} CPU thread(s) each; "
          f"logs: <run folder>/{runfolder.LOG}", flush=True)
    try:
        while todo or running:
            while todo and len(running) < jobs and stopping_error is None:
                member = todo.pop(0)
                running[member.id] = (start_member(the_plan, member, threads), member)
                view.event(f"started {member.id}")
            for member_id, (proc, member) in list(running.items()):
                if proc.poll() is not None:
                    del running[member_id]
                    result, fatal = finished(proc, member)
                    outcomes.append(result)
                    view.event(f"{'done' if result.status == runfolder.COMPLETED else 'stopped'} {member_id}: "
                               f"{summary_words(result)}")
                    stopping_error = stopping_error or fatal
            if stopping_error:
                todo.clear()
            view.draw(lambda: live_lines(the_plan.name, [m for _, m in running.values()], len(todo), len(outcomes),
                                         len(members), start))
            time.sleep(0.25)
            stopping.check()
    except KeyboardInterrupt:
        stop_all(running, view)
        raise
    finally:
        view.close()
    if stopping_error:
        raise UserError(stopping_error)
    return outcomes


def finished(proc: subprocess.Popen, member: plan.Member) -> tuple:
    """(its Outcome, None) or, for a failure before its training, (its Outcome, the error that stops the plan)."""
    if proc.returncode == runfolder.BUSY_EXIT:
        return plan.Outcome(member, runfolder.RUNNING), None  # another process trains it: no failure of this plan
    result = plan.outcome(member)
    if proc.returncode == 1 and result.status != runfolder.FAILED:
        error = last_line(runfolder.path(member.run_dir, runfolder.LOG))  # the member's own last words
        error = error[len("error: "):] if error.startswith("error: ") else "exit code 1 (its error is printed above)"
        return dataclasses.replace(result, error=error), f"{member.id}: {error}"
    if proc.returncode not in (0, 1) and result.error is None:
        result = dataclasses.replace(result, error=f"{result.status} (exit code {proc.returncode})")
    return result, None


def summary_words(result: plan.Outcome) -> str:
    if result.error is not None:
        return result.error
    if result.status == runfolder.RUNNING:
        return "running elsewhere (skipped)"
    try:
        return f"test accuracy {runfolder.read_test(result.member.run_dir)['accuracy']:.4f}"
    except UserError:
        return result.status


def stop_all(running: dict, view: LiveView) -> None:
    """SIGTERM to every member (a terminal's Ctrl-C reached them already; a second signal is ignored), then wait."""
    for proc, _ in running.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    view.event(f"stopping {len(running)} member(s) ...")
    deadline = time.monotonic() + STOP_WAIT_S
    for proc, member in running.values():
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        view.event(f"stopped {member.id} ({runfolder.status(member.run_dir)})")


def live_lines(name: str, running: list, left: int, finished: int, total: int, start: float) -> list:
    """The running members' last log lines, then the plan's progress with an ETA from the epochs done."""
    share = (finished + sum(epochs_share(m) for m in running)) / max(1, total)
    elapsed = time.monotonic() - start
    eta = duration(elapsed * (1 - share) / share) if share > 0 else "?"
    return [f"  {m.id}: {last_line(runfolder.path(m.run_dir, runfolder.LOG))}" for m in running] + \
        [f"{name}: {finished} done, {len(running)} running, {left} left | {duration(elapsed)} elapsed | ETA {eta}"]


def epochs_share(member: plan.Member) -> float:
    """Share of the member's epochs done (train.json), 0 before its first epoch."""
    try:
        train = runfolder.read_json(runfolder.path(member.run_dir, runfolder.TRAIN))
        return min(1.0, train["epochs_done"] / max(1, train["epochs_planned"]))
    except (UserError, KeyError, TypeError):
        return 0.0


class LiveView:
    """Several processes' progress. On a terminal, a block of lines redrawn every second; elsewhere
    (a log file, CI), the events and, every minute, the same block as plain lines."""
    TTY_REFRESH_S, LOG_REFRESH_S = 1.0, 60.0

    def __init__(self):
        self.tty = sys.stdout.isatty()
        self.drawn, self.last_draw = 0, 0.0

    def draw(self, lines) -> None:
        """`lines()`, called only when a redraw is due, gives the block."""
        now = time.monotonic()
        if now - self.last_draw < (self.TTY_REFRESH_S if self.tty else self.LOG_REFRESH_S):
            return
        self.last_draw = now
        width = os.get_terminal_size().columns if self.tty else 160
        block = [line[:width - 1] for line in lines()]
        self.close()
        print("\n".join(block), flush=True)
        self.drawn = len(block) if self.tty else 0

    def event(self, text: str) -> None:
        self.close()
        print(text, flush=True)
        if self.tty:
            self.last_draw = 0.0  # redraw the block under it at once

    def close(self) -> None:
        """Erase the block drawn on a terminal."""
        if self.drawn:
            sys.stdout.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0

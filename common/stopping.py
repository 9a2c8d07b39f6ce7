"""Stop signals, recorded first and then raised: SIGINT (Ctrl-C), SIGTERM (kill, Slurm, Kubernetes),
SIGHUP (the terminal closed) and, for plan members, SIGUSR2 (Slurm's time-out warning) and the
death of the launcher that started them.

The handler records the stop and raises Stopped at the next bytecode, so a run stops cleanly
within a batch: train.json says interrupted, last.pth is whole. Python drops an exception raised
inside a finalizer or weakref callback (matplotlib's caches during garbage collection, say), so
the raise alone can be lost; the record cannot: the loops call `check()` at every batch boundary
and around every file write, and a recorded stop is raised there. A second signal while the stop
is being recorded (train.json written as interrupted, sweep.json's statuses) says so on stderr
and lets that finish; a third exits at once (every file is written by rename, so each stays whole).
Once the outcome is printed (`exit_decided`), a signal exits at once with that outcome's code.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from typing import NoReturn

from common.errors import UserError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
MEMBER_SIGNALS = STOP_SIGNALS + (signal.SIGUSR2,)  # a plan member stops on Slurm's time-out warning too
LAUNCHER_ENV = "CIFAR_LAUNCHER_PID"  # a --jobs member's launcher: its death (a parent PID changed) is a stop


def launcher_pid() -> int:
    """The launcher a --jobs member was started by (LAUNCHER_ENV), else this process's parent now."""
    given = os.environ.get(LAUNCHER_ENV, "")
    return int(given) if given.isdigit() else os.getppid()


class Stopped(KeyboardInterrupt):
    """A stop signal: stop, mark the run interrupted, exit 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _State:
    signum: int | None = None   # the first stop signal received
    repeats = 0                 # signals received after it
    cleaning = 0                # depth of `cleaning_up()` blocks: a stop is being recorded
    parent: int | None = None   # the launcher's PID: its death is a stop (SIGTERM)


_state = _State()


def requested() -> int | None:
    """The stop signal received, or None."""
    return _state.signum


def check() -> None:
    """Raise the recorded stop, if any: call at every safe point (a batch boundary, a file write)."""
    if _state.signum is None and _state.parent is not None and os.getppid() != _state.parent:
        _state.signum = signal.SIGTERM  # the launcher died (and with it, maybe, its death signal)
    if _state.signum is not None and not _state.cleaning and sys.exc_info()[1] is None:
        raise Stopped(_state.signum)  # (while an exception is handled, its own way out comes first)


def _stopping_already() -> bool:
    """Inside a clean-up, or while a stop is being handled: raising again would cut the clean-up short."""
    return bool(_state.cleaning) or isinstance(sys.exc_info()[1], KeyboardInterrupt)


@contextlib.contextmanager
def cleaning_up():
    """A block that records a stop (train.json, sweep.json): a second signal inside it waits for it."""
    _state.cleaning += 1
    try:
        yield
    finally:
        _state.cleaning -= 1


def _on_signal(signum, frame):
    if _state.signum is None:
        _state.signum = signum
    else:
        _state.repeats += 1
    erring = isinstance(sys.exc_info()[1], UserError)  # its one-line error is on its way out: no second traceback
    if not _stopping_already() and not erring:
        raise Stopped(_state.signum)
    if _state.repeats >= 2:
        os._exit(128 + _state.signum)
    if erring:
        return  # recorded: check() raises it if the error is survived (a plan's next member)
    _say(f"{signal.Signals(signum).name}: already stopping, letting the run save its state (a third signal exits at once)")


def _say(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass  # a closed or full console must not break the stop


def _unraisable(hook):
    """sys.unraisablehook that keeps a dropped Stopped quiet: it is recorded and raised at the next check()."""
    def quiet(unraisable):
        if isinstance(unraisable.exc_value, Stopped):
            return
        hook(unraisable)
    quiet.wrapped = hook
    return quiet


def _wanted(signals) -> list:
    """The signals to handle: not those the parent set to be ignored (`nohup` ignores SIGHUP)."""
    return [s for s in signals if signal.getsignal(s) is not signal.SIG_IGN]


def stop_while_starting(module_name: str, signals=STOP_SIGNALS) -> None:
    """The first thing an entry point does, before torch is imported (a second or more): a stop signal
    before stop_on_signals ends the process at once, quietly, with 128 + signal. Nothing has been
    written yet; Python's own Ctrl-C would print an import's traceback, or be dropped in a finalizer.
    Only where `module_name` is "__main__": a script imported (its RECIPE read) changes no handler."""
    if module_name != "__main__":
        return

    def exit_now(signum, frame):
        _say(f"stopped by {signal.Signals(signum).name} while starting: nothing was written")
        os._exit(128 + signum)

    for s in _wanted(signals):
        signal.signal(s, exit_now)


def stop_on_signals(signals=STOP_SIGNALS, parent: int | None = None) -> None:
    """Record (and raise) these signals as Stopped; `parent`: stop too when that process is gone."""
    _state.signum, _state.repeats, _state.cleaning, _state.parent = None, 0, 0, parent
    if not hasattr(sys.unraisablehook, "wrapped"):
        sys.unraisablehook = _unraisable(sys.unraisablehook)
    for s in _wanted(signals):
        signal.signal(s, _on_signal)


def exit_decided(code: int, signals=STOP_SIGNALS, tear_down: bool = True) -> NoReturn:
    """Exit with `code`: the outcome is decided and printed, so a stop signal from now on ends the
    process at once, silently, with that same code (torchrun sends SIGTERM to the workers left when
    one fails, often while they exit, where a raised Stopped would print a traceback; a second Ctrl-C
    must not turn exit 130 into death by SIGINT). Python's shutdown puts every Python-level handler
    back to the default before it tears down the modules (the slow part, with torch loaded); only
    SIG_IGN outlives that, so from the atexit step on the signals are ignored. `tear_down=False`
    (a process whose caller has nothing left to do: a plan member) skips that teardown: see end_now."""
    def exit_now(signum, frame):
        os._exit(code)

    for s in signals:
        signal.signal(s, exit_now)
    if not tear_down:
        end_now(code)
    atexit.register(_ignore, signals)
    sys.exit(code)


def end_now(code: int) -> NoReturn:
    """End the process as the interpreter ends it (other non-daemon threads joined, atexit callbacks
    run, the standard streams flushed: exit 120 if that fails) but without tearing its modules down,
    which with torch loaded costs about 1.5 s of CPU: every member of a plan would pay it."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = 120
    os._exit(code)


def _ignore(signals) -> None:
    for s in signals:
        signal.signal(s, signal.SIG_IGN)

"""Stop signals as an exception: SIGINT (Ctrl-C), SIGTERM (kill, Slurm, Kubernetes), SIGHUP (the
terminal closed) and, for Slurm tasks, SIGUSR2 (submitit's time-out warning) raise Stopped at the
next bytecode, so a run stops cleanly: train.json says interrupted, last.pth is whole."""
from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """A stop signal: stop, mark the run interrupted, exit 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stop_on_signals(signals=STOP_SIGNALS) -> None:
    def stop(signum, frame):
        for s in signals:  # stopping already: a second signal must not cut the clean-up short
            signal.signal(s, signal.SIG_IGN)
        raise Stopped(signum)

    for s in signals:
        signal.signal(s, stop)


def end_quietly(signals=STOP_SIGNALS) -> None:
    """The outcome is decided and printed: a stop signal from now on ends the process at once,
    silently (torchrun sends SIGTERM to the workers left when one fails, often while the
    interpreter shuts down, where a raised Stopped would print a traceback)."""
    for s in signals:
        signal.signal(s, signal.SIG_DFL)

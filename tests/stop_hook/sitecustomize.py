"""Loaded at interpreter start-up by every Python process of a test that puts this folder first on
PYTHONPATH (a lone run, each --jobs member, each Slurm task). With STOP_HOOK set, it sends the
process a stop signal (STOP_HOOK_SIGNAL, default SIGTERM) at an awkward moment, once:

    finalizer   from inside a finalizer (__del__) run by the garbage collector, right after the
                first epoch's curves are drawn: Python drops an exception raised there
    weakref     from inside a weakref callback at the same moment
    load        while the data set loads, before the run folder exists
    train_json  while the first epoch's train.json is being written
    test_json   right after test.json is written (the run is complete; train.json not yet rewritten)
    testing     while the test set is predicted (STOP_HOOK_SIGNAL=SIGKILL: killed mid-test)
    lock        the moment a run folder's lock is taken (inside runfolder.locked), before anything is written

STOP_HOOK_SKIP=N lets the first N such moments pass (a plan's later member in one process).
"""
import fcntl
import gc
import os
import signal
import sys
import weakref

HOW = os.environ.get("STOP_HOOK")
KEEP = []  # weakrefs must outlive their referents for the callback to run


def _send():
    os.kill(os.getpid(), getattr(signal, os.environ.get("STOP_HOOK_SIGNAL", "SIGTERM")))
    for _ in range(200_000):  # bytecodes, so that the handler runs here, inside the finalizer
        pass


class _InAFinalizer:
    def __init__(self):
        self.cycle = self  # only the garbage collector frees it

    def __del__(self):
        _send()


class _Referent:
    pass


def _install():
    sys.path.insert(0, os.environ["STOP_HOOK_REPO"])
    from common import experiment, plots, runfolder

    seen = []

    def once() -> bool:
        seen.append(True)
        return len(seen) == 1 + int(os.environ.get("STOP_HOOK_SKIP", "0"))

    real_curves, real_load, real_json = plots.plot_curves, experiment.load_data, runfolder.write_json

    def curves(*args, **kwargs):
        real_curves(*args, **kwargs)
        if HOW == "finalizer" and once():
            _InAFinalizer()
            gc.collect()
        elif HOW == "weakref" and once():
            referent = _Referent()
            KEEP.append(weakref.ref(referent, lambda ref: _send()))
            del referent

    def load(*args, **kwargs):
        if HOW == "load" and once():
            _send()
        return real_load(*args, **kwargs)

    def write_json(path, obj):
        if HOW == "train_json" and path.endswith("train.json") and obj.get("epochs_done") == 1 and once():
            _send()
        result = real_json(path, obj)
        if HOW == "test_json" and path.endswith("test.json") and once():
            _send()
        return result

    real_predict = experiment.predict

    def predict(*args, **kwargs):
        if HOW == "testing" and kwargs.get("desc") == "test" and once():
            _send()
        return real_predict(*args, **kwargs)

    real_lockf = fcntl.lockf

    def lockf(fd, command, *args):
        result = real_lockf(fd, command, *args)
        if HOW == "lock" and command & fcntl.LOCK_EX and once():
            _send()  # inside runfolder.locked, the lock file just made and locked
        return result

    plots.plot_curves, experiment.load_data, runfolder.write_json = curves, load, write_json
    experiment.predict, fcntl.lockf = predict, lockf


if HOW:
    _install()

import json
import os
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# One torch thread per process: pytest runs two workers (pytest.ini), each starting runs of the
# scripts; runs compared number for number inherit the same thread count. Yours wins if set.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def run_script(script: str, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python ex_N.py ARGS` from the repo root as a user would; never touches the network."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def closed_port() -> int:
    """A localhost port with nothing listening: downloads aimed at it fail at once, offline."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is


def snapshot_files(root) -> dict:
    """{path: bytes} of every file under root: compare two snapshots to prove nothing changed."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[path] = f.read()
    return files


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory):
    """A --data-dir whose synthetic/{small,tiny}/ folders hold the --smoke datasets in the official layouts."""
    from common.data import SPECS, make_synthetic
    from common.config import SMOKE_SIZES

    root = tmp_path_factory.mktemp("data")
    for kind, sizes in SMOKE_SIZES.items():
        for name, spec in SPECS.items():
            make_synthetic(spec, os.path.join(root, "synthetic", kind), *sizes[name])
    return str(root)


@pytest.fixture(scope="session")
def ex1_smoke_runs(smoke_data, tmp_path_factory):
    """One complete `python ex_1.py --smoke` (both datasets), shared by the run-folder tests."""
    out = tmp_path_factory.mktemp("ex1_smoke")
    result = run_script("ex_1.py", "--smoke", "--data-dir", smoke_data, "--out", str(out), "--save-every", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


# A 3-epoch smoke run of EX-1 (CIFAR-10): the kill-and-resume tests compare against it.
ARGS = ["--smoke", "--dataset", "cifar10", "--epochs", "3", "--batch-size", "16", "--save-every", "0"]
TIMING_KEYS = {"epoch_time_s", "train_time_s", "images_per_s", "test_time_s"}


def run_metrics(run_dir):
    """Everything a run folder reports except timings: equal for a resumed and an uninterrupted run."""
    train = json.load(open(os.path.join(run_dir, "train.json")))
    test = json.load(open(os.path.join(run_dir, "test.json")))
    epochs = [{k: v for k, v in e.items() if k not in TIMING_KEYS} for e in train["epochs"]]
    return (train["status"], train["best_epoch"], train["best_val_accuracy"], epochs,
            {k: v for k, v in test.items() if k not in TIMING_KEYS})


def only_run(out, folder="cifar_10"):
    (stamp,) = os.listdir(os.path.join(out, folder))
    return os.path.join(out, folder, stamp)


@pytest.fixture(scope="session")
def uninterrupted(smoke_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("straight"))
    result = run_script("ex_1.py", *ARGS, "--data-dir", smoke_data, "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    return run_metrics(only_run(out))

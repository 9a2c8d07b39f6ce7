"""Nothing lost: SIGKILL at several points + --resume ends exactly where an uninterrupted run does."""
import json
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import ARGS, REPO, popen_python, run_script, snapshot_files
from tests.conftest import only_run as _only_run
from tests.conftest import run_metrics as _metrics


def _start(smoke_data, out):
    return popen_python([os.path.join(REPO, "ex_1.py"), *ARGS, "--data-dir", smoke_data, "--out", out],
                        stderr=subprocess.DEVNULL)


# Kill points: right after the run folder exists (inside epoch 1), after a given epoch line, and
# a fixed delay into training (anywhere, even during a checkpoint write).
@pytest.mark.parametrize("marker,delay", [("run folder:", 0.0), ("epoch   1/3", 0.0), ("epoch   2/3", 0.05),
                                          ("epoch   3/3", 0.0), ("run folder:", 0.7)])
def test_sigkill_then_resume_matches_uninterrupted_run(uninterrupted, smoke_data, tmp_path, marker, delay):
    out = str(tmp_path)
    proc = _start(smoke_data, out)
    deadline = time.time() + 120
    for line in proc.stdout:
        if marker in line or time.time() > deadline:
            break
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    run_dir = _only_run(out)
    if os.path.exists(os.path.join(run_dir, "test.json")):
        pytest.fail("the kill came too late to test anything")
    result = run_script("ex_1.py", "--resume", run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming" in result.stdout
    assert _metrics(run_dir) == uninterrupted
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert len(config["resumes"]) == 1


def test_ctrl_c_marks_interrupted_and_prints_resume_command(smoke_data, tmp_path):
    err_path = tmp_path / "stderr.txt"
    out = str(tmp_path / "out")
    with open(err_path, "w") as err:
        proc = popen_python([os.path.join(REPO, "ex_1.py"), *ARGS, "--data-dir", smoke_data, "--out", out], stderr=err)
        for line in proc.stdout:
            if "epoch   1/3" in line:
                break
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 130
    run_dir = _only_run(out)
    assert json.load(open(os.path.join(run_dir, "train.json")))["status"] == "interrupted"
    message = err_path.read_text()
    assert f"--resume {run_dir}" in message and "Traceback" not in message


@pytest.mark.parametrize("damage", ["not_a_run", "other_experiment", "truncated", "foreign", "complete"])
def test_bad_resume_targets_are_refused(ex1_smoke_runs, tmp_path, damage):
    import shutil

    out, _ = ex1_smoke_runs
    source = os.path.join(out, "cifar_10", os.listdir(os.path.join(out, "cifar_10"))[0])
    run_dir = str(tmp_path / "run")
    shutil.copytree(source, run_dir)
    os.remove(os.path.join(run_dir, "test.json"))  # as if killed before testing: a run --resume would continue
    script, message = "ex_1.py", None
    if damage == "not_a_run":
        run_dir, message = str(tmp_path), "is not a run folder"
    elif damage == "other_experiment":
        script, message = "ex_2.py", "is a run of ex_1, not ex_2"
    elif damage == "complete":
        shutil.copy(os.path.join(source, "test.json"), run_dir)
        message = "is complete (it has test.json)"
    elif damage == "truncated":
        blob = open(os.path.join(run_dir, "last.pth"), "rb").read()
        open(os.path.join(run_dir, "last.pth"), "wb").write(blob[: len(blob) // 3])
        message = "cannot load checkpoint"
    else:
        import torch
        torch.save({"weights": torch.zeros(3)}, os.path.join(run_dir, "last.pth"))
        message = "not a checkpoint written by this version of the repo"
    before = snapshot_files(run_dir)
    result = run_script(script, "--resume", run_dir, timeout=60)
    assert result.returncode == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert snapshot_files(run_dir) == before  # nothing in the folder changed


def test_nan_loss_stops_and_keeps_last_good_checkpoint(smoke_data, tmp_path):
    result = run_script("ex_1.py", "--smoke", "--dataset", "cifar10", "--lr", "1e30", "--data-dir", smoke_data,
                        "--out", str(tmp_path))
    assert result.returncode == 1
    assert "loss became" in result.stderr and "epoch 1" in result.stderr and "Traceback" not in result.stderr
    run_dir = _only_run(str(tmp_path))
    train = json.load(open(os.path.join(run_dir, "train.json")))
    assert train["status"] == "failed" and train["epochs_done"] == 0
    import torch
    assert torch.load(os.path.join(run_dir, "last.pth"), weights_only=True)["epoch"] == 0


def test_a_resume_keeps_the_thread_count_the_run_started_with(uninterrupted, smoke_data, tmp_path):
    """Started with one thread (a --jobs member), resumed where two are the default (inline, Slurm):
    the run goes on with one, and ends with the uninterrupted one-thread run's numbers."""
    out = str(tmp_path)
    proc = _start(smoke_data, out)
    for line in proc.stdout:
        if "epoch   1/3" in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    run_dir = _only_run(out)
    result = run_script("ex_1.py", "--resume", run_dir, env={"OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "keeping the 1 CPU thread(s) this run started with (this process has 2)" in result.stdout
    assert _metrics(run_dir) == uninterrupted

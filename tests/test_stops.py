"""A stop is a stop: each stop signal, sent at awkward moments (inside a finalizer run by the
garbage collector, inside a weakref callback, while the data loads, while train.json is written),
stops the run within seconds with exit 128 + signal, marks it interrupted, and --resume then
ends with the metrics of an uninterrupted run. The moments come from tests/stop_hook, loaded
into every Python process of the test (lone runs and plan members alike)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ARGS, REPO, only_run, run_metrics, run_script

HOOK = os.path.join(REPO, "tests", "stop_hook")


def hooked(how: str, signal_name: str = "SIGTERM") -> dict:
    return {"PYTHONPATH": HOOK, "STOP_HOOK": how, "STOP_HOOK_SIGNAL": signal_name, "STOP_HOOK_REPO": REPO}


def _train_status(run_dir):
    return json.load(open(os.path.join(run_dir, "train.json")))["status"]


@pytest.mark.parametrize("how,signal_name", [
    ("finalizer", "SIGTERM"), ("finalizer", "SIGINT"), ("finalizer", "SIGHUP"), ("weakref", "SIGTERM"),
    ("train_json", "SIGINT")])
def test_a_stop_signal_at_an_awkward_moment_stops_the_run_and_resume_matches(how, signal_name, uninterrupted,
                                                                            smoke_data, tmp_path):
    out = str(tmp_path)
    start = time.monotonic()
    result = run_script("ex_1.py", *ARGS, "--data-dir", smoke_data, "--out", out, env=hooked(how, signal_name),
                        timeout=120)
    assert result.returncode == 128 + getattr(signal, signal_name), result.stderr[-2000:]
    assert time.monotonic() - start < 60
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr[-2000:]
    run_dir = only_run(out)
    assert _train_status(run_dir) == "interrupted"
    assert f"--resume {run_dir}" in result.stderr
    resumed = run_script("ex_1.py", "--resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert run_metrics(run_dir) == uninterrupted


def test_a_stop_while_the_data_loads_leaves_nothing_and_says_so(smoke_data, tmp_path):
    result = run_script("ex_1.py", *ARGS, "--data-dir", smoke_data, "--out", str(tmp_path), env=hooked("load"),
                        timeout=120)
    assert result.returncode == 143 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "interrupted before anything was written" in result.stderr
    assert not os.path.exists(os.path.join(tmp_path, "cifar_10")) or not os.listdir(os.path.join(tmp_path, "cifar_10"))


def test_a_second_signal_while_stopping_is_said_and_a_third_exits_at_once(smoke_data, tmp_path):
    """The program stops itself from inside a finalizer, then gets two more signals while it
    records the stop (train.json as interrupted): the second is printed, the third exits."""
    program = (
        "import os, runpy, signal, sys\n"
        f"sys.path.insert(0, {REPO!r})\n"
        "from common import experiment, stopping\n"
        "real = experiment.write_train_json\n"
        "def write(s, run_dir, status, *a, **k):\n"
        "    if status == 'interrupted':\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        for _ in range(100000): pass\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        for _ in range(100000): pass\n"
        "    return real(s, run_dir, status, *a, **k)\n"
        "experiment.write_train_json = write\n"
        f"sys.argv = [{os.path.join(REPO, 'ex_1.py')!r}] + sys.argv[1:]\n"
        f"runpy.run_path({os.path.join(REPO, 'ex_1.py')!r}, run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", program, *ARGS, "--data-dir", smoke_data, "--out", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=120, env=dict(os.environ, **hooked("finalizer")))
    assert result.returncode == 143, result.stderr[-2000:]  # the first signal's code: os._exit(128 + SIGTERM)
    assert "SIGINT: already stopping" in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_a_plan_member_stopped_inside_a_finalizer_stops_and_the_plan_finishes_on_resume(smoke_data, tmp_path):
    out = str(tmp_path)
    args = ["--smoke", "--dataset", "cifar10", "--sweep", "lr=0.001,0.003", "--epochs", "3", "--batch-size", "16",
            "--save-every", "0", "--name", "p", "--jobs", "2", "--data-dir", smoke_data, "--out", out]
    result = run_script("ex_1.py", *args, env=hooked("finalizer", "SIGUSR2"), timeout=180)
    plan_dir = os.path.join(out, "sweeps", "p")
    members = [os.path.join(plan_dir, "cifar_10", m) for m in ("lr=0.001,seed=0", "lr=0.003,seed=0")]
    assert [_train_status(m) for m in members] == ["interrupted", "interrupted"], result.stdout[-2000:]
    for member in members:
        assert "stopped by SIGUSR2" in open(os.path.join(member, "log.txt")).read()
    resumed = run_script("ex_1.py", "--resume", plan_dir, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [_train_status(m) for m in members] == ["completed", "completed"]


def _processes_with(text: str) -> list:
    found = subprocess.run(["pgrep", "-f", text], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found if int(p) != os.getpid()]


def test_a_jobs_launcher_killed_outright_leaves_no_member_running(smoke_data, tmp_path):
    out = str(tmp_path / "out")
    proc = subprocess.Popen([sys.executable, "-u", os.path.join(REPO, "ex_1.py"), "--smoke", "--dataset", "cifar10",
                             "--sweep", "lr=0.001,0.003", "--epochs", "50", "--batch-size", "16", "--save-every", "0",
                             "--name", "k", "--jobs", "2", "--data-dir", smoke_data, "--out", out], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    plan_dir = os.path.join(out, "sweeps", "k")
    logs = [os.path.join(plan_dir, "cifar_10", m, "log.txt") for m in ("lr=0.001,seed=0", "lr=0.003,seed=0")]
    deadline = time.monotonic() + 180
    while not all(os.path.exists(p) and "epoch   1/50" in open(p).read() for p in logs):
        assert time.monotonic() < deadline and proc.poll() is None, "the members never trained"
        time.sleep(0.2)
    assert len(_processes_with(f"common.member {plan_dir}")) == 2
    proc.kill()
    proc.wait(timeout=30)
    time.sleep(10)
    left = _processes_with(f"common.member {plan_dir}")
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == []
    statuses = [_train_status(os.path.dirname(p)) for p in logs]
    assert statuses == ["interrupted", "interrupted"]


def test_a_member_whose_launcher_is_gone_stops_even_without_the_death_signal(smoke_data, tmp_path):
    """The kernel's parent-death signal is one safety; the member also watches its parent."""
    out = str(tmp_path / "out")
    made = run_script("ex_1.py", "--smoke", "--dataset", "cifar10", "--epochs", "50", "--batch-size", "16",
                      "--save-every", "0", "--sweep", "lr=0.001", "--name", "w", "--data-dir", smoke_data,
                      "--out", out, env=hooked("load"))  # writes the plan, then stops before the member starts
    plan_dir = os.path.join(out, "sweeps", "w")
    assert made.returncode == 143 and os.path.isfile(os.path.join(plan_dir, "sweep.json")), made.stderr[-2000:]
    plan = json.load(open(os.path.join(plan_dir, "sweep.json")))
    member = plan["members"][0]["id"]
    log = os.path.join(plan_dir, member, "log.txt")
    parent = subprocess.Popen([sys.executable, "-c",
                               "import os, subprocess, sys, time\n"
                               f"subprocess.Popen([sys.executable, '-m', 'common.member', {plan_dir!r}, {member!r}],"
                               f" cwd={REPO!r}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
                               f"while not (os.path.exists({log!r}) and 'epoch   1/50' in open({log!r}).read()):\n"
                               "    time.sleep(0.1)\n"],
                              cwd=REPO)
    assert parent.wait(timeout=180) == 0  # the member's parent is gone; no death signal was asked for
    deadline = time.monotonic() + 30
    while _processes_with(f"common.member {plan_dir}"):
        assert time.monotonic() < deadline, "the member trained on without its launcher"
        time.sleep(0.2)
    assert _train_status(os.path.join(plan_dir, member)) == "interrupted"

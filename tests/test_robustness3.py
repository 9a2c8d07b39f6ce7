"""Hard to break, round three: plan overrides reach every member through every executor, member
folders are unique, a lock held elsewhere is no failure, a cancel is a cancel, and each weak spot
found by trying the repo as a hostile user is one clear line. Each case runs the real command line."""
import json
import os
import shutil
import stat
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, run_script
from tests.test_stops import hooked

SMOKE = ["--smoke", "--dataset", "cifar10", "--batch-size", "16", "--save-every", "0"]


def _plan(out, name):
    plan_dir = os.path.join(out, "sweeps", name)
    raw = json.load(open(os.path.join(plan_dir, "sweep.json")))
    return plan_dir, raw, [os.path.join(plan_dir, m["run_dir"]) for m in raw["members"]]


def _status(run_dir):
    path = os.path.join(run_dir, "train.json")
    return json.load(open(path))["status"] if os.path.exists(path) else "not started"


def _pretend_started_on_a_gpu_node(plan_dir, raw, members):
    """What a plan started with --device cuda on a GPU node holds: sweep.json and config.json name cuda."""
    for m in raw["members"]:
        m["options"]["device"] = "cuda"
    json.dump(raw, open(os.path.join(plan_dir, "sweep.json"), "w"))
    for run_dir in members:
        config = os.path.join(run_dir, "config.json")
        if os.path.exists(config):
            record = json.load(open(config))
            record["config"]["device"] = "cuda"
            json.dump(record, open(config, "w"))


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_plan_resumed_with_device_cpu_trains_every_member_on_the_cpu(smoke_data, tmp_path, jobs):
    out = str(tmp_path)
    stopped = run_script("ex_1.py", *SMOKE, "--sweep", "lr=0.001,0.003", "--epochs", "3", "--name", "d", "--jobs", jobs,
                         "--data-dir", smoke_data, "--out", out, env=hooked("train_json", "SIGINT"))
    assert stopped.returncode != 0
    plan_dir, raw, members = _plan(out, "d")
    assert "interrupted" in [_status(m) for m in members]
    _pretend_started_on_a_gpu_node(plan_dir, raw, members)
    if jobs == "1":  # without --device the saved cuda is what it asks for: one line that says what to do
        refused = run_script("ex_1.py", "--resume", plan_dir)
        assert refused.returncode == 1 and "--device cpu" in refused.stderr, refused.stderr[-2000:]
    resumed = run_script("ex_1.py", "--resume", plan_dir, "--device", "cpu", timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert [_status(m) for m in members] == ["completed", "completed"]
    for run_dir in members:
        record = json.load(open(os.path.join(run_dir, "config.json")))
        devices = [r["device"] for r in record.get("resumes", [])] or [record["environment"]["device"]]
        assert devices[-1] == "cpu"


def test_values_that_print_alike_get_folders_of_their_own(smoke_data, tmp_path):
    result = run_script("ex_1.py", *SMOKE, "--sweep", "lr=0.1234567e-2,0.1234568e-2", "--epochs", "1", "--name", "u",
                        "--data-dir", smoke_data, "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    _, raw, members = _plan(str(tmp_path), "u")
    assert sorted(m["id"] for m in raw["members"]) == ["cifar_10/lr=0.001234567,seed=0", "cifar_10/lr=0.001234568,seed=0"]
    assert "2 of 2 complete" in result.stdout
    assert [json.load(open(os.path.join(m, "config.json")))["config"]["lr"] for m in members] == [0.001234567,
                                                                                                  0.001234568]


def test_two_jobs_launchers_on_one_plan_share_the_work_and_neither_fails(smoke_data, tmp_path):
    args = [*SMOKE, "--sweep", "lr=0.001,0.002,0.003,0.004", "--epochs", "3", "--name", "two", "--jobs", "2",
            "--data-dir", smoke_data, "--out", str(tmp_path)]
    first = subprocess.Popen([sys.executable, os.path.join(REPO, "ex_1.py"), *args], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    plan = os.path.join(str(tmp_path), "sweeps", "two", "sweep.json")
    deadline = time.monotonic() + 120
    while not os.path.exists(plan):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    second = run_script("ex_1.py", *args, timeout=300)
    out, err = first.communicate(timeout=300)
    assert (first.returncode, second.returncode) == (0, 0), err[-2000:] + second.stderr[-2000:]
    _, _, members = _plan(str(tmp_path), "two")
    assert [_status(m) for m in members] == ["completed"] * 4
    for run_dir in members:  # each trained once: one "===" header, no resume
        log = open(os.path.join(run_dir, "log.txt")).read()
        assert log.count("=== ") == 1 and "resuming" not in log


@pytest.mark.parametrize("sweep,words", [
    ("seed=0,1", "--seeds 0,1,2"), ("foo=1,2", "'foo' is no recipe field"),
    ("lr=0.001,1e-3", "must be distinct"), ("lr=-1,0.1", "lr=-1: must be a finite number above 0"),
    ("lr=nan", "lr=nan: must be a finite number"), ("lr=", "lr= needs values")])
def test_each_sweep_mistake_says_what_is_wrong_in_one_line(sweep, words, tmp_path):
    result = run_script("ex_1.py", "--sweep", sweep, "--out", str(tmp_path))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and words in lines[0], result.stderr
    assert os.listdir(tmp_path) == []


def test_a_bad_plan_name_says_what_a_name_may_hold():
    result = run_script("ex_1.py", "--name", "../evil")
    assert result.returncode == 2 and "a plan name is a folder name" in result.stderr


def _stopped_plan(smoke_data, out, name="e", epochs="3"):
    run_script("ex_1.py", *SMOKE, "--sweep", "lr=0.001,0.003", "--epochs", epochs, "--name", name,
               "--data-dir", smoke_data, "--out", out, env=hooked("train_json", "SIGINT"))
    return _plan(out, name)


def test_a_plan_with_no_members_or_an_edited_seed_is_refused_in_one_line(smoke_data, tmp_path):
    plan_dir, raw, members = _stopped_plan(smoke_data, str(tmp_path))
    before = open(os.path.join(plan_dir, "sweep.json")).read()
    json.dump(dict(raw, members=[]), open(os.path.join(plan_dir, "sweep.json"), "w"))
    empty = run_script("ex_1.py", "--resume", plan_dir)
    assert empty.returncode == 1 and "lists no members" in empty.stderr, empty.stderr[-2000:]
    edited = json.loads(before)
    edited["members"][0]["options"]["seed"] = 7
    json.dump(edited, open(os.path.join(plan_dir, "sweep.json"), "w"))
    result = run_script("ex_1.py", "--resume", plan_dir)
    assert result.returncode != 0 and "was started with seed 0, but its plan now says seed 7" in result.stderr, \
        result.stderr[-2000:]
    assert _status(members[0]) == "interrupted"


def test_a_plan_of_another_script_is_refused_like_a_run_folder_of_one(smoke_data, tmp_path):
    plan_dir, _, _ = _stopped_plan(smoke_data, str(tmp_path))
    result = run_script("ex_2.py", "--resume", plan_dir)
    assert result.returncode == 1 and "is a plan of ex_1, not ex_2" in result.stderr
    assert "ex_1.py --resume" in result.stderr


def test_a_members_log_holds_its_own_error_and_a_diverged_member_is_not_sent_to_resume(smoke_data, tmp_path):
    result = run_script("ex_1.py", *SMOKE, "--sweep", "lr=0.001,1e30", "--epochs", "2", "--name", "nan", "--jobs", "2",
                        "--data-dir", smoke_data, "--out", str(tmp_path), timeout=300)
    assert result.returncode == 1
    plan_dir, _, members = _plan(str(tmp_path), "nan")
    log = open(os.path.join(members[1], "log.txt")).read()
    assert "error: the loss became" in log
    assert json.load(open(os.path.join(members[1], "train.json")))["diverged"] is True
    assert "resuming cannot help" in result.stderr and "--resume" not in result.stderr.splitlines()[-1]
    assert "lr=1e+30,seed=0: the loss diverged" in result.stderr


# --- compare ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compared(smoke_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("compared"))
    result = run_script("ex_1.py", *SMOKE, "--sweep", "lr=0.001,0.003", "--epochs", "1", "--name", "c",
                        "--data-dir", smoke_data, "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    return os.path.join(out, "sweeps", "c")


def _compare(*args):
    return subprocess.run([sys.executable, "-m", "common.compare", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_compare_on_a_read_only_tree_names_the_way_out(compared, tmp_path):
    if os.geteuid() == 0:  # root writes anywhere: a read-only mount is the honest test
        target = tmp_path / "ro"
        target.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(target)]).returncode != 0:
            pytest.fail("cannot mount a tmpfs here")
        try:
            shutil.copytree(compared, target / "c", ignore=shutil.ignore_patterns("*.pth"))
            subprocess.run(["mount", "-o", "remount,ro", str(target)], check=True)
            result = _compare(str(target / "c"))
            with_flag = _compare(str(target / "c"), "--no-figures")
        finally:
            subprocess.run(["umount", "-l", str(target)])
    else:
        os.chmod(compared, stat.S_IRUSR | stat.S_IXUSR)
        try:
            result = _compare(compared)
            with_flag = _compare(compared, "--no-figures")
        finally:
            os.chmod(compared, stat.S_IRWXU)
    assert result.returncode == 1 and "0.003" in result.stdout  # the table came first
    assert "--no-figures" in result.stderr and "--figure" in result.stderr and "Traceback" not in result.stderr
    assert with_flag.returncode == 0, with_flag.stderr


def test_compare_refuses_a_baseline_that_matches_no_run(compared):
    result = _compare(compared, "--baseline", "lr=0.5", "--no-figures")
    assert result.returncode == 1 and "matches no compared run" in result.stderr and "0.001" in result.stderr


def test_compare_with_a_missing_readme_fails_before_writing_anything(compared, tmp_path):
    figure = tmp_path / "f.png"
    result = _compare(compared, "--readme", str(tmp_path / "missing.md"), "--figure", str(figure))
    assert result.returncode == 1 and "missing.md" in result.stderr and not figure.exists()


def test_compare_usage_errors_are_one_line():
    result = _compare("--baseline", "nonsense")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "--help" in lines[0], result.stderr


def test_the_inline_and_the_jobs_executor_leave_the_same_plan(smoke_data, tmp_path):
    """One member runner under both: the same statuses in sweep.json, the same files in each member's
    folder (log.txt aside: a member in a process of its own writes its console there) and the same
    numbers (both at one torch thread per member)."""
    from tests.conftest import run_metrics

    plans = {}
    for jobs in ("1", "2"):
        out = str(tmp_path / f"jobs{jobs}")
        result = run_script("ex_1.py", *SMOKE, "--sweep", "lr=0.001,0.003", "--epochs", "2", "--name", "same",
                            "--jobs", jobs, "--data-dir", smoke_data, "--out", out, env={"OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-2000:]
        plan_dir, raw, members = _plan(out, "same")
        plans[jobs] = ([m["status"] for m in raw["members"]],
                       [sorted(set(os.listdir(m)) - {"log.txt"}) for m in members],
                       [run_metrics(m) for m in members])
    assert plans["1"] == plans["2"]
    assert plans["1"][0] == ["completed", "completed"] and ".lock" not in plans["1"][1][0]

"""--launcher slurm against the real one-node cluster (tests/slurm/start_cluster.sh): a preempted
task requeued and resumed, a cancel that stays a cancel, a task that cannot requeue."""
import json
import os
import shutil
import subprocess
import time

import pytest

from tests.conftest import REPO, members_by_id, popen_python, run_metrics, run_script


def _slurm_ready() -> str | None:
    """None when a Slurm cluster answers here; the reason to skip when Slurm is not installed."""
    if shutil.which("sbatch") is None:
        return "Slurm is not installed on this machine (no sbatch); .ci/run installs and starts it"
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip(), \
        f"Slurm is installed but its cluster does not answer: {result.stderr} (start it: tests/slurm/start_cluster.sh)"
    return None


def _squeue(job: str) -> list:
    result = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i %T"], capture_output=True, text=True, timeout=30)
    return [line.split() for line in result.stdout.splitlines() if line.strip()]


def test_a_sweep_on_slurm_with_a_task_preempted_completes_with_the_local_runs_metrics(smoke_data, tmp_path):
    reason = _slurm_ready()
    if reason:
        pytest.skip(reason)
    sweep = ["--smoke", "--dataset", "cifar10", "--sweep", "lr=0.001,0.003", "--epochs", "4", "--batch-size", "16",
             "--save-every", "0", "--name", "lr", "--data-dir", smoke_data]
    submitted = run_script("ex_1.py", *sweep, "--launcher", "slurm", "--slurm-cpus", "1", "--slurm-time", "10",
                           "--out", str(tmp_path / "slurm"), timeout=120)
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    # the same plan with --jobs 2 beside it, meanwhile: what the Slurm one must end with
    with open(tmp_path / "local.txt", "w") as said:
        local = popen_python([os.path.join(REPO, "ex_1.py"), *sweep, "--jobs", "2", "--out", str(tmp_path / "local")],
                             stdout=said, stderr=subprocess.STDOUT)
    job = submitted.stdout.split("as Slurm job array ")[1].split()[0]
    plan_dir = str(tmp_path / "slurm" / "sweeps" / "lr")
    victim = members_by_id(plan_dir)["cifar_10/lr=0.003,seed=0"]
    deadline = time.time() + 180
    while not (os.path.exists(os.path.join(victim, "log.txt")) and "epoch   1/4" in open(os.path.join(victim, "log.txt")).read()):
        assert time.time() < deadline, "the task never trained"
        time.sleep(0.2)
    task = f"{job}_1"  # members are submitted in plan order
    subprocess.run(["scancel", "--signal=TERM", task], check=True, timeout=30)
    deadline = time.time() + 120
    while not any(t == task and state == "PENDING" for t, state in _squeue(job)):  # stopped and requeued
        assert time.time() < deadline, f"task {task} was not requeued: {_squeue(job)}"
        time.sleep(0.5)
    # Slurm holds a requeued task for two minutes; a test need not wait that out
    subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"], check=True, timeout=30)
    deadline = time.time() + 300
    while _squeue(job):
        assert time.time() < deadline, f"the array did not finish: {_squeue(job)}"
        time.sleep(1)
    assert local.wait(timeout=300) == 0, (tmp_path / "local.txt").read_text()[-2000:]
    log = open(os.path.join(victim, "log.txt")).read()
    assert "stopped by SIGTERM; back in the queue" in log and "resuming" in log and "from last.pth, epoch" in log
    local_members = members_by_id(str(tmp_path / "local" / "sweeps" / "lr"))
    assert {m: run_metrics(d) for m, d in members_by_id(plan_dir).items()} == \
        {m: run_metrics(d) for m, d in local_members.items()}
    again = run_script("ex_1.py", "--resume", plan_dir, "--launcher", "slurm", timeout=120)
    assert again.returncode == 0 and "nothing left to submit" in again.stdout
    # the Slurm executor leaves the plan as the --jobs one does: statuses and each member's files
    local_dir = str(tmp_path / "local" / "sweeps" / "lr")
    for folder in (plan_dir, local_dir):
        assert [m["status"] for m in json.load(open(os.path.join(folder, "sweep.json")))["members"]] == \
            ["completed"] * 2, folder
    assert {m: sorted(set(os.listdir(d)) - {"log.txt"}) for m, d in members_by_id(plan_dir).items()} == \
        {m: sorted(set(os.listdir(d)) - {"log.txt"}) for m, d in local_members.items()}


def _wait_for_log(run_dir, marker, timeout=180):
    log = os.path.join(run_dir, "log.txt")
    deadline = time.time() + timeout
    while not (os.path.exists(log) and marker in open(log).read()):
        assert time.time() < deadline, f"never saw {marker!r} in {log}"
        time.sleep(0.2)


def _wait_until_gone(job, timeout=120):
    deadline = time.time() + timeout
    while _squeue(job):
        assert time.time() < deadline, f"still queued: {_squeue(job)}"
        time.sleep(0.5)


def test_on_slurm_a_cancel_is_a_cancel_a_queued_member_is_not_submitted_twice_and_device_reaches_every_task(
        smoke_data, tmp_path):
    reason = _slurm_ready()
    if reason:
        pytest.skip(reason)
    sweep = ["--smoke", "--dataset", "cifar10", "--sweep", "lr=0.001,0.003", "--epochs", "8", "--batch-size", "16",
             "--save-every", "0", "--name", "c", "--data-dir", smoke_data, "--out", str(tmp_path)]
    submitted = run_script("ex_1.py", *sweep, "--launcher", "slurm", "--slurm-cpus", "1", "--slurm-parallel", "1",
                           timeout=120)
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    job = submitted.stdout.split("as Slurm job array ")[1].split()[0]
    plan_dir = str(tmp_path / "sweeps" / "c")
    first, second = members_by_id(plan_dir).values()
    _wait_for_log(first, "epoch   1/8")
    assert sorted(state for _, state in _squeue(job)) == ["PENDING", "RUNNING"]
    again = run_script("ex_1.py", "--resume", plan_dir, "--launcher", "slurm", timeout=120)
    assert again.returncode == 0 and "nothing left to submit" in again.stdout, again.stdout + again.stderr
    subprocess.run(["scancel", job], check=True, timeout=30)  # the user's cancel of the whole array
    _wait_until_gone(job)
    time.sleep(3)
    assert _squeue(job) == []  # nothing requeued itself
    log = open(os.path.join(first, "log.txt")).read()
    assert "stopped by SIGTERM; not requeued: Slurm is ending the job" in log, log[-2000:]
    assert json.load(open(os.path.join(first, "train.json")))["status"] == "interrupted"
    # As if the plan had started on a GPU node: it is finished on this CPU with --device cpu.
    raw = json.load(open(os.path.join(plan_dir, "sweep.json")))
    for m in raw["members"]:
        m["options"]["device"] = "cuda"
    json.dump(raw, open(os.path.join(plan_dir, "sweep.json"), "w"))
    config = json.load(open(os.path.join(first, "config.json")))
    config["config"]["device"] = "cuda"
    json.dump(config, open(os.path.join(first, "config.json"), "w"))
    resumed = run_script("ex_1.py", "--resume", plan_dir, "--launcher", "slurm", "--device", "cpu", timeout=120)
    assert resumed.returncode == 0 and "submitted 2 member(s)" in resumed.stdout, resumed.stdout + resumed.stderr
    _wait_until_gone(resumed.stdout.split("as Slurm job array ")[1].split()[0], timeout=300)
    assert json.load(open(os.path.join(first, "config.json")))["resumes"][-1]["device"] == "cpu"
    assert json.load(open(os.path.join(second, "config.json")))["config"]["device"] == "cpu"
    assert all(os.path.exists(os.path.join(d, "test.json")) for d in (first, second))


def test_on_slurm_a_task_whose_slurm_folder_is_gone_says_it_cannot_requeue(smoke_data, tmp_path):
    reason = _slurm_ready()
    if reason:
        pytest.skip(reason)
    submitted = run_script("ex_1.py", "--smoke", "--dataset", "cifar10", "--sweep", "lr=0.001", "--epochs", "40",
                           "--batch-size", "16", "--save-every", "0", "--name", "g", "--data-dir", smoke_data,
                           "--out", str(tmp_path), "--launcher", "slurm", "--slurm-cpus", "1", timeout=120)
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    job = submitted.stdout.split("as Slurm job array ")[1].split()[0]
    plan_dir = str(tmp_path / "sweeps" / "g")
    (member,) = members_by_id(plan_dir).values()
    _wait_for_log(member, "epoch   1/40")
    (task,) = json.load(open(os.path.join(plan_dir, "sweep.json")))["launcher"]["slurm_jobs"].values()
    shutil.rmtree(os.path.join(plan_dir, "slurm"))
    subprocess.run(["scancel", "--signal=TERM", task], check=True, timeout=30)  # (one member: no array)
    _wait_until_gone(job)
    log = open(os.path.join(member, "log.txt")).read()
    assert "not requeued: its Slurm folder is gone" in log and f"--resume {plan_dir}" in log, log[-2000:]
    assert json.load(open(os.path.join(member, "train.json")))["status"] == "interrupted"

"""Plans: a sweep (or a plain multi-run command) killed at any point finishes with one command and
the metrics of an uninterrupted plan; one process per run folder; local --jobs; Slurm preemption."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import (
    REPO,
    SMOKE_BATCH16,
    _plan,
    _pretend_started_on_a_gpu_node,
    _status,
    _one_error_line,
    _stopped_plan,
    hooked,
    members_by_id,
    popen_python,
    run_metrics,
    run_script,
    snapshot_files,
)

SWEEP = ["--smoke", "--dataset", "cifar10", "--sweep", "lr=0.001,0.003", "--epochs", "3", "--batch-size", "16",
         "--save-every", "0"]


def _popen(*args, env=None):
    return popen_python([os.path.join(REPO, "ex_1.py"), *args], stderr=subprocess.STDOUT, env=env)


def _wait_for(proc, *markers, timeout=180):
    """Read the process's output until every marker has been seen, in order; the lines read."""
    seen, deadline, lines = 0, time.time() + timeout, []
    for line in proc.stdout:
        lines.append(line)
        if markers[seen] in line:
            seen += 1
            if seen == len(markers):
                return lines
        if time.time() > deadline:
            break
    pytest.fail(f"never saw {markers[seen]!r}: {''.join(lines)[-2000:]}")


@pytest.fixture(scope="module")
def straight_sweep_plan(smoke_data, tmp_path_factory):
    """The 2-member sweep, uninterrupted: its plan folder."""
    out = str(tmp_path_factory.mktemp("straight_sweep"))
    result = run_script("ex_1.py", *SWEEP, "--name", "lr", "--data-dir", smoke_data, "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    return os.path.join(out, "sweeps", "lr")


@pytest.fixture(scope="module")
def straight_sweep(straight_sweep_plan):
    """The uninterrupted sweep's metrics: what every interrupted one must end with."""
    return {member: run_metrics(run_dir) for member, run_dir in members_by_id(straight_sweep_plan).items()}


def test_a_sweep_is_a_plan_with_members_named_by_what_differs(straight_sweep):
    assert sorted(straight_sweep) == ["cifar_10/lr=0.001,seed=0", "cifar_10/lr=0.003,seed=0"]
    assert straight_sweep["cifar_10/lr=0.001,seed=0"] != straight_sweep["cifar_10/lr=0.003,seed=0"]


def test_a_sweep_killed_mid_plan_resumes_every_member_to_the_uninterrupted_metrics(straight_sweep, smoke_data,
                                                                                  tmp_path):

    out = str(tmp_path)
    # SIGKILL as member 2's first epoch is recorded (last.pth holds it): member 1 is complete by then
    killed = run_script("ex_1.py", *SWEEP, "--name", "lr", "--data-dir", smoke_data, "--out", out,
                        env=dict(hooked("train_json", "SIGKILL"), STOP_HOOK_SKIP="1"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    plan_dir = os.path.join(out, "sweeps", "lr")
    first = members_by_id(plan_dir)["cifar_10/lr=0.001,seed=0"]
    finished_at = os.stat(os.path.join(first, "test.json")).st_mtime_ns
    result = run_script("ex_1.py", "--resume", plan_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cifar_10/lr=0.001,seed=0: completed (skipped)" in result.stdout
    assert "resuming" in result.stdout and "from last.pth, epoch 1" in result.stdout
    assert os.stat(os.path.join(first, "test.json")).st_mtime_ns == finished_at  # not trained again
    assert {m: run_metrics(d) for m, d in members_by_id(plan_dir).items()} == straight_sweep
    plan = json.load(open(os.path.join(plan_dir, "sweep.json")))
    assert [m["status"] for m in plan["members"]] == ["completed", "completed"]


def test_the_same_command_with_the_same_name_continues_and_another_plan_with_it_is_refused(straight_sweep,
                                                                                          smoke_data, tmp_path):
    out = str(tmp_path)
    proc = _popen(*SWEEP, "--name", "lr", "--data-dir", smoke_data, "--out", out)
    _wait_for(proc, "epoch   1/3")
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130
    plan_dir = os.path.join(out, "sweeps", "lr")
    assert f"--resume {plan_dir}" in output and "Traceback" not in output
    result = run_script("ex_1.py", *SWEEP, "--name", "lr", "--data-dir", smoke_data, "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert {m: run_metrics(d) for m, d in members_by_id(plan_dir).items()} == straight_sweep
    other = run_script("ex_1.py", *SWEEP[:-4], "--epochs", "2", "--name", "lr", "--data-dir", smoke_data,
                       "--out", out, timeout=60)
    assert other.returncode == 1 and "holds another plan named 'lr'" in other.stderr


def test_python_ex_1_smoke_stopped_during_cifar10_finishes_both_datasets_with_one_command(ex1_smoke_runs,
                                                                                         smoke_data, tmp_path):
    reference_out, _ = ex1_smoke_runs

    out = str(tmp_path)
    stopped = run_script("ex_1.py", "--smoke", "--data-dir", smoke_data, "--out", out, env=hooked("train_json"))
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == 143, output[-2000:]
    (plan_name,) = os.listdir(os.path.join(out, "sweeps"))
    plan_dir = os.path.join(out, "sweeps", plan_name)
    assert f"python {os.path.relpath(os.path.join(REPO, 'ex_1.py'), REPO)} --resume {plan_dir}" in output
    assert not os.path.exists(os.path.join(out, "cifar_100", plan_name, "config.json"))  # never started
    result = run_script("ex_1.py", "--resume", plan_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    for folder in ("cifar_10", "cifar_100"):
        (reference,) = os.listdir(reference_out / folder)
        assert run_metrics(os.path.join(out, folder, plan_name)) == run_metrics(reference_out / folder / reference)


def test_a_second_process_on_a_run_folder_is_refused_naming_the_holder_and_changes_nothing(smoke_data, tmp_path):
    out = str(tmp_path)
    proc = _popen("--smoke", "--dataset", "cifar10", "--epochs", "40", "--save-every", "0", "--data-dir", smoke_data,
                  "--out", out)
    try:
        lines = _wait_for(proc, "epoch   1/40")
        run_dir = [line.split("run folder: ")[1].strip() for line in lines if "run folder: " in line][0]
        record = open(os.path.join(run_dir, "config.json")).read()
        second = run_script("ex_1.py", "--resume", run_dir, timeout=60)
        assert second.returncode == 1
        (line,) = [x for x in second.stderr.splitlines() if x.strip()]
        assert line.startswith("error:") and f"PID {proc.pid}" in line and "being trained by" in line
        assert open(os.path.join(run_dir, "config.json")).read() == record  # no resume recorded
    finally:
        proc.kill()
        proc.wait(timeout=30)
    # the holder was killed: its lock is gone with it, and --resume takes the folder over
    stale = open(os.path.join(run_dir, ".lock")).read()
    assert f"PID {proc.pid}" in stale
    taker = _popen("--resume", run_dir, "--device", "cpu")
    try:
        _wait_for(taker, "resuming", "epoch")  # it took the folder and trains
        assert f"PID {taker.pid}" in open(os.path.join(run_dir, ".lock")).read()
        assert len(json.load(open(os.path.join(run_dir, "config.json")))["resumes"]) == 1
    finally:
        taker.kill()
        taker.wait(timeout=30)


def test_parallel_jobs_write_logs_show_live_progress_and_stop_cleanly_when_the_launcher_dies(smoke_data, tmp_path):
    out = str(tmp_path)
    # 8 epochs: neither member can finish before both are seen training, even on a busy machine
    args = [*SWEEP[:SWEEP.index("--epochs")], "--epochs", "8", *SWEEP[SWEEP.index("--epochs") + 2:]]
    proc = _popen(*args, "--name", "lr", "--jobs", "2", "--data-dir", smoke_data, "--out", out)
    lines = _wait_for(proc, "started cifar_10/lr=0.001,seed=0", "started cifar_10/lr=0.003,seed=0")
    assert "2 at once, 1 CPU thread(s) each" in "".join(lines)
    plan_dir = os.path.join(out, "sweeps", "lr")
    logs = [os.path.join(d, "log.txt") for d in members_by_id(plan_dir).values()]
    deadline = time.time() + 120
    while not all(os.path.exists(p) and "epoch   1/8" in open(p).read() for p in logs) and time.time() < deadline:
        time.sleep(0.2)
    proc.kill()  # the launcher dies; each member gets SIGTERM from the kernel and stops cleanly
    proc.wait(timeout=30)
    deadline = time.time() + 60
    statuses = []
    while time.time() < deadline:
        statuses = [json.load(open(os.path.join(d, "train.json")))["status"] for d in members_by_id(plan_dir).values()]
        if all(s != "running" for s in statuses):
            break
        time.sleep(0.2)
    assert statuses == ["interrupted", "interrupted"]
    result = run_script("ex_1.py", "--resume", plan_dir)  # the plan remembers --jobs 2
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 at once" in result.stdout and "done cifar_10/lr=0.003,seed=0: test accuracy" in result.stdout
    for log in logs:
        assert "resuming" in open(log).read()
    # the members ran with 1 thread each (as --jobs 2 on 2 cores): compare only what ran side by side
    threads = [json.load(open(os.path.join(d, "config.json")))["environment"]["torch_threads"]
               for d in members_by_id(plan_dir).values()]
    assert threads == [max(1, (os.cpu_count() or 1) // 2)] * 2


def test_tensorboards_hparams_view_lists_every_member_of_a_sweep(smoke_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    result = run_script("ex_1.py", "--smoke", "--dataset", "cifar10", "--sweep", "lr=0.001,0.003", "--epochs", "1",
                        "--save-every", "0", "--tensorboard", "--name", "tb", "--data-dir", smoke_data,
                        "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    lrs = {}
    for member, run_dir in members_by_id(str(tmp_path / "sweeps" / "tb")).items():
        events = EventAccumulator(run_dir, size_guidance={"tensors": 0})
        events.Reload()
        content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        lrs[member] = hparams["lr"].number_value
        assert events.Scalars("hparams/test_accuracy")  # the metric beside the recipe
    assert lrs == {"cifar_10/lr=0.001,seed=0": pytest.approx(0.001), "cifar_10/lr=0.003,seed=0": pytest.approx(0.003)}


def _planned_members(argv: list, tmp_path) -> list:
    """The plan members a command line makes (in process: nothing trains)."""
    import ex_1
    from common.cli import resolve
    from common.plans import plan

    command = resolve("ex_1", ex_1.RECIPE, "", [*argv, "--dataset", "cifar10", "--out", str(tmp_path)], REPO)
    return list(plan.make_plan(command, "now").members)


@pytest.mark.parametrize("field, values", [("model", ("tutorial_cnn", "efficientnet_v2_s")),
                                           ("image_size", ("32", "64"))])
@pytest.mark.parametrize("smoke", [[], ["--smoke"]])
def test_every_swept_member_gets_the_config_a_lone_run_of_its_value_gets(field, values, smoke, tmp_path):
    from common.config import data_folder, to_dict

    swept = _planned_members([*smoke, "--sweep", f"{field}={','.join(values)}"], tmp_path)
    assert len(swept) == len(values)
    for value, member in zip(values, swept):
        (lone,) = _planned_members([*smoke, f"--{field.replace('_', '-')}", value], tmp_path)
        assert to_dict(member.recipe) == to_dict(lone.recipe), value
        assert to_dict(member.options) == to_dict(lone.options), value
        assert data_folder(member.recipe, member.options) == data_folder(lone.recipe, lone.options), value
    if field == "model":  # EfficientNet is normalised as on ImageNet, the tutorial CNN by 0.5
        assert swept[0].recipe.mean == (0.5, 0.5, 0.5) and swept[1].recipe.mean == (0.485, 0.456, 0.406)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_plan_resumed_with_device_cpu_trains_every_member_on_the_cpu(smoke_data, tmp_path, jobs):
    out = str(tmp_path)
    stopped = run_script("ex_1.py", *SMOKE_BATCH16, "--sweep", "lr=0.001,0.003", "--epochs", "3", "--name", "d", "--jobs", jobs,
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
    result = run_script("ex_1.py", *SMOKE_BATCH16, "--sweep", "lr=0.1234567e-2,0.1234568e-2", "--epochs", "1", "--name", "u",
                        "--data-dir", smoke_data, "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    _, raw, members = _plan(str(tmp_path), "u")
    assert sorted(m["id"] for m in raw["members"]) == ["cifar_10/lr=0.001234567,seed=0", "cifar_10/lr=0.001234568,seed=0"]
    assert "2 of 2 complete" in result.stdout
    assert [json.load(open(os.path.join(m, "config.json")))["config"]["lr"] for m in members] == [0.001234567,
                                                                                                  0.001234568]


def test_two_jobs_launchers_on_one_plan_share_the_work_and_neither_fails(smoke_data, tmp_path):
    args = [*SMOKE_BATCH16, "--sweep", "lr=0.001,0.002,0.003,0.004", "--epochs", "3", "--name", "two", "--jobs", "2",
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


def test_a_member_another_launcher_finished_after_this_one_chose_it_is_complete_not_an_error(straight_sweep_plan,
                                                                                             straight_sweep):
    # The race of two launchers on one plan: this one chose the member while the other was testing it.
    from common.plans import member, plan

    the_plan = plan.read_plan(straight_sweep_plan)
    chosen = the_plan.member("cifar_10/lr=0.003,seed=0")
    before = snapshot_files(chosen.run_dir)
    outcome = member.run_member(the_plan, chosen, log=True)
    assert outcome.status == "completed"
    assert snapshot_files(chosen.run_dir) == before  # not trained, tested or logged again
    assert run_metrics(chosen.run_dir) == straight_sweep["cifar_10/lr=0.003,seed=0"]


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
    result = run_script("ex_1.py", *SMOKE_BATCH16, "--sweep", "lr=0.001,1e30", "--epochs", "2", "--name", "nan", "--jobs", "2",
                        "--data-dir", smoke_data, "--out", str(tmp_path), timeout=300)
    assert result.returncode == 1
    plan_dir, _, members = _plan(str(tmp_path), "nan")
    log = open(os.path.join(members[1], "log.txt")).read()
    assert "error: the loss became" in log
    assert json.load(open(os.path.join(members[1], "train.json")))["diverged"] is True
    assert "resuming cannot help" in result.stderr and "--resume" not in result.stderr.splitlines()[-1]
    assert "lr=1e+30,seed=0: the loss diverged" in result.stderr


def test_the_inline_and_the_jobs_executor_leave_the_same_plan(smoke_data, tmp_path):
    """One member runner under both: the same statuses in sweep.json, the same files in each member's
    folder (log.txt aside: a member in a process of its own writes its console there) and the same
    numbers (both at one torch thread per member)."""
    from tests.conftest import run_metrics

    plans = {}
    for jobs in ("1", "2"):
        out = str(tmp_path / f"jobs{jobs}")
        result = run_script("ex_1.py", *SMOKE_BATCH16, "--sweep", "lr=0.001,0.003", "--epochs", "2", "--name", "same",
                            "--jobs", jobs, "--data-dir", smoke_data, "--out", out, env={"OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-2000:]
        plan_dir, raw, members = _plan(out, "same")
        plans[jobs] = ([m["status"] for m in raw["members"]],
                       [sorted(set(os.listdir(m)) - {"log.txt"}) for m in members],
                       [run_metrics(m) for m in members])
    assert plans["1"] == plans["2"]
    assert plans["1"][0] == ["completed", "completed"] and ".lock" not in plans["1"][1][0]


def test_members_stopped_by_a_signal_are_reported_stopped_with_the_command_that_continues(smoke_data, tmp_path):
    result = run_script("ex_1.py", *SMOKE_BATCH16, "--sweep", "lr=0.001,0.003", "--epochs", "2", "--name", "s",
                        "--jobs", "2", "--data-dir", smoke_data, "--out", str(tmp_path), env=hooked("train_json"))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    plan_dir, _, members = _plan(str(tmp_path), "s")
    assert [_status(m) for m in members] == ["interrupted", "interrupted"]
    assert "2 of 2 members were stopped" in result.stderr and "failed" not in result.stderr
    assert f"Continue the plan with: python ex_1.py --resume {plan_dir}" in result.stderr


@pytest.mark.parametrize("member_id", ["/tmp/escaped/cifar_10/x", "cifar_10/../../../escaped", "../../../x/cifar_10/y",
                                       "cifar_10/.."])
def test_a_plan_whose_member_id_leaves_its_folder_is_refused_before_anything_runs(smoke_data, tmp_path, member_id):
    plan_dir, raw, _ = _stopped_plan(smoke_data, str(tmp_path / "out"))
    raw["members"][0]["id"] = member_id
    json.dump(raw, open(os.path.join(plan_dir, "sweep.json"), "w"))
    before = snapshot_files(tmp_path)
    result = run_script("ex_1.py", "--resume", plan_dir)
    assert result.returncode == 1
    _one_error_line(result, "is not a run folder this plan can own")
    assert snapshot_files(tmp_path) == before

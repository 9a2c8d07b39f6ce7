"""A stop is a stop: each stop signal, sent at awkward moments (inside a finalizer run by the
garbage collector, inside a weakref callback, while the data loads, while train.json is written),
stops the run within seconds with exit 128 + signal, marks it interrupted, and --resume then
ends with the metrics of an uninterrupted run. The moments come from tests/stop_hook, loaded
into every Python process of the test (lone runs and plan members alike)."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import (
    _SIGNAL_DURING_WRITE,
    _SIGNAL_WHILE_TESTING,
    ARGS,
    REPO,
    SMOKE,
    _one_error_line,
    _popen,
    _quick,
    _read_until,
    _start,
    _temp_files,
    _wait_for,
    closed_port,
    hooked,
    only_run,
    run_metrics,
    run_python,
    run_script,
)


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
    assert len(_processes_with(f"common.plans.member {plan_dir}")) == 2
    proc.kill()
    proc.wait(timeout=30)
    time.sleep(10)
    left = _processes_with(f"common.plans.member {plan_dir}")
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
                               f"subprocess.Popen([sys.executable, '-m', 'common.plans.member', {plan_dir!r}, {member!r}],"
                               f" cwd={REPO!r}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
                               f"while not (os.path.exists({log!r}) and 'epoch   1/50' in open({log!r}).read()):\n"
                               "    time.sleep(0.1)\n"],
                              cwd=REPO)
    assert parent.wait(timeout=180) == 0  # the member's parent is gone; no death signal was asked for
    deadline = time.monotonic() + 30
    while _processes_with(f"common.plans.member {plan_dir}"):
        assert time.monotonic() < deadline, "the member trained on without its launcher"
        time.sleep(0.2)
    assert _train_status(os.path.join(plan_dir, member)) == "interrupted"


def test_sigterm_mid_epoch_marks_interrupted_exits_143_and_resume_matches(uninterrupted, smoke_data, tmp_path):
    out = str(tmp_path / "out")
    with open(tmp_path / "err.txt", "w") as err:
        proc = _popen(*ARGS, "--data-dir", smoke_data, "--out", out, stderr=err)
        _wait_for(proc, "epoch   1/3")
        time.sleep(0.3)  # inside epoch 2
        sent = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        stopped_after = time.perf_counter() - sent
    assert proc.returncode == 143
    assert stopped_after < 10
    run_dir = only_run(out)
    assert json.load(open(os.path.join(run_dir, "train.json")))["status"] == "interrupted"
    message = (tmp_path / "err.txt").read_text()
    assert f"--resume {run_dir}" in message and "Traceback" not in message
    assert _temp_files(run_dir) == []
    # A write cut short by SIGKILL leaves a temp file: --resume clears it.
    (tmp_path / "out" / "cifar_10" / os.path.basename(run_dir) / ".last.pth.abc123.tmp").write_bytes(b"half")
    result = run_script("ex_1.py", "--resume", run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert run_metrics(run_dir) == uninterrupted
    assert _temp_files(run_dir) == []


def test_a_second_ctrl_c_while_stopping_prints_no_traceback(smoke_data, tmp_path):
    with open(tmp_path / "err.txt", "w") as err:
        proc = _popen(*SMOKE, "--epochs", "5", "--data-dir", smoke_data, "--out", str(tmp_path / "out"), stderr=err)
        _wait_for(proc, "epoch   1/5")
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in (tmp_path / "err.txt").read_text()
    assert json.load(open(os.path.join(only_run(str(tmp_path / "out")), "train.json")))["status"] == "interrupted"


def test_a_stop_signal_while_python_shuts_down_keeps_the_exit_code_it_decided(smoke_data, tmp_path):
    """Once the stop is reported, Python's shutdown (tearing torch down takes a while) puts Python's
    handlers back to the default: a Ctrl-C then must not turn exit 130 into death by SIGINT."""
    proc = subprocess.Popen([sys.executable, "-u", os.path.join(REPO, "ex_1.py"), *SMOKE, "--epochs", "5",
                             "--data-dir", smoke_data, "--out", str(tmp_path / "out")], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(proc, "epoch   1/5")
    proc.send_signal(signal.SIGINT)
    said = []
    for line in proc.stderr:
        said.append(line)
        if "--resume" in line:  # the stop message's last line: the process is exiting
            break
    time.sleep(0.1)  # past Python's signal clean-up (~20 ms after the message here), inside torch's teardown (~0.8 s)
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, said + [rest]
    assert "Traceback" not in "".join(said) + rest


@pytest.mark.parametrize("tear_down", [True, False])
def test_a_stop_signal_after_the_exit_is_decided_exits_at_once_with_that_code(tear_down):
    """Before Python's own shutdown steps (here: waiting for a thread that never ends), a signal ends
    the process at once with the code already decided, not a traceback and not death by the signal."""
    code = ("import os, signal, threading, time\n"
            "from common import stopping\n"
            "stopping.stop_on_signals()\n"
            "threading.Thread(target=lambda: (time.sleep(0.5), os.kill(os.getpid(), signal.SIGTERM), time.sleep(600))).start()\n"
            f"stopping.exit_decided(3, tear_down={tear_down})\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3 and result.stderr == "", result.stderr[-2000:]


def test_a_member_ends_without_the_teardown_as_the_interpreter_ends_a_process():
    """A plan member skips the modules' teardown, not what comes before it: threads, atexit, buffered output."""
    code = ("import atexit, sys, threading, time\n"
            "from common import stopping\n"
            "atexit.register(print, 'atexit ran')\n"
            "threading.Thread(target=lambda: (time.sleep(0.3), print('thread joined'))).start()\n"
            "sys.stdout.write('buffered ')\n"
            "stopping.exit_decided(3, tear_down=False)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (3, "buffered thread joined\natexit ran\n", "")


def test_a_ctrl_c_while_last_pth_is_written_never_leaves_the_history_ahead_of_it(uninterrupted, smoke_data, tmp_path):
    from tests.conftest import ARGS

    program = _SIGNAL_DURING_WRITE.format(repo=REPO, script=os.path.join(REPO, "ex_1.py"))
    result = run_python(["-c", program, *ARGS, "--data-dir", smoke_data, "--out", str(tmp_path)], timeout=300)
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr[-2000:]
    run_dir = only_run(str(tmp_path))
    saved = torch.load(os.path.join(run_dir, "last.pth"), weights_only=True)["epoch"]
    train = json.load(open(os.path.join(run_dir, "train.json")))
    assert (train["status"], saved, train["epochs_done"]) == ("interrupted", 1, 1)
    assert f"{saved} epochs are saved" in result.stderr and _temp_files(run_dir) == []
    resumed = run_script("ex_1.py", "--resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert run_metrics(run_dir) == uninterrupted


def test_sighup_stops_like_sigterm(smoke_data, tmp_path):
    proc = _start(smoke_data, tmp_path, "--epochs", "20")
    _read_until(proc, "epoch   1/20")
    proc.send_signal(signal.SIGHUP)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGHUP and "Traceback" not in stderr
    run_dir = only_run(str(tmp_path))
    assert json.load(open(os.path.join(run_dir, "train.json")))["status"] == "interrupted"
    assert f"--resume {run_dir}" in stderr


def test_sigterm_while_testing_says_how_to_finish_and_resume_tests_it(smoke_data, tmp_path):
    program = _SIGNAL_WHILE_TESTING.format(repo=REPO, script=os.path.join(REPO, "ex_1.py"))
    result = run_python(["-c", program, *_quick(smoke_data, tmp_path, "--epochs", "1")], timeout=300)
    assert result.returncode == 143 and "Traceback" not in result.stderr, result.stderr[-2000:]
    run_dir = only_run(str(tmp_path))
    assert f"--resume {run_dir}" in result.stderr
    assert json.load(open(os.path.join(run_dir, "train.json")))["status"] == "interrupted"
    assert not os.path.exists(os.path.join(run_dir, "test.json"))
    resumed = run_script("ex_1.py", "--resume", run_dir)
    assert resumed.returncode == 0 and os.path.exists(os.path.join(run_dir, "test.json"))
    assert json.load(open(os.path.join(run_dir, "train.json")))["status"] == "completed"


def test_a_torchrun_process_killed_leaves_one_line_from_the_other(smoke_data, tmp_path):
    logs = tmp_path / "logs"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                             "--redirects", "3", "--log-dir", str(logs), os.path.join(REPO, "ex_1.py"),
                             *_quick(smoke_data, tmp_path / "out", "--epochs", "200")], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            outs = [p for p in logs.rglob("stdout.log")]
            if any("epoch   2/200" in p.read_text() for p in outs):
                break
            time.sleep(0.2)
        pids = subprocess.run(["pgrep", "-f", f"ex_1.py --smoke.*{tmp_path}/out"], capture_output=True,
                              text=True).stdout.split()
        workers = [int(p) for p in pids if int(p) != proc.pid]
        os.kill(max(workers), signal.SIGKILL)  # the younger worker: rank 1
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    (rank0,) = [p for p in logs.rglob("stderr.log") if p.parent.name == "0"]
    text = rank0.read_text()
    lines = [re.sub(r"^\[rank\d+\]:", "", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("[W")]  # gloo's own warnings
    assert "Traceback" not in text, text[-2000:]
    assert len(lines) <= 2 and all("error:" in line or "interrupted" in line or "--resume" in line
                                   for line in lines), text[-2000:]


def _offline_error_run(tmp_path, prelude: str) -> subprocess.CompletedProcess:
    """ex_1.py with no data and a closed mirror (an error exit: exit 1, one line), `prelude` run first."""
    script = os.path.join(REPO, "ex_1.py")
    argv = [script, "--dataset", "cifar10", "--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "o")]
    code = ("import atexit, os, runpy, signal, sys\n" + prelude + f"sys.argv = {argv!r}\n"
            f"runpy.run_path({script!r}, run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, CIFAR_MIRROR=f"http://127.0.0.1:{closed_port()}/"))


def test_a_sigterm_after_the_error_line_keeps_exit_1_without_a_traceback(tmp_path):
    """What torchrun does to the workers left when one fails: SIGTERM, often while the interpreter
    shuts down. Here the process sends it to itself from its last atexit callback."""
    result = _offline_error_run(tmp_path, "atexit.register(lambda: os.kill(os.getpid(), signal.SIGTERM))\n")
    _one_error_line(result, "CIFAR_MIRROR")
    assert result.returncode == 1  # the error was printed: the signal changes neither the output nor the code


# --- the end of a run, the first second, and other moments a stop must not mislabel ---

def test_a_stop_right_after_test_json_leaves_a_complete_run_that_compare_counts(smoke_data, tmp_path):
    result = run_script("ex_1.py", *_quick(smoke_data, tmp_path / "out", "--epochs", "1"), env=hooked("test_json"))
    assert result.returncode == 143 and "Traceback" not in result.stderr, result.stderr[-2000:]
    run_dir = only_run(str(tmp_path / "out"))
    assert _train_status(run_dir) == "completed"  # what is on disk: tested
    assert "nothing to resume" in result.stderr and "--resume" not in result.stderr
    compared = run_python(["-m", "common.compare", str(tmp_path / "out"), "--no-figures"], timeout=300)
    assert compared.returncode == 0 and "Not averaged" not in compared.stdout, compared.stdout[-2000:]


def test_a_member_killed_while_testing_is_not_complete_and_resume_tests_it(smoke_data, tmp_path):
    out = tmp_path / "out"
    args = _quick(smoke_data, out, "--epochs", "1", "--seeds", "0,1")
    killed = run_script("ex_1.py", *args, env=hooked("testing", "SIGKILL"))
    assert killed.returncode == -signal.SIGKILL
    (plan_dir,) = (out / "sweeps").iterdir()
    status = run_python(["-m", "common.plans", str(plan_dir)], timeout=120).stdout
    assert "1 killed" in status and "completed" not in status, status
    resumed = run_script("ex_1.py", "--resume", str(plan_dir))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "2 of 2 complete" in resumed.stdout
    for run_dir in (out / "cifar_10").iterdir():
        assert (run_dir / "test.json").is_file() and _train_status(run_dir) == "completed"


def test_a_stop_just_after_the_lock_is_taken_leaves_no_folder(smoke_data, tmp_path):
    out = tmp_path / "out"
    result = run_script("ex_1.py", *_quick(smoke_data, out, "--epochs", "1", "--name", "p"), env=hooked("lock"))
    assert result.returncode == 143 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert not (out / "sweeps" / "p" / "cifar_10").exists() or not any((out / "sweeps" / "p" / "cifar_10").iterdir())


def test_a_signal_while_the_script_starts_exits_quietly_before_anything_is_written(tmp_path):
    """Python's own Ctrl-C during the first seconds (torch importing) would print a traceback of the
    import, or be dropped inside a finalizer. Sent at many moments of the start, never a traceback."""
    codes = set()
    for delay in (0.3, 0.6, 1.0, 1.4, 1.8):  # after Python's own start-up (its site imports), before training
        proc = subprocess.Popen([sys.executable, os.path.join(REPO, "ex_1.py"), "--smoke", "--out", str(tmp_path)],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
        assert "Traceback" not in stderr and len([line for line in stderr.splitlines() if line.strip()]) <= 2, stderr
        codes.add(proc.returncode)
    assert codes <= {130}, codes  # never trained on, never died by the default handler
    assert not any((tmp_path / "cifar_10").glob("*/test.json"))


def test_a_sighup_the_parent_ignores_stays_ignored(smoke_data, tmp_path):
    """`nohup python ex_1.py`: the run outlives the terminal."""
    proc = _start(smoke_data, tmp_path, "--epochs", "2", preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    _read_until(proc, "epoch   1/2")
    proc.send_signal(signal.SIGHUP)
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert _train_status(only_run(str(tmp_path))) == "completed"


def test_a_stop_during_an_error_exit_prints_the_error_once_and_no_traceback(tmp_path):
    """A SIGTERM while the UserError that ends the command is being handled (before its line is out)."""
    result = _offline_error_run(tmp_path, f"sys.path.insert(0, {REPO!r})\n"
                                          "from common import launch\n"
                                          "real = launch._fail\n"
                                          "def fail(message):\n"
                                          "    os.kill(os.getpid(), signal.SIGTERM)\n"
                                          "    for _ in range(100000): pass\n"
                                          "    real(message)\n"
                                          "launch._fail = fail\n")
    _one_error_line(result, "CIFAR_MIRROR")
    assert result.returncode == 1

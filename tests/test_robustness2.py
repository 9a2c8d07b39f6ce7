"""Hard to break, round two: every input works or stops with one line naming the file or flag,
exit 1 (2 for usage), no traceback, nothing half-written or misleading left. Each through the CLI."""
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import re
import textwrap
import threading
import time
from contextlib import contextmanager

import pytest

from tests.conftest import REPO, closed_port, only_run, run_metrics, run_script, snapshot_files
from tests.test_robustness import _one_error_line, _temp_files


def _quick(smoke_data, out, *extra):
    return ["--smoke", "--dataset", "cifar10", "--save-every", "0", "--data-dir", smoke_data, "--out", str(out), *extra]


# --- flags and combinations ----------------------------------------------------------------------

@pytest.mark.parametrize("args,env,message", [
    (["--batch-size", "1"], {}, "--batch-size must be at least 2: BatchNorm"),
    (["--batch-size", "33"], {"WORLD_SIZE": "2", "RANK": "0"}, "does not split into 2 equal batches"),
    (["--warmup-epochs", "1", "--scheduler", "onecycle"], {}, "--warmup-epochs is for --scheduler none, cosine"),
    (["--resume", ""], {}, "--resume needs a run folder, got an empty string"),
    (["--weights", __file__], {}, "--weights does not go with --smoke"),
])
def test_what_would_run_other_than_recorded_is_refused_in_one_line(tmp_path, smoke_data, args, env, message):
    result = run_script("ex_1.py", *_quick(smoke_data, tmp_path / "out"), *args, env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert message in line and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


# --- --resume checks what it continues ---------------------------------------------------------------

@pytest.fixture(scope="module")
def killed_run(smoke_data, tmp_path_factory):
    """A run folder (and its own copy of the data) killed in epoch 2 of 3."""
    root = tmp_path_factory.mktemp("killed")
    data = root / "data"
    shutil.copytree(os.path.join(smoke_data, "synthetic", "small"), data)
    proc = subprocess.Popen([sys.executable, "-u", os.path.join(REPO, "ex_1.py"), "--dataset", "cifar10",
                             "--epochs", "3", "--batch-size", "16", "--save-every", "0", "--data-dir", str(data),
                             "--out", str(root / "out")], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if "epoch   1/3" in line:
            break
    proc.kill()
    proc.wait(timeout=30)
    return only_run(str(root / "out")), data


def _copy_run(killed_run, tmp_path):
    run_dir, data = killed_run
    copy_data = tmp_path / "data"
    shutil.copytree(data, copy_data)
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    record = json.load(open(copy / "config.json"))
    record["config"]["data_dir"] = str(copy_data)
    (copy / "config.json").write_text(json.dumps(record))
    return str(copy), copy_data


def test_resume_refuses_data_that_changed_since_the_run_started(killed_run, tmp_path):
    run_dir, data = _copy_run(killed_run, tmp_path)
    test_file = data / "cifar-10-batches-py" / "test_batch"
    shutil.copy(data / "cifar-10-batches-py" / "data_batch_1", test_file)  # another dataset under the same name
    before = snapshot_files(run_dir)
    result = run_script("ex_1.py", "--resume", run_dir, timeout=120)
    assert result.returncode == 1
    _one_error_line(result, "changed since this run started", str(data), "sha256")
    assert snapshot_files(run_dir) == before


def test_resume_refuses_another_process_count(killed_run, tmp_path):
    run_dir, _ = _copy_run(killed_run, tmp_path)
    record = json.load(open(os.path.join(run_dir, "config.json")))
    record["processes"] = 2  # as if started with torchrun --nproc_per_node=2
    json.dump(record, open(os.path.join(run_dir, "config.json"), "w"))
    before = snapshot_files(run_dir)
    result = run_script("ex_1.py", "--resume", run_dir, timeout=120)
    assert result.returncode == 1
    _one_error_line(result, "was trained by 2 process(es), this is 1", "--nproc_per_node=2")
    assert snapshot_files(run_dir) == before


def test_a_device_from_config_json_that_is_not_here_says_so_and_device_cpu_works(killed_run, tmp_path):
    run_dir, _ = _copy_run(killed_run, tmp_path)
    record = json.load(open(os.path.join(run_dir, "config.json")))
    record["config"]["device"] = "cuda:0"
    json.dump(record, open(os.path.join(run_dir, "config.json"), "w"))
    result = run_script("ex_1.py", "--resume", run_dir, timeout=120)
    if result.returncode == 0:
        pytest.skip("this machine has a CUDA GPU")
    _one_error_line(result, "config.json names device 'cuda:0'", "--device cpu")
    assert run_script("ex_1.py", "--resume", run_dir, "--device", "cpu").returncode == 0


_SIGNAL_DURING_WRITE = textwrap.dedent("""
    import os, runpy, signal, sys
    sys.path.insert(0, {repo!r})
    from common import files
    real, count = files.atomic_write, [0]
    def write(path, writer, what=None):
        if os.path.basename(path) == "last.pth":
            count[0] += 1
            if count[0] == 3:  # epoch 2's last.pth, half written: Ctrl-C
                def half(f):
                    f.write(b"partial")
                    os.kill(os.getpid(), signal.SIGINT)
                    writer(f)
                return real(path, half, what)
        return real(path, writer, what)
    files.atomic_write = write
    sys.argv = [{script!r}] + sys.argv[1:]
    runpy.run_path({script!r}, run_name="__main__")
""")


def test_a_ctrl_c_while_last_pth_is_written_never_leaves_the_history_ahead_of_it(uninterrupted, smoke_data, tmp_path):
    from tests.conftest import ARGS

    program = _SIGNAL_DURING_WRITE.format(repo=REPO, script=os.path.join(REPO, "ex_1.py"))
    result = subprocess.run([sys.executable, "-c", program, *ARGS, "--data-dir", smoke_data, "--out", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr[-2000:]
    run_dir = only_run(str(tmp_path))
    import torch
    saved = torch.load(os.path.join(run_dir, "last.pth"), weights_only=True)["epoch"]
    train = json.load(open(os.path.join(run_dir, "train.json")))
    assert (train["status"], saved, train["epochs_done"]) == ("interrupted", 1, 1)
    assert f"{saved} epochs are saved" in result.stderr and _temp_files(run_dir) == []
    resumed = run_script("ex_1.py", "--resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert run_metrics(run_dir) == uninterrupted


# --- signals and the console -------------------------------------------------------------------------

def _start(smoke_data, out, *extra, **popen):
    return subprocess.Popen([sys.executable, "-u", os.path.join(REPO, "ex_1.py"), *_quick(smoke_data, out, *extra)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _read_until(proc, marker):
    for line in proc.stdout:
        if marker in line:
            return


def test_sighup_stops_like_sigterm(smoke_data, tmp_path):
    proc = _start(smoke_data, tmp_path, "--epochs", "20")
    _read_until(proc, "epoch   1/20")
    proc.send_signal(signal.SIGHUP)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGHUP and "Traceback" not in stderr
    run_dir = only_run(str(tmp_path))
    assert json.load(open(os.path.join(run_dir, "train.json")))["status"] == "interrupted"
    assert f"--resume {run_dir}" in stderr


_SIGNAL_WHILE_TESTING = textwrap.dedent("""
    import os, runpy, signal, sys
    sys.path.insert(0, {repo!r})
    from common import experiment
    real = experiment.classification_metrics
    def metrics(*args, **kwargs):  # the test phase of best.pth has begun: SIGTERM (a preemption)
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)
    experiment.classification_metrics = metrics
    sys.argv = [{script!r}] + sys.argv[1:]
    runpy.run_path({script!r}, run_name="__main__")
""")


def test_sigterm_while_testing_says_how_to_finish_and_resume_tests_it(smoke_data, tmp_path):
    program = _SIGNAL_WHILE_TESTING.format(repo=REPO, script=os.path.join(REPO, "ex_1.py"))
    result = subprocess.run([sys.executable, "-c", program, *_quick(smoke_data, tmp_path, "--epochs", "1")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 143 and "Traceback" not in result.stderr, result.stderr[-2000:]
    run_dir = only_run(str(tmp_path))
    assert f"--resume {run_dir}" in result.stderr
    assert json.load(open(os.path.join(run_dir, "train.json")))["status"] == "interrupted"
    assert not os.path.exists(os.path.join(run_dir, "test.json"))
    resumed = run_script("ex_1.py", "--resume", run_dir)
    assert resumed.returncode == 0 and os.path.exists(os.path.join(run_dir, "test.json"))
    assert json.load(open(os.path.join(run_dir, "train.json")))["status"] == "completed"


def test_a_full_or_closed_console_does_not_stop_the_run(smoke_data, tmp_path):
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, os.path.join(REPO, "ex_1.py"),
                                 *_quick(smoke_data, tmp_path / "a", "--epochs", "1")],
                                cwd=REPO, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert [line for line in result.stderr.splitlines() if line.startswith("warning:")] == \
        ["warning: standard output failed (No space left on device (ENOSPC)): training goes on; train.json and "
         "test.json say how it went"]
    assert os.path.exists(os.path.join(only_run(str(tmp_path / "a")), "test.json"))
    piped = subprocess.run(f"{sys.executable} {os.path.join(REPO, 'ex_1.py')} "
                           f"{' '.join(_quick(smoke_data, tmp_path / 'b', '--epochs', '1'))} | head -1; "
                           f"exit ${{PIPESTATUS[0]}}",
                           shell=True, executable="/bin/bash", cwd=REPO, capture_output=True, text=True, timeout=300)
    assert piped.returncode == 0 and "Traceback" not in piped.stderr, piped.stderr[-2000:]
    assert json.load(open(os.path.join(only_run(str(tmp_path / "b")), "train.json")))["status"] == "completed"


def test_the_printed_resume_command_works_for_a_path_with_spaces(smoke_data, tmp_path):
    out = tmp_path / "my runs"
    proc = _start(smoke_data, out, "--epochs", "3")
    _read_until(proc, "epoch   1/3")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    (command,) = [line.strip() for line in stderr.splitlines() if "--resume" in line]
    assert "'" in command  # quoted
    resumed = subprocess.run(command.replace("python ", f"{sys.executable} ", 1) + " --device cpu", shell=True,
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def test_an_unknown_mplbackend_does_not_matter(smoke_data, tmp_path):
    result = run_script("ex_1.py", *_quick(smoke_data, tmp_path, "--epochs", "1"), env={"MPLBACKEND": "nonsense"})
    assert result.returncode == 0, result.stderr[-2000:]


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


def test_a_sigterm_after_the_error_line_keeps_exit_1_without_a_traceback(tmp_path):
    """What torchrun does to the workers left when one fails: SIGTERM, often while the interpreter
    shuts down. Here the process sends it to itself from its last atexit callback."""
    script = os.path.join(REPO, "ex_1.py")
    argv = [script, "--dataset", "cifar10", "--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "o")]
    code = ("import atexit, os, runpy, signal, sys\n"
            "atexit.register(lambda: os.kill(os.getpid(), signal.SIGTERM))\n"
            f"sys.argv = {argv!r}\n"
            f"runpy.run_path({script!r}, run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, CIFAR_MIRROR=f"http://127.0.0.1:{closed_port()}/"))
    _one_error_line(result, "CIFAR_MIRROR")
    assert result.returncode == 1  # the error was printed: the signal changes neither the output nor the code


# --- data ----------------------------------------------------------------------------------------------

def _dataset_with(tmp_path, smoke_data, change):
    import pickle

    data = tmp_path / "data"
    shutil.copytree(os.path.join(smoke_data, "synthetic", "small"), data)
    folder = data / "cifar-10-batches-py"
    name, obj = change(folder)
    with open(folder / name, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    return data


def _load(path):
    import pickle
    return pickle.load(open(path, "rb"), encoding="latin1")


@pytest.mark.parametrize("change,message", [
    (lambda f: ("batches.meta", {"label_names": 7}), "'label_names' must be a list of 10 class names"),
    (lambda f: ("test_batch", dict(_load(f / "test_batch"), data=_load(f / "test_batch")["data"][:0], labels=[])),
     "holds no test images"),
])
def test_a_damaged_dataset_stops_before_training_in_one_line(tmp_path, smoke_data, change, message):
    data = _dataset_with(tmp_path, smoke_data, change)
    result = run_script("ex_1.py", "--dataset", "cifar10", "--data-dir", str(data), "--out", str(tmp_path / "out"),
                        timeout=60)
    assert result.returncode == 1
    _one_error_line(result, message)
    assert not (tmp_path / "out" / "cifar_10").exists() or not os.listdir(tmp_path / "out" / "cifar_10")


def test_an_empty_training_set_stops_before_training_in_one_line(tmp_path, smoke_data):
    import pickle

    data = tmp_path / "data"
    shutil.copytree(os.path.join(smoke_data, "synthetic", "small"), data)
    for i in range(1, 6):
        path = data / "cifar-10-batches-py" / f"data_batch_{i}"
        batch = _load(path)
        with open(path, "wb") as f:
            pickle.dump(dict(batch, data=batch["data"][:0], labels=[]), f, protocol=2)
    result = run_script("ex_1.py", "--dataset", "cifar10", "--data-dir", str(data), "--out", str(tmp_path / "out"),
                        timeout=60)
    assert result.returncode == 1
    _one_error_line(result, "holds no training images")


# --- the network -----------------------------------------------------------------------------------------

@contextmanager
def raw_server(respond):
    """A 127.0.0.1 server that hands each connection to respond(conn); yields its base URL."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            threading.Thread(target=_answer, args=(respond, conn, stop), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/"
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def _answer(respond, conn, stop):
    try:
        conn.recv(65536)  # the request
        respond(conn, stop)
    except OSError:
        pass
    finally:
        conn.close()


def _trickle(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 170498071\r\n\r\n")
    while not stop.is_set():
        conn.sendall(b"x")
        time.sleep(1)


def _endless(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
    block = b"\0" * (1 << 20)
    while not stop.is_set():
        conn.sendall(block)


def _huge(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\nxxxx")


def _not_http(conn, stop):
    conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")


def _bad_chunks(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n")


def _redirect_loop(conn, stop):
    conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: /cifar-10-python.tar.gz\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize("respond,timeout,message", [
    (_trickle, "2", "bytes/s over"),
    (_endless, "30", "more than the 170,498,071 bytes expected"),
    (_huge, "30", "announces 1,000,000,000,000 bytes"),
    (_not_http, "30", "not valid HTTP"),
    (_bad_chunks, "30", "not valid HTTP"),
    (_redirect_loop, "30", "redirect"),
])
def test_a_misbehaving_mirror_stops_the_download_in_one_line_and_leaves_nothing(tmp_path, respond, timeout, message):
    with raw_server(respond) as url:
        start = time.perf_counter()
        result = run_script("ex_1.py", "--dataset", "cifar10", "--data-dir", str(tmp_path / "d"),
                            "--out", str(tmp_path / "o"), env={"CIFAR_MIRROR": url, "CIFAR_DOWNLOAD_TIMEOUT": timeout},
                            timeout=180)
        elapsed = time.perf_counter() - start
    assert result.returncode == 1 and elapsed < 60
    _one_error_line(result, url + "cifar-10-python.tar.gz", message)
    assert os.listdir(tmp_path / "d") == []  # no partial archive


def test_a_mirror_with_a_broken_content_length_still_works(tmp_path, smoke_data, monkeypatch):
    import dataclasses

    from common import data
    from tests.test_robustness import _archive_of

    blob = _archive_of(os.path.join(smoke_data, "synthetic", "small"), "cifar-10-batches-py")
    monkeypatch.setitem(data.SPECS, "cifar10", dataclasses.replace(data.SPECS["cifar10"],
                                                                    md5=hashlib.md5(blob).hexdigest()))

    def respond(conn, stop):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\nConnection: close\r\n\r\n" + blob)

    with raw_server(respond) as url:
        monkeypatch.setenv("CIFAR_MIRROR", url)
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / ".cifar-10-python.tar.gz.x1y2.tmp").write_bytes(b"left by a SIGKILL")
        loaded = data.load_cifar(data.SPECS["cifar10"], str(tmp_path / "d"))
    assert len(loaded.train_y) == 600
    assert sorted(os.listdir(tmp_path / "d")) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]  # temp cleaned


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "soon"])
def test_a_download_time_out_that_is_not_a_finite_number_of_seconds_is_one_line(tmp_path, value):
    from tests.conftest import closed_port

    result = run_script("ex_1.py", "--dataset", "cifar10", "--data-dir", str(tmp_path / "d"), "--out",
                        str(tmp_path / "o"), env={"CIFAR_MIRROR": f"http://127.0.0.1:{closed_port()}/",
                                                  "CIFAR_DOWNLOAD_TIMEOUT": value}, timeout=60)
    assert result.returncode == 1
    _one_error_line(result, "CIFAR_DOWNLOAD_TIMEOUT")


# --- compare ----------------------------------------------------------------------------------------------

class _Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _compare(*args, cwd=REPO):
    """`python -m common.compare ARGS`, in this process (its main() is the command line): quick."""
    import contextlib

    from common import compare

    out, err, code = io.StringIO(), io.StringIO(), 0
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                compare.main(list(args))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
                if not isinstance(e.code, int) and e.code is not None:
                    err.write(f"{e.code}\n")
    finally:
        os.chdir(here)
    return _Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def two_runs(ex1_smoke_runs, tmp_path):
    """ex_1/cifar_10/{good,other}: two copies of one smoke run, seeds 0 and 1."""
    out, _ = ex1_smoke_runs
    (run,) = (out / "cifar_10").iterdir()
    folders = []
    for name, seed in (("good", 0), ("other", 1)):
        dest = tmp_path / "ex_1" / "cifar_10" / name
        shutil.copytree(run, dest)
        record = json.load(open(dest / "config.json"))
        record["seed"] = record["config"]["seed"] = seed
        (dest / "config.json").write_text(json.dumps(record))
        folders.append(dest)
    return tmp_path / "ex_1", folders


@pytest.mark.parametrize("damage", ["environment list", "recipe string", "huge accuracy", "deep json", "nan accuracy",
                                    "inf accuracy"])
def test_compare_lists_a_folder_with_a_wrong_type_as_damaged_and_prints_the_rest(two_runs, damage):
    root, (good, other) = two_runs
    record = json.load(open(other / "config.json"))
    if damage == "environment list":
        record["environment"] = [1]
        (other / "config.json").write_text(json.dumps(record))
    elif damage == "recipe string":
        record["recipe"] = "adam"
        (other / "config.json").write_text(json.dumps(record))
    elif damage == "deep json":
        (other / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    else:
        value = {"huge accuracy": "1" + "0" * 400, "nan accuracy": "NaN", "inf accuracy": "Infinity"}[damage]
        text = (other / "test.json").read_text()
        test = json.loads(text)
        (other / "test.json").write_text(text.replace(json.dumps(test["accuracy"]), value, 1))
    result = _compare(str(root), "--figure", str(root.parent / "f.png"))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "| ex_1 |" in result.stdout and "| 1 (0) |" in result.stdout
    assert "other: damaged" in result.stdout


def test_compare_labels_rows_from_config_json_and_never_drops_a_run_of_another_recipe(two_runs, ex1_smoke_runs,
                                                                                    smoke_data, tmp_path):
    root, (good, other) = two_runs
    out, _ = ex1_smoke_runs
    (c100,) = (out / "cifar_100").iterdir()
    shutil.copytree(c100, root / "cifar_10" / "a_cifar100_run")  # a CIFAR-100 run copied under cifar_10/, seed 0
    ex2 = run_script("ex_2.py", "--smoke", "--dataset", "cifar10", "--epochs", "1", "--image-size", "32",
                     "--save-every", "0", "--data-dir", smoke_data, "--out", str(tmp_path / "ex2"))
    assert ex2.returncode == 0, ex2.stderr[-2000:]
    shutil.copytree(only_run(str(tmp_path / "ex2")), root / "cifar_10" / "an_ex2_run")
    result = _compare(str(root), "--figure", str(tmp_path / "f.png"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "**CIFAR-100** · ex_1 ·" in result.stdout and "**CIFAR-10** · ex_2 ·" in result.stdout
    assert "**CIFAR-10** · ex_1 ·" in result.stdout and "| 2 (0,1) |" in result.stdout  # the genuine runs, both kept
    assert "Repeated seeds" not in result.stdout


def test_compare_files_named_on_its_command_line_fail_in_one_line(two_runs, tmp_path):
    root, _ = two_runs
    readme = tmp_path / "README.md"
    readme.write_text("<!-- compare:end -->\nbody\n<!-- compare:start -->\n")
    blocked = tmp_path / "a_file"
    blocked.write_text("x")
    for args, message in ((["--readme", str(readme)], "needs the markers"),
                          (["--readme", str(tmp_path / "missing.md")], "cannot read it"),
                          (["--readme", str(tmp_path)], "cannot read it"),
                          (["--json", str(blocked / "t.json")], "cannot write"),
                          (["--figure", str(blocked / "f.png")], "cannot write the figure")):
        result = _compare(str(root), *args)
        assert result.returncode == 1, (args, result.stderr)
        _one_error_line(result, message)
    assert readme.read_text() == "<!-- compare:end -->\nbody\n<!-- compare:start -->\n"


def test_compare_updates_a_readme_through_its_symlink_and_puts_a_default_figure_in_a_sensible_folder(two_runs,
                                                                                                   tmp_path):
    root, _ = two_runs
    target = tmp_path / "docs" / "README.md"
    target.parent.mkdir()
    target.write_text("<!-- compare:start -->\nold\n<!-- compare:end -->\n")
    link = tmp_path / "README.md"
    link.symlink_to(target)
    assert _compare(str(root), "--readme", str(link), "--figure", str(tmp_path / "f.png")).returncode == 0
    assert link.is_symlink() and "| ex_1 |" in target.read_text()
    import tempfile

    here = tmp_path / "here"
    here.mkdir()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as elsewhere:  # an unrelated root: '/' is all they share
        shutil.copytree(root, os.path.join(elsewhere, "ex_1"))
        result = _compare(str(root), os.path.join(elsewhere, "ex_1"), cwd=str(here))
        assert result.returncode == 0, result.stderr[-2000:]
        assert not os.path.exists("/compare_val_accuracy.png")
    assert (here / "compare_val_accuracy.png").exists()  # the current folder instead

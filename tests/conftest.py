import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from contextlib import contextmanager

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from tests import prewarmed_client as prewarmed  # noqa: E402
# One torch thread per process: pytest runs three workers (pytest.ini), each starting runs of the
# scripts; runs compared number for number inherit the same thread count. Yours wins if set.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    """A suite started in the background (`cmd &` in a script: SIGINT ignored; nohup: SIGHUP ignored)
    would hand those ignored signals to every run it starts, and the scripts keep an ignored signal
    ignored, as nohup asks. The stop tests send them: the runs start with the default dispositions."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """The workers take the tests one by one (pytest.ini: --dist loadgroup), except that the tests of a
    module that share a module-scoped fixture (runs made once, then read) go to one worker together,
    which makes it once."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info and any(defs[-1].scope == "module" for defs in info.name2fixturedefs.values()):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def run_script(script: str, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python ex_N.py ARGS` from the repo root as a user would; never touches the network."""
    return run_python([os.path.join(REPO, script), *args], timeout=timeout, env=env)


def run_python(argv: list, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python ARGV` (a script and its arguments, or -m MODULE ...) from the repo root, its output captured.
    Forked from the prewarmed interpreter (tests/prewarmed.py) when the environment is the suite's own;
    a real `python` for an environment of its own or with PREWARMED=0."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    server = prewarmed.server(full_env)
    if server is None:
        return subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env=full_env)
    return server.run(argv, REPO, full_env, timeout)


def popen_python(argv: list, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env: dict | None = None):
    """`python -u ARGV` started from the repo root as subprocess.Popen(..., text=True) starts it, for a
    test that reads its output as it comes or signals it: forked from the prewarmed interpreter as
    run_python is. A test of the first seconds, or of what the parent hands down, starts a real one."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    server = prewarmed.server(full_env)
    if server is None:
        return subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=stdout, stderr=stderr, text=True,
                                env=full_env)
    return server.popen(argv, REPO, full_env, stdout, stderr)


def members_by_id(plan_dir) -> dict:
    """{member id: its run folder} of the plan in plan_dir, from its sweep.json."""
    plan = json.load(open(os.path.join(plan_dir, "sweep.json")))
    return {m["id"]: os.path.join(plan_dir, m["run_dir"]) for m in plan["members"]}


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
    from common.config import SMOKE_SIZES
    from common.data import SPECS, make_synthetic

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


@pytest.fixture(scope="session")
def smoke_run(ex1_smoke_runs):
    """The CIFAR-10 run folder of ex1_smoke_runs: the source of compare's fabricated run folders."""
    out, _ = ex1_smoke_runs
    (run,) = (out / "cifar_10").iterdir()
    return run


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


def recorded_dtype(record):
    """The autocast dtype a run's config.json says it ran in (a CPU with native bf16 trains --smoke in bf16)."""
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(record.environment.get("precision"))


def only_run(out, folder="cifar_10"):
    (stamp,) = os.listdir(os.path.join(out, folder))
    return os.path.join(out, folder, stamp)


@pytest.fixture(scope="session")
def uninterrupted(smoke_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("straight"))
    result = run_script("ex_1.py", *ARGS, "--data-dir", smoke_data, "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    return run_metrics(only_run(out))


HOOK = os.path.join(REPO, "tests", "stop_hook")


def hooked(how: str, signal_name: str = "SIGTERM") -> dict:
    return {"PYTHONPATH": HOOK, "STOP_HOOK": how, "STOP_HOOK_SIGNAL": signal_name, "STOP_HOOK_REPO": REPO}


# --- helpers and fixtures shared by the tests of inputs, stops, downloads, disks and plans ---

SMOKE = ["--smoke", "--dataset", "cifar10", "--save-every", "0"]


def _one_error_line(result, *fragments):
    """Exactly one non-empty stderr line, starting 'error:', containing every fragment; no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _temp_files(root):
    return [os.path.join(d, f) for d, _, names in os.walk(root) for f in names
            if f.endswith(".tmp") or f.endswith(".part") or ".unpacking-" in d]


def _popen(*args, stderr):
    return popen_python([os.path.join(REPO, "ex_1.py"), *args], stderr=stderr)


def _wait_for(proc, marker):
    deadline = time.time() + 120
    for line in proc.stdout:
        if marker in line or time.time() > deadline:
            return


def _archive_of(folder_root: str, folder: str, extra=None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(os.path.join(folder_root, folder), arcname=folder)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def local_archive(smoke_data, tmp_path, monkeypatch):
    """Write an archive into a mirror folder and make SPECS['cifar10'] expect its md5."""
    import dataclasses

    from common import data

    def make(extra=None):
        blob = _archive_of(os.path.join(smoke_data, "synthetic", "small"), "cifar-10-batches-py", extra)
        mirror = tmp_path / "mirror"
        mirror.mkdir(exist_ok=True)
        (mirror / "cifar-10-python.tar.gz").write_bytes(blob)
        spec = dataclasses.replace(data.SPECS["cifar10"], md5=hashlib.md5(blob).hexdigest())
        monkeypatch.setitem(data.SPECS, "cifar10", spec)
        return mirror, spec
    return make


class _Code:
    """A pickled call: what a checkpoint that runs code on loading holds."""
    def __reduce__(self):
        return (os.system, ("true",))


def _damage_last(run_dir, how):
    import torch  # here, not at the top: the thread count above is set before torch starts

    path = os.path.join(run_dir, "last.pth")
    if how == "empty":
        open(path, "wb").close()
        return "cannot load checkpoint"
    if how == "truncated":
        blob = open(path, "rb").read()
        open(path, "wb").write(blob[: len(blob) // 2])
        return "cannot load checkpoint"
    state = torch.load(path, weights_only=True)
    if how == "missing_keys":
        del state["epoch"], state["optimizer"], state["history"]
        message = "lacks epoch, optimizer, history"
    elif how == "wrong_shapes":
        state["model"]["classifier.weight"] = torch.zeros(3, 3)
        message = "its model does not fit this run"
    elif how == "epoch_beyond_history":
        state["epoch"] = 2
        message = "its history does not hold complete records of epochs 1..2"
    elif how == "epoch_beyond_plan":
        state["epoch"] = 99
        message = "outside this run's 0..2"
    elif how == "history_without_val_accuracy":
        del state["history"][0]["val_accuracy"]
        message = "its history does not hold complete records of epochs 1..1"
    elif how == "holds_code":
        torch.save(dict(state, scheduler=_Code()), path)
        return "refused checkpoint"
    else:  # history of the wrong length
        state["history"] = state["history"] + state["history"]
        message = "its history does not hold complete records of epochs 1..1"
    torch.save(state, path)
    return message


@pytest.fixture(scope="module")
def interrupted_run(smoke_data, tmp_path_factory):
    """A run folder killed after epoch 1 of 2: what --resume is for."""
    out = str(tmp_path_factory.mktemp("interrupted"))
    proc = _popen(*SMOKE, "--data-dir", smoke_data, "--out", out, stderr=subprocess.DEVNULL)
    _wait_for(proc, "epoch   1/2")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return only_run(out)


def _on_tmpfs(mount, size: str, read_only: bool, command: str) -> subprocess.CompletedProcess:
    """Run `command` with a tmpfs of `size` (read-only if asked) at `mount`, in a private mount namespace."""
    os.makedirs(mount, exist_ok=True)
    setup = f"mount -t tmpfs -o size={size} tmpfs {mount} && "
    if read_only:
        setup += f"mount -o remount,ro {mount} && "
    return subprocess.run(["unshare", "-rm", "sh", "-c", setup + command], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def _quick(smoke_data, out, *extra):
    return ["--smoke", "--dataset", "cifar10", "--save-every", "0", "--data-dir", smoke_data, "--out", str(out), *extra]


@pytest.fixture(scope="module")
def killed_run(smoke_data, tmp_path_factory):
    """A run folder (and its own copy of the data) killed in epoch 2 of 3."""
    root = tmp_path_factory.mktemp("killed")
    data = root / "data"
    shutil.copytree(os.path.join(smoke_data, "synthetic", "small"), data)
    proc = popen_python([os.path.join(REPO, "ex_1.py"), "--dataset", "cifar10", "--epochs", "3", "--batch-size", "16",
                         "--save-every", "0", "--data-dir", str(data), "--out", str(root / "out")],
                        stderr=subprocess.DEVNULL)
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


def _start(smoke_data, out, *extra, real=False, **popen):
    """ex_1.py --smoke started; `real` (or Popen's own keywords, e.g. preexec_fn) for a real python."""
    argv = [os.path.join(REPO, "ex_1.py"), *_quick(smoke_data, out, *extra)]
    if real or popen:
        return subprocess.Popen([sys.executable, "-u", *argv], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, **popen)
    return popen_python(argv)


def _read_until(proc, marker):
    for line in proc.stdout:
        if marker in line:
            return


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


class _Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _compare(*args, cwd=REPO):
    """`python -m common.compare ARGS`, in this process (its main() is the command line): quick."""
    import contextlib

    from common.compare.cli import main as compare_main

    out, err, code = io.StringIO(), io.StringIO(), 0
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                compare_main(list(args))
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


SMOKE_BATCH16 = ["--smoke", "--dataset", "cifar10", "--batch-size", "16", "--save-every", "0"]


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


def _stopped_plan(smoke_data, out, name="e"):
    """A 2-member plan stopped by a Ctrl-C as its first member starts training: _plan's (folder, sweep.json,
    run folders)."""
    proc = popen_python([os.path.join(REPO, "ex_1.py"), *SMOKE_BATCH16, "--sweep", "lr=0.001,0.003", "--epochs", "3",
                         "--name", name, "--data-dir", smoke_data, "--out", out], stderr=subprocess.DEVNULL)
    _read_until(proc, "run folder:")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    return _plan(out, name)


@pytest.fixture(scope="module")
def compared(smoke_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("compared"))
    result = run_script("ex_1.py", *SMOKE_BATCH16, "--sweep", "lr=0.001,0.003", "--epochs", "1", "--name", "c",
                        "--data-dir", smoke_data, "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    return os.path.join(out, "sweeps", "c")


def _compare_process(*args):
    return run_python(["-m", "common.compare", *args], timeout=120)

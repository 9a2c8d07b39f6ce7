"""Hard to break: every input either works or stops with one line, exit 1 (2 for usage), nothing
half-written or misleading left behind. Each test runs the real CLI as a user would."""
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
import time

import pytest
import torch

from tests.conftest import ARGS, REPO, run_metrics, run_script, snapshot_files
from tests.conftest import only_run as _only_run

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


# --- 1. preemption -------------------------------------------------------------------------

def _popen(*args, stderr):
    return subprocess.Popen([sys.executable, "-u", os.path.join(REPO, "ex_1.py"), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=stderr, text=True)


def _wait_for(proc, marker):
    deadline = time.time() + 120
    for line in proc.stdout:
        if marker in line or time.time() > deadline:
            return


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
    run_dir = _only_run(out)
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
    assert json.load(open(os.path.join(_only_run(str(tmp_path / "out")), "train.json")))["status"] == "interrupted"


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


def test_a_stop_signal_after_the_exit_is_decided_exits_at_once_with_that_code():
    """Before Python's own shutdown steps (here: waiting for a thread that never ends), a signal ends
    the process at once with the code already decided, not a traceback and not death by the signal."""
    code = ("import os, signal, threading, time\n"
            "from common import stopping\n"
            "stopping.stop_on_signals()\n"
            "threading.Thread(target=lambda: (time.sleep(0.5), os.kill(os.getpid(), signal.SIGTERM), time.sleep(600))).start()\n"
            "stopping.exit_decided(3)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3 and result.stderr == "", result.stderr[-2000:]


# --- 2. the network ---------------------------------------------------------------------------

def test_the_default_download_time_out_is_well_inside_two_minutes(monkeypatch):
    from common import download

    monkeypatch.delenv(download.TIMEOUT_ENV, raising=False)
    assert download.timeout_s() == download.DOWNLOAD_TIMEOUT_S == 30  # per connect and per read
    monkeypatch.setenv(download.TIMEOUT_ENV, "2.5")
    assert download.timeout_s() == 2.5


@pytest.mark.parametrize("timeout_env", ["3"])
def test_a_silent_mirror_stops_the_run_with_one_line_within_two_minutes(tmp_path, timeout_env):
    """CIFAR_DOWNLOAD_TIMEOUT=3 keeps the test short; the default (30 s) is checked above."""
    env = {"CIFAR_DOWNLOAD_TIMEOUT": timeout_env}
    with socket.socket() as server:  # accepts connections (the kernel's backlog) and never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        mirror = f"http://127.0.0.1:{server.getsockname()[1]}/"
        start = time.perf_counter()
        result = run_script("ex_1.py", "--dataset", "cifar10", "--data-dir", str(tmp_path / "d"),
                            "--out", str(tmp_path / "o"), env={"CIFAR_MIRROR": mirror, **env}, timeout=150)
        elapsed = time.perf_counter() - start
    # the message shows the 3 s time-out applied; the bound, that nothing hung (torch's import alone
    # takes 4-25 s on a busy 2-core machine)
    assert result.returncode == 1 and elapsed < 60
    _one_error_line(result, mirror + "cifar-10-python.tar.gz", "timed out", f"no answer within {timeout_env} s")
    assert os.listdir(tmp_path / "d") == []  # no partial archive


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


def test_a_file_url_mirror_is_downloaded_checked_and_unpacked(local_archive, tmp_path, monkeypatch):
    from common.data import load_cifar

    mirror, spec = local_archive()
    monkeypatch.setenv("CIFAR_MIRROR", mirror.as_uri())
    data = load_cifar(spec, str(tmp_path / "d"))
    assert len(data.train_y) == 600 and len(data.classes) == 10
    assert sorted(os.listdir(tmp_path / "d")) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_an_archive_member_outside_the_data_folder_is_refused(local_archive, tmp_path, monkeypatch):
    from common.data import load_cifar
    from common.errors import UserError

    mirror, spec = local_archive(extra={"../escaped.txt": b"outside"})  # md5 matches: only the filter stops it
    monkeypatch.setenv("CIFAR_MIRROR", str(mirror))
    with pytest.raises(UserError, match="refused"):
        load_cifar(spec, str(tmp_path / "d"))
    assert not (tmp_path / "escaped.txt").exists()
    assert sorted(os.listdir(tmp_path / "d")) == ["cifar-10-python.tar.gz"]  # no partial dataset folder


# --- 3. checkpoints and config.json -------------------------------------------------------------

def _damage_last(run_dir, how):
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
        message = "its history does not hold epochs 1..2"
    elif how == "epoch_beyond_plan":
        state["epoch"] = 99
        message = "outside this run's 0..2"
    else:  # history of the wrong length
        state["history"] = state["history"] + state["history"]
        message = "its history does not hold epochs 1..1"
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
    return _only_run(out)


@pytest.mark.parametrize("how", ["empty", "truncated", "missing_keys", "wrong_shapes", "epoch_beyond_history",
                                 "epoch_beyond_plan", "history_wrong_length"])
def test_a_damaged_last_pth_is_refused_and_changes_nothing(interrupted_run, tmp_path, how):
    run_dir = str(tmp_path / "run")
    shutil.copytree(interrupted_run, run_dir)
    message = _damage_last(run_dir, how)
    before = snapshot_files(run_dir)
    result = run_script("ex_1.py", "--resume", run_dir, timeout=120)
    assert result.returncode == 1
    _one_error_line(result, "last.pth", message)
    assert snapshot_files(run_dir) == before  # no resume entry added, nothing written


@pytest.mark.parametrize("field,value,message", [("lr", "fast", "'lr' expected a number"),
                                                 ("epochs", -1, "'epochs' must be a finite number at least 1"),
                                                 ("model", "resnet", "'model' must be one of"),
                                                 ("mean", [0.5], "'mean' expected 3 numbers")])
def test_a_damaged_config_json_is_refused_and_changes_nothing(interrupted_run, tmp_path, field, value, message):
    run_dir = str(tmp_path / "run")
    shutil.copytree(interrupted_run, run_dir)
    record = json.load(open(os.path.join(run_dir, "config.json")))
    record["config"][field] = value
    json.dump(record, open(os.path.join(run_dir, "config.json"), "w"))
    before = snapshot_files(run_dir)
    result = run_script("ex_1.py", "--resume", run_dir, timeout=120)
    assert result.returncode == 1
    _one_error_line(result, "config.json", message)
    assert snapshot_files(run_dir) == before


def test_empty_weights_file_is_refused(tmp_path, smoke_data):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    result = run_script("ex_3.py", "--weights", str(empty), "--dataset", "cifar10", "--epochs", "1", "--batch-size", "32",
                        "--data-dir", os.path.join(smoke_data, "synthetic", "tiny"), "--out", str(tmp_path / "out"),
                        timeout=120)
    assert result.returncode == 1
    _one_error_line(result, "cannot load weights", str(empty))


# --- 4. flags ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["--lr", "1e39"], "at most 3.40282e+38"),
    (["--seed", str(2**64)], "--seed"),
    (["--seeds", f"0,{2**64}"], "--seeds"),
    (["--device", "meta"], "cannot train on 'meta'"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "CUDA GPU"),
    (["--batch-size", "45001"], "larger than the 45,000-image training split"),
])
def test_flags_that_cannot_work_are_usage_errors_before_anything_is_created(tmp_path, args, message):
    result = run_script("ex_1.py", *args, "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "d"),
                        timeout=60)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert os.listdir(tmp_path) == []


def test_resume_refuses_flags_it_cannot_honour(interrupted_run, tmp_path):
    before = snapshot_files(interrupted_run)
    result = run_script("ex_1.py", "--resume", interrupted_run, "--lr", "0.1", "--epochs", "9", "--out",
                        str(tmp_path), timeout=60)
    assert result.returncode == 2
    assert "cannot honour --epochs, --lr, --out" in result.stderr and "Traceback" not in result.stderr
    assert snapshot_files(interrupted_run) == before and os.listdir(tmp_path) == []


# --- 5. disks ---------------------------------------------------------------------------------------

def _on_tmpfs(mount, size: str, read_only: bool, command: str) -> subprocess.CompletedProcess:
    """Run `command` with a tmpfs of `size` (read-only if asked) at `mount`, in a private mount namespace."""
    os.makedirs(mount, exist_ok=True)
    setup = f"mount -t tmpfs -o size={size} tmpfs {mount} && "
    if read_only:
        setup += f"mount -o remount,ro {mount} && "
    return subprocess.run(["unshare", "-rm", "sh", "-c", setup + command], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_a_read_only_out_folder_is_one_line_with_erofs(tmp_path, smoke_data):
    mount = tmp_path / "mnt"
    result = _on_tmpfs(mount, "1m", True, f"{sys.executable} {os.path.join(REPO, 'ex_1.py')} {' '.join(SMOKE)} "
                                          f"--data-dir {smoke_data} --out {mount}/out")
    assert result.returncode == 1
    _one_error_line(result, "EROFS", "out")


def test_a_full_out_disk_is_one_line_with_enospc_in_train_json_too(tmp_path, smoke_data):
    # 600 KiB: config.json and the epoch-0 checkpoint fit, the PNGs and later checkpoints do not
    result = _on_tmpfs(tmp_path / "mnt", "600k", False,
                       f"{sys.executable} {os.path.join(REPO, 'ex_1.py')} {' '.join(SMOKE)} --data-dir {smoke_data} "
                       f"--out {tmp_path}/mnt/out; code=$?; "
                       f"cat {tmp_path}/mnt/out/cifar_10/*/train.json > {tmp_path}/train.json; "
                       f"find {tmp_path}/mnt -name '*.tmp' > {tmp_path}/temps.txt; exit $code")
    assert result.returncode == 1, result.stderr[-2000:]
    _one_error_line(result, "ENOSPC", f"{tmp_path}/mnt/out/cifar_10/")
    train = json.load(open(tmp_path / "train.json"))
    assert train["status"] == "failed" and "ENOSPC" in train["error"]
    assert (tmp_path / "temps.txt").read_text() == ""


def test_a_read_only_data_dir_is_one_line_with_erofs(tmp_path):
    from tests.conftest import closed_port

    mount = tmp_path / "mnt"
    result = _on_tmpfs(mount, "1m", True, f"CIFAR_MIRROR=http://127.0.0.1:{closed_port()}/ {sys.executable} "
                                          f"{os.path.join(REPO, 'ex_1.py')} --dataset cifar10 --data-dir {mount} "
                                          f"--out {tmp_path}/out")
    assert result.returncode == 1
    _one_error_line(result, "EROFS", str(mount))


def test_an_unwritable_data_dir_is_one_line(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("a file, not a folder")
    result = run_script("ex_1.py", "--dataset", "cifar10", "--data-dir", str(blocked / "data"),
                        "--out", str(tmp_path / "out"), timeout=60)
    assert result.returncode == 1
    _one_error_line(result, "cannot create data folder", str(blocked / "data"))


# --- 6. small data ----------------------------------------------------------------------------------

def test_a_class_with_one_image_cannot_be_split(tmp_path):
    from common.data import SPECS, make_synthetic

    make_synthetic(SPECS["cifar10"], str(tmp_path / "d"), 1, 1)
    result = run_script("ex_1.py", "--dataset", "cifar10", "--data-dir", str(tmp_path / "d"),
                        "--out", str(tmp_path / "out"), timeout=60)
    assert result.returncode == 1
    _one_error_line(result, "has only 1 training image", "at least 2 per class")


# --- 8. permissions ---------------------------------------------------------------------------------

def test_run_folder_files_get_the_users_umask(smoke_data, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, os.path.join(REPO, "ex_1.py"), *SMOKE, "--data-dir", smoke_data,
                             "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300,
                            preexec_fn=lambda: os.umask(0o002))
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = _only_run(str(out))
    modes = {name: os.stat(os.path.join(run_dir, name)).st_mode & 0o777 for name in os.listdir(run_dir)}
    assert modes and all(mode == 0o664 for mode in modes.values()), modes


def test_curves_are_drawn_after_every_epoch_so_an_interrupted_run_shows_them(interrupted_run):
    train = json.load(open(os.path.join(interrupted_run, "train.json")))
    assert train["epochs_done"] == 1
    for png in ("loss.png", "accuracy.png"):
        assert open(os.path.join(interrupted_run, png), "rb").read(8) == b"\x89PNG\r\n\x1a\n"

"""Disks and consoles: a read-only or full disk names the file (in train.json too); a closed or
full console, an unknown MPLBACKEND or a path with spaces never stop a run; files get the user's
umask; curves are drawn after every epoch. Each through the command line."""
import json
import os
import signal
import subprocess
import sys
import textwrap

from tests.conftest import (
    REPO,
    SMOKE,
    _on_tmpfs,
    _one_error_line,
    _quick,
    _read_until,
    _start,
    closed_port,
    only_run,
    popen_python,
    run_python,
    run_script,
)


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


def test_run_folder_files_get_the_users_umask(smoke_data, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, os.path.join(REPO, "ex_1.py"), *SMOKE, "--data-dir", smoke_data,
                             "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300,
                            preexec_fn=lambda: os.umask(0o002))
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = only_run(str(out))
    modes = {name: os.stat(os.path.join(run_dir, name)).st_mode & 0o777 for name in os.listdir(run_dir)}
    assert modes and all(mode == 0o664 for mode in modes.values()), modes


def test_curves_are_drawn_after_the_first_epoch_so_an_interrupted_run_shows_them(interrupted_run):
    train = json.load(open(os.path.join(interrupted_run, "train.json")))
    assert train["epochs_done"] == 1
    for png in ("loss.png", "accuracy.png"):
        assert open(os.path.join(interrupted_run, png), "rb").read(8) == b"\x89PNG\r\n\x1a\n"


_COUNT_CURVES = textwrap.dedent("""
    import runpy, sys
    sys.path.insert(0, {repo!r})
    from common import plots
    real = plots.plot_curves
    def counted(history, *args):
        print("curves after epoch", len(history), flush=True)
        return real(history, *args)
    plots.plot_curves = counted
    sys.argv = [{script!r}] + sys.argv[1:]
    runpy.run_path({script!r}, run_name="__main__")
""")


def test_fast_epochs_redraw_the_curves_after_the_first_and_the_last_not_after_each(smoke_data, tmp_path):
    program = _COUNT_CURVES.format(repo=REPO, script=os.path.join(REPO, "ex_1.py"))
    result = run_python(["-c", program, *_quick(smoke_data, tmp_path, "--epochs", "4")], timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    drawn = [int(line.split()[-1]) for line in result.stdout.splitlines() if line.startswith("curves after epoch")]
    assert drawn[:2] == [1, 1] and drawn[-2:] == [4, 4], drawn  # loss and accuracy each time
    assert len(drawn) < 8, drawn  # smoke epochs take about a second: not every one redraws (CURVES_EVERY_S)


def test_a_full_or_closed_console_does_not_stop_the_run(smoke_data, tmp_path):
    with open("/dev/full", "w") as full:
        proc = popen_python([os.path.join(REPO, "ex_1.py"), *_quick(smoke_data, tmp_path / "a", "--epochs", "1")],
                            stdout=full)
        _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr[-2000:]
    assert [line for line in stderr.splitlines() if line.startswith("warning:")] == \
        ["warning: standard output failed (No space left on device (ENOSPC)): training goes on; train.json and "
         "test.json say how it went"]
    assert os.path.exists(os.path.join(only_run(str(tmp_path / "a")), "test.json"))
    # `python ex_1.py ... | head -1`: the reader reads one line and is gone
    piped = popen_python([os.path.join(REPO, "ex_1.py"), *_quick(smoke_data, tmp_path / "b", "--epochs", "1")])
    piped.stdout.readline()
    piped.stdout.close()
    _, stderr = piped.communicate(timeout=300)
    assert piped.returncode == 0 and "Traceback" not in stderr, stderr[-2000:]
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

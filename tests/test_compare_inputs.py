"""compare on damaged or unexpected inputs: damaged run folders are listed apart and the rest
printed; files named on its command line (README, figure, JSON) fail in one line before
anything is written; rows are labelled from config.json. Each through compare's command line."""
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from tests.conftest import REPO, _compare, _compare_process, _one_error_line, only_run, run_python, run_script


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


def test_compare_on_a_read_only_tree_names_the_way_out(compared, tmp_path):
    if os.geteuid() == 0:  # root writes anywhere: a read-only mount is the honest test
        target = tmp_path / "ro"
        target.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(target)]).returncode != 0:
            pytest.fail("cannot mount a tmpfs here")
        try:
            shutil.copytree(compared, target / "c", ignore=shutil.ignore_patterns("*.pth"))
            subprocess.run(["mount", "-o", "remount,ro", str(target)], check=True)
            result = _compare_process(str(target / "c"))
            with_flag = _compare_process(str(target / "c"), "--no-figures")
        finally:
            subprocess.run(["umount", "-l", str(target)])
    else:
        os.chmod(compared, stat.S_IRUSR | stat.S_IXUSR)
        try:
            result = _compare_process(compared)
            with_flag = _compare_process(compared, "--no-figures")
        finally:
            os.chmod(compared, stat.S_IRWXU)
    assert result.returncode == 1 and "0.003" in result.stdout  # the table came first
    assert "--no-figures" in result.stderr and "--figure" in result.stderr and "Traceback" not in result.stderr
    assert with_flag.returncode == 0, with_flag.stderr


def test_compare_refuses_a_baseline_that_matches_no_run(compared):
    result = _compare_process(compared, "--baseline", "lr=0.5", "--no-figures")
    assert result.returncode == 1 and "matches no compared run" in result.stderr and "0.001" in result.stderr


def test_compare_with_a_missing_readme_fails_before_writing_anything(compared, tmp_path):
    figure = tmp_path / "f.png"
    result = _compare_process(compared, "--readme", str(tmp_path / "missing.md"), "--figure", str(figure))
    assert result.returncode == 1 and "missing.md" in result.stderr and not figure.exists()


def test_compare_usage_errors_are_one_line():
    result = _compare_process("--baseline", "nonsense")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "--help" in lines[0], result.stderr


@pytest.mark.parametrize("where,make", [("train.json", "fifo"), ("test.json", "fifo"), ("test.json", "dev_zero"),
                                        ("predictions.npz", "fifo")])
def test_compare_lists_a_run_whose_file_is_a_fifo_or_a_device_as_damaged_and_never_hangs(two_runs, where, make):
    root, (good, other) = two_runs
    target = other / where
    target.unlink()
    if make == "fifo":
        os.mkfifo(target)
    else:
        os.symlink("/dev/zero", target)
    result = run_python(["-m", "common.compare", str(root), "--no-figures"], timeout=120)  # a hang fails here
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert ("| 2 (0,1) |" if where == "predictions.npz" else "| 1 (0) |") in result.stdout  # (the table reads no predictions)
    if where == "train.json":
        assert "not a regular file" in result.stdout
    elif where == "test.json":  # no test.json to read: not complete, listed apart
        assert "other: killed while testing" in result.stdout


@pytest.mark.parametrize("path,message", [("", "an empty path names no file"), ("x" * 4000 + ".png", "longer than")])
def test_compare_refuses_an_empty_or_over_long_output_path_in_one_line(two_runs, tmp_path, path, message):
    root, _ = two_runs
    result = _compare_process(str(root), "--figure", path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not os.path.exists(os.path.join("/", "compare_val_accuracy.png")) or path


def test_compare_on_a_console_that_cannot_print_non_ascii_prints_question_marks(two_runs):
    root, _ = two_runs
    result = subprocess.run([sys.executable, "-m", "common.compare", str(root), "--no-figures"], cwd=REPO,
                            capture_output=True, timeout=120, env=dict(os.environ, PYTHONIOENCODING="ascii"))
    assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr[-2000:]
    assert b"best val acc ? 95% CI" in result.stdout

import os

import pytest

from tests.conftest import run_script


@pytest.mark.parametrize("args,message", [
    (["--epochs", "-3"], "must be at least 1"),
    (["--batch-size", "0"], "must be at least 1"),
    (["--lr", "fast"], "expected a number"),
    (["--lr", "nan"], "finite number"),
    (["--dataset", "mnist"], "invalid choice"),
    (["--frobnicate"], "unrecognized arguments"),
    (["--scheduler", "linear"], "invalid choice"),
    (["--epochs", "3", "--warmup-epochs", "3"], "must be less than --epochs"),
])
def test_bad_flags_are_usage_errors(args, message, tmp_path):
    result = run_script("ex_1.py", *args, "--out", str(tmp_path), timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert os.listdir(tmp_path) == []  # nothing written


@pytest.mark.parametrize("script", ["ex_1.py", "ex_2.py", "ex_3.py", "ex_4.py", "ex_5.py"])
def test_help_explains_every_flag(script):
    result = run_script(script, "--help", timeout=60)
    assert result.returncode == 0
    for flag in ("--dataset", "--epochs", "--batch-size", "--lr", "--seed", "--data-dir", "--out", "--device",
                 "--save-every", "--smoke", "--scheduler", "--warmup-epochs", "--resume"):
        assert flag in result.stdout, flag
    efficientnet = script in ("ex_3.py", "ex_4.py", "ex_5.py")
    assert ("--no-pretrained" in result.stdout) == efficientnet
    assert ("--weights" in result.stdout) == efficientnet
    assert "Expected" in result.stdout  # the docstring is the description


def test_unwritable_output_folder_fails_before_training(tmp_path, smoke_data):
    blocked = tmp_path / "file"
    blocked.write_text("a file, not a folder")
    result = run_script("ex_1.py", "--smoke", "--data-dir", smoke_data, "--out", str(blocked / "runs"), timeout=60)
    assert result.returncode == 1
    assert "not writable" in result.stderr and "Traceback" not in result.stderr
    assert "epoch" not in result.stdout

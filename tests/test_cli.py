import os

import pytest

from tests.conftest import run_script, snapshot_files


@pytest.mark.parametrize("args,message", [
    (["--epochs", "-3"], "must be a finite number at least 1"),
    (["--batch-size", "0"], "must be a finite number at least 1"),
    (["--lr", "fast"], "expected a number"),
    (["--lr", "nan"], "finite number"),
    (["--dataset", "mnist"], "must be one of cifar10, cifar100, all"),
    (["--frobnicate"], "unrecognized arguments"),
    (["--scheduler", "linear"], "must be one of none, cosine"),
    (["--model", "vgg"], "must be one of tutorial_cnn, three_block_cnn, resnet18"),
    (["--step-gamma", "0.5"], "--step-gamma is for --scheduler step only"),
    (["--warmup-epochs", "1", "--scheduler", "plateau"], "--warmup-epochs is for --scheduler none, cosine or step"),
    (["--pretrained"], "--pretrained is for models with pretrained weights only"),
    (["--epochs", "3", "--warmup-epochs", "3"], "must be less than --epochs"),
])
def test_bad_flags_are_usage_errors(args, message, tmp_path):
    result = run_script("ex_1.py", *args, "--out", str(tmp_path), timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one line
    assert os.listdir(tmp_path) == []  # nothing written


@pytest.mark.parametrize("script", ["ex_1.py", "ex_2.py", "ex_3.py", "ex_4.py", "ex_5.py"])
def test_help_lists_every_declared_field_with_its_unit_and_this_scripts_default(script):
    import importlib

    from common.cli import GROUPS, flag
    from common.config import knobs, resolved_recipe

    result = run_script(script, "--help", timeout=60)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    recipe = resolved_recipe(importlib.import_module(script[:-3]).RECIPE)
    for _, cls in GROUPS:
        for name, (k, _) in knobs(cls).items():
            assert flag(name) in text, name
            assert " ".join(k.help.split()) in text, name
            if k.unit:
                assert f"[{k.unit}]" in text, name
    for name in ("epochs", "lr", "image_size", "augment", "model"):
        value = getattr(recipe, name)
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        assert f"(default: {shown}" in text, (name, shown)
    assert "Expected" in result.stdout  # the docstring is the description


def test_unwritable_output_folder_fails_before_training(tmp_path, smoke_data):
    blocked = tmp_path / "file"
    blocked.write_text("a file, not a folder")
    result = run_script("ex_1.py", "--smoke", "--data-dir", smoke_data, "--out", str(blocked / "runs"), timeout=60)
    assert result.returncode == 1
    assert "not writable" in result.stderr and "Traceback" not in result.stderr
    assert "epoch" not in result.stdout


@pytest.mark.parametrize("args", [["--epochs", "-1"], ["--batch-size", "0"], ["--lr", "abc"], ["--dataset", "svhn"]])
def test_bad_flags_leave_earlier_runs_untouched(ex1_smoke_runs, args):
    out, _ = ex1_smoke_runs
    before = snapshot_files(out)
    result = run_script("ex_1.py", *args, "--out", str(out), timeout=60)
    assert result.returncode == 2
    assert snapshot_files(out) == before


def test_corrupt_data_file_is_one_line_and_leaves_earlier_runs_untouched(ex1_smoke_runs, smoke_data, tmp_path):
    import shutil

    out, _ = ex1_smoke_runs
    data = tmp_path / "data"
    shutil.copytree(os.path.join(smoke_data, "synthetic", "tiny"), data)
    batch = data / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:500])
    before = snapshot_files(out)
    result = run_script("ex_1.py", "--dataset", "cifar10", "--epochs", "1", "--data-dir", str(data),
                        "--out", str(out), timeout=120)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: cannot read") and "data_batch_1" in errors[0]
    assert snapshot_files(out) == before


def test_concurrent_runs_get_their_own_folders(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from common.runfolder import create as create_run_dir

    with ThreadPoolExecutor(8) as pool:
        folders = list(pool.map(lambda _: create_run_dir(str(tmp_path)), range(24)))
    assert len(set(folders)) == 24 and all(os.path.isdir(f) for f in folders)

"""Bad inputs: flags that cannot work, damaged or foreign files (last.pth, config.json, weights,
data sets) and resumes that cannot be honoured stop with one line naming the flag or file, exit
1 (2 for usage), before anything in the run folder changes. Each through the command line."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import (
    REPO,
    _copy_run,
    _damage_last,
    _dataset_with,
    _load,
    _one_error_line,
    _quick,
    run_script,
    snapshot_files,
)


@pytest.mark.parametrize("how", ["empty", "truncated", "missing_keys", "wrong_shapes", "epoch_beyond_history",
                                 "epoch_beyond_plan", "history_wrong_length", "history_without_val_accuracy",
                                 "holds_code"])
def test_a_damaged_last_pth_is_refused_and_changes_nothing(interrupted_run, tmp_path, how):
    run_dir = str(tmp_path / "run")
    shutil.copytree(interrupted_run, run_dir)
    message = _damage_last(run_dir, how)
    before = snapshot_files(run_dir)
    result = run_script("ex_1.py", "--resume", run_dir, timeout=120)
    assert result.returncode == 1
    line = _one_error_line(result, "last.pth", message)
    assert "weights_only" not in line  # never the advice to load an unsafe file some other way
    assert snapshot_files(run_dir) == before  # no resume entry added, nothing written


def test_a_recipe_edited_in_config_json_after_the_start_is_refused(interrupted_run, tmp_path):
    run_dir = str(tmp_path / "run")
    shutil.copytree(interrupted_run, run_dir)
    record = json.load(open(os.path.join(run_dir, "config.json")))
    record["config"]["lr"] = 0.01
    json.dump(record, open(os.path.join(run_dir, "config.json"), "w"))
    before = snapshot_files(run_dir)
    result = run_script("ex_1.py", "--resume", run_dir, timeout=120)
    assert result.returncode == 1
    _one_error_line(result, "lr 0.01", "trained with lr 0.001", "edited after the run started")
    assert snapshot_files(run_dir) == before


def test_a_data_file_declaring_more_bytes_than_it_holds_is_refused_before_allocating(tmp_path, smoke_data):
    """A 4 MB data_batch_1 whose pickle declares a 23 GiB bytes object; memory capped at 6 GiB so
    that the old behaviour (allocate first) fails here instead of calling the OOM killer."""
    import resource
    import struct

    data = tmp_path / "data"
    shutil.copytree(os.path.join(smoke_data, "synthetic", "small"), data)
    path = data / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 8_000_000 * 3072) + b"\0" * (4 << 20))

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    result = subprocess.run([sys.executable, os.path.join(REPO, "ex_1.py"), "--dataset", "cifar10", "--data-dir",
                             str(data), "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                            timeout=120, preexec_fn=cap)
    assert result.returncode == 1, result.stderr[-2000:]
    _one_error_line(result, str(path), "declares more bytes than it holds")


def test_out_of_memory_is_one_line_naming_what_to_lower(tmp_path, smoke_data):
    """A legal --image-size 4096 under a 6 GiB cap: the allocator's traceback becomes one line."""
    import resource

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    result = subprocess.run([sys.executable, os.path.join(REPO, "ex_1.py"), *_quick(smoke_data, tmp_path / "out"),
                             "--image-size", "4096", "--epochs", "1"], cwd=REPO, capture_output=True, text=True,
                            timeout=300, preexec_fn=cap)
    assert result.returncode == 1
    _one_error_line(result, "out of memory", "batch size", "image size 4096", "--batch-size or --image-size")


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


def test_a_class_with_one_image_cannot_be_split(tmp_path):
    from common.data import SPECS, make_synthetic

    make_synthetic(SPECS["cifar10"], str(tmp_path / "d"), 1, 1)
    result = run_script("ex_1.py", "--dataset", "cifar10", "--data-dir", str(tmp_path / "d"),
                        "--out", str(tmp_path / "out"), timeout=60)
    assert result.returncode == 1
    _one_error_line(result, "has only 1 training image", "at least 2 per class")


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

"""The first hour and the next maintainer: header, checkpoints, TensorBoard, smoke rules,
paths from any folder, llm_prompt.md coverage, and the one-way layering of common/."""
import ast
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, run_script


def test_header_says_device_data_recipe_and_folder_before_training(ex1_smoke_runs):
    out, result = ex1_smoke_runs
    text = result.stdout
    header = re.search(r"ex_1 cifar10 seed 0 \| CPU (.+), (\d+) threads\n"
                       r"  data:   540 train / 60 validation / 200 test images \(synthetic, --smoke\)\n"
                       r"  recipe: tutorial_cnn \(50,326 parameters\), 2 epochs, batch 32, adam, lr 0.001, "
                       r"weight decay 0.0001, schedule none, 0 warm-up epochs, 32 px, augmentation none, "
                       r"mean 0.5,0.5,0.5, std 0.5,0.5,0.5, validation 0.1, split seed 0\n"
                       r"  run folder: (.+)\n", text)
    assert header, text[:2000]
    assert header.group(3).startswith(str(out / "cifar_10"))
    assert text.index("loading cifar10") < header.start() < text.index("epoch   1/2")
    assert "Total params" not in text  # the torchsummary table goes to model_summary.txt
    run = header.group(3)
    assert "Total params: 50,326" in open(os.path.join(run, "model_summary.txt")).read()


def test_only_last_pth_carries_optimizer_state(ex1_smoke_runs):
    out, _ = ex1_smoke_runs
    run = glob.glob(str(out / "cifar_10" / "*"))[0]
    train = json.load(open(os.path.join(run, "train.json")))
    last = torch.load(os.path.join(run, "last.pth"), weights_only=True)
    assert {"optimizer", "scheduler", "history", "best"} <= set(last)
    for name in ("best.pth", "epoch-1.pth", "epoch-2.pth"):
        weights = torch.load(os.path.join(run, name), weights_only=True)
        assert not {"optimizer", "scheduler", "history"} & set(weights), name
        assert torch.is_tensor(weights["model"]["classifier.weight"])
        epoch = weights["epoch"]
        assert weights["val_accuracy"] == train["epochs"][epoch - 1]["val_accuracy"], name
    assert torch.load(os.path.join(run, "best.pth"), weights_only=True)["epoch"] == train["best_epoch"]
    assert os.path.getsize(os.path.join(run, "best.pth")) < 0.5 * os.path.getsize(os.path.join(run, "last.pth"))


def test_smoke_honours_explicit_epochs_and_batch_size(smoke_data, tmp_path):
    result = run_script("ex_1.py", "--smoke", "--dataset", "cifar10", "--epochs", "3", "--batch-size", "20",
                        "--data-dir", smoke_data, "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = glob.glob(str(tmp_path / "cifar_10" / "*"))
    config = json.load(open(os.path.join(run, "config.json")))["config"]
    assert (config["epochs"], config["batch_size"]) == (3, 20)
    assert len(json.load(open(os.path.join(run, "train.json")))["epochs"]) == 3
    assert {"epoch-1.pth", "epoch-2.pth", "epoch-3.pth"} <= set(os.listdir(run))  # smoke writes every file


def test_a_script_run_from_another_folder_uses_the_repos_data_and_output(tmp_path):
    out_root = os.path.join(REPO, "ex_1_smoke", "cifar_10")
    before = set(os.listdir(out_root)) if os.path.isdir(out_root) else set()
    result = subprocess.run([sys.executable, os.path.join(REPO, "ex_1.py"), "--smoke", "--dataset", "cifar10",
                             "--epochs", "1", "--save-every", "0"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    new = set(os.listdir(out_root)) - before
    try:
        assert len(new) == 1 and os.listdir(tmp_path) == []  # nothing written where the user stands
        config = json.load(open(os.path.join(out_root, new.pop(), "config.json")))
        assert config["data"]["folder"] == os.path.join(REPO, "data", "synthetic", "small", "cifar-10-batches-py")
    finally:
        for stamp in set(os.listdir(out_root)) - before:
            shutil.rmtree(os.path.join(out_root, stamp))


def test_compare_runs_from_any_folder(ex1_smoke_runs, tmp_path):
    out, _ = ex1_smoke_runs
    result = subprocess.run([sys.executable, os.path.join(REPO, "common", "compare.py"), str(out),
                             "--figure", str(tmp_path / "f.png")], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| ex" in result.stdout and (tmp_path / "f.png").exists()


@pytest.fixture(scope="module")
def tensorboard_run(smoke_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("tb")
    result = run_script("ex_1.py", "--smoke", "--dataset", "cifar10", "--tensorboard", "--save-every", "0",
                        "--data-dir", smoke_data, "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    return glob.glob(str(out / "cifar_10" / "*"))[0]


def test_tensorboard_tags_are_grouped_and_hparams_hold_recipe_and_test_metrics(tensorboard_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(tensorboard_run, size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr", "throughput/images_per_s"} <= scalars
    history = json.load(open(os.path.join(tensorboard_run, "train.json")))["epochs"]
    assert [e.value for e in events.Scalars("accuracy/val")] == pytest.approx([h["val_accuracy"] for h in history])
    plugin = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(plugin["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["model"].string_value == "tutorial_cnn" and session.hparams["epochs"].number_value == 2
    test = json.load(open(os.path.join(tensorboard_run, "test.json")))
    assert events.Scalars("hparams/test_accuracy")[0].value == pytest.approx(test["accuracy"])


def test_llm_prompt_lists_every_flag_as_declared_and_names_every_run_folder_file(ex1_smoke_runs, tensorboard_run):
    from common.cli import FLAGS_END, FLAGS_START, flags_markdown

    prompt = open(os.path.join(REPO, "llm_prompt.md")).read()
    block = prompt[prompt.index(FLAGS_START) + len(FLAGS_START) + 1:prompt.index(FLAGS_END)]
    assert block == flags_markdown(), "regenerate it: python -m common.cli llm_prompt.md"
    help_text = run_script("ex_1.py", "--help", timeout=60).stdout
    help_flags = {f for pair in re.findall(r"^  (--[a-z][a-z-]+)(?:, (--[a-z][a-z-]+))?", help_text, re.M)
                  for f in pair if f} - {"--help"}
    assert help_flags and all(f"`{flag}`" in block for flag in help_flags)
    out, _ = ex1_smoke_runs
    files = set(os.listdir(glob.glob(str(out / "cifar_10" / "*"))[0])) | set(os.listdir(tensorboard_run))
    names = {re.sub(r"epoch-\d+\.pth", "epoch-N.pth", f) for f in files}
    names = {"events.out.tfevents.*" if f.startswith("events.out.tfevents") else f for f in names}
    missing_files = sorted(f for f in names if f not in prompt)
    assert not missing_files
    assert "README.md" in prompt


# common/ is layered: each module imports only modules of the floors below it.
FLOORS = [{"errors", "stopping"},
          {"files", "devices", "distributed", "metrics", "stats", "reference", "torchfiles"},
          {"download", "console", "provenance", "augment", "optimizers", "schedules"}, {"models", "data"}, {"config"},
          {"cli", "runfolder", "factorial"}, {"train", "plots", "plan"}, {"experiment", "compare", "jobs"}, {"member"}, {"slurm"},
          {"launch"}]


def test_common_imports_point_one_way_and_never_at_a_script():
    floor_of = {name: i for i, floor in enumerate(FLOORS) for name in floor}
    modules = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "common", "*.py"))} - {"__init__"}
    assert modules == set(floor_of), modules ^ set(floor_of)
    for name in modules:
        tree = ast.parse(open(os.path.join(REPO, "common", name + ".py")).read())
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                assert not target.startswith("ex_"), (name, target)
                parts = target.split(".")
                if parts[0] == "common" and len(parts) > 1 and parts[1] in floor_of:
                    assert floor_of[parts[1]] < floor_of[name], f"common.{name} imports common.{parts[1]}"


def test_no_function_outside_the_tests_is_longer_than_60_lines():
    paths = glob.glob(os.path.join(REPO, "common", "*.py")) + glob.glob(os.path.join(REPO, "benchmarks", "*.py")) + \
        glob.glob(os.path.join(REPO, "ex_*.py"))
    long = []
    for path in paths:
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{os.path.basename(path)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long


def test_library_functions_are_not_named_like_tests():
    """pytest would collect a common.* function called test_* wherever a test imports it."""
    for path in glob.glob(os.path.join(REPO, "common", "*.py")):
        names = [n.name for n in ast.walk(ast.parse(open(path).read())) if isinstance(n, ast.FunctionDef)]
        assert not [n for n in names if n.startswith("test")], path

"""Experiment management: seeds + compare, TensorBoard, TTA."""
import json
import os
import shutil
import statistics

import pytest
import torch

from common.compare import stats
from common.compare.cli import main as compare_main
from common.compare.rows import build_rows, choose_baselines, summarize_row
from common.compare.runs import collect
from common.compare.tables import markdown, markers
from common.devices import cpu_model
from tests.conftest import recorded_dtype, run_python, run_script


@pytest.fixture(scope="module")
def seeded_runs(smoke_data, tmp_path_factory):
    """Three --smoke seeds of EX-1 and of EX-2 (CIFAR-10; EX-2 for one epoch at 32 px to keep it short),
    one after another in one process each: a --jobs member's own start would cost more than its run."""
    root = tmp_path_factory.mktemp("compare")
    for script, extra in (("ex_1.py", []), ("ex_2.py", ["--epochs", "1", "--image-size", "32"])):  # 32 px: fast
        out = root / script[:-3]
        result = run_script(script, "--smoke", "--dataset", "cifar10", "--seeds", "0,1,2", "--save-every", "0",
                            "--data-dir", smoke_data, "--out", str(out), *extra, timeout=400)
        assert result.returncode == 0, result.stderr[-2000:]
    return root


def _cpu() -> str:
    """compare's label for this machine's CPU: its model and the vector ISA torch's kernels use."""
    return f"CPU {cpu_model()} {torch.backends.cpu.get_cpu_capability()}"


def test_seeds_give_one_run_folder_each(seeded_runs):
    for exp in ("ex_1", "ex_2"):
        runs = sorted(os.listdir(seeded_runs / exp / "cifar_10"))
        assert len(runs) == 3
        seeds = sorted(json.load(open(seeded_runs / exp / "cifar_10" / r / "config.json"))["seed"] for r in runs)
        assert seeds == [0, 1, 2]


def _rows(*folders, baseline=None):
    runs = collect([str(f) for f in folders])
    rows = build_rows(runs)
    choose_baselines(rows, baseline)
    return runs, rows


def test_compare_table_matches_the_run_folders(seeded_runs, tmp_path):
    # an interrupted run beside the complete ones must be listed apart, not averaged in
    first = sorted(p for p in (seeded_runs / "ex_1" / "cifar_10").iterdir() if (p / "test.json").exists())[0]
    broken = seeded_runs / "ex_1" / "cifar_10" / "2000-01-01_00-00-00"
    shutil.copytree(first, broken, dirs_exist_ok=True)
    os.remove(broken / "test.json")
    train = json.load(open(broken / "train.json"))
    (broken / "train.json").write_text(json.dumps(dict(train, status="interrupted")))

    runs, rows = _rows(seeded_runs / "ex_1", seeded_runs / "ex_2")
    summaries = [summarize_row(r) for r in rows]
    assert [s["experiment"] for s in summaries] == ["ex_1", "ex_2"]
    for summary in summaries:
        folder = seeded_runs / summary["experiment"] / "cifar_10"
        accs = [json.load(open(folder / r / "test.json"))["accuracy"] for r in os.listdir(folder)
                if os.path.exists(folder / r / "test.json")]
        vals = [json.load(open(folder / r / "train.json"))["best_val_accuracy"] for r in os.listdir(folder)
                if os.path.exists(folder / r / "test.json")]
        assert summary["n"] == 3 == len(accs) and len(summary["runs"]) == 3
        assert summary["test_accuracy"]["mean"] == pytest.approx(statistics.mean(accs))
        assert summary["test_accuracy"]["std"] == pytest.approx(statistics.stdev(accs))
        assert summary["val_accuracy"]["mean"] == pytest.approx(statistics.mean(vals))
        interval = stats.mean_ci(accs)
        assert summary["test_accuracy"]["ci95"] == pytest.approx([interval.low, interval.high])
    text = markdown(rows, runs)
    assert "| ex_1 | 2 of 50 epochs; batch size 32 | 3 (0,1,2) |" in text
    assert "| ex_2 | 1 of 100 epochs; batch size 32; image size 32 | 3 (0,1,2) |" in text
    env = json.load(open(first / "config.json"))["environment"]
    threads = env["torch_threads"]  # and the precision this CPU's `auto` chose
    assert (f"· synthetic · {_cpu()} · torch {torch.__version__} · {threads} thread{'s' * (threads != 1)}"
            f" x 1 process · {env['precision']}, {env['layout']}") in text
    assert "2000-01-01_00-00-00: interrupted" in text

    figure = tmp_path / "val.png"
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{markers('compare')[0]}\nold\n{markers('compare')[1]}"
                      f"\nafter\n")
    compare_main([str(seeded_runs / "ex_1"), str(seeded_runs / "ex_2"), "--figure", str(figure),
                  "--readme", str(readme)])
    assert figure.read_bytes()[:4] == b"\x89PNG"
    new = readme.read_text()
    assert "old" not in new and "| ex_1 | 2 of 50 epochs; batch size 32 | 3 (0,1,2) |" in new
    assert new.endswith("after\n")


def test_runs_on_other_hardware_or_without_pretrained_weights_are_rows_of_their_own(seeded_runs, tmp_path):
    first = sorted(p for p in (seeded_runs / "ex_1" / "cifar_10").iterdir() if (p / "test.json").exists())[0]
    for name, change in (("gpu", {"environment": {"device": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "cuda": "13.0"}}),
                         ("torch", {"environment": {"torch": "2.11.0+cu130"}}),
                         ("scratch", {"config_fields": {"model": "efficientnet_v2_s", "pretrained": False}})):
        copy = tmp_path / name / "ex_1" / "cifar_10" / first.name
        shutil.copytree(first, copy)
        config = json.load(open(copy / "config.json"))
        config["environment"].update(change.get("environment", {}))
        config["config"].update(change.get("config_fields", {}))
        (copy / "config.json").write_text(json.dumps(config))
    runs, rows = _rows(seeded_runs / "ex_1", *(tmp_path / n / "ex_1" for n in ("gpu", "torch", "scratch")))
    text = markdown(rows, runs)
    changes = "2 of 50 epochs; batch size 32"
    env = json.load(open(first / "config.json"))["environment"]
    threads = env["torch_threads"]  # and the precision this CPU's `auto` chose
    assert (f"· synthetic · {_cpu()} · torch {torch.__version__} · {threads} thread{'s' * (threads != 1)}"
            f" x 1 process · {env['precision']}, {env['layout']}") in text
    assert "· synthetic · NVIDIA H100 80GB HBM3 · torch" in text and "CUDA 13.0" in text
    assert f"· synthetic · {_cpu()} · torch 2.11.0+cu130 · {threads} thread" in text  # another torch build
    assert f"| ex_1 | {changes} | 3 (0,1,2) |" in text and f"| ex_1 | {changes} | 1 (0) |" in text
    assert f"| ex_1 from scratch | model efficientnet_v2_s; {changes} | 1 (0) |" in text


@pytest.fixture(scope="module")
def tb_tta_run(smoke_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("tbtta")
    result = run_script("ex_1.py", "--smoke", "--dataset", "cifar10", "--tensorboard", "--tta",
                        "--data-dir", smoke_data, "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    (stamp,) = os.listdir(out / "cifar_10")
    return out / "cifar_10" / stamp


def test_tensorboard_events_parse_with_tensorboards_reader(tb_tta_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb_tta_run), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr"} <= set(tags["scalars"])
    history = json.load(open(tb_tta_run / "train.json"))["epochs"]
    assert [e.value for e in events.Scalars("accuracy/val")] == pytest.approx([h["val_accuracy"] for h in history])
    assert "test/confusion_matrix" in tags["images"]


def test_tta_is_reported_beside_plain_and_differs_only_by_the_flip(tb_tta_run, smoke_data):
    from common.augment import Preprocess
    from common.config import data_folder
    from common.data import SPECS, load_cifar
    from common.metrics import classification_metrics
    from common.models import build_model
    from common.runfolder import read_config
    from common.train import predict

    test = json.load(open(tb_tta_run / "test.json"))
    assert {"accuracy", "f1", "auc"} <= set(test) and {"accuracy", "f1", "auc", "loss"} <= set(test["tta"])
    record = read_config(str(tb_tta_run))
    data = load_cifar(SPECS["cifar10"], data_folder(record.recipe, record.options), download=False)
    model = build_model(record.recipe.model, 10, 32, False)
    model.load_state_dict(torch.load(tb_tta_run / "best.pth", weights_only=True)["model"])
    pre = Preprocess(32, record.recipe.mean, record.recipe.std, "cpu")
    dtype = recorded_dtype(record)
    plain = predict(model, data.test_x, None, pre, 256, dtype)
    mirrored = predict(model, data.test_x.flip(3), None, pre, 256, dtype)  # flip the images themselves
    probs = (plain.softmax(1) + mirrored.softmax(1)) / 2
    expected = classification_metrics(probs.log(), data.test_y, data.classes)
    assert test["tta"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert test["tta"]["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert test["accuracy"] == pytest.approx(classification_metrics(plain, data.test_y, data.classes)["accuracy"])


def test_errors_and_calibration_figures_and_ece(tb_tta_run):
    for png in ("errors.png", "calibration.png"):
        assert (tb_tta_run / png).read_bytes()[:4] == b"\x89PNG"
    test = json.load(open(tb_tta_run / "test.json"))
    assert 0 <= test["ece"] <= 1


def test_missing_tensorboard_is_a_clear_error(monkeypatch):
    import builtins

    from common.errors import UserError
    from common.experiment import tensorboard_writer

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(UserError, match="pip install tensorboard"):
        tensorboard_writer("/tmp")


def _copy_runs(source_root, dest_root, count=None):
    """Copy run folders (config/train/test only) of source_root/cifar_10 into dest_root/cifar_10."""
    runs = sorted(p for p in (source_root / "cifar_10").iterdir() if (p / "test.json").exists())[:count]
    for run in runs:
        copy = dest_root / "cifar_10" / run.name
        copy.mkdir(parents=True)
        for name in ("config.json", "train.json", "test.json"):
            shutil.copy(run / name, copy / name)
    return [dest_root / "cifar_10" / run.name for run in runs]


def test_compare_cli_splits_rows_by_recipe_and_writes_nothing_tracked(seeded_runs, smoke_data, tmp_path):
    from tests.conftest import REPO, snapshot_files

    experiment = tmp_path / "ex_1"
    _copy_runs(seeded_runs / "ex_1", experiment, count=2)  # seeds 0 and 1 of one recipe
    result = run_script("ex_1.py", "--smoke", "--dataset", "cifar10", "--lr", "0.01", "--save-every", "0",
                        "--data-dir", smoke_data, "--out", str(experiment))
    assert result.returncode == 0, result.stderr[-2000:]
    tracked_before = snapshot_files(os.path.join(REPO, "images")), open(os.path.join(REPO, "README.md")).read()
    listing = run_python(["-m", "common.compare", str(experiment)], timeout=120)
    assert listing.returncode == 0, listing.stderr
    rows = [line for line in listing.stdout.splitlines() if line.startswith("| ex_1 |")]
    assert len(rows) == 2, listing.stdout
    assert "| 2 (0,1) |" in rows[0] and "lr" not in rows[0] and "| baseline |" in rows[0]
    assert "| 1 (0) |" in rows[1] and "lr 0.01" in rows[1]
    assert (snapshot_files(os.path.join(REPO, "images")), open(os.path.join(REPO, "README.md")).read()) == \
        tracked_before
    assert (experiment / "compare_val_accuracy.png").read_bytes()[:4] == b"\x89PNG"  # inside the compared folder
    assert (experiment / "compare_lr.png").read_bytes()[:4] == b"\x89PNG"  # the swept field's figure


def test_a_repeated_seed_counts_once_says_which_folder_it_kept_and_any_recipe_field_splits(seeded_runs, tmp_path):
    experiment = tmp_path / "ex_1"
    (first, second) = _copy_runs(seeded_runs / "ex_1", experiment, count=2)
    duplicate = experiment / "cifar_10" / (first.name + "_1")
    shutil.copytree(first, duplicate)  # the same seed run again
    runs, rows = _rows(experiment)
    (summary,) = [summarize_row(r) for r in rows]
    assert (summary["n"], summary["seeds"]) == (2, [0, 1])
    (kept,) = summary["duplicates"]
    assert kept["seed"] == 0 and {kept["kept"], *kept["dropped"]} == {str(first), str(duplicate)}
    assert f"kept {kept['kept']}" in markdown(rows, runs)
    from common.config import recipe_key_fields
    original = (second / "config.json").read_text()
    for field, value in (("weight_decay", 0.5), ("augment", "crop_flip"), ("image_size", 64), ("precision", "fp32"),
                         ("step_gamma", 0.5)):
        assert field in recipe_key_fields()
        config = json.load(open(second / "config.json"))
        config["config"][field] = value
        (second / "config.json").write_text(json.dumps(config))
        _, rows = _rows(experiment)
        assert sorted(summarize_row(r)["n"] for r in rows) == [1, 1], field
        (second / "config.json").write_text(original)


def test_a_damaged_run_folder_is_listed_and_the_rest_is_printed(seeded_runs, tmp_path):
    experiment = tmp_path / "ex_1"
    (good, bad, worse) = _copy_runs(seeded_runs / "ex_1", experiment, count=3)
    (bad / "train.json").write_text(json.dumps({"status": "completed", "epochs": "many"}))
    (worse / "test.json").write_text(json.dumps([1, 2, 3]))
    result = run_module_compare(str(experiment))
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert "| 1 (0) |" in result.stdout
    assert f"{bad.name}: damaged" in result.stdout and f"{worse.name}: damaged" in result.stdout


def run_module_compare(*args, cwd=None):
    import subprocess
    import sys

    from tests.conftest import REPO
    return subprocess.run([sys.executable, os.path.join(REPO, "common", "compare"), *args], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=120)


def test_config_json_fingerprints_the_initial_weights_and_the_first_epochs_order(seeded_runs):
    """The draws runs may share, as facts compare can group by: recomputed here from the seed."""
    import hashlib

    from common.config import data_folder
    from common.data import SPECS, load_cifar, stratified_split
    from common.models import build_model
    from common.runfolder import read_config
    from common.train import epoch_order, epoch_seed

    seen = set()
    for run in sorted((seeded_runs / "ex_1" / "cifar_10").iterdir()):
        record = read_config(str(run))
        draws = record.raw["draws"]
        torch.manual_seed(record.options.seed)
        model = build_model("tutorial_cnn", 10, 32, False)
        weights = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            weights.update(name.encode())
            weights.update(tensor.contiguous().numpy().tobytes())
        data = load_cifar(SPECS["cifar10"], data_folder(record.recipe, record.options), download=False)
        train_idx, _ = stratified_split(data.train_y, record.recipe.val_fraction, record.recipe.split_seed)
        order = epoch_order(train_idx, torch.Generator().manual_seed(epoch_seed(record.options.seed, 0)))
        assert draws == {"initial_weights_sha256": weights.hexdigest(),
                         "epoch_1_order_sha256": hashlib.sha256(order.numpy().tobytes()).hexdigest()}
        seen.add(tuple(draws.values()))
    assert len(seen) == 3  # three seeds, three initialisations and orders

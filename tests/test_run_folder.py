"""`python ex_1.py --smoke`: complete run folders for both datasets, JSON as documented."""
import json
import os
import sys

import pytest
import torch

RUN_FILES = {"config.json", "train.json", "test.json", "loss.png", "accuracy.png", "confusion_matrix.png",
             "best.pth", "last.pth", "epoch-1.pth", "epoch-2.pth", "model_summary.txt", "predictions.npz"}
EPOCH_KEYS = {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_time_s",
              "images_per_s", "train_time_s", "train_images"}


def _runs(out):
    runs = {}
    for folder in ("cifar_10", "cifar_100"):
        stamps = os.listdir(out / folder)
        assert len(stamps) == 1, stamps
        runs[folder] = out / folder / stamps[0]
    return runs


def test_smoke_leaves_complete_run_folders(ex1_smoke_runs):
    out, result = ex1_smoke_runs
    for folder, run in _runs(out).items():
        assert RUN_FILES <= set(os.listdir(run)), sorted(os.listdir(run))
        assert not [f for f in os.listdir(run) if f.endswith(".tmp")]  # atomic writes leave no temp files
        for png in ("loss.png", "accuracy.png", "confusion_matrix.png"):
            assert open(run / png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
        assert str(run) in result.stdout  # the path is printed at the end
    summaries = [open(run / "model_summary.txt").read() for run in _runs(out).values()]
    assert "Total params: 50,326" in summaries[0] and "Total params: 266,416" in summaries[1]


def test_config_json_describes_the_run(ex1_smoke_runs):
    out, _ = ex1_smoke_runs
    cfg = json.load(open(_runs(out)["cifar_10"] / "config.json"))
    assert cfg["config"]["experiment"] == "ex_1" and cfg["config"]["lr"] == 1e-3
    assert cfg["config"]["smoke"] is True and cfg["dataset"] == "cifar10"
    assert "ex_1.py" in cfg["command"] and "--smoke" in cfg["command"]
    assert set(cfg["git"]) == {"commit", "dirty"}
    assert cfg["environment"]["torch"] == torch.__version__ and cfg["environment"]["device"] == "cpu"
    from common.devices import cpu_model
    assert cfg["environment"]["cpu"] == cpu_model() and cfg["environment"]["cpu_count"] == os.cpu_count()
    if os.path.exists("/proc/cpuinfo"):  # the model as the kernel names it
        assert f": {cfg['environment']['cpu']}" in open("/proc/cpuinfo").read()
    assert cfg["recipe"]["epochs"] == 50 and cfg["config"]["epochs"] == 2  # the script's recipe beside what ran
    assert {"python", "torchvision"} <= set(cfg["environment"])
    if sys.platform.startswith("linux"):  # CPU tensors on huge pages unless the user said otherwise
        assert cfg["environment"]["thp_mem_alloc_enable"] == os.environ.get("THP_MEM_ALLOC_ENABLE", "1")
    assert cfg["seed"] == 0 and cfg["start_time"]
    assert cfg["parameters"] == 50_326
    assert cfg["split"]["train"] + cfg["split"]["val"] == 600


@pytest.mark.parametrize("folder,classes", [("cifar_10", 10), ("cifar_100", 100)])
def test_train_and_test_json_schema(ex1_smoke_runs, folder, classes):
    out, _ = ex1_smoke_runs
    run = _runs(out)[folder]
    train = json.load(open(run / "train.json"))
    assert train["status"] == "completed"
    assert len(train["epochs"]) == 2 and train["epochs_done"] == 2
    for epoch in train["epochs"]:
        assert EPOCH_KEYS <= set(epoch)
        assert 0 <= epoch["train_accuracy"] <= 1 and 0 <= epoch["val_accuracy"] <= 1
        assert epoch["images_per_s"] > 0 and epoch["lr"] == 1e-3
    best = max(train["epochs"], key=lambda e: e["val_accuracy"])
    assert train["best_epoch"] == best["epoch"] and train["best_val_accuracy"] == best["val_accuracy"]
    assert train["train_time_s"] > 0

    test = json.load(open(run / "test.json"))
    for key in ("accuracy", "loss", "test_time_s", "precision", "recall", "f1", "auc", "top5_accuracy", "ece"):
        assert isinstance(test[key], float), key
    for key in ("accuracy", "precision", "recall", "f1", "auc", "top5_accuracy"):
        assert 0 <= test[key] <= 1, key
    assert test["checkpoint"] == "best.pth" and test["checkpoint_epoch"] == train["best_epoch"]
    assert len(test["per_class"]) == classes
    cm = test["confusion_matrix"]
    assert len(cm) == classes and all(len(row) == classes for row in cm)
    assert sum(map(sum, cm)) == test["num_images"]
    assert test["accuracy"] == pytest.approx(sum(cm[i][i] for i in range(classes)) / test["num_images"])
    assert test["accuracy"] > 1.5 / classes  # the synthetic classes are learnable


def test_last_pth_holds_the_training_state(ex1_smoke_runs):
    out, _ = ex1_smoke_runs
    run = _runs(out)["cifar_10"]
    last = torch.load(run / "last.pth", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "history", "best", "config"} <= set(last)
    assert last["epoch"] == 2 and len(last["history"]) == 2
    best = torch.load(run / "best.pth", weights_only=True)
    assert best["epoch"] == json.load(open(run / "train.json"))["best_epoch"]


@pytest.mark.parametrize("folder,classes", [("cifar_10", 10), ("cifar_100", 100)])
def test_predictions_npz_holds_the_test_probabilities_behind_test_json(ex1_smoke_runs, folder, classes):
    import numpy as np

    out, _ = ex1_smoke_runs
    run = _runs(out)[folder]
    test = json.load(open(run / "test.json"))
    with np.load(run / "predictions.npz") as kept:
        probs, labels, predicted = kept["probabilities"], kept["labels"], kept["predicted"]
    assert probs.dtype == np.float16 and probs.shape == (test["num_images"], classes)
    assert np.allclose(probs.astype(np.float64).sum(1), 1, atol=5e-3)
    assert float((predicted == labels).mean()) == test["accuracy"]
    confusion = np.zeros((classes, classes), dtype=int)
    np.add.at(confusion, (labels, predicted), 1)
    assert confusion.tolist() == test["confusion_matrix"]
    # the stored argmax is the float32 one; float16 rounding may only tie it, never reorder it
    argmax = probs.argmax(1)
    differ = argmax != predicted
    assert np.all(probs[differ, argmax[differ]] == probs[differ, predicted[differ]])

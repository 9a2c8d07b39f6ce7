"""torchrun with 2 CPU processes (gloo): test metrics equal a single-process evaluation, image for image."""
import json
import os
import subprocess
import sys

import torch

from tests.conftest import REPO, recorded_dtype


def test_two_process_training_counts_every_test_image_once(smoke_data, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--standalone", os.path.join(REPO, "ex_1.py"),
                             "--smoke", "--dataset", "cifar10", "--epochs", "1", "--data-dir", smoke_data,
                             "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (stamp,) = os.listdir(tmp_path / "cifar_10")  # only rank 0 made a folder
    run = tmp_path / "cifar_10" / stamp
    config = json.load(open(run / "config.json"))
    assert config["processes"] == 2
    train = json.load(open(run / "train.json"))
    assert train["epochs"][0]["train_images"] == config["split"]["train"]  # the shards cover the train split
    test = json.load(open(run / "test.json"))

    from common.augment import Preprocess
    from common.config import data_folder
    from common.data import SPECS, load_cifar
    from common.metrics import classification_metrics
    from common.models import build_model
    from common.runfolder import read_config
    from common.train import predict

    record = read_config(str(run))
    data = load_cifar(SPECS["cifar10"], data_folder(record.recipe, record.options), download=False)
    model = build_model(record.recipe.model, 10, 32, False)
    model.load_state_dict(torch.load(run / "best.pth", weights_only=True)["model"])
    logits = predict(model, data.test_x, None, Preprocess(32, record.recipe.mean, record.recipe.std, "cpu"), 64,
                     recorded_dtype(record))
    single = classification_metrics(logits, data.test_y, data.classes)
    assert test["num_images"] == len(data.test_y)
    assert test["confusion_matrix"] == single["confusion_matrix"]  # same prediction for every image
    assert abs(test["loss"] - single["loss"]) < 1e-5
    assert test["accuracy"] == single["accuracy"]

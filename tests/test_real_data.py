"""Slow checks on the JPEG copies of CIFAR-10 and CIFAR-100 (real images). Deselected by default; run with

    python -m pytest -m slow          # about 10 + 10 min (EX-1) + 25 min (EX-2) on a 2-core CPU
"""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_script

MAKERS = {"cifar-10-batches-py": "make_cifar10.py", "cifar-100-python": "make_cifar100.py"}


@pytest.fixture(scope="module")
def real_data(tmp_path_factory):
    data = os.path.join(REPO, "data")
    for folder, maker in MAKERS.items():
        if not os.path.isdir(os.path.join(data, folder)):
            subprocess.run([sys.executable, os.path.join(REPO, "..", "shared", "data", maker), data], check=True)
    return data


def _test_accuracy(out, folder="cifar_10"):
    (stamp,) = os.listdir(os.path.join(out, folder))
    return json.load(open(os.path.join(out, folder, stamp, "test.json")))["accuracy"]


@pytest.mark.slow
def test_cifar100_jpeg_copy_loads_with_the_official_split(real_data):
    from common.data import SPECS, load_cifar

    data = load_cifar(SPECS["cifar100"], real_data, download=False)
    assert data.train_x.shape == (50000, 3, 32, 32) and data.test_x.shape == (10000, 3, 32, 32)
    assert data.train_y.bincount().tolist() == [500] * 100 and data.test_y.bincount().tolist() == [100] * 100
    assert data.classes[:3] == ["apple", "aquarium_fish", "baby"]


@pytest.mark.slow
def test_ex1_on_cifar100_reaches_032_in_15_epochs(real_data, tmp_path):
    result = run_script("ex_1.py", "--dataset", "cifar100", "--epochs", "15", "--data-dir", real_data,
                        "--out", str(tmp_path), timeout=3600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _test_accuracy(tmp_path, "cifar_100") >= 0.32


@pytest.mark.slow
def test_ex1_reaches_070_in_15_epochs(real_data, tmp_path):
    result = run_script("ex_1.py", "--dataset", "cifar10", "--epochs", "15", "--data-dir", real_data,
                        "--out", str(tmp_path), timeout=3600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _test_accuracy(tmp_path) >= 0.70


@pytest.mark.slow
def test_ex2_learns_in_3_epochs(real_data, tmp_path):
    result = run_script("ex_2.py", "--dataset", "cifar10", "--epochs", "3", "--data-dir", real_data,
                        "--out", str(tmp_path), timeout=7200)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _test_accuracy(tmp_path) > 0.5

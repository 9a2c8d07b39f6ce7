"""Slow checks on the JPEG copy of CIFAR-10 (real images). Deselected by default; run with

    python -m pytest -m slow          # about 10 min (EX-1) + 25 min (EX-2) on a 2-core CPU
"""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_script

MAKE = os.path.join(REPO, "..", "shared", "data", "make_cifar10.py")


@pytest.fixture(scope="module")
def real_data(tmp_path_factory):
    data = os.path.join(REPO, "data")
    if not os.path.isdir(os.path.join(data, "cifar-10-batches-py")):
        subprocess.run([sys.executable, MAKE, data], check=True)
    return data


def _test_accuracy(out):
    (stamp,) = os.listdir(os.path.join(out, "cifar_10"))
    return json.load(open(os.path.join(out, "cifar_10", stamp, "test.json")))["accuracy"]


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

"""Pretrained weights: offline message, a local --weights file, and a foreign one refused."""
import os
import time

import pytest
import torch

from common.errors import UserError
from common.models import PretrainedWeights, build_model, cached_weights
from tests.conftest import closed_port, run_script




def test_offline_weights_stop_fast_and_name_both_ways_out(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache
    url = f"http://127.0.0.1:{closed_port()}/efficientnet_v2_s-test.pth"
    start = time.perf_counter()
    with pytest.raises(UserError) as info:
        cached_weights(PretrainedWeights(url, "abc123", 2**20))
    assert time.perf_counter() - start < 10
    assert "--weights PATH" in str(info.value) and "--no-pretrained" in str(info.value) and url in str(info.value)


@pytest.fixture(scope="module")
def imagenet_style_weights(tmp_path_factory):
    """A state dict shaped like torchvision's ImageNet file (1000-way head), random values."""
    from torchvision.models import efficientnet_v2_s as tv_build

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "efficientnet_v2_s_imagenet.pth"
    torch.save(tv_build(weights=None).state_dict(), path)
    return path


def test_local_weights_load_and_head_is_replaced(imagenet_style_weights):
    state = torch.load(imagenet_style_weights, weights_only=True)
    model = build_model("efficientnet_v2_s", 100, 32, False, str(imagenet_style_weights))
    own = model.state_dict()
    assert torch.equal(own["features.0.0.weight"], state["features.0.0.weight"])
    assert own["classifier.1.weight"].shape == (100, 1280)


def test_weights_with_wrong_shapes_are_refused(tmp_path, imagenet_style_weights):
    state = torch.load(imagenet_style_weights, weights_only=True)
    state["features.0.0.weight"] = torch.zeros(16, 3, 3, 3)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(UserError, match=r"does not fit EfficientNetV2-S .*features\.0\.0\.weight"):
        build_model("efficientnet_v2_s", 10, 32, True, str(bad))


def test_cli_rejects_foreign_weights_with_one_line(tmp_path, smoke_data):
    foreign = tmp_path / "foreign.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, foreign)
    result = run_script("ex_3.py", "--weights", str(foreign), "--dataset", "cifar10", "--epochs", "1", "--batch-size", "32",
                        "--data-dir", os.path.join(smoke_data, "synthetic", "tiny"), "--out", str(tmp_path / "out"),
                        timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "does not fit EfficientNetV2-S" in result.stderr
    assert not os.path.exists(tmp_path / "out" / "cifar_10") or not os.listdir(tmp_path / "out" / "cifar_10")


def test_cli_rejects_truncated_weights(tmp_path, smoke_data, imagenet_style_weights):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(imagenet_style_weights.read_bytes()[:1000])
    result = run_script("ex_4.py", "--weights", str(truncated), "--dataset", "cifar10", "--epochs", "1", "--batch-size", "32",
                        "--data-dir", os.path.join(smoke_data, "synthetic", "tiny"), "--out", str(tmp_path / "out"),
                        timeout=120)
    assert result.returncode == 1 and "cannot load weights" in result.stderr and "Traceback" not in result.stderr

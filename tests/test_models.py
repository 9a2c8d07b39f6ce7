import pytest
import torch

from common.models import MODELS, CifarResNet18, ThreeBlockCNN, TutorialCNN, count_parameters, efficientnet_v2_s


@pytest.mark.parametrize("classes,expected", [(10, 50_326), (100, 266_416)])
def test_tutorial_cnn_parameters(classes, expected):
    model = TutorialCNN(classes)
    assert count_parameters(model) == expected
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, classes)


@pytest.mark.parametrize("classes,expected", [(10, 16_812_298), (100, 16_904_548)])
def test_three_block_cnn_parameters(classes, expected):
    model = ThreeBlockCNN(classes, 128)
    assert count_parameters(model) == expected
    assert model(torch.zeros(2, 3, 128, 128)).shape == (2, classes)


@pytest.mark.parametrize("classes,expected", [(10, 20_190_298), (100, 20_305_588)])
def test_efficientnet_head_replaced(classes, expected):
    model = efficientnet_v2_s(classes)
    assert count_parameters(model) == expected
    model.eval()
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, classes)


@pytest.mark.parametrize("classes,expected", [(10, 11_173_962), (100, 11_220_132)])
def test_cifar_resnet18_parameters_match_kuangliu(classes, expected):
    model = CifarResNet18(classes)
    assert count_parameters(model) == expected
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, classes)


def test_the_efficientnet_entry_names_torchvisions_weights():
    from torchvision.models import EfficientNet_V2_S_Weights

    weights = MODELS["efficientnet_v2_s"].weights
    assert weights.url == EfficientNet_V2_S_Weights.IMAGENET1K_V1.url
    assert weights.url.endswith(f"-{weights.sha256_prefix}.pth")
    assert [name for name, entry in MODELS.items() if entry.weights] == ["efficientnet_v2_s"]

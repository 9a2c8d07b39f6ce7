import pytest
import torch

from common.models import ThreeBlockCNN, TutorialCNN, count_parameters, efficientnet_v2_s


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
    model = efficientnet_v2_s(classes, pretrained=False)
    assert count_parameters(model) == expected
    model.eval()
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, classes)

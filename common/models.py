"""The three model families of the report, built by name from a Config."""
from __future__ import annotations

import os
import re

import torch
import torch.nn as nn

from common.errors import UserError, first_line


class TutorialCNN(nn.Module):
    """EX-1: the course tutorial's CNN. 50,326 parameters for 10 classes, 266,416 for 100.

    32 -> conv5(pad 1) 30 -> conv5 28 -> pool 14 -> conv5 12 -> conv5 10; 24*10*10 = 2400 features.
    """

    def __init__(self, num_classes: int):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 5, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(*block(3, 12), *block(12, 12), nn.MaxPool2d(2),
                                      *block(12, 24), *block(24, 24))
        self.classifier = nn.Linear(24 * 10 * 10, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class ThreeBlockCNN(nn.Module):
    """EX-2: three Conv3x3-BN-ReLU-MaxPool blocks (16, 32, 64) and an MLP of 1024 at 128 px.

    16,812,298 parameters for 10 classes, 16,904,548 for 100 (the Linear(16384, 1024) holds 16.8M).
    """

    def __init__(self, num_classes: int, image_size: int = 128):
        super().__init__()
        layers, cin = [], 3
        for cout in (16, 32, 64):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        side = image_size // 8
        self.classifier = nn.Sequential(nn.Linear(64 * side * side, 1024), nn.ReLU(inplace=True),
                                        nn.Linear(1024, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def pretrained_url() -> str:
    from torchvision.models import EfficientNet_V2_S_Weights
    return EfficientNet_V2_S_Weights.IMAGENET1K_V1.url


def efficientnet_v2_s(num_classes: int, pretrained: bool, weights_path: str | None = None,
                      url: str | None = None) -> nn.Module:
    """torchvision's EfficientNetV2-S with its 1000-way head replaced by a `num_classes`-way one.

    Weights: a local state dict (`weights_path`), else the ImageNet weights downloaded once
    into torchvision's cache (TORCH_HOME), else random. A state dict with a 1000-way head
    (the ImageNet one) or with a `num_classes`-way head both load; anything else is refused.
    """
    from torchvision.models import efficientnet_v2_s as build

    model = build(weights=None)
    state = None
    if weights_path:
        state = load_state_dict_file(weights_path)
    elif pretrained:
        url = url or pretrained_url()
        state = load_state_dict_file(cached_weights(url))
    in_features = model.classifier[1].in_features
    if state is not None:
        head = {k: v for k, v in state.items() if k.startswith("classifier.")}
        if head and head.get("classifier.1.weight", torch.empty(0)).shape[0] == num_classes:
            model.classifier[1] = nn.Linear(in_features, num_classes)
            _load_strict(model, state, weights_path or url)
            return model
        _load_strict(model, state, weights_path or url)
    model.classifier[1] = nn.Linear(in_features, num_classes)
    return model


def cached_weights(url: str) -> str:
    """The file for `url` in torch's hub cache ($TORCH_HOME), downloaded once with a time-out.

    torchvision's file names carry the first hex digits of their sha256 (…-dd5fe13b.pth), checked here.
    """
    from common.download import fetch

    name = os.path.basename(url)
    path = os.path.join(torch.hub.get_dir(), "checkpoints", name)
    if not os.path.isfile(path):
        prefix = re.search(r"-([a-f0-9]{6,})\.", name)
        try:
            fetch(url, path, "sha256", prefix.group(1) if prefix else None, what="ImageNet weights")
        except UserError as e:
            raise UserError(f"{e}. Either pass --weights PATH with a local EfficientNetV2-S state dict (e.g. {name} "
                            f"copied from a machine with internet), or --no-pretrained to train from scratch") from None
    return path


def load_state_dict_file(path: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot load weights from {path}: {first_line(e)} (empty, truncated or not a torch "
                        f"file)") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # one of our own checkpoints
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a state dict of tensors")
    return state


def _load_strict(model: nn.Module, state: dict, source: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = (wrong[:1] or [f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"])[0]
        raise UserError(f"{source} does not fit EfficientNetV2-S ({len(missing)} missing, "
                           f"{len(unexpected)} unexpected, {len(wrong)} wrong-shaped keys; e.g. {detail})")
    model.load_state_dict(state)


def build_model(config, num_classes: int) -> nn.Module:
    if config.model == "tutorial_cnn":
        return TutorialCNN(num_classes)
    if config.model == "three_block_cnn":
        return ThreeBlockCNN(num_classes, config.image_size)
    if config.model == "efficientnet_v2_s":
        return efficientnet_v2_s(num_classes, config.pretrained, config.weights)
    raise ValueError(f"unknown model {config.model!r}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

"""Models by name: MODELS maps a name to its builder and the facts the rest of the repo needs.

An entry says how to build the network for (classes, image size), its
default input normalization, the size of its --smoke data, its memory layout on a CPU and,
where there are any, its pretrained weights (URL and sha256 prefix). Adding a model is one
entry here; `--model NAME` and every table pick it up.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.errors import UserError
from common.torchfiles import load, load_state

CIFAR_HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # maps [0, 1] to [-1, 1]
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # what ImageNet weights were trained with


class TutorialCNN(nn.Module):
    """EX-1: the course tutorial's CNN. 50,326 parameters for 10 classes, 266,416 for 100 (at 32 px).

    32 -> conv5(pad 1) 30 -> conv5 28 -> pool 14 -> conv5 12 -> conv5 10; 24*10*10 = 2400 features.
    """

    def __init__(self, num_classes: int, image_size: int = 32):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 5, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(*block(3, 12), *block(12, 12), nn.MaxPool2d(2),
                                      *block(12, 24), *block(24, 24))
        side = (image_size - 4) // 2 - 4
        self.classifier = nn.Linear(24 * side * side, num_classes)

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


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al. 2016), 1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 for 32 px inputs, as in kuangliu/pytorch-cifar: a 3x3 stem without max-pool, four
    stages of two BasicBlocks (64, 128, 256, 512 channels), global average pool, linear head.
    11,173,962 parameters for 10 classes, 11,220,132 for 100."""

    def __init__(self, num_classes: int, image_size: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        stages, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        out = F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1)
        return self.classifier(torch.flatten(out, 1))


def efficientnet_v2_s(num_classes: int, image_size: int = 32, state: dict | None = None,
                      source: str = "weights") -> nn.Module:
    """torchvision's EfficientNetV2-S with its 1000-way head replaced by a `num_classes`-way one.

    `state`: weights to start from; a state dict with a 1000-way head (the ImageNet one) or with a
    `num_classes`-way head both load, anything else is refused with the first mismatching key.
    """
    from torchvision.models import efficientnet_v2_s as build

    model = build(weights=None)
    in_features = model.classifier[1].in_features
    head = state.get("classifier.1.weight") if state is not None else None
    if head is not None and getattr(head, "shape", (None,))[0] == num_classes:
        model.classifier[1] = nn.Linear(in_features, num_classes)
        load_state(model, state, source, "weights", fits="EfficientNetV2-S")
        return model
    if state is not None:
        load_state(model, state, source, "weights", fits="EfficientNetV2-S")
    model.classifier[1] = nn.Linear(in_features, num_classes)
    return model


@dataclass(frozen=True)
class PretrainedWeights:
    url: str
    sha256_prefix: str   # torchvision's file names carry the first hex digits of their sha256
    max_bytes: int       # a download larger than this is cut off


@dataclass(frozen=True)
class ModelEntry:
    build: Callable  # (num_classes, image_size, state dict or None, its source) -> nn.Module
    normalization: tuple  # (mean, std) per channel for inputs in [0, 1], unless the recipe gives its own
    smoke_data: str       # "small" or "tiny": the --smoke data set (common.data.SMOKE_SIZES)
    cpu_layout: str       # nchw or channels_last: the fp32 layout the benchmark found faster on a CPU
    min_image_size: int = 8  # px
    weights: PretrainedWeights | None = None
    cpu_bf16_layout: str | None = None  # the bf16 layout --precision auto trains in on a CPU with native
    #   bf16, for a model where the benchmark found bf16 faster and its accuracy was checked
    #   (docs/performance.md); None: auto keeps fp32 on a CPU, and --precision bf16 uses cpu_layout


def _plain(cls):
    """A builder for a model without pretrained weights of its own: random, or a local state dict."""
    def build(num_classes: int, image_size: int, state: dict | None = None, source: str = "weights"):
        model = cls(num_classes, image_size)
        if state is not None:
            load_state(model, state, source, "weights", fits=cls.__name__)
        return model
    return build


MODELS = {
    # 5x5 convolutions: contiguous memory is faster on a CPU in fp32 and in bf16 (2.3x fp32's speed
    # on an Intel Xeon with AMX, docs/performance.md)
    "tutorial_cnn": ModelEntry(_plain(TutorialCNN), CIFAR_HALF, "small", "nchw", 14, cpu_bf16_layout="nchw"),
    # 3x3 convolutions: channels_last is faster on a CPU, in fp32 and bf16 (bf16 1.4-1.5x fp32's speed there)
    "three_block_cnn": ModelEntry(_plain(ThreeBlockCNN), CIFAR_HALF, "small", "channels_last",
                                  cpu_bf16_layout="channels_last"),
    # 3x3 convolutions like the 3-block CNN's; its CPU layout is not benchmarked, nor bf16 for it
    "resnet18": ModelEntry(_plain(CifarResNet18), CIFAR_HALF, "tiny", "channels_last"),
    # 20M parameters, slow on a CPU: the tiny smoke data keeps its --smoke run short. On the Xeon with
    # AMX (docs/performance.md) fp32 channels_last trains 1.2-2.1x faster than NCHW; bf16 (channels_last)
    # trains at 0.64x fp32's speed at 32 px (EX-3) but 2.7x at 128 px (EX-4, EX-5). auto keeps fp32: its
    # accuracy in bf16 is not checked as EX-1's and EX-2's are; --precision bf16 asks for it
    "efficientnet_v2_s": ModelEntry(
        efficientnet_v2_s, IMAGENET, "tiny", "channels_last",
        weights=PretrainedWeights("https://download.pytorch.org/models/efficientnet_v2_s-dd5fe13b.pth",
                                  "dd5fe13b", 200 * 2**20)),
}


def build_model(model: str, num_classes: int, image_size: int, pretrained: bool,
                weights_path: str | None = None) -> nn.Module:
    """The named model; its pretrained weights (downloaded once) or a local `weights_path` if asked for."""
    entry = MODELS[model]
    path = weights_path or (cached_weights(entry.weights) if pretrained else None)
    if path is None:
        return entry.build(num_classes, image_size)
    state = load(path, "weights")
    if isinstance(state.get("model"), dict):  # one of this repo's checkpoints (best.pth, epoch-N.pth)
        state = state["model"]
    return entry.build(num_classes, image_size, state, path)


def cached_weights(weights: PretrainedWeights) -> str:
    """The weights' file in torch's hub cache ($TORCH_HOME), downloaded once with the download limits."""
    from common.download import fetch

    name = os.path.basename(weights.url)
    path = os.path.join(torch.hub.get_dir(), "checkpoints", name)
    if not os.path.isfile(path):
        try:
            fetch(weights.url, path, "sha256", weights.sha256_prefix, what="ImageNet weights",
                  max_bytes=weights.max_bytes)
        except UserError as e:
            raise UserError(f"{e}. Either pass --weights PATH with a local state dict (e.g. {name} copied from a "
                            f"machine with internet), or --no-pretrained to train from scratch") from None
    return path


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

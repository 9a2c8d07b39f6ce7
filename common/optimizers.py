"""Optimizers by name: OPTIMIZERS maps a name to its builder (params, lr, weight decay) and what
its weight decay means. Adding one is one entry here; `--optimizer NAME` picks it up."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class OptimizerEntry:
    build: Callable  # (params, lr, weight_decay) -> torch.optim.Optimizer
    weight_decay: str  # "coupled" (an L2 term added to the gradient) or "decoupled" (w -= lr * wd * w)


def _lion(params, lr: float, weight_decay: float):
    from lion_pytorch import Lion

    return Lion(params, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)  # the paper's betas


OPTIMIZERS = {
    "adam": OptimizerEntry(lambda p, lr, wd: torch.optim.Adam(p, lr=lr, weight_decay=wd), "coupled"),
    "adamw": OptimizerEntry(lambda p, lr, wd: torch.optim.AdamW(p, lr=lr, weight_decay=wd), "decoupled"),
    "sgd": OptimizerEntry(lambda p, lr, wd: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd),
                          "coupled"),
    "lion": OptimizerEntry(_lion, "decoupled"),
}


def weight_decay_help() -> str:
    """--weight-decay's help, from the entries: which optimizers add it to the gradient, which decouple it."""
    kinds = {kind: [name for name, e in OPTIMIZERS.items() if e.weight_decay == kind] for kind in ("coupled", "decoupled")}
    return (f"weight decay: an L2 term added to the gradient for {' and '.join(kinds['coupled'])}, decoupled "
            f"(w -= lr * wd * w) for {' and '.join(kinds['decoupled'])}")


def build_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return OPTIMIZERS[name].build(params, lr, weight_decay)

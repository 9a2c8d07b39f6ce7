"""Plain training and evaluation functions (torchvision references style): no trainer class.

Inputs stay uint8 on the device; each batch is cut by index, preprocessed with batched
tensor ops (common.augment) and fed to the model. Losses and correct counts accumulate on
the device, so a GPU never waits for a .item() inside the loop.
"""
from __future__ import annotations

import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from common import distributed
from common.augment import Preprocess, sample_crop_flip
from common.devices import autocast


def epoch_seed(seed: int, epoch: int) -> int:
    """Each epoch's shuffling, augmentation and dropout come from (seed, epoch) alone, so a
    resumed run draws exactly what the uninterrupted run would have drawn."""
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


# --- optimizer and schedule --------------------------------------------------------------

def build_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    if name == "lion":
        from lion_pytorch import Lion
        return Lion(params, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def lr_factor(schedule: str, epoch: int, epochs: int, warmup_epochs: int = 0) -> float:
    """Multiplier of the peak lr for 0-based `epoch` (stepped once per epoch).

    warm-up: linear from 0.1 to 1 over `warmup_epochs`; then
    cosine: half a cosine from 1 towards 0 over the remaining epochs;
    step: x0.1 at 50% and again at 75% of the remaining epochs;
    onecycle: up from 1/25 to 1 over the first 30% (ignores warm-up), then a cosine down to 1/25e4;
    none / plateau: 1 (plateau's reductions come from ReduceLROnPlateau).
    """
    if schedule == "onecycle":
        rise = max(1, round(0.3 * epochs))
        if epoch < rise:
            return 1 / 25 + (1 - 1 / 25) * epoch / rise
        t = (epoch - rise) / max(1, epochs - 1 - rise)
        low = 1 / 25e4
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * t))
    if epoch < warmup_epochs:
        return 0.1 + 0.9 * epoch / warmup_epochs
    t = (epoch - warmup_epochs) / max(1, epochs - warmup_epochs)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "step":
        return 0.1 ** ((t >= 0.5) + (t >= 0.75))
    return 1.0


def build_scheduler(name: str, optimizer, epochs: int, warmup_epochs: int):
    if name == "plateau":
        # Halve the lr when validation loss has not improved for 3 epochs.
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=3)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: lr_factor(name, e, epochs, warmup_epochs))


def step_scheduler(scheduler, val_loss: float) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    else:
        scheduler.step()


# --- the loops ---------------------------------------------------------------------------

class _LogLines:
    """tqdm output for log files and CI: each refresh as one plain line, no carriage returns."""

    def write(self, text: str) -> None:
        text = text.strip("\r\n ")
        if text:
            sys.stderr.write(text + "\n")

    def flush(self) -> None:
        sys.stderr.flush()


def _progress(total: int, desc: str):
    if not distributed.is_main():
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
    # Not a terminal: a line at most every 30 s instead of a bar redrawn 10 times a second.
    return tqdm(total=total, desc=desc, leave=False, file=_LogLines(), ncols=100, mininterval=30, maxinterval=60, delay=30)


def train_one_epoch(model: nn.Module, optimizer, images: torch.Tensor, labels: torch.Tensor,
                    indices: torch.Tensor, *, preprocess: Preprocess, batch_size: int, generator: torch.Generator,
                    dtype=None, scaler=None, desc: str = "train") -> dict:
    """One pass over `indices` (into the device-resident `images`), shuffled by `generator`;
    random crops and flips when `preprocess.augment`."""
    model.train()
    device = images.device
    order = indices[torch.randperm(len(indices), generator=generator)].to(device)
    world = distributed.world_size()
    if world > 1:  # every process its own shard of the same shuffled order, and its own augmentations
        order = order[: len(order) - len(order) % world][distributed.rank()::world]
        generator = torch.Generator().manual_seed(
            int(torch.randint(0, 2**62, (1,), generator=generator)) + distributed.rank())
    steps = math.ceil(len(order) / batch_size)
    # The whole epoch's crops and flips in one draw and one copy to the device: a copy per step
    # from pageable memory would make the CPU wait for the GPU's queue to drain every step.
    epoch_params = (sample_crop_flip(len(order), preprocess.padding, generator).to(device)
                    if preprocess.augment else None)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, x = 0, None
    start = time.perf_counter()
    with _progress(steps, desc) as bar:
        for step in range(steps):
            window = slice(step * batch_size, (step + 1) * batch_size)
            idx = order[window]
            if len(idx) < 2:  # BatchNorm cannot train on a single image; at most one is dropped
                continue
            # written over the previous batch, whose backward pass is done (autograd would object otherwise)
            x = preprocess(images[idx], epoch_params[window] if epoch_params is not None else None, out=x)
            y = labels[idx]
            with autocast(device, dtype):
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            loss_sum += loss.detach().float() * len(idx)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(idx)
            bar.update()
            _show_current_loss(bar, loss)
    totals = distributed.all_reduce_sum(torch.stack([loss_sum.float(), correct.float(),
                                                     torch.tensor(float(seen), device=device)]))
    loss_total, correct_total, seen = totals.tolist()  # .tolist() waits for the device
    seconds = time.perf_counter() - start
    return {"loss": loss_total / max(seen, 1), "accuracy": correct_total / max(seen, 1),
            "images": int(seen), "seconds": seconds}


def _show_current_loss(bar, loss: torch.Tensor) -> None:
    """The bar shows this step's loss whenever it redraws: .item() waits for the GPU, so only then
    (tqdm redraws at most every mininterval seconds), not every step."""
    if bar.disable:
        return
    if time.monotonic() - getattr(bar, "_loss_shown_at", 0.0) >= bar.mininterval:
        bar._loss_shown_at = time.monotonic()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, indices: torch.Tensor | None, preprocess: Preprocess,
            batch_size: int, dtype=None, flip: bool = False, desc: str = "eval") -> torch.Tensor:
    """Logits (float32, on the CPU) for `images[indices]`, in order. flip=True mirrors every image.

    Under torchrun each process predicts one contiguous chunk and the chunks are gathered in
    order, so every image is counted exactly once.
    """
    model.eval()
    device = images.device
    if indices is None:  # the whole set: contiguous slices, no gather
        sizes = [len(c) for c in torch.tensor_split(torch.arange(len(images)), distributed.world_size())]
        lo = sum(sizes[:distributed.rank()])
        hi = lo + sizes[distributed.rank()]
        source, count = images[lo:hi], hi - lo
    else:
        source = None
        indices = torch.tensor_split(indices, distributed.world_size())[distributed.rank()].to(device)
        count = len(indices)
    out, x = [], None
    steps = math.ceil(count / batch_size)
    with _progress(steps, desc) as bar:
        for step in range(steps):
            window = slice(step * batch_size, (step + 1) * batch_size)
            x = preprocess(source[window] if source is not None else images[indices[window]], out=x)
            with autocast(device, dtype):
                out.append(model(x.flip(3) if flip else x).float())
            bar.update()
    return distributed.gather_concat(torch.cat(out).cpu())


def evaluate(model, images, labels, indices, preprocess, batch_size, dtype=None, desc="val") -> dict:
    """Loss and accuracy on `images[indices]` (the validation split), and the seconds it took."""
    start = time.perf_counter()
    logits = predict(model, images, indices, preprocess, batch_size, dtype, desc=desc)
    y = labels[indices].cpu() if indices is not None else labels.cpu()
    return {"loss": float(F.cross_entropy(logits, y)), "accuracy": float((logits.argmax(1) == y).float().mean()),
            "seconds": time.perf_counter() - start}

"""Plain training and evaluation functions (torchvision references style): no trainer class.

Inputs stay uint8 on the device; each batch is cut by index, preprocessed with batched
tensor ops (common.augment) and fed to the model. Losses and correct counts accumulate on
the device, so a GPU never waits for a .item() inside the loop.
"""
from __future__ import annotations

import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from common import distributed, stopping
from common.augment import Preprocess, window
from common.console import LOG_INTERVAL_ENV
from common.devices import autocast


def epoch_seed(seed: int, epoch: int) -> int:
    """Each epoch's shuffling, augmentation and dropout come from (seed, epoch) alone, so a
    resumed run draws exactly what the uninterrupted run would have drawn."""
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


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
    # Not a terminal: a line every 30 s (a plan's member: every few seconds, for its live line),
    # instead of a bar redrawn 10 times a second.
    interval = float(os.environ.get(LOG_INTERVAL_ENV) or 30)
    return tqdm(total=total, desc=desc, leave=False, file=_LogLines(), ncols=100, mininterval=interval,
                maxinterval=2 * interval, delay=interval)


def steps_per_epoch(images: int, batch_size: int, world: int = 1) -> int:
    """Optimizer steps in one epoch of each process: its shard of the shuffled order, in batches."""
    return math.ceil((images - images % world) // world / batch_size)


def epoch_order(indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The epoch's shuffled order of `indices` (the generator's first draw: augmentation comes after)."""
    return indices[torch.randperm(len(indices), generator=generator)]


def train_one_epoch(model: nn.Module, optimizer, images: torch.Tensor, labels: torch.Tensor,
                    indices: torch.Tensor, *, preprocess: Preprocess, batch_size: int, generator: torch.Generator,
                    lrs: list | None = None, dtype=None, scaler=None, desc: str = "train") -> dict:
    """One pass over `indices` (into the device-resident `images`), shuffled by `generator`, with
    the preprocessing's augmentation drawn from it too; `lrs`: the lr of each step (None: as set)."""
    model.train()
    device = images.device
    order = epoch_order(indices, generator).to(device)
    world = distributed.world_size()
    if world > 1:  # every process its own shard of the same shuffled order, and its own augmentations
        order = order[: len(order) - len(order) % world][distributed.rank()::world]
        generator = torch.Generator().manual_seed(
            int(torch.randint(0, 2**62, (1,), generator=generator)) + distributed.rank())
    steps = steps_per_epoch(len(indices), batch_size, world)
    # The whole epoch's augmentation in one draw and one copy to the device: a copy per step
    # from pageable memory would make the CPU wait for the GPU's queue to drain every step.
    epoch_params = preprocess.draw(len(order), generator, device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, x = 0, None
    start = time.perf_counter()
    with _progress(steps, desc) as bar:
        for step in range(steps):
            stopping.check()  # a batch boundary: a stop signal whose exception was dropped stops here
            rows = slice(step * batch_size, (step + 1) * batch_size)
            idx = order[rows]
            if len(idx) < 2:  # BatchNorm cannot train on a single image; at most one is dropped
                continue
            if lrs is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lrs[step]
            # written over the previous batch, whose backward pass is done (autograd would object otherwise)
            x = preprocess(images[idx], window(epoch_params, rows), out=x)
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
            _show_current_loss(bar, loss)
            bar.update()
    totals = distributed.all_reduce_sum(torch.stack([loss_sum.float(), correct.float(),
                                                     torch.tensor(float(seen), device=device)]))
    loss_total, correct_total, seen = totals.tolist()  # .tolist() waits for the device
    seconds = time.perf_counter() - start
    return {"loss": loss_total / max(seen, 1), "accuracy": correct_total / max(seen, 1),
            "images": int(seen), "seconds": seconds}


def _show_current_loss(bar, loss: torch.Tensor) -> None:
    """Before the bar's update: when that update will redraw it, put this step's loss on it.
    .item() waits for the GPU, so only then (at most every mininterval seconds), not every step."""
    if bar.disable:
        return
    if bar._time() - bar.last_print_t >= bar.mininterval:
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
            stopping.check()
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

"""Learning-rate schedules by name: SCHEDULES maps a name to the lr multiplier along training.

Each entry's `factor(t, recipe)` is the multiplier of the peak lr at t in [0, 1], the share
of the training after warm-up. `per_batch` entries are evaluated at every optimizer step
(t moves within an epoch); the others hold one value per epoch (t at the epoch's start).
Warm-up (`warmup_epochs`, for entries that allow it) ramps the lr linearly from 0.1 to 1 of
its peak, step by step, before the schedule starts. `plateau` follows the validation loss
instead: its state is saved in last.pth. Adding a schedule is one entry here.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

WARMUP_START = 0.1       # warm-up's first multiplier
ONECYCLE_RISE = 0.3      # share of the epochs onecycle spends rising
ONECYCLE_START, ONECYCLE_END = 1 / 25, 1 / 25e4  # torch's OneCycleLR defaults (div_factor, final_div_factor)
PLATEAU_THRESHOLD = 1e-4  # a relative improvement of the validation loss smaller than this is none


@dataclass(frozen=True)
class ScheduleEntry:
    factor: Callable  # (t in [0, 1], recipe) -> multiplier of the peak lr
    per_batch: bool
    allows_warmup: bool
    follows_val_loss: bool = False


def _cosine(t: float, recipe) -> float:
    return 0.5 * (1 + math.cos(math.pi * t))


def _step(t: float, recipe) -> float:
    return recipe.step_gamma ** sum(t >= milestone for milestone in recipe.step_milestones)


def _onecycle(t: float, recipe) -> float:
    if t < ONECYCLE_RISE:
        return ONECYCLE_START + (1 - ONECYCLE_START) * t / ONECYCLE_RISE
    down = (t - ONECYCLE_RISE) / (1 - ONECYCLE_RISE)
    return ONECYCLE_END + (1 - ONECYCLE_END) * 0.5 * (1 + math.cos(math.pi * down))


SCHEDULES = {
    "none": ScheduleEntry(lambda t, recipe: 1.0, per_batch=False, allows_warmup=True),
    "cosine": ScheduleEntry(_cosine, per_batch=False, allows_warmup=True),      # half a cosine to 0
    "step": ScheduleEntry(_step, per_batch=False, allows_warmup=True),          # x step_gamma at each milestone
    "plateau": ScheduleEntry(lambda t, recipe: 1.0, per_batch=False, allows_warmup=False, follows_val_loss=True),
    "onecycle": ScheduleEntry(_onecycle, per_batch=True, allows_warmup=False),  # its own rise replaces warm-up
}


def warmup_schedules() -> tuple:
    """The schedules --warmup-epochs goes with, in registry order (its help and its error name them)."""
    return tuple(name for name, entry in SCHEDULES.items() if entry.allows_warmup)


@dataclass
class PlateauState:
    """ReduceLROnPlateau's rule (mode min, relative threshold): the lr's scale drops by
    plateau_factor after more than plateau_patience epochs without improvement."""
    best: float = math.inf
    bad_epochs: int = 0
    scale: float = 1.0


def epoch_lrs(recipe, epoch: int, steps: int, plateau: PlateauState) -> list:
    """The lr of each of the epoch's `steps` optimizer steps (0-based `epoch`)."""
    entry = SCHEDULES[recipe.scheduler]
    return [recipe.lr * plateau.scale * lr_factor(recipe, entry, epoch, step, steps) for step in range(steps)]


def lr_factor(recipe, entry: ScheduleEntry, epoch: int, step: int, steps: int) -> float:
    """Multiplier of the peak lr at optimizer step `step` of `steps` in 0-based `epoch`.

    t runs from 0 at the first step after warm-up: per epoch to (epochs - 1) / epochs at the
    last epoch's start; per batch to exactly 1 at the very last step.
    """
    warmup, position = recipe.warmup_epochs, epoch + step / steps
    if position < warmup:
        return WARMUP_START + (1 - WARMUP_START) * position / warmup
    if entry.per_batch:
        t = (position - warmup) / max(1 / steps, recipe.epochs - warmup - 1 / steps)
    else:
        t = (epoch - warmup) / max(1, recipe.epochs - warmup)
    return entry.factor(t, recipe)


def after_epoch(recipe, plateau: PlateauState, val_loss: float) -> None:
    """Advance the plateau rule by one epoch's validation loss (a no-op for the other schedules)."""
    if not SCHEDULES[recipe.scheduler].follows_val_loss:
        return
    if val_loss < plateau.best * (1 - PLATEAU_THRESHOLD):
        plateau.best, plateau.bad_epochs = val_loss, 0
    else:
        plateau.bad_epochs += 1
    if plateau.bad_epochs > recipe.plateau_patience:
        plateau.scale *= recipe.plateau_factor
        plateau.bad_epochs = 0


def plateau_state_dict(plateau: PlateauState) -> dict:
    return asdict(plateau)


def plateau_from_dict(state) -> PlateauState:
    """From last.pth; {} (a schedule without state) gives the initial state."""
    if not isinstance(state, dict):
        raise ValueError(f"expected a dict, got {type(state).__name__}")
    known = {k: state[k] for k in ("best", "bad_epochs", "scale") if k in state}
    return PlateauState(**known)

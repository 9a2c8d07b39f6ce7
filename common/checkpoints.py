"""Checkpoints: the training state an epoch changes, what last.pth, best.pth and epoch-N.pth hold,
and what is checked when one is read back (side by side, so a field saved is a field checked).
The files' names and places are common.runfolder's."""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field

import torch

from common import schedules
from common.errors import UserError
from common.files import atomic_write
from common.runfolder import BEST, LAST, are_epoch_records, best_epoch, epoch_checkpoint, path
from common.torchfiles import load, load_state

CHECKPOINT_FORMAT = "cifar-experiments-checkpoint/2"


@dataclass
class TrainingState:
    """What an epoch changes and --resume restores. Each epoch's randomness comes from
    (seed, epoch) alone (common.train.epoch_seed), so no RNG state needs saving."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: object = None                          # torch.amp.GradScaler on fp16 GPUs, else None
    plateau: schedules.PlateauState = field(default_factory=schedules.PlateauState)
    history: list = field(default_factory=list)    # one epoch record per finished epoch
    saved_epochs: int = 0                          # how many of them last.pth holds

    def best(self) -> dict | None:
        return best_epoch(self.history)


def _save_checkpoint(file_path: str, state: dict) -> None:
    buffer = io.BytesIO()  # serialised first: a full disk then fails in our write, with its errno
    torch.save(dict(state, format=CHECKPOINT_FORMAT), buffer)
    atomic_write(file_path, lambda f: f.write(buffer.getbuffer()))


def save_state(run_dir: str, state: TrainingState, experiment: str, dataset: str, config: dict,
               save_every: int, improved: bool) -> None:
    """last.pth: everything --resume needs. best.pth and epoch-N.pth: the weights, with their
    epoch and validation metrics (a third of last.pth's size with Adam's two moments)."""
    epoch = len(state.history)
    last = state.history[-1] if state.history else {}
    weights = {"experiment": experiment, "dataset": dataset, "epoch": epoch, "model": state.model.state_dict(),
               "val_accuracy": last.get("val_accuracy"), "val_loss": last.get("val_loss"), "config": config}
    if improved:
        _save_checkpoint(path(run_dir, BEST), weights)
    if save_every and epoch and epoch % save_every == 0:
        _save_checkpoint(path(run_dir, epoch_checkpoint(epoch)), weights)
    best = state.best()
    _save_checkpoint(path(run_dir, LAST), dict(
        weights, optimizer=state.optimizer.state_dict(), scheduler=schedules.plateau_state_dict(state.plateau),
        scaler=state.scaler.state_dict() if state.scaler is not None else None, history=state.history,
        best={"epoch": best["epoch"], "val_accuracy": best["val_accuracy"]} if best else
        {"epoch": 0, "val_accuracy": -1.0}))
    state.saved_epochs = epoch


def load_checkpoint(file_path: str) -> dict:
    state = load(file_path, "checkpoint")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{file_path} is not a checkpoint written by this version of the repo")
    return state


TRAINING_STATE_KEYS = ("experiment", "dataset", "epoch", "model", "optimizer", "scheduler", "history", "best")


def load_last(run_dir: str, experiment: str, dataset: str, recipe: dict) -> dict | None:
    """last.pth, checked whole against its run before anything is written (None if the run was killed
    before its first one): the right experiment and dataset, the recipe config.json states (`recipe`:
    its fields), an epoch within the plan, a history of exactly that many complete epoch records, a
    best epoch inside it. Shapes are checked when it is restored."""
    file_path = path(run_dir, LAST)
    if not os.path.exists(file_path):
        return None
    state = load_checkpoint(file_path)
    missing = [k for k in TRAINING_STATE_KEYS if k not in state]
    if missing:
        raise UserError(f"{file_path} lacks {', '.join(missing)}: not a last.pth of this repo")
    if (state["experiment"], state["dataset"]) != (experiment, dataset):
        raise UserError(f"{file_path} belongs to {state['experiment']} {state['dataset']}, not to this run "
                        f"({experiment} {dataset})")
    saved = state.get("config") if isinstance(state.get("config"), dict) else {}
    edited = [k for k in recipe if k in saved and json.dumps(saved[k]) != json.dumps(recipe[k])]  # a tuple is a list
    if edited:
        raise UserError(f"{path(run_dir, 'config.json')} says {', '.join(f'{k} {recipe[k]!r}' for k in edited)}, but the "
                        f"run was trained with {', '.join(f'{k} {saved[k]!r}' for k in edited)} ({LAST}): config.json "
                        f"was edited after the run started; put it back, or start a new run for the new values")
    epoch, history, best, epochs = state["epoch"], state["history"], state["best"], recipe["epochs"]
    if not (isinstance(epoch, int) and 0 <= epoch <= epochs):
        raise UserError(f"{file_path} says epoch {epoch!r}, outside this run's 0..{epochs}")
    if not (isinstance(history, list) and len(history) == epoch and are_epoch_records(history)):
        raise UserError(f"{file_path} is inconsistent: its history does not hold complete records of epochs 1..{epoch}")
    if not (isinstance(best, dict) and isinstance(best.get("epoch"), int) and 0 <= best["epoch"] <= epoch
            and (epoch == 0) == (best["epoch"] == 0)):
        raise UserError(f"{file_path} is inconsistent: best epoch {best.get('epoch') if isinstance(best, dict) else best!r}"
                        f" is not one of its {epoch} epochs")
    return state


def restore_state(run_dir: str, checkpoint: dict, state: TrainingState, peak_lr: float) -> None:
    """Load a checked last.pth into `state`; shapes that do not fit are a UserError before anything
    in the run folder changes."""
    source = path(run_dir, LAST)
    load_state(state.model, checkpoint["model"], source, "model")
    load_state(state.optimizer, checkpoint["optimizer"], source, "optimizer state")
    if state.scaler is not None and checkpoint.get("scaler"):
        load_state(state.scaler, checkpoint["scaler"], source, "grad scaler state")
    try:
        state.plateau = schedules.plateau_from_dict(_plateau_fields(checkpoint["scheduler"], peak_lr))
    except (TypeError, ValueError) as e:
        raise UserError(f"{source}: its scheduler state does not fit this run ({e})") from None
    state.history = list(checkpoint["history"])
    state.saved_epochs = len(state.history)


def _plateau_fields(saved, peak_lr: float) -> dict:
    """The plateau rule's state. Older last.pth files hold torch's scheduler states: a
    ReduceLROnPlateau's is translated, a LambdaLR's (a schedule without state) is empty."""
    if isinstance(saved, dict) and "num_bad_epochs" in saved:
        last_lr = (saved.get("_last_lr") or [peak_lr])[0]
        return {"best": saved["best"], "bad_epochs": saved["num_bad_epochs"], "scale": last_lr / peak_lr}
    return {} if isinstance(saved, dict) and "base_lrs" in saved else saved


def load_best(run_dir: str) -> dict:
    return load_checkpoint(path(run_dir, BEST))

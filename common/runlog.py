"""The run folder: creation, atomic writes, provenance, the train summary, checkpoints.

Every file is written to a temporary name in the same folder and renamed into place, so
a kill at any moment leaves either the old file or the new one, never half of either; a
temporary file left by a SIGKILL is removed when the run is resumed. Files get the user's
umask, like any other file they create. A full or read-only disk is a UserError naming the
file and the errno (ENOSPC, EROFS).
"""
from __future__ import annotations

import datetime
import glob
import io
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch

from common.devices import cpu_model
from common.errors import UserError, first_line, os_reason

CHECKPOINT_FORMAT = "cifar-experiments-checkpoint/2"
TEMP_SUFFIX = ".tmp"


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_current_umask()  # what open() would give a new file


def atomic_write_bytes(path: str, write) -> None:
    """Call write(file) on a temp file beside `path`, fsync, then rename it over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=TEMP_SUFFIX)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600: a teammate could not read the run
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            _remove_quietly(tmp)
        if isinstance(e, OSError):
            raise UserError(f"cannot write {path}: {os_reason(e)}") from None
        raise


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def remove_stale_temp_files(run_dir: str) -> None:
    """Temp files of writes cut short by SIGKILL: never read, so safe to delete on --resume."""
    for path in glob.glob(os.path.join(run_dir, "." + "*" + TEMP_SUFFIX)):
        _remove_quietly(path)


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN/inf; null says "not defined"
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(path: str, obj) -> None:
    text = json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def write_predictions(path: str, probabilities, labels, predicted) -> None:
    """predictions.npz: the test set's class probabilities (float16, N x K), true labels and the
    predicted class (argmax of the float32 probabilities: float16 can tie two classes), so
    paired tests and re-checks need no checkpoint."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, probabilities=np.asarray(probabilities, dtype=np.float16),
                        labels=np.asarray(labels, dtype=np.int64), predicted=np.asarray(predicted, dtype=np.int64))
    atomic_write_bytes(path, lambda f: f.write(buffer.getbuffer()))


def create_run_dir(root: str) -> str:
    """root/<YYYY-MM-DD_HH-MM-SS>[_N]: mkdir is atomic, so concurrent runs never share one."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    try:
        os.makedirs(root, exist_ok=True)
        for n in range(1000):
            path = os.path.join(root, stamp if n == 0 else f"{stamp}_{n}")
            try:
                os.mkdir(path)
                return path
            except FileExistsError:
                continue
    except OSError as e:
        raise UserError(f"cannot create a run folder under {root}: {os_reason(e)}") from None
    raise UserError(f"could not create a run folder under {root}")


def check_writable(folder: str) -> None:
    """Fail before training, not after an hour of it."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UserError(f"output folder {folder} is not writable: {os_reason(e)}") from None


# --- provenance --------------------------------------------------------------------------

def git_info(repo_dir: str) -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=repo_dir, capture_output=True, text=True, timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        return {"commit": commit or None, "dirty": dirty if commit else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment(device: torch.device) -> dict:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": __import__("torchvision").__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if sys.platform.startswith("linux"):  # CPU tensors on huge pages (common.devices.request_huge_pages)
        env["thp_mem_alloc_enable"] = os.environ.get("THP_MEM_ALLOC_ENABLE", "0")
        env["kernel_transparent_hugepage"] = _read_first_line("/sys/kernel/mm/transparent_hugepage/enabled")
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def _read_first_line(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return None


def command_line() -> str:
    return " ".join([os.path.basename(sys.executable)] + [shlex.quote(a) for a in sys.argv])


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def provenance(cfg_dict: dict, recipe_dict: dict, dataset: str, repo_root: str, device: torch.device,
               parameters: int, classes: list, data: dict, split: dict, processes: int) -> dict:
    """config.json: what ran (resolved config and the script's own recipe), where, with which code and data."""
    return {"recipe": recipe_dict, "config": cfg_dict, "dataset": dataset, "command": command_line(),
            "git": git_info(repo_root), "environment": environment(device), "seed": cfg_dict["seed"],
            "start_time": now(), "parameters": parameters, "classes": classes, "data": data, "split": split,
            "resumes": [], "processes": processes}


def record_resume(run_dir: str, record: dict, from_epoch: int, repo_root: str) -> None:
    """Append this --resume to config.json (only once the checkpoint has been accepted)."""
    record["resumes"] = record.get("resumes", []) + [
        {"time": now(), "command": command_line(), "from_epoch": from_epoch, "git": git_info(repo_root)}]
    write_json(os.path.join(run_dir, "config.json"), record)


def train_summary(experiment: str, dataset: str, epochs_planned: int, history: list, best: dict,
                  status: str, error: str | None = None) -> dict:
    """train.json: status, the best epoch by validation accuracy, totals, and every epoch's record."""
    train_seconds = sum(h["train_time_s"] for h in history)
    return {"experiment": experiment, "dataset": dataset, "status": status, "error": error,
            "epochs_planned": epochs_planned, "epochs_done": len(history),
            "best_epoch": best["epoch"], "best_val_accuracy": best["val_accuracy"] if history else None,
            "train_time_s": sum(h["epoch_time_s"] for h in history),
            "images_per_s": sum(h["train_images"] for h in history) / train_seconds if history else None,
            "epochs": history}


# --- checkpoints: what is saved and what is checked when it is read back, side by side -----

def save_checkpoint(path: str, state: dict) -> None:
    buffer = io.BytesIO()  # serialised first: a full disk then fails in our write, with its errno
    torch.save(dict(state, format=CHECKPOINT_FORMAT), buffer)
    atomic_write_bytes(path, lambda f: f.write(buffer.getbuffer()))


def load_checkpoint(path: str) -> dict:
    """Only tensors and plain containers: a checkpoint cannot run code (weights_only=True)."""
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot load checkpoint {path}: {first_line(e)} (empty, truncated or not a torch "
                        f"file)") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a checkpoint written by this version of the repo")
    return state


TRAINING_STATE_KEYS = ("experiment", "dataset", "epoch", "model", "optimizer", "scheduler", "history", "best")


def check_training_state(path: str, state: dict, experiment: str, dataset: str, epochs: int) -> None:
    """last.pth must fit its run: the right experiment and dataset, an epoch within the plan, a
    history of exactly that many epochs and a best epoch inside it. Shapes are checked on load."""
    missing = [k for k in TRAINING_STATE_KEYS if k not in state]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}: not a last.pth of this repo")
    if (state["experiment"], state["dataset"]) != (experiment, dataset):
        raise UserError(f"{path} belongs to {state['experiment']} {state['dataset']}, not to this run "
                        f"({experiment} {dataset})")
    epoch, history, best = state["epoch"], state["history"], state["best"]
    if not (isinstance(epoch, int) and 0 <= epoch <= epochs):
        raise UserError(f"{path} says epoch {epoch!r}, outside this run's 0..{epochs}")
    if not (isinstance(history, list) and len(history) == epoch
            and all(isinstance(h, dict) and h.get("epoch") == i + 1 for i, h in enumerate(history))):
        raise UserError(f"{path} is inconsistent: its history does not hold epochs 1..{epoch}")
    if not (isinstance(best, dict) and isinstance(best.get("epoch"), int) and 0 <= best["epoch"] <= epoch
            and (epoch == 0) == (best["epoch"] == 0)):
        raise UserError(f"{path} is inconsistent: best epoch {best.get('epoch') if isinstance(best, dict) else best!r}"
                        f" is not one of its {epoch} epochs")


def load_into(module_or_optimizer, state: dict, path: str, what: str) -> None:
    """load_state_dict with a one-line error naming the file (wrong shapes, missing keys)."""
    try:
        module_or_optimizer.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
        detail = " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
        raise UserError(f"{path}: its {what} does not fit this run ({detail[:240]})") from None


# --- TensorBoard ---------------------------------------------------------------------------

def tensorboard_writer(run_dir: str):
    """A SummaryWriter into the run folder; TensorBoard is optional, so say how to get it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(log_dir=run_dir)


# --- the training state: saved after every epoch, restored by --resume ---------------------

@dataclass
class TrainingState:
    """What an epoch changes and --resume restores. Each epoch's randomness comes from
    (seed, epoch) alone (common.train.epoch_seed), so no RNG state needs saving."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object = None                      # torch.amp.GradScaler on fp16 GPUs, else None
    history: list = field(default_factory=list)  # one epoch_record per finished epoch
    best: dict = field(default_factory=lambda: {"epoch": 0, "val_accuracy": -1.0})


def save_training_state(run_dir: str, state: TrainingState, experiment: str, dataset: str, config: dict,
                        save_every: int, improved: bool) -> None:
    """last.pth: everything --resume needs. best.pth and epoch-N.pth: the weights, with their
    epoch and validation metrics (a quarter of last.pth's size with Adam's two moments)."""
    epoch = len(state.history)
    last = state.history[-1] if state.history else {}
    weights = {"experiment": experiment, "dataset": dataset, "epoch": epoch, "model": state.model.state_dict(),
               "val_accuracy": last.get("val_accuracy"), "val_loss": last.get("val_loss"), "config": config}
    if improved:
        save_checkpoint(os.path.join(run_dir, "best.pth"), weights)
    if save_every and epoch and epoch % save_every == 0:
        save_checkpoint(os.path.join(run_dir, f"epoch-{epoch}.pth"), weights)
    save_checkpoint(os.path.join(run_dir, "last.pth"), dict(
        weights, optimizer=state.optimizer.state_dict(), scheduler=state.scheduler.state_dict(),
        scaler=state.scaler.state_dict() if state.scaler is not None else None,
        history=state.history, best=state.best))


def restore_training_state(path: str, checkpoint: dict, state: TrainingState) -> None:
    """Load a last.pth that passed check_training_state into `state`; shapes that do not fit are a
    UserError before anything in the run folder changes."""
    load_into(state.model, checkpoint["model"], path, "model")
    load_into(state.optimizer, checkpoint["optimizer"], path, "optimizer state")
    load_into(state.scheduler, checkpoint["scheduler"], path, "scheduler state")
    if state.scaler is not None and checkpoint.get("scaler"):
        load_into(state.scaler, checkpoint["scaler"], path, "grad scaler state")
    state.history, state.best = list(checkpoint["history"]), dict(checkpoint["best"])


def epoch_record(epoch: int, train: dict, val: dict, lr: float) -> dict:
    """One entry of train.json's `epochs` (accuracies in [0, 1], times in seconds)."""
    return {"epoch": epoch, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
            "val_loss": val["loss"], "val_accuracy": val["accuracy"], "lr": lr,
            "train_time_s": train["seconds"], "epoch_time_s": train["seconds"] + val["seconds"],
            "train_images": train["images"], "images_per_s": train["images"] / train["seconds"]}

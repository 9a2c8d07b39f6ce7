"""The run folder: this module names every file in it, writes each atomically, and reads each
back through one validator per kind, used by --resume and compare alike.

    config.json        what ran: recipe, options, data, code, hardware (written once, + resumes)
    train.json         status and every epoch's record (rewritten after each epoch)
    test.json          test metrics of best.pth (its presence marks a complete run)
    predictions.npz    the test set's class probabilities behind test.json
    last.pth           the training state --resume needs; best.pth, epoch-N.pth: weights
    *.png, model_summary.txt, log.txt (a sweep member's console), .lock (who trains it now)

Every write goes through common.files (temp-then-rename), so a kill leaves each file whole;
a damaged or foreign file is a UserError naming it, before anything in the folder changes.
"""
from __future__ import annotations

import datetime
import fcntl
import io
import json
import math
import os
import re
import socket
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from common import provenance
from common.config import DATASETS, Options, Recipe, from_dict, knobs, to_dict
from common.errors import UserError, os_reason
from common.files import FILE_MODE, write_bytes

CONFIG, TRAIN, TEST, PREDICTIONS = "config.json", "train.json", "test.json", "predictions.npz"
LAST, BEST, SUMMARY, LOG, LOCK = "last.pth", "best.pth", "model_summary.txt", "log.txt", ".lock"
LOSS_PNG, ACCURACY_PNG = "loss.png", "accuracy.png"
CONFUSION_PNG, ERRORS_PNG, CALIBRATION_PNG = "confusion_matrix.png", "errors.png", "calibration.png"
DATASET_FOLDERS = {"cifar10": "cifar_10", "cifar100": "cifar_100"}
PLAN_FILE = "sweep.json"  # a plan's record, in the folder above its members' dataset folders
STATUSES = RUNNING, COMPLETED, INTERRUPTED, FAILED = ("running", "completed", "interrupted", "failed")  # train.json's
# A run folder's status beside those (status(), common.plans.slurm): its state seen from outside.
NOT_STARTED, KILLED, DAMAGED, QUEUED = "not started", "killed", "damaged", "queued"


def experiment_folders(repo_root: str, smoke: bool = False) -> list:
    """The user's own runs: every ex_N/ beside the scripts (the shipped ones are under results/), and
    with `smoke` the ex_N_smoke/ of --smoke runs too."""
    import glob

    pattern = r"ex_\d+(_smoke)?" if smoke else r"ex_\d+"
    return sorted(d for d in glob.glob(os.path.join(repo_root, "ex_*"))
                  if os.path.isdir(d) and re.fullmatch(pattern, os.path.basename(d)))


def run_folders(root: str) -> list:
    """Every run folder at or below `root` (a folder holding config.json or train.json), sorted."""
    found = []
    for folder, subfolders, files in os.walk(root):
        if CONFIG in files or TRAIN in files:
            found.append(folder)
            subfolders.clear()  # a run folder holds no runs
        subfolders.sort()
    return sorted(found)


def path(run_dir: str, name: str) -> str:
    return os.path.join(run_dir, name)


def epoch_checkpoint(epoch: int) -> str:
    return f"epoch-{epoch}.pth"


def stamp() -> str:
    """Local time as run folders and unnamed plans are named: 2026-12-03_10-20-16."""
    return datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def create(root: str) -> str:
    """root/<YYYY-MM-DD_HH-MM-SS>[_N]: mkdir is atomic, so concurrent runs never share one."""
    now = stamp()
    try:
        os.makedirs(root, exist_ok=True)
        for n in range(1000):
            folder = os.path.join(root, now if n == 0 else f"{now}_{n}")
            try:
                os.mkdir(folder)
                return folder
            except FileExistsError:
                continue
    except OSError as e:
        raise UserError(f"cannot create a run folder under {root}: {os_reason(e)}") from None
    raise UserError(f"could not create a run folder under {root}")


def is_complete(run_dir: str) -> bool:
    return os.path.isfile(path(run_dir, TEST))


# --- the lock: one process trains a run folder -------------------------------------------

class Busy(UserError):
    """The run folder's lock is held by another process: it is running elsewhere, which is no failure."""


BUSY_EXIT = 75  # EX_TEMPFAIL: a plan member's exit code when another process holds its lock


_HELD: dict = {}  # realpath of a lock file this process holds -> its fd
_CLAIMED: set = set()  # of those, the ones whose run went ahead (claim)


def holder_description() -> str:
    job = os.environ.get("SLURM_ARRAY_JOB_ID") and f"{os.environ['SLURM_ARRAY_JOB_ID']}_" \
        f"{os.environ.get('SLURM_ARRAY_TASK_ID')}" or os.environ.get("SLURM_JOB_ID")
    return f"PID {os.getpid()} on {socket.gethostname()}" + (f", Slurm job {job}" if job else "")


@contextmanager
def locked(run_dir: str):
    """Hold run_dir's lock (a POSIX lock: the kernel drops it when the holder dies, even by SIGKILL,
    so a stale lock file is simply taken over). Held elsewhere: Busy, naming the holder. Taken once
    per run, by its member runner (common.plans.member); a complete run's lock file is removed on release."""
    lock_path = os.path.realpath(path(run_dir, LOCK))
    if lock_path in _HELD:  # POSIX locks belong to the process: a second fd's close would drop the first's
        raise RuntimeError(f"{lock_path} is locked by this process already")
    created = not os.path.exists(lock_path)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    except OSError as e:
        raise UserError(f"cannot lock {run_dir}: {os_reason(e)}") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 500).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise Busy(f"{run_dir} is being trained by {holder}; two processes must not train one run "
                   f"folder: wait for it, or stop it first") from None
    _HELD[lock_path] = fd
    try:
        yield
    except BaseException:
        if created and lock_path not in _CLAIMED:
            os.remove(lock_path)  # refused before the run went ahead: leave the folder as it was
        raise
    finally:
        if is_complete(run_dir) and os.path.exists(lock_path):
            os.remove(lock_path)  # nothing will train it again: no lock file left behind
        del _HELD[lock_path]
        _CLAIMED.discard(lock_path)
        os.close(fd)


def remove_if_unused(run_dir: str) -> None:
    """Remove a folder this process made that holds nothing, or only a lock file nobody holds (a stop
    landed between taking the lock and the run's first write)."""
    try:
        if set(os.listdir(run_dir)) == {LOCK} and not is_locked(run_dir):
            os.remove(path(run_dir, LOCK))
        if not os.listdir(run_dir):
            os.rmdir(run_dir)
    except OSError:
        pass  # gone already, or not ours to remove: leave it


def is_locked(run_dir: str) -> bool:
    """Whether a process (this one included) holds run_dir's lock now."""
    lock_path = os.path.realpath(path(run_dir, LOCK))
    if lock_path in _HELD:
        return True
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)  # drops the probe's own lock (this process held none on the file)


def status(run_dir: str) -> str:
    """What is on disk, as the last writes left it: completed (test.json, written last), running (its
    lock is held), interrupted, failed, killed (train.json says running, or completed without a
    test.json, and no process holds the lock: --resume continues it, into its test if its epochs
    are done), damaged, or not started."""
    if is_complete(run_dir):
        return COMPLETED
    if is_locked(run_dir):
        return RUNNING
    if not os.path.isfile(path(run_dir, TRAIN)):
        return NOT_STARTED
    try:
        written = read_json(path(run_dir, TRAIN)).get("status")
    except (UserError, AttributeError):
        return DAMAGED
    return KILLED if written in (RUNNING, COMPLETED) else str(written)


def claim(run_dir: str) -> None:
    """Write this process into the lock file it holds (once the run goes ahead); no lock held
    (experiment.run called from Python, outside a member runner): nothing to write."""
    lock_path = os.path.realpath(path(run_dir, LOCK))
    fd = _HELD.get(lock_path)
    if fd is None:
        return
    _CLAIMED.add(lock_path)
    os.ftruncate(fd, 0)
    os.pwrite(fd, holder_description().encode(), 0)


# --- JSON ----------------------------------------------------------------------------------

def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN/inf; null says "not defined"
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(file_path: str, obj) -> None:
    write_bytes(file_path, (json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n").encode())


def read_json(file_path: str):
    """The parsed file; missing, unreadable, invalid or absurdly nested JSON is a UserError naming it,
    and so is anything but a regular file (a FIFO would block the read, /dev/zero never end it)."""
    if os.path.exists(file_path) and not os.path.isfile(file_path):
        raise UserError(f"{file_path} is not a regular file")
    try:
        with open(file_path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{file_path} does not exist") from None
    except (OSError, ValueError, RecursionError) as e:
        raise UserError(f"{file_path} is damaged: {type(e).__name__}: {str(e)[:120]}") from None


def _finite(value, low: float = -math.inf, high: float = math.inf) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 1e300
            and math.isfinite(value) and low <= value <= high)


# --- config.json -----------------------------------------------------------------------------

@dataclass(frozen=True)
class RunRecord:
    """config.json, validated."""
    experiment: str
    dataset: str
    recipe: Recipe
    options: Options
    script_recipe: Recipe | None   # None where config.json lacks it (compare says "recipe not recorded")
    processes: int
    data_sha256: str | None
    environment: dict
    git: dict
    raw: dict
    defaulted: tuple = ()          # recipe and option fields the file lacks (read with their defaults)


def config_record(experiment: str, dataset: str, recipe: Recipe, options: Options, script_recipe: Recipe,
                  repo_root: str, device, numerics, parameters: int, classes: list, data: dict, split: dict,
                  processes: int) -> dict:
    """config.json: what ran (the resolved fields and the script's own recipe), where, with which code and data."""
    return {"experiment": experiment, "dataset": dataset, "recipe": to_dict(script_recipe),
            "config": {"experiment": experiment, **to_dict(recipe), **to_dict(options)},
            "command": provenance.command_line(), "git": provenance.git_info(repo_root),
            "environment": provenance.environment(device, numerics), "seed": options.seed, "start_time": provenance.now(),
            "parameters": parameters, "classes": classes, "data": data, "split": split, "resumes": [],
            "processes": processes}


def read_config(run_dir: str) -> RunRecord:
    file_path = path(run_dir, CONFIG)
    if not os.path.isfile(file_path):
        raise UserError(f"{run_dir} is not a run folder (no {CONFIG})")
    raw = read_json(file_path)
    if not isinstance(raw, dict):
        raise UserError(f"{file_path} is damaged: not an object")
    config = raw.get("config")
    recipe, missing_recipe = from_dict(Recipe, config, f"{file_path}: config")
    options, missing_options = from_dict(Options, config, f"{file_path}: config")
    experiment = raw.get("experiment", config.get("experiment"))
    problem = _record_problem(raw, experiment, options)
    if problem:
        raise UserError(f"{file_path} is damaged: {problem}")
    script = raw.get("recipe")
    script_recipe = from_dict(Recipe, script, f"{file_path}: recipe")[0] if script is not None else None
    data = raw.get("data") or {}
    return RunRecord(experiment, raw["dataset"], recipe, options, script_recipe, raw.get("processes", 1),
                     data.get("test_file_sha256"), raw.get("environment", {}), raw.get("git") or {}, raw,
                     tuple(missing_recipe + missing_options))


def recipe_changes(record) -> dict:
    """{field: value} where the run's recipe differs from its script's own (recorded in config.json)."""
    if record.script_recipe is None:
        return {}
    ours, theirs = to_dict(record.recipe), to_dict(record.script_recipe)
    changes = {name: ours[name] for name in knobs(Recipe) if ours[name] != theirs[name]}
    if record.options.smoke:
        changes.pop("pretrained", None)  # --smoke never downloads weights
    for name, (k, default) in knobs(Options).items():  # options that change the numbers, where not the default
        if k.changes_results and name not in ("smoke", "weights") and getattr(record.options, name) != default:
            changes[name] = getattr(record.options, name)
    return changes


def describe_changes(record, changes: dict) -> str:
    if record.script_recipe is None:
        return f"{record.recipe.epochs} epochs; recipe not recorded"
    words = []
    for name, value in changes.items():
        if name == "epochs":
            words.append(f"{value} of {record.script_recipe.epochs} epochs")
        elif name == "pretrained":
            words.append("ImageNet weights" if value else "no ImageNet weights")
        else:
            words.append(f"{name.replace('_', ' ')} {short(value)}")
    if record.processes > 1:
        words.append(f"{record.processes} processes")
    return "; ".join(words) or "—"


def short(value) -> str:
    if isinstance(value, list):
        return "/".join(short(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _record_problem(raw: dict, experiment, options: Options) -> str | None:
    """What is wrong with config.json's own fields, if anything."""
    if raw.get("dataset") not in DATASETS:
        return "no dataset named"
    if not (isinstance(experiment, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", experiment)):
        return f"'experiment' is {experiment!r}"
    if raw.get("seed", options.seed) != options.seed:
        return "'seed' differs from config's"
    if not (isinstance(raw.get("processes", 1), int) and raw.get("processes", 1) >= 1):
        return "'processes' is not a positive whole number"
    for key, kind in (("environment", dict), ("git", dict), ("data", dict), ("resumes", list)):
        if key in raw and not isinstance(raw[key], kind):
            return f"'{key}' is not a{'n' if kind is dict and key == 'environment' else ''} {kind.__name__}"
    env = raw.get("environment", {})
    if any(not isinstance(v, (str, int, float, bool, type(None))) for v in env.values()):
        return "'environment' holds a value that is not a string or number"
    sha = (raw.get("data") or {}).get("test_file_sha256")
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        return "'data.test_file_sha256' is not a sha256"
    return None


def record_resume(run_dir: str, raw: dict, from_epoch: int, repo_root: str, device: str) -> None:
    """Append this --resume to config.json (only once the checkpoint has been accepted), with the device it uses."""
    raw["resumes"] = raw.get("resumes", []) + [
        {"time": provenance.now(), "command": provenance.command_line(), "from_epoch": from_epoch,
         "git": provenance.git_info(repo_root), "device": device}]
    write_json(path(run_dir, CONFIG), raw)


# --- train.json and test.json ------------------------------------------------------------------

def best_epoch(history: list) -> dict | None:
    """The epoch record with the highest validation accuracy, the first of equals (the selection rule)."""
    return max(history, key=lambda h: h["val_accuracy"], default=None)  # max keeps the first maximum


def train_summary(experiment: str, dataset: str, epochs_planned: int, history: list, status: str,
                  error: str | None = None, diverged: bool = False) -> dict:
    """train.json: status, the best epoch by validation accuracy (the first of equals), totals, every epoch."""
    best = best_epoch(history)
    train_seconds = sum(h["train_time_s"] for h in history)
    return {"experiment": experiment, "dataset": dataset, "status": status, "error": error,
            **({"diverged": True} if diverged else {}),  # a recipe that fails: resuming it cannot help
            "epochs_planned": epochs_planned, "epochs_done": len(history),
            "best_epoch": best["epoch"] if best else 0, "best_val_accuracy": best["val_accuracy"] if best else None,
            "train_time_s": sum(h["epoch_time_s"] for h in history),
            "images_per_s": sum(h["train_images"] for h in history) / train_seconds if history else None,
            "epochs": history}


EPOCH_NUMBERS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_time_s",
                 "train_time_s", "train_images")


def are_epoch_records(epochs) -> bool:
    """Records of epochs 1..N, each holding every number train.json's summary reads, finite."""
    return isinstance(epochs, list) and all(
        isinstance(e, dict) and e.get("epoch") == i + 1 and all(_finite(e.get(k)) for k in EPOCH_NUMBERS)
        for i, e in enumerate(epochs))


def read_train(run_dir: str) -> dict:
    file_path = path(run_dir, TRAIN)
    train = read_json(file_path)
    if not (isinstance(train, dict) and train.get("status") in STATUSES):
        raise UserError(f"{file_path} is damaged: no status")
    epochs = train.get("epochs")
    if not are_epoch_records(epochs):
        raise UserError(f"{file_path} is damaged: its epochs are not records of finite numbers 1..N")
    if epochs and not (_finite(train.get("best_epoch"), 1, len(epochs)) and _finite(train.get("train_time_s"), 0)):
        raise UserError(f"{file_path} is damaged: best_epoch or train_time_s is not a number")
    return train


TEST_NUMBERS = {"accuracy": (0, 1), "f1": (0, 1), "loss": (0, math.inf), "test_time_s": (0, math.inf)}


def read_test(run_dir: str) -> dict:
    file_path = path(run_dir, TEST)
    test = read_json(file_path)
    if not isinstance(test, dict):
        raise UserError(f"{file_path} is damaged: not an object")
    for key, (low, high) in TEST_NUMBERS.items():
        if not _finite(test.get(key), low, high):
            raise UserError(f"{file_path} is damaged: '{key}' is {test.get(key)!r}, not a finite number in "
                            f"[{low}, {high}]")
    for key in ("auc", "auc_hard_labels", "top5_accuracy"):
        if key in test and test[key] is not None and not _finite(test[key], 0, 1):
            raise UserError(f"{file_path} is damaged: '{key}' is {test[key]!r}")
    return test


def write_predictions(run_dir: str, probabilities, labels, predicted) -> None:
    """predictions.npz: the test set's class probabilities (float16, N x K), true labels and the
    predicted class (argmax of the float32 probabilities: float16 can tie two classes)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, probabilities=np.asarray(probabilities, dtype=np.float16),
                        labels=np.asarray(labels, dtype=np.int64), predicted=np.asarray(predicted, dtype=np.int64))
    write_bytes(path(run_dir, PREDICTIONS), buffer.getvalue())


def read_predictions(run_dir: str) -> dict:
    """{probabilities, labels, predicted}, checked for matching lengths."""
    file_path = path(run_dir, PREDICTIONS)
    if not os.path.isfile(file_path):
        raise UserError(f"{file_path} is missing or not a regular file")
    try:
        with np.load(file_path, allow_pickle=False) as kept:
            out = {k: kept[k] for k in ("probabilities", "labels", "predicted")}
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{file_path} is missing or damaged: {type(e).__name__}: {str(e)[:120]}") from None
    n = len(out["labels"])
    if out["probabilities"].ndim != 2 or len(out["probabilities"]) != n or len(out["predicted"]) != n:
        raise UserError(f"{file_path} is damaged: its arrays have different lengths")
    return out


def write_text(run_dir: str, name: str, text: str) -> None:
    write_bytes(path(run_dir, name), text.encode())

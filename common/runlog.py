"""The run folder: creation, atomic writes, provenance, checkpoints.

Every file is written to a temporary name in the same folder and renamed into place, so
a kill at any moment leaves either the old file or the new one, never half of either.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile

import numpy as np
import torch

CHECKPOINT_FORMAT = "cifar-experiments-checkpoint/1"


class RunError(Exception):
    """A problem with a run folder or checkpoint; printed as one line, exit 1."""


def atomic_write_bytes(path: str, write) -> None:
    """Call write(file) on a temp file beside `path`, fsync, then rename it over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise


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


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def create_run_dir(root: str) -> str:
    """root/<YYYY-MM-DD_HH-MM-SS>[_N]: mkdir is atomic, so concurrent runs never share one."""
    os.makedirs(root, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    for n in range(1000):
        path = os.path.join(root, stamp if n == 0 else f"{stamp}_{n}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise RunError(f"could not create a run folder under {root}")


def check_writable(folder: str) -> None:
    """Fail before training, not after an hour of it."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise RunError(f"output folder {folder} is not writable: {e.strerror or e}") from None


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
    if sys.platform.startswith("linux"):  # CPU tensors on huge pages (common.train.request_huge_pages)
        env["thp_mem_alloc_enable"] = os.environ.get("THP_MEM_ALLOC_ENABLE", "0")
        env["kernel_transparent_hugepage"] = _read_first_line("/sys/kernel/mm/transparent_hugepage/enabled")
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def cpu_model() -> str:
    """The processor's marketing name: bit-for-bit reproducibility on a CPU holds only on the same model."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _read_first_line(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return None


def command_line() -> str:
    return " ".join([os.path.basename(sys.executable)] + [_quote(a) for a in sys.argv])


def _quote(arg: str) -> str:
    import shlex
    return shlex.quote(arg)


# --- RNG state, kept in checkpoints as plain tensors so weights_only=True can load them ---

def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str, state: dict) -> None:
    atomic_write_bytes(path, lambda f: torch.save(dict(state, format=CHECKPOINT_FORMAT), f))


def load_checkpoint(path: str) -> dict:
    """Only tensors and plain containers: a checkpoint cannot run code (weights_only=True)."""
    if not os.path.isfile(path):
        raise RunError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RunError(f"cannot load checkpoint {path}: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path} is not a checkpoint written by this repo")
    return state


def tensorboard_writer(run_dir: str):
    """A SummaryWriter into the run folder; TensorBoard is optional, so say how to get it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RunError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(log_dir=run_dir)

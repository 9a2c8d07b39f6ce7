"""What ran where: the code version, the software and hardware, the command line.

Recorded in config.json (and each --resume's entry) so that a number can always be traced
to the commit, torch build, device and command that produced it.
"""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys

import numpy as np
import torch

from common.devices import DTYPE_NAMES, cpu_model, native_cpu_bf16


def git_info(repo_dir: str) -> dict:
    """{commit, dirty}: dirty means tracked files differed from the commit when the run started."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=repo_dir, capture_output=True, text=True, timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        return {"commit": commit or None, "dirty": dirty if commit else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment(device: torch.device, numerics) -> dict:
    """Where a run ran; `numerics` (common.devices.Numerics): the precision and layout it ran in."""
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "cpu": cpu_model(),
        # the vector ISA torch's CPU kernels use (AVX2, AVX512, ...): it changes their rounding, so the numbers
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "precision": DTYPE_NAMES[numerics.precision],  # what the math ran in: float32, bfloat16 or float16
        "layout": numerics.layout,  # nchw or channels_last: kept by --resume, whatever `auto` says there
        "native_cpu_bf16": native_cpu_bf16(),
    }
    if sys.platform.startswith("linux"):  # CPU tensors on huge pages (common.devices.request_huge_pages)
        env["thp_mem_alloc_enable"] = os.environ.get("THP_MEM_ALLOC_ENABLE", "0")
        env["kernel_transparent_hugepage"] = _read_first_line("/sys/kernel/mm/transparent_hugepage/enabled")
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def _version(package: str) -> str | None:
    """An installed package's version without importing it (torchvision's import alone takes seconds)."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _read_first_line(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return None


def command_line() -> str:
    """The command as a shell would take it back (paths with spaces quoted)."""
    return " ".join([os.path.basename(sys.executable)] + [shlex.quote(a) for a in sys.argv])


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")

"""Where the work runs: device choice, mixed precision, memory layout, huge pages, a description.

Small helpers that the training loop and the run folder share; the reasons live here, the
measurements behind them in README's Performance section.
"""
from __future__ import annotations

import os
import platform
from contextlib import contextmanager, nullcontext

import torch

from common.errors import OutOfMemory, UserError

DEVICE_TYPES = ("cpu", "cuda", "mps")


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def check_device(name: str) -> str | None:
    """None if `name` can train here, else why not (for a usage error before anything starts)."""
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except RuntimeError:
        return f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps"
    if device.type not in DEVICE_TYPES:
        return f"cannot train on {name!r}; use auto, cpu, cuda, cuda:N or mps"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return f"{name} asked for, but torch sees no CUDA GPU"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"{name} asked for, but torch sees {torch.cuda.device_count()} CUDA GPU(s)"
    if device.type == "mps" and not _mps_available():
        return "mps asked for, but MPS is not available"
    return None


def select_device(name: str, saved: bool = False) -> torch.device:
    """`saved`: the name came from a run's config.json (--resume), so say how to pick another."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    problem = check_device(name)
    if problem:
        raise UserError(f"{problem}; this run's config.json names device {name!r}: resume it with --device cpu "
                        f"(or another device) to continue here" if saved else problem)
    return torch.device(name)


def request_huge_pages() -> None:
    """Back CPU tensors of 2 MiB and more with transparent huge pages (call before the first one).

    Each fresh large CPU tensor (a preprocessed batch, an activation) is otherwise faulted in
    4 KiB page by 4 KiB page, which costs the CPU pipeline a visible share of its speed (see
    docs/performance.md). THP_MEM_ALLOC_ENABLE is torch's own switch
    (c10/core/impl/alloc_cpu.cpp), read at the first CPU allocation; results do not change.
    A value the user set wins: THP_MEM_ALLOC_ENABLE=0 turns it off.
    """
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def amp_dtype(device: torch.device, enabled: bool):
    """bf16 autocast where the GPU supports it, fp16 (with a grad scaler) on older GPUs, none on CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def use_channels_last(device: torch.device, cpu_channels_last: bool) -> bool:
    """channels_last is the layout tensor cores want on CUDA; on a CPU it depends on the model
    (its entry's cpu_channels_last, from the benchmark)."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_channels_last)


def memory_format(channels_last: bool):
    return torch.channels_last if channels_last else torch.contiguous_format


def cpu_model() -> str:
    """The processor's name: bit-for-bit reproducibility on a CPU holds only on the same model."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def describe(device: torch.device) -> str:
    """'NVIDIA H100 80GB HBM3 (cuda:0)' or 'CPU AMD EPYC, 2 threads': the header's first words."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    if device.type == "cpu":
        return f"CPU {cpu_model()}, {torch.get_num_threads()} threads"
    return str(device)


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or the CPU allocator's RuntimeError."""
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e))


@contextmanager
def memory_explained(batch_size: int, image_size: int, then: str = ""):
    """Out of memory inside: one line naming what to lower (and `then`, what keeps the run), not the allocator's traceback."""
    try:
        yield
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        asked = str(e).split("you tried to allocate ")[-1].split(" bytes")[0]
        size = f" (asked for {int(asked) / 2**30:.1f} GiB more)" if asked.isdigit() else ""
        raise OutOfMemory(f"out of memory{size} at batch size {batch_size} and image size {image_size} px: "
                          f"lower --batch-size or --image-size{then}") from None

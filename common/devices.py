"""Where the work runs: device choice, precision and memory layout, huge pages, a description.

Small helpers that the training loop and the run folder share; the reasons live here, the
measurements behind them in README's Performance section.
"""
from __future__ import annotations

import os
import platform
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

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


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # None: no autocast
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # config.json's environment.precision
LAYOUTS = ("nchw", "channels_last")


@dataclass(frozen=True)
class Numerics:
    """What a run's arithmetic runs in and the memory layout of its tensors, with the reason for them."""
    precision: str      # fp32, bf16 or fp16 (autocast)
    layout: str         # nchw or channels_last
    reason: str         # a few words for the header: why this precision here

    @property
    def dtype(self):
        return DTYPES[self.precision]

    @property
    def channels_last(self) -> bool:
        return self.layout == "channels_last"


def native_cpu_bf16() -> bool:
    """torch's own check for bf16 arithmetic in hardware (avx512_bf16 or AMX): elsewhere bf16 is emulated, many times slower."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return bool(torch.cpu._is_avx512_bf16_supported() or amx())


def choose_numerics(device: torch.device, asked: str, cpu_layout: str, cpu_bf16_layout: str | None) -> Numerics:
    """--precision resolved for this device and model. `cpu_layout`: the model's fp32 layout on a CPU;
    `cpu_bf16_layout`: its bf16 layout where bf16 pays on a CPU (None: it does not). On CUDA: bf16 where
    supported, else fp16 with a grad scaler, channels_last (tensor cores); MPS: fp32."""
    if device.type == "cuda":
        if asked == "fp32":
            return Numerics("fp32", "channels_last", "asked for")
        if asked == "bf16" and not torch.cuda.is_bf16_supported():
            raise UserError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16; use fp16 or auto")
        precision = asked if asked != "auto" else "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return Numerics(precision, "channels_last", "asked for" if asked != "auto" else "auto: CUDA autocast")
    if asked == "fp16":
        raise UserError(f"--precision fp16 is for CUDA GPUs (with a grad scaler); on {device.type} use bf16 or fp32")
    if device.type != "cpu":
        if asked == "bf16":
            raise UserError(f"--precision bf16 is not supported on {device.type} here; use fp32 or auto")
        return Numerics("fp32", "nchw", "auto: fp32 on MPS" if asked == "auto" else "asked for")
    if asked == "fp32":
        return Numerics("fp32", cpu_layout, "asked for")
    if asked == "bf16":
        return Numerics("bf16", cpu_bf16_layout or cpu_layout,
                        "asked for" if native_cpu_bf16() else "asked for; emulated: this CPU has no native bf16, slow")
    if not native_cpu_bf16():
        return Numerics("fp32", cpu_layout, "auto: this CPU has no native bf16")
    if cpu_bf16_layout is None:
        return Numerics("fp32", cpu_layout, "auto: bf16 is off for this model on a CPU, see docs/performance.md")
    return Numerics("bf16", cpu_bf16_layout, "auto: native bf16 on this CPU")


def recorded_numerics(environment: dict, device: torch.device, cpu_layout: str) -> Numerics | None:
    """The numerics a run started with (config.json's environment), which its resume keeps whatever
    `auto` would choose now; None where the run recorded no precision. A run from before layouts were
    recorded ran fp32 in its model's fp32 layout on a CPU, channels_last on CUDA."""
    name = {v: k for k, v in DTYPE_NAMES.items()}.get(environment.get("precision"))
    if name is None:
        return None
    layout = environment.get("layout")
    if layout not in LAYOUTS:
        layout = "channels_last" if device.type == "cuda" else cpu_layout if device.type == "cpu" else "nchw"
    if device.type == "cpu" and name == "bf16" and not native_cpu_bf16():
        return Numerics(name, layout, "kept from the run's start; emulated here: this CPU has no native bf16, slow")
    if device.type != "cuda" and name == "fp16":
        raise UserError("this run trained in fp16 on a CUDA GPU: resume it on one (--device cuda)")
    return Numerics(name, layout, "kept from the run's start")


def autocast(device: torch.device, dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


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

"""Data-parallel training with torchrun: process group set-up and the few collectives we need.

    torchrun --nproc_per_node=2 ex_1.py ...          # gloo on CPU, nccl on GPUs

Each process trains on its own shard of every epoch's shuffled order (batch size split
between processes, so the global batch stays --batch-size). Validation and test split the
images into contiguous, non-overlapping chunks and gather the logits back in order: every
image is counted exactly once (no DistributedSampler padding). Only rank 0 writes files.
Without torchrun (WORLD_SIZE unset) every function here is a no-op.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup() -> None:
    """Join the process group when started by torchrun; pick this process's GPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        use_cuda = torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def local_device_name(requested: str) -> str:
    """Under torchrun with GPUs, each process uses cuda:LOCAL_RANK."""
    if dist.is_initialized() and torch.cuda.is_available() and requested in ("auto", "cuda"):
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return requested


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_concat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate each rank's (CPU) tensor in rank order; chunks may differ in length."""
    if not dist.is_initialized():
        return tensor
    parts = [None] * world_size()
    dist.all_gather_object(parts, tensor)
    return torch.cat(parts)


def broadcast(obj):
    """rank 0's value of `obj` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def peer_failure(e: BaseException) -> bool:
    """Whether `e` is a collective failing because another process of the job died."""
    if world_size() <= 1 and not dist.is_initialized():
        return False
    return isinstance(e, getattr(dist, "DistError", ())) or any(
        words in str(e) for words in ("closed by peer", "Connection reset", "NCCL", "gloo"))


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()

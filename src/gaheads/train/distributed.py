"""Process-group set-up for DDP under torchrun / torch.distributed.launch, and the few collectives the trainer uses.

torchrun and ``python -m torch.distributed.launch`` both export RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; with WORLD_SIZE > 1 the trainer joins the group (nccl on GPU,
gloo on CPU). Without them everything here degrades to single-process no-ops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .config import ConfigError


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: its rank, the world size, its local rank and device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(requested: str | None, local_rank: int) -> torch.device:
    """``--device`` or, by default, this rank's GPU when CUDA is available, else the CPU."""
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError as e:
            raise ConfigError(f"--device {requested!r} is not a device name (cpu, cuda, cuda:N)") from e
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(f"--device {requested} but CUDA is not available here")
            if device.index is None:
                device = torch.device("cuda", local_rank % torch.cuda.device_count())
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(device: str | None = None, local_rank: int = 0) -> DistContext:
    """Join the process group when launched with WORLD_SIZE > 1; the context for this process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", local_rank))
    dev = pick_device(device, local)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            dist.init_process_group("nccl", device_id=dev)
        else:
            dist.init_process_group("gloo")
    if world > 1:
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistContext(rank, world, local, dev)


def teardown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (``sum``, ``max`` or ``mean``) when distributed; the tensor either way."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        if op == "mean":
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor /= dist.get_world_size()
        else:
            dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order ([obj] when not distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()

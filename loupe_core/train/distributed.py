"""Process group set-up and the split of the global batch (the collectives, over
``DistContext.ranks``, are ``loupe_core.global_batch``'s).

Launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), :func:`init_distributed`
joins the ``env://`` process group: gloo on the CPU, nccl on GPUs. Otherwise everything here is
the identity for one process. The global batch of G rows is split by :func:`shard_bounds` so
that W processes with A accumulation micro-batches each see exactly the global batch one process
sees: micro-batch m of every rank together is the one-process micro-batch m, rows
``[m*G/A, (m+1)*G/A)``, rank r holding ``[m*G/A + r*b, m*G/A + (r+1)*b)`` with b = G/(W*A) (with
A = 1: rank r holds ``[r*G/W, (r+1)*G/W)``). Terms that are means or contrast sets over a
micro-step (``loupe_core.global_batch``) are then the same for any W.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from shapley_kernels.checks import check_device
from loupe_core.global_batch import Ranks
from loupe_core.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def ranks(self):
        """The ``global_batch.Ranks`` (default group) the trainer hands the model with each batch;
        None for one process."""
        return Ranks(self.rank, self.world_size) if self.distributed else None


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"``: the local GPU when there is one, else the CPU; ``"cuda"``: the local GPU;
    otherwise ``torch.device(name)``. ValueError naming ``train.device`` for a device this install
    cannot train on (``shapley_kernels.checks.check_device``)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = check_device("train.device", name)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank)
    return device


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistContext:
    """Join the torchrun process group if launched by torchrun, else a one-process context.

    timeout_s: how long a collective waits for the other ranks before it raises (a rank that
    failed or left mid-step, ranks that disagree on the calls): the job ends with that error
    instead of hanging (``train.collective_timeout``; torch's default is 30 min for gloo).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(device=dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, init_method="env://", timeout=timedelta(seconds=timeout_s))
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=dev)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (no-op for one process)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard_bounds(global_batch: int, world_size: int, rank: int, accum_steps: int) -> list[tuple[int, int]]:
    """Row ranges ``[(start, stop)]`` of this rank's micro-batches within the global batch
    (module docstring: micro-batch m of all ranks is the one-process micro-batch m).

    The global batch must divide into ``world_size * accum_steps`` equal micro-batches.
    """
    parts = world_size * accum_steps
    if global_batch % parts:
        raise ConfigError(f"train.batch_size={global_batch} must be divisible by world size x train.accum_steps "
                          f"= {world_size} x {accum_steps}")
    micro = global_batch // parts
    return [(m * world_size * micro + rank * micro, m * world_size * micro + (rank + 1) * micro)
            for m in range(accum_steps)]

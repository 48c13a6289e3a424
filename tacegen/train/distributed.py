"""torch.distributed for data-parallel training (torchrun, or SLURM's srun).

Under torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) or srun (``SLURM_PROCID``/
``SLURM_NTASKS``, with ``MASTER_ADDR``/``MASTER_PORT`` given) a process group is
created with gloo on CPU and NCCL on CUDA. Gradients are averaged over the ranks
explicitly after each backward pass (one all_reduce of the flattened gradient), which
is what DistributedDataParallel does, without its hooks (the forces are themselves a
gradient taken inside the forward pass).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def _env_int(*names: str):
    for name in names:
        if os.environ.get(name):
            return int(os.environ[name])
    return None


def setup(device: str) -> Context:
    world = _env_int("WORLD_SIZE") or (_env_int("SLURM_NTASKS") if os.environ.get("MASTER_ADDR") else None) or 1
    if world <= 1:
        return Context()
    rank = _env_int("RANK", "SLURM_PROCID") or 0
    local = _env_int("LOCAL_RANK", "SLURM_LOCALID") or 0
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return Context(rank=rank, world=world, local_rank=local)


def teardown(ctx: Context, synchronise: bool = True) -> None:
    """Destroy the process group; after a successful run first wait for every rank (a rank
    leaving while another still writes or reduces can abort gloo's worker threads). After an
    error no barrier is entered: the other ranks may be blocked elsewhere, and the launcher
    stops them once this process exits."""
    if ctx.active and dist.is_initialized():
        try:
            if synchronise:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def all_sum(ctx: Context, tensor: torch.Tensor) -> torch.Tensor:
    if ctx.active:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_gradients(ctx: Context, model: torch.nn.Module) -> None:
    """Replace each gradient by its sum over ranks divided by the world size."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not ctx.active:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p))
        offset += n


def barrier(ctx: Context) -> None:
    if ctx.active:
        dist.barrier()


def broadcast_flag(ctx: Context, flag: bool) -> bool:
    """True on every rank if it is true on any rank (stop signals, time budget)."""
    if not ctx.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)

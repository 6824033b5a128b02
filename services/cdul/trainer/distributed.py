"""torch.distributed for the trainer: one process per device, started by ``torchrun``.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) the trainer is a single
process and every helper here is the identity. With it, the process group uses NCCL
on CUDA and gloo on CPU; every rank holds the whole ``(N, C)`` latent pseudo-label
tensor, and :func:`gather_rows` gives every rank the same per-image rows (logits) of
all ranks, so the label update is computed from identical inputs; rank 0's result is
then broadcast (:func:`broadcast_`) so the ranks cannot drift apart. Only rank 0
writes to the run.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
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


def setup(device: str) -> DistEnv:
    """Pick the device and, under ``torchrun``, join the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(minutes=30),
        )
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen)


def teardown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def _comm_device(env: DistEnv) -> torch.device:
    # NCCL moves CUDA tensors only; gloo moves CPU tensors.
    return env.device if env.device.type == "cuda" else torch.device("cpu")


def gather_rows(
    env: DistEnv, indices: torch.Tensor, rows: torch.Tensor, total: int
) -> torch.Tensor:
    """Scatter every rank's ``rows`` (``(n, C)``, for dataset ``indices``) into one
    ``(total, C)`` float32 tensor, identical on every rank.

    Ranks hold equal counts (the distributed sampler pads); a padded index seen twice
    gets the row of the highest rank, the same choice on every rank.
    """
    rows = rows.detach().float()
    indices = indices.long()
    if env.distributed:
        device = _comm_device(env)
        rows, indices = rows.to(device), indices.to(device)
        all_rows = [torch.empty_like(rows) for _ in range(env.world_size)]
        all_indices = [torch.empty_like(indices) for _ in range(env.world_size)]
        dist.all_gather(all_rows, rows)
        dist.all_gather(all_indices, indices)
        rows, indices = torch.cat(all_rows), torch.cat(all_indices)
    rows, indices = rows.cpu(), indices.cpu()
    # Keep the last occurrence of each index (writing duplicates through one indexed
    # assignment leaves which one wins unspecified).
    reversed_indices = indices.flip(0).numpy()
    _, first_in_reversed = np.unique(reversed_indices, return_index=True)
    keep = torch.from_numpy(len(indices) - 1 - first_in_reversed)
    out = torch.zeros((total, rows.shape[1]), dtype=torch.float32)
    out[indices[keep]] = rows[keep]
    return out


def sum_values(env: DistEnv, *values: float) -> list[float]:
    """Element-wise sums of ``values`` over ranks."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if env.distributed:
        tensor = tensor.to(_comm_device(env))
        dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def broadcast_(env: DistEnv, tensor: torch.Tensor) -> float:
    """Overwrite ``tensor`` (CPU) in place with rank 0's copy; return how far this rank's
    own copy was from it (max absolute difference; 0.0 when the ranks agreed)."""
    if not env.distributed:
        return 0.0
    moved = tensor.to(_comm_device(env))
    dist.broadcast(moved, src=0)
    reference = moved.cpu()
    difference = float((reference - tensor).abs().max()) if tensor.numel() else 0.0
    tensor.copy_(reference)
    return difference

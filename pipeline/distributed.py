"""torch.distributed for `torchrun`: which rows each rank scores, and meeting up after.

Each rank scores one contiguous slice of the split (no DistributedSampler, so
no padding duplicates and no dropped tail); rank 0 merges the parts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pipeline.config import Config, UserError
from pipeline.model import resolve_device


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's value, on every rank."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def reduce(self, value: float, op: str) -> float:
        """Sum or max of a number over the ranks."""
        if self.world == 1:
            return value
        box: list[float] = [0.0] * self.world
        dist.all_gather_object(box, value)
        return float(sum(box) if op == "sum" else max(box))


def setup(device_name: str) -> tuple[Group, torch.device]:
    """Join the process group when started by torchrun (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world == 1:
        return Group(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Group(rank=dist.get_rank(), world=dist.get_world_size()), device


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard_rows(n: int, index: int, count: int) -> tuple[int, int]:
    """Rows [start, stop) of shard `index` of `count`: contiguous, sizes differ by at most 1."""
    if not 0 <= index < count:
        raise UserError(f"shard.index={index} must be in 0..{count - 1} (shard.count={count})")
    return n * index // count, n * (index + 1) // count


def plan_rows(
    num_rows: int | None, cfg: Config, group: Group
) -> tuple[tuple[int, int | None], tuple[int, int | None]]:
    """(rows this run folder covers, rows this process scores) of the (limited) split.

    A shard covers its slice; under torchrun the ranks split that slice again.
    """
    if num_rows is None:  # streaming: the length is unknown until the stream ends
        if group.world > 1 or cfg.shard.count > 1:
            raise UserError("Streaming splits cannot be sharded; set dataset.streaming=false")
        return (0, cfg.limit), (0, cfg.limit)
    n = num_rows if cfg.limit is None else min(cfg.limit, num_rows)
    whole = shard_rows(n, cfg.shard.index, cfg.shard.count)
    first, last = shard_rows(whole[1] - whole[0], group.rank, group.world)
    return whole, (whole[0] + first, whole[0] + last)

"""torch.distributed for `torchrun`: which rows each rank scores, and meeting up after.

Rank 0 owns the run folder (its lock, its plan, which rows are missing); the
missing rows are split into one contiguous share per rank (no
DistributedSampler, so no padding duplicates and no dropped tail); rank 0
merges the parts.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.plan import covered_rows
from pipeline.settings import resolve_device

T = TypeVar("T")


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

    def on_rank0(self, fn: Callable[[], T]) -> T:
        """fn() on rank 0, its result on every rank; a UserError there is raised on every rank
        (instead of leaving the others waiting at the next meeting)."""
        result, error = None, None
        if self.rank == 0:
            try:
                result = fn()
            except UserError as e:
                error = e
        if self.world > 1:
            result, message = self.broadcast((result, str(error) if error else None))
            if message and error is None:
                raise UserError(message)
        if error is not None:
            raise error
        return result  # type: ignore[return-value]

    def rank0_first(self, fn: Callable[[], T]) -> T:
        """fn() on rank 0, then on the other ranks: rank 0 fills shared caches first (two
        ranks preparing one `datasets` cache at once can fail); its errors reach every rank."""
        box: list[T] = []
        self.on_rank0(lambda: box.append(fn()))
        return box[0] if box else fn()

    def gather(self, value: float) -> list[float]:
        """A number from every rank, in rank order, on every rank."""
        if self.world == 1:
            return [value]
        box: list[float] = [0.0] * self.world
        dist.all_gather_object(box, value)
        return box


def setup(device_name: str) -> tuple[Group, torch.device]:
    """Join the process group when started by torchrun (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world == 1:
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # else the pin-memory thread works on GPU 0
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


def plan_rows(num_rows: int | None, cfg: Config) -> tuple[int, int | None]:
    """The rows of the (limited) split this run folder covers: all of them, or a shard's."""
    if num_rows is None:  # streaming: the length is unknown until the stream ends
        if cfg.shard.count > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError("Streaming splits cannot be sharded; set dataset.streaming=false")
        return 0, cfg.limit
    return shard_rows(covered_rows(num_rows, cfg.limit), cfg.shard.index, cfg.shard.count)


def share(todo: list[tuple[int, int | None]], group: Group) -> list[tuple[int, int | None]]:
    """This rank's contiguous share of the rows still to score (sizes differ by at most 1)."""
    if group.world == 1:
        return todo
    bounded = [(a, b) for a, b in todo if b is not None]
    total = sum(b - a for a, b in bounded)
    lo, hi = shard_rows(total, group.rank, group.world)
    mine: list[tuple[int, int | None]] = []
    seen = 0
    for a, b in bounded:
        start, stop = max(a, a + lo - seen), min(b, a + hi - seen)
        if start < stop:
            mine.append((start, stop))
        seen += b - a
    return mine

"""Several processes on one run: where their ranks come from (torchrun, or the tasks of a
Slurm step), which rows each scores, and meeting up after.

Rank 0 owns the run folder (its lock, its plan, which rows are missing); the
missing rows are split into one contiguous share per rank (no
DistributedSampler, so no padding duplicates and no dropped tail); rank 0
merges the parts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from pipeline.errors import UserError
from pipeline.request import Rows
from pipeline.runs.plan import covered_rows
from pipeline.settings import resolve_device

T = TypeVar("T")


@dataclass(frozen=True)
class Launch:
    """This process's place among the processes of one run, from how it was started."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0  # its index among the ranks of its node: which GPU it takes
    sharing: int = 1  # the processes that see the same cores as this one (itself included)
    master: tuple[str, int] | None = None  # where the ranks meet; None: torchrun's env://
    by: str = "one process"


def launch(env: Mapping[str, str] = os.environ) -> Launch:
    """Ranks from torchrun (RANK, WORLD_SIZE, LOCAL_RANK; it wins, also inside a Slurm job),
    else from the tasks of one srun step (SLURM_PROCID of SLURM_STEP_NUM_TASKS, the first
    node of the step meeting the others), else one process. A Slurm batch script itself is
    no step: it runs as one process, whatever --ntasks the job asked for."""
    if "RANK" in env and "WORLD_SIZE" in env:
        local = int(env.get("LOCAL_WORLD_SIZE", "1"))  # torchrun's ranks share its cores
        return Launch(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")),
                      sharing=local, by="torchrun")  # fmt: skip
    tasks = int(env.get("SLURM_STEP_NUM_TASKS", "1"))
    if tasks <= 1:
        return Launch()
    node_tasks = tasks_per_node(env["SLURM_STEP_TASKS_PER_NODE"])[int(env.get("SLURM_NODEID", "0"))]
    bound = len(os.sched_getaffinity(0)) < (os.cpu_count() or 1)  # srun gave it its own cores
    port = int(env.get("MASTER_PORT") or 20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
    host = env.get("MASTER_ADDR") or first_host(env["SLURM_STEP_NODELIST"])
    return Launch(int(env["SLURM_PROCID"]), tasks, int(env.get("SLURM_LOCALID", "0")),
                  sharing=1 if bound else node_tasks, master=(host, port), by="slurm")  # fmt: skip


def tasks_per_node(spec: str) -> list[int]:
    """Slurm's tasks per node, `2(x3),1` -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for item in spec.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if not match:
            raise UserError(f"SLURM_STEP_TASKS_PER_NODE={spec!r} is not Slurm's form (2(x3),1)")
        counts += [int(match[1])] * int(match[2] or 1)
    return counts


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: `gpu[07-09,12],cpu3` -> gpu07."""
    match = re.match(r"([^,\[]*)(?:\[([^,\]-]+)[^\]]*\])?([^,]*)", nodelist.strip())
    if not match or not match[0]:
        raise UserError(f"SLURM_STEP_NODELIST={nodelist!r} is not a Slurm node list")
    return f"{match[1]}{match[2] or ''}{match[3]}"


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1
    sharing: int = 1  # processes that see this one's cores (settings splits them)

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
    """Join the process group when started as one of several (nccl on CUDA, gloo on CPU);
    each rank of a node takes its own GPU (the only one it sees, if Slurm bound one)."""
    where = launch()
    device = resolve_device(device_name)
    if where.world == 1:
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # else the pin-memory thread works on GPU 0
        return Group(), device
    if device.type == "cuda":
        device = torch.device("cuda", where.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if where.master is None:  # torchrun's rendezvous, in its environment
            dist.init_process_group(backend)
        else:
            host, port = where.master
            dist.init_process_group(
                backend, init_method=f"tcp://{host}:{port}", rank=where.rank, world_size=where.world
            )
    return Group(rank=dist.get_rank(), world=dist.get_world_size(), sharing=where.sharing), device


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard_rows(n: int, index: int, count: int) -> tuple[int, int]:
    """Rows [start, stop) of shard `index` of `count`: contiguous, sizes differ by at most 1."""
    if not 0 <= index < count:
        raise UserError(f"shard.index={index} must be in 0..{count - 1} (shard.count={count})")
    return n * index // count, n * (index + 1) // count


def plan_rows(num_rows: int | None, rows: Rows, world: int) -> tuple[int, int | None]:
    """The rows of the (limited) split this run folder covers: all of them, or a shard's."""
    if num_rows is None:  # streaming: the length is unknown until the stream ends
        if rows.shard_count > 1 or world > 1:
            raise UserError("Streaming splits cannot be sharded; set dataset.streaming=false")
        return 0, rows.limit
    return shard_rows(covered_rows(num_rows, rows.limit), rows.shard_index, rows.shard_count)


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

"""The run folder protocol: one writer at a time, durable parts, exact resume, checked merge.

    <run folder>/
      .lock                 flock'ed by the one run writing here (its pid and host inside)
      run.json              the resolved plan; a rerun must agree with its "results" part
      parts/part-<first>-<stop>.parquet   committed rows, any sizes, any order
      parts/damaged/        parts that failed validation, moved aside and scored again
      error.txt             why the last attempt failed (for pipeline.summarize)
      predictions.parquet   all rows in split order      } written last, only when every
      metrics.parquet       one row; marks it finished   } row is committed exactly once

Any interruption leaves a folder that one plain rerun finishes: every write is
a unique temporary name, fsync, rename, fsync of the folder; every part is
validated when read; the rerun scores exactly the rows no valid part holds.

Only what this pipeline can prove it wrote is ever removed or moved: its temporary
names, its part names, in a folder its run.json claims. A folder holding anything else
and no run.json is refused before anything is written into it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import UserError
from pipeline.runs.claims import (
    DAMAGED,
    ERROR_FILE,
    METRICS,
    PARTS,
    PREDICTIONS,
    RUN_FILE,
    check_claim,
    read_plan,
    take_lock,
)
from pipeline.runs.durable import TMP_RE, check_writable, durable_write, write_json
from pipeline.runs.parts import (
    PART_NAME,
    PART_RE,
    Coverage,
    cover,
    list_parts,
    why_damaged,
    write_segments,
)
from pipeline.runs.plan import RESULTS, RunPlan

log = logging.getLogger(__name__)


class RunFolder:
    """A run folder as this process sees it; the `owner` (rank 0 of a job) takes its lock
    for the whole run, checks the plan, finds the missing rows and merges at the end."""

    def __init__(self, path: Path, *, owner: bool) -> None:
        self.path, self.owner = path, owner
        self.parts_dir = path / PARTS
        self.plan: RunPlan | None = None  # once check_plan has stored it
        self._lock: int | None = None

    def lock(self) -> None:
        """Take the folder (owner only): refuse it if it is not ours, make it, lock it, then
        clear what interrupted writes left."""
        if self.owner:
            check_claim(self.path)
            check_writable(self.path)
            self._lock = take_lock(self.path)
            self.clean()

    def unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    @property
    def finished(self) -> bool:
        return (self.path / METRICS).exists()

    def check_plan(self, plan: RunPlan) -> None:
        """Store the plan; a folder made under another plan is refused, naming what differs.
        Only the results must agree: batch size, workers and the like may change."""
        refuse_other_plan(self.path, plan)
        write_json(self.path / RUN_FILE, plan.record())
        self.plan = plan

    def clean(self) -> None:
        """Remove what interrupted writes left: our temporary files, and the parts of a run
        that finished just before it was killed."""
        for folder in (self.path, self.parts_dir):
            _remove(folder, TMP_RE)
        if self.finished:
            self.remove_parts()

    def remove_parts(self) -> None:
        """Remove our part files (and the damaged ones moved aside), then their folders if
        nothing else is left in them."""
        damaged = self.parts_dir / DAMAGED
        for folder in (damaged, self.parts_dir):
            _remove(folder, PART_RE, TMP_RE)
            with contextlib.suppress(OSError):  # absent, or holding something not ours
                folder.rmdir()

    def scan(self) -> Coverage:
        """Validate every part against the plan; move damaged ones to parts/damaged/ (their
        rows are then missing and scored again)."""
        assert self.plan is not None, "check_plan first"
        schema, good = self.plan.schema, []
        for part in list_parts(self.parts_dir):
            reason = why_damaged(part.path, part.first, part.stop, schema)
            if reason is None:
                good.append(part)
                continue
            aside = self.parts_dir / DAMAGED / part.path.name
            aside.parent.mkdir(exist_ok=True)
            os.replace(part.path, aside)
            log.warning(
                "damaged part %s (%s): moved to %s; its rows are scored again",
                part.path.name,
                reason,
                aside.parent,
            )
        return cover(good, *self.plan.data.rows)

    def commit_part(self, table: pa.Table) -> None:
        """One part of consecutive rows; once this returns it survives any crash."""
        first = table["index"][0].as_py()
        stop = first + table.num_rows
        assert table["index"][-1].as_py() == stop - 1, "a part holds consecutive rows"
        self.parts_dir.mkdir(exist_ok=True)
        path = self.parts_dir / PART_NAME.format(first, stop)
        durable_write(path, lambda tmp: pq.write_table(table, tmp))

    def merge_parts(self) -> Path:
        """All the plan's rows, each once, from the parts into predictions.parquet, in split
        order (refused while a row is not committed)."""
        coverage = self.scan()
        gaps = [m for m in coverage.missing if m[1] is not None]
        if gaps:
            a, b = gaps[0]
            raise UserError(
                f"Rows {a}..{b} of {self.path} are not committed; run again to score them"
            )
        predictions = self.path / PREDICTIONS
        write_segments(coverage.segments, predictions, self.plan.schema)  # type: ignore[union-attr]
        return predictions

    def finish(self, metrics_row: dict[str, Any]) -> None:
        """Write metrics.parquet, which marks the folder finished; then drop the parts."""
        write_metrics(self.path / METRICS, metrics_row)
        self.remove_parts()
        (self.path / ERROR_FILE).unlink(missing_ok=True)  # from an earlier, failed attempt


@contextlib.contextmanager
def open_folder(path: Path) -> Iterator[RunFolder]:
    """A run folder for writing by this one process: ours, writable, locked, cleaned up."""
    folder = RunFolder(path, owner=True)
    folder.lock()
    try:
        yield folder
    finally:
        folder.unlock()


def refuse_other_plan(path: Path, plan: RunPlan) -> None:
    """A folder whose run.json holds another plan's results is refused, naming what differs
    (read only: the check can come before anything is written)."""
    if not (path / RUN_FILE).exists():
        return
    diff = plan_difference(read_plan(path).part(RESULTS), plan.part(RESULTS))
    if diff:
        raise UserError(
            f"{path} holds a run made under other settings ({diff}); "
            f"use a new output folder, or the same settings to resume"
        )


def plan_difference(before: dict[str, Any], now: dict[str, Any]) -> str:
    """'key: old -> new; ...' for every result setting that differs ('' when none)."""
    keys = sorted(before.keys() | now.keys())
    return "; ".join(
        f"{k}: {_short(before.get(k))} -> {_short(now.get(k))}"
        for k in keys
        if before.get(k) != now.get(k)
    )


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_metrics(path: Path, row: dict[str, Any]) -> None:
    """The run's one-row metrics table."""
    import pandas as pd

    durable_write(path, lambda tmp: pd.DataFrame([row]).to_parquet(tmp, index=False))


def _remove(folder: Path, *patterns: re.Pattern[str]) -> None:
    """Remove the files of `folder` whose names match one of `patterns` (ours by name)."""
    for entry in folder.iterdir() if folder.is_dir() else []:
        if any(p.fullmatch(entry.name) for p in patterns) and entry.is_file():
            entry.unlink(missing_ok=True)

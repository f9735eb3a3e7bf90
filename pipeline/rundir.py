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
import datetime as dt
import fcntl
import json
import logging
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import UserError
from pipeline.plan import RESULTS, RunPlan

log = logging.getLogger(__name__)

LOCK, RUN_FILE, ERROR_FILE = ".lock", "run.json", "error.txt"
PREDICTIONS, METRICS, PARTS, DAMAGED = "predictions.parquet", "metrics.parquet", "parts", "damaged"
PART_NAME = "part-{:012d}-{:012d}.parquet"
PART_RE = re.compile(r"part-(\d{12})-(\d{12})\.parquet")
TMP_RE = re.compile(r"\..+\.\d+-[0-9a-f]{6}\.tmp")  # durable_write's temporary names
PROBE_RE = re.compile(r"\.write-test-.+-\d+")  # check_writable's probe
HYDRA_FILES = (".hydra", "pipeline.log")  # what Hydra writes into a job's folder first
JOB_NAME = "pipeline"  # hydra.job.name in conf/config.yaml


class FolderBusy(UserError):
    """Another run holds the folder's lock: never record this in the folder."""


# ------------------------------------------------------------ durable writes


def durable_write(path: Path, write: Callable[[Path], Any]) -> None:
    """write(tmp) under a unique temporary name, fsync, rename over `path`, fsync the folder:
    after a crash at any moment `path` is the old file, the new one, or absent; never partial."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(3)}.tmp")
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except OSError as e:  # a full or vanished disk: leave nothing that looks written
        tmp.unlink(missing_ok=True)
        raise UserError(f"Cannot write {path}: {e.strerror or e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, value: Any) -> None:
    """Strict JSON (a number that is not finite is null: NaN is not JSON), written durably."""
    text = json.dumps(finite(value), indent=1, sort_keys=True, default=str, allow_nan=False)
    durable_write(path, lambda tmp: tmp.write_text(text))


def finite(value: Any) -> Any:
    """value with every NaN or infinity, however deep, replaced by None."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def check_writable(path: Path) -> None:
    """Fail before any model or data work when the folder cannot be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        # one per process (ranks probe at once), and not named like a temporary file: the
        # owner's clean-up removes those, maybe while another rank is probing
        probe = path / f".write-test-{socket.gethostname()}-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink(missing_ok=True)
    except OSError as e:
        raise UserError(f"Cannot write to output folder {path}: {e.strerror or e}") from None


def check_can_write(path: Path) -> None:
    """Fail when the folder could not be made or written, without making it (a refused run
    leaves no folder behind): its nearest existing ancestor must be a writable folder."""
    there = path.absolute()
    while not there.exists() and there != there.parent:
        there = there.parent
    if not there.is_dir():
        raise UserError(f"Cannot write to output folder {path}: {there} is a file")
    if not os.access(there, os.W_OK | os.X_OK):  # EROFS too, even for root
        raise UserError(f"Cannot write to output folder {path}: {there} is not writable")


# --------------------------------------------------------------------- lock


def _take_lock(path: Path) -> int:
    """An exclusive flock held for the whole run; the kernel drops it when the holder dies,
    so a SIGKILL leaves no stale lock."""
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "holder unknown"
        os.close(fd)
        raise FolderBusy(
            f"{path} is in use by another run ({holder}); wait for it to end, "
            f"or choose another output_dir"
        ) from None
    except OSError as e:  # a file system without flock (some network mounts)
        log.warning("cannot lock %s (%s): make sure one run at a time writes there", path, e)
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}".encode(), 0)
    return fd


# --------------------------------------------------------------- the claim


def check_claim(path: Path) -> None:
    """Refuse a folder this pipeline may not write into: one that exists, is not empty and is
    not one of its run folders. Beside a run.json, anything goes (the user's notes in a run
    folder are left alone); without one, only what a run writes before its plan is known
    (the lock, an error, Hydra's .hydra/ and log, temporary files) is allowed."""
    if not path.exists():
        return
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a folder; choose another output_dir")
    if (path / RUN_FILE).exists():
        read_plan(path)  # refuses a run.json that is not this pipeline's
        return
    foreign = [e for e in sorted(os.listdir(path)) if not _written_before_plan(path, e)]
    if foreign:  # outputs without a run.json too: never taken for a finished run
        raise UserError(
            f"{path} is not empty and not a run folder of this pipeline (no {RUN_FILE}): it "
            f"holds {_listing(foreign)}; use a new or empty output_dir"
        )


def _written_before_plan(path: Path, name: str) -> bool:
    if name == HYDRA_FILES[0]:  # another Hydra app's .hydra/ is not ours to overwrite
        return names_our_job(path / name / "hydra.yaml")
    return (
        name in (LOCK, ERROR_FILE, *HYDRA_FILES)
        or TMP_RE.fullmatch(name) is not None
        or PROBE_RE.fullmatch(name) is not None
    )


def names_our_job(hydra_file: Path) -> bool:
    """Whether a Hydra file (a job's .hydra/hydra.yaml, a sweep's multirun.yaml) was
    written for this pipeline: its job is ours (conf/config.yaml names it)."""
    import yaml

    try:
        content = yaml.safe_load(hydra_file.read_text())
        return content["hydra"]["job"]["name"] == JOB_NAME
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
        return False


SWEEP_FILE = "multirun.yaml"  # what Hydra writes first into a sweep folder


def check_sweep_claim(path: Path) -> None:
    """Refuse a sweep folder (hydra.sweep.dir) this pipeline may not write into: one that
    exists, is not empty and holds no sweep of this pipeline's (its multirun.yaml)."""
    if not path.exists():
        return
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a folder; choose another hydra.sweep.dir")
    if (path / SWEEP_FILE).exists():
        if not names_our_job(path / SWEEP_FILE):
            raise UserError(
                f"{path} holds another Hydra app's sweep ({SWEEP_FILE}); choose another "
                f"hydra.sweep.dir"
            )
        return
    foreign = sorted(e for e in os.listdir(path) if not _our_job_folder(path / e))
    if foreign:
        raise UserError(
            f"{path} is not empty and not a sweep folder of this pipeline (no {SWEEP_FILE}): "
            f"it holds {_listing(foreign)}; use a new or empty hydra.sweep.dir"
        )


def _our_job_folder(path: Path) -> bool:
    """A job's folder of a sweep whose multirun.yaml is gone: numbered, and ours to write."""
    if not (path.name.isdigit() and path.is_dir()):
        return False
    try:
        check_claim(path)
    except UserError:
        return False
    return True


def check_ours(path: Path, proof: Callable[[Path], bool]) -> None:
    """Before a file is replaced: it is absent, or `proof` shows this pipeline wrote it."""
    if path.exists() and not (path.is_file() and proof(path)):
        raise UserError(
            f"{path} exists and was not written by this pipeline; move it away and run "
            f"again (nothing was written)"
        )


def _listing(names: list[str], shown: int = 5) -> str:
    more = f" (and {len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def record_error(path: Path, message: str) -> None:
    """Write why a run failed, unless the folder is not ours, another run holds it, or it is
    finished."""
    if not path.is_dir() or (path / METRICS).exists():
        return
    try:
        check_claim(path)
        fd = _take_lock(path)
    except (UserError, OSError):
        return
    try:
        with contextlib.suppress(UserError):
            durable_write(path / ERROR_FILE, lambda tmp: tmp.write_text(message.strip() + "\n"))
    finally:
        os.close(fd)


# -------------------------------------------------------------------- parts


@dataclass(frozen=True)
class Part:
    first: int
    stop: int
    path: Path


@dataclass(frozen=True)
class Coverage:
    """Which committed rows to take from which part, and which rows no valid part holds."""

    segments: list[tuple[Part, int, int]]  # (part, first row taken, stop row taken)
    missing: list[tuple[int, int | None]]  # None: to the end of a split of unknown length


def list_parts(parts_dir: Path) -> list[Part]:
    """The parts in a folder, by the names commit_part gives them (nothing else is one)."""
    found = []
    for p in parts_dir.iterdir() if parts_dir.is_dir() else []:
        match = PART_RE.fullmatch(p.name)
        if match and p.is_file() and int(match[1]) < int(match[2]):
            found.append(Part(int(match[1]), int(match[2]), p))
    return sorted(found, key=lambda q: (q.first, q.stop))


def why_damaged(path: Path, first: int, stop: int, schema: pa.Schema) -> str | None:
    """Why a part file cannot be trusted (None when it can): its footer, row count, columns
    and `index` must all agree with the rows its name claims."""
    try:
        with pq.ParquetFile(path) as file:
            if file.metadata.num_rows != stop - first:
                return f"it holds {file.metadata.num_rows} rows, its name says {stop - first}"
            if not file.schema_arrow.remove_metadata().equals(schema):
                return "its columns are not this run's"
            index = file.read(columns=["index"]).column("index").to_numpy()
        if not np.array_equal(index, np.arange(first, stop)):
            return "its index column does not match its name"
    except (OSError, pa.ArrowException) as e:
        return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return None


def cover(parts: list[Part], start: int, stop: int | None) -> Coverage:
    """Take each row of start..stop from one part (the one reaching furthest), so overlaps
    keep one copy; rows no part holds are missing."""
    segments: list[tuple[Part, int, int]] = []
    missing: list[tuple[int, int | None]] = []
    cursor, i = start, 0
    while stop is None or cursor < stop:
        best = None
        while i < len(parts) and parts[i].first <= cursor:
            if best is None or parts[i].stop > best.stop:
                best = parts[i]
            i += 1
        if best is not None and best.stop > cursor:
            end = best.stop if stop is None else min(best.stop, stop)
            segments.append((best, cursor, end))
            cursor = end
            continue
        following = [p.first for p in parts[i:] if p.stop > cursor]
        gap_end = min(following) if following else stop
        if stop is not None and gap_end is not None:
            gap_end = min(gap_end, stop)
        missing.append((cursor, gap_end))
        if gap_end is None:
            break
        cursor = gap_end
    return Coverage(segments, missing)


def rows_of(missing: list[tuple[int, int | None]]) -> int | None:
    """How many rows are missing (None when the last range is open-ended)."""
    if missing and missing[-1][1] is None:
        return None
    return sum(b - a for a, b in missing if b is not None)


# ----------------------------------------------------------------- the folder


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
            self._lock = _take_lock(self.path)
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
        return cover(good, *self.plan.rows)

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


def read_plan(path: Path) -> RunPlan:
    """A run folder's plan, from its run.json; one line when there is none, or it is not a
    plan of this version of the pipeline."""
    file = path / RUN_FILE
    if not file.exists():
        raise UserError(f"{path} is not a run folder of this pipeline (no {RUN_FILE})")
    try:
        record = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{file} cannot be read: {e}") from None
    return RunPlan.from_record(record, file)


def write_segments(
    segments: list[tuple[Part, int, int]], out_path: Path, schema: pa.Schema
) -> None:
    """Concatenate rows [a, b) of each segment's file into one Parquet file, one file in
    memory at a time; every row's `index` is checked to be the next one."""

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema) as writer:
            for part, a, b in segments:
                table = pq.read_table(part.path, schema=schema).slice(a - part.first, b - a)
                index = table.column("index").to_numpy()
                if not np.array_equal(index, np.arange(a, b)):
                    raise UserError(f"{part.path} changed while merging: run again")
                writer.write_table(table)

    durable_write(out_path, write)


def write_metrics(path: Path, row: dict[str, Any]) -> None:
    """The run's one-row metrics table."""
    import pandas as pd

    durable_write(path, lambda tmp: pd.DataFrame([row]).to_parquet(tmp, index=False))


def committed_rows(path: Path) -> int:
    """Rows committed in parts (for pipeline.summarize), overlaps counted once."""
    parts = list_parts(path / PARTS)
    if not parts:
        return 0
    coverage = cover(parts, parts[0].first, max(p.stop for p in parts))
    return sum(b - a for _, a, b in coverage.segments)


def _remove(folder: Path, *patterns: re.Pattern[str]) -> None:
    """Remove the files of `folder` whose names match one of `patterns` (ours by name)."""
    for entry in folder.iterdir() if folder.is_dir() else []:
        if any(p.fullmatch(entry.name) for p in patterns) and entry.is_file():
            entry.unlink(missing_ok=True)

"""Committed parts: `parts/part-<first>-<stop>.parquet`, any sizes, any order, each
validated when read; which rows they cover (each row from one part), which are missing;
and their rows joined, in order, into one file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import UserError
from pipeline.runs.durable import durable_write

PART_NAME = "part-{:012d}-{:012d}.parquet"
PART_RE = re.compile(r"part-(\d{12})-(\d{12})\.parquet")


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


def committed_rows(path: Path) -> int:
    """Rows committed in parts (for pipeline.summarize), overlaps counted once."""
    parts = list_parts(path / "parts")
    if not parts:
        return 0
    coverage = cover(parts, parts[0].first, max(p.stop for p in parts))
    return sum(b - a for _, a, b in coverage.segments)

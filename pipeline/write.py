"""Parquet output: predictions committed in parts as they come, merged at the end.

Every file is written under a temporary name and renamed into place, so a
file that exists is whole. Parts cover consecutive row ranges
(`part-<first>-<stop>.parquet`); the final `predictions.parquet` is their
concatenation in split order, streamed part by part so memory does not grow
with the split.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import Config, UserError

SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("id", pa.string()),
        ("label", pa.int64()),
        ("pred", pa.int64()),
        ("pred_name", pa.string()),
        ("topk", pa.list_(pa.int64())),
        ("topk_prob", pa.list_(pa.float32())),
        ("correct_top1", pa.bool_()),
        ("correct_top5", pa.bool_()),
        ("error", pa.string()),
    ]
)
PART = re.compile(r"part-(\d{12})-(\d{12})\.parquet")
RUN_FILE = "run.json"
ERROR_FILE = "error.txt"  # the one-line error of a run that failed


def replace_atomically(path: Path, write: Any) -> None:
    """Call write(tmp_path), then rename tmp over `path`: the file is whole or absent."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:  # a full or vanished disk: leave nothing that looks written
        tmp.unlink(missing_ok=True)
        raise UserError(f"Cannot write {path}: {e.strerror or e}") from e


def check_writable(out_dir: Path) -> None:
    """Fail before inference when the output folder cannot be written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"  # one per process: ranks probe at once
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"Cannot write to output folder {out_dir}: {e.strerror or e}") from None


@dataclass
class Scored:
    """One batch: metadata for every row, model outputs for the `ok` rows only."""

    index: np.ndarray  # (N,) int64
    id: list[str | None]
    label: list[int | None]
    error: list[str | None]
    ok: np.ndarray  # (N,) bool
    topk: np.ndarray  # (n_ok, k) int64
    topk_prob: np.ndarray  # (n_ok, k) float32
    top1: np.ndarray  # (n_ok,) bool
    top5: np.ndarray  # (n_ok,) bool


class PredictionWriter:
    """Buffers scored batches and commits every `commit_rows` rows as one part file."""

    def __init__(self, parts_dir: Path, categories: list[str], *, commit_rows: int) -> None:
        self.parts_dir, self.commit_rows = parts_dir, commit_rows
        self.categories = pa.array(categories, pa.string())
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        parts_dir.mkdir(parents=True, exist_ok=True)

    def add(self, batch: Scored) -> None:
        self.buffer.append(self._table(batch))
        self.buffered += len(batch.index)
        if self.buffered >= self.commit_rows:
            self.commit()

    def commit(self) -> None:
        """Write what is buffered as one part; after this it survives a kill."""
        if not self.buffered:
            return
        table = pa.concat_tables(self.buffer)
        first, last = table["index"][0].as_py(), table["index"][-1].as_py()
        assert last - first + 1 == table.num_rows, "rows of a part must be consecutive"
        path = self.parts_dir / f"part-{first:012d}-{last + 1:012d}.parquet"
        replace_atomically(path, lambda tmp: pq.write_table(table, tmp))
        self.buffer, self.buffered = [], 0

    def _table(self, b: Scored) -> pa.Table:
        n, k = len(b.index), b.topk.shape[1] if b.topk.ndim == 2 else 0
        missing = ~b.ok
        unlabeled = np.array([x is None for x in b.label], dtype=bool)
        pred = np.zeros(n, np.int64)
        pred[b.ok] = b.topk[:, 0] if len(b.topk) else []
        pred_arr = pa.array(pred, mask=missing)
        offsets = pa.array(np.concatenate([[0], np.cumsum(b.ok * k)]).astype(np.int32))

        def full(values: np.ndarray, dtype: pa.DataType, mask: np.ndarray) -> pa.Array:
            out = np.zeros(n, values.dtype)
            out[b.ok] = values
            return pa.array(out, dtype, mask=mask)

        return pa.table(
            {
                "index": pa.array(b.index, pa.int64()),
                "id": pa.array(b.id, pa.string()),
                "label": pa.array(b.label, pa.int64()),
                "pred": pred_arr,
                "pred_name": self.categories.take(pred_arr),
                "topk": pa.ListArray.from_arrays(
                    offsets, pa.array(b.topk.reshape(-1), pa.int64()), mask=pa.array(missing)
                ),
                "topk_prob": pa.ListArray.from_arrays(
                    offsets, pa.array(b.topk_prob.reshape(-1), pa.float32()), mask=pa.array(missing)
                ),
                "correct_top1": full(b.top1, pa.bool_(), missing | unlabeled),
                "correct_top5": full(b.top5, pa.bool_(), missing | unlabeled),
                "error": pa.array(b.error, pa.string()),
            },
            schema=SCHEMA,
        )


def part_spans(parts_dir: Path) -> list[tuple[int, int, Path]]:
    """(first, stop, path) of every committed part, in row order."""
    found = ((PART.fullmatch(p.name), p) for p in parts_dir.glob("part-*.parquet"))
    return sorted((int(m[1]), int(m[2]), p) for m, p in found if m)


def committed(parts_dir: Path, start: int) -> int:
    """The row up to which parts are committed without a gap, starting at `start`."""
    done = start
    for first, stop, _ in part_spans(parts_dir):
        if first == done:
            done = stop
    return done


def merge(spans: list[tuple[int, int, Path]], out_path: Path, *, start: int, stop: int) -> None:
    """Concatenate files holding rows [first, stop) that tile start..stop exactly into one."""
    spans = sorted(spans)
    expected = start
    for first, stop_, path in spans:
        if first != expected:
            what = "overlap" if first < expected else "gap"
            raise UserError(f"Rows do not tile {start}..{stop}: {what} at row {expected} ({path})")
        expected = stop_
    if expected != stop:
        raise UserError(f"Rows cover {start}..{expected}, expected {start}..{stop}")

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, SCHEMA) as writer:
            for _, _, path in spans:  # one file in memory at a time
                writer.write_table(pq.read_table(path, schema=SCHEMA))

    replace_atomically(out_path, write)


def write_metrics(path: Path, row: dict[str, Any]) -> None:
    """The run's one-row metrics table."""
    replace_atomically(path, lambda tmp: pd.DataFrame([row]).to_parquet(tmp, index=False))


def run_settings(
    cfg: Config, weights_sha256: str | None, rows: tuple[int, int | None], num_rows: int | None
) -> dict[str, Any]:
    """What determines the predictions: resuming or merging across others would mix results."""
    dataset = {
        k: v if isinstance(v, str | int | bool | None) else str(v)
        for k, v in asdict(cfg.dataset).items()
    }
    return {
        "dataset": dataset,
        "model": cfg.model.arch,
        "weights": cfg.model.weights,
        "weights_sha256": weights_sha256,
        "amp": cfg.amp.value,
        "backend": cfg.backend.value,
        "limit": cfg.limit,
        "split_rows": num_rows,
        "shard": [cfg.shard.index, cfg.shard.count],
        "rows": list(rows),
    }


def check_resume(out_dir: Path, settings: dict[str, Any]) -> None:
    """Record what a run folder is for; refuse to continue it under other settings."""
    path = out_dir / RUN_FILE
    if path.exists():
        before = json.loads(path.read_text())
        diff = [
            f"{k}: {before.get(k)!r} -> {settings.get(k)!r}"
            for k in sorted(settings | before)
            if before.get(k) != settings.get(k)
        ]
        if diff:
            raise UserError(
                f"{out_dir} holds a run with other settings ({'; '.join(diff)}); "
                f"use a new output folder, or the same settings to resume"
            )
        return
    text = json.dumps(settings, indent=1, sort_keys=True)
    replace_atomically(path, lambda tmp: tmp.write_text(text))


def read_settings(out_dir: Path) -> dict[str, Any]:
    path = out_dir / RUN_FILE
    if not path.exists():
        raise UserError(f"{out_dir} is not a run folder of this pipeline (no {RUN_FILE})")
    return json.loads(path.read_text())

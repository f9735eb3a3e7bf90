"""The predictions table: its columns (the output contract), and scored batches turned
into Arrow tables of those columns, buffered into parts. Writing the parts durably and
merging them is the run folder's job (rundir.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.data.real import RealLabels


def schema(dataset_label: str = "int64", *, real: bool = False) -> pa.Schema:
    """The predictions' columns; `dataset_label` has the dataset's own label type, and
    `real_correct` is there when ImageNet-ReaL labels were given."""
    fields = [
        ("index", pa.int64()),
        ("id", pa.string()),
        ("label", pa.int64()),
        ("dataset_label", pa.string() if dataset_label == "string" else pa.int64()),
        ("pred", pa.int64()),
        ("pred_name", pa.string()),
        ("topk", pa.list_(pa.int64())),
        ("topk_prob", pa.list_(pa.float32())),
        ("correct_top1", pa.bool_()),
        ("correct_top5", pa.bool_()),
        ("error", pa.string()),
    ]
    if real:
        fields.insert(-1, ("real_correct", pa.bool_()))
    return pa.schema(fields)


@dataclass
class Scored:
    """One batch: metadata for every row, model outputs for the `ok` rows only."""

    index: np.ndarray  # (N,) int64
    id: list[str | None]
    dataset_label: list[Any]
    label: list[int | None]
    error: list[str | None]
    ok: np.ndarray  # (N,) bool
    topk: np.ndarray  # (n_ok, k) int64
    topk_prob: np.ndarray  # (n_ok, k) float32
    top1: np.ndarray  # (n_ok,) bool
    top5: np.ndarray  # (n_ok,) bool


class PredictionWriter:
    """Buffers scored batches; every `commit_rows` rows (and on `commit()`) hands each run of
    consecutive rows to `commit_part`, which makes it durable."""

    def __init__(
        self,
        commit_part: Callable[[pa.Table], None],
        categories: list[str],
        schema: pa.Schema,
        *,
        commit_rows: int,
        real: RealLabels | None = None,
    ) -> None:
        self.commit_part, self.commit_rows, self.schema = commit_part, commit_rows, schema
        self.categories = pa.array(categories, pa.string())
        self.real = real
        self.buffer: list[pa.Table] = []
        self.buffered = 0

    def add(self, batch: Scored) -> None:
        self.buffer.append(self._table(batch))
        self.buffered += len(batch.index)
        if self.buffered >= self.commit_rows:
            self.commit()

    def commit(self) -> None:
        """Write what is buffered; after this it survives a kill. Rows resumed around gaps
        come in runs of consecutive rows: each run is its own part."""
        if not self.buffered:
            return
        table = pa.concat_tables(self.buffer)
        index = table["index"].to_numpy()
        breaks = np.flatnonzero(np.diff(index) != 1) + 1
        for a, b in zip([0, *breaks], [*breaks, len(index)], strict=True):
            self.commit_part(table.slice(a, b - a))
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

        columns = {
            "index": pa.array(b.index, pa.int64()),
            "id": pa.array(b.id, pa.string()),
            "label": pa.array(b.label, pa.int64()),
            "dataset_label": pa.array(b.dataset_label, self.schema.field("dataset_label").type),
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
        }
        if self.real is not None:
            preds = [int(p) if ok else None for p, ok in zip(pred, b.ok, strict=True)]
            columns["real_correct"] = pa.array(self.real.correct(b.id, preds), pa.bool_())
        return pa.table(columns, schema=self.schema)

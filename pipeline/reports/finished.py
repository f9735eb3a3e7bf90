"""A finished run folder as the report reads it: its plan, its metrics row, and its
predictions as arrays (`load`), or one line saying why the folder cannot be read."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import UserError, first_line
from pipeline.runs import claims, metrics
from pipeline.runs.plan import RunPlan


@dataclass
class Run:
    """A finished run folder: its plan, its metrics row, and its predictions as arrays."""

    dir: Path
    plan: RunPlan
    scores: metrics.Scores
    index: np.ndarray
    ids: list[str | None]
    label: np.ndarray  # -1: unknown
    pred: np.ndarray  # -1: not scored
    confidence: np.ndarray  # top-1 probability; nan: not scored
    top1: np.ndarray  # bool
    errors: list[tuple[int, str | None, str]]

    @property
    def names(self) -> tuple[str, ...]:
        """The model's class names, as the run recorded them."""
        return self.plan.model.categories

    @property
    def scored(self) -> np.ndarray:
        return self.pred >= 0

    @property
    def labeled(self) -> np.ndarray:
        return self.scored & (self.label >= 0)


def load(d: Path) -> Run:
    """A finished run folder, or one line saying why it is not."""
    the_plan = claims.read_plan(d)
    if not (d / claims.METRICS).exists():
        raise UserError(f"{d} is not finished (no {claims.METRICS}); resume it first")
    cols = ["index", "id", "label", "pred", "topk_prob", "correct_top1", "error"]
    try:
        table = pq.read_table(d / claims.PREDICTIONS, columns=cols)
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{d} holds damaged results ({first_line(e)})") from None
    error = table["error"].to_pylist()
    return Run(
        dir=d,
        plan=the_plan,
        scores=metrics.read(d / claims.METRICS),
        index=table["index"].to_numpy(),
        ids=table["id"].to_pylist(),
        label=pc.fill_null(table["label"], -1).to_numpy(),
        pred=pc.fill_null(table["pred"], -1).to_numpy(),
        confidence=pc.fill_null(pc.list_element(table["topk_prob"], 0), math.nan).to_numpy(),
        top1=pc.fill_null(table["correct_top1"], False).to_numpy(zero_copy_only=False),
        errors=[(i, table["id"][i].as_py(), e) for i, e in enumerate(error) if e is not None],
    )

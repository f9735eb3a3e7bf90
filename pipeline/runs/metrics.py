"""A finished run's numbers: accuracy read back from the predictions file, the published
numbers it is checked against, and the metrics row that holds both beside the plan (no
torch here: the commands over finished runs read this module)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import UserError, first_line
from pipeline.runs.durable import finite
from pipeline.runs.plan import VERSION, RunPlan

PUBLISHED_TOLERANCE = 0.1  # points of top-1/top-5 a full ImageNet-1k val run may differ by
FORMAT = "run_format"  # the metrics row's column naming the plan's VERSION


@dataclass(frozen=True)
class Scores:
    """What a run measured; with its plan's columns, the metrics row."""

    n_images: int
    n_scored: int
    n_errors: int
    n_labeled: int
    top1: float | None  # percent over labeled, scored images; None: there are none
    top5: float | None
    n_real: int | None = None  # with ImageNet-ReaL labels: images with a non-empty set
    real_top1: float | None = None
    published_top1: float | None = None  # torchvision's numbers, where they apply
    published_top5: float | None = None
    images_per_sec: float = 0.0
    wall_seconds: float = 0.0


def accuracy(predictions_path: Path) -> Scores:
    """Counts and top-1/top-5 (percent over labeled, scored rows) of a predictions file, and
    ReaL top-1 (over scored rows with a non-empty ReaL set) when the file has it.

    Reading the file rather than summing during the loop makes the numbers the
    same whether the rows came from one run, a resumed one or merged shards.
    """
    names = pq.read_schema(predictions_path).names
    columns = ["label", "error", "correct_top1", "correct_top5"]
    table = pq.read_table(
        predictions_path, columns=columns + ["real_correct"] * ("real_correct" in names)
    )
    scored = pc.is_null(table["error"])
    labeled = pc.and_(scored, pc.is_valid(table["label"]))
    n_labeled = pc.sum(labeled).as_py() or 0
    n_scored = pc.sum(scored).as_py() or 0

    def percent(column: str, n: int) -> float | None:
        correct = pc.sum(pc.fill_null(table[column], False)).as_py() or 0
        return 100.0 * correct / n if n else None  # no labeled image: no accuracy

    real: dict[str, Any] = {}
    if "real_correct" in names:
        n_real = pc.sum(pc.is_valid(table["real_correct"])).as_py() or 0
        real = {"n_real": n_real, "real_top1": percent("real_correct", n_real)}
    return Scores(
        n_images=table.num_rows,
        n_scored=n_scored,
        n_errors=table.num_rows - n_scored,
        n_labeled=n_labeled,
        top1=percent("correct_top1", n_labeled),
        top5=percent("correct_top5", n_labeled),
        **real,
    )


def whole_val(plan: RunPlan, scores: Scores) -> bool:
    """Whether this run is the one published numbers are measured on: the whole
    50,000-image val split, in ImageNet-1k's label space, scored without errors."""
    return (
        plan.labels.label_space == "imagenet-1k"
        and scores.n_images == 50_000
        and scores.n_scored == scores.n_labeled == 50_000
        and plan.data.dataset_rows == 50_000  # all of it: not a shard of a larger split
        and plan.data.limit is None
        and plan.data.split.startswith("validation")
    )


def with_published(plan: RunPlan, scores: Scores) -> Scores:
    """The scores with the library's published ImageNet-1k numbers for this model (the plan
    holds them: torchvision's weights meta, timm's results table), when this run is the one
    they were measured on (whole_val)."""
    if plan.model.published_ref is None or not whole_val(plan, scores):
        return scores
    top1, top5 = plan.model.published_ref
    return replace(scores, published_top1=top1, published_top5=top5)


def published_check(plan: RunPlan, scores: Scores) -> str | None:
    """One line comparing a run with the published numbers (where it has them); flagged
    when either differs by more than PUBLISHED_TOLERANCE points; on whole val without
    them, one line saying there are none."""
    ref1, ref5 = scores.published_top1, scores.published_top5
    if plan.model.published_ref is None and whole_val(plan, scores):
        return (
            f"published: none for {plan.model.model} with this eval transform (its library "
            f"publishes no ImageNet-1k val numbers for it), so there is nothing to check against"
        )
    if ref1 is None or scores.top1 is None:
        return None
    d1 = scores.top1 - ref1
    d5 = None if ref5 is None or scores.top5 is None else scores.top5 - ref5
    line = (
        f"published ({plan.model.published_by}): top-1 {ref1:.3f}, "
        + ("top-5 not published" if ref5 is None else f"top-5 {ref5:.3f}")
        + f"; this run {d1:+.3f}"
        + ("" if d5 is None else f" / {d5:+.3f}")
        + " points"
    )
    if off_published(d1, d5):
        line += (
            f"  WARNING: more than {PUBLISHED_TOLERANCE} points off: check the data "
            f"(a modified val set?), backend and amp"
        )
    return line


def off_published(*diffs: float | None) -> bool:
    """Whether a difference to the published numbers is more than the tolerance (None:
    that number is not published)."""
    return max(abs(d) for d in diffs if d is not None) > PUBLISHED_TOLERANCE


def row(plan: RunPlan, scores: Scores) -> dict[str, Any]:
    """The metrics row: the plan's columns and the scores, under the plan's format (a sweep's
    rows stack into one table with pd.concat)."""
    return plan.columns() | asdict(scores) | {FORMAT: VERSION}


def read(path: Path) -> Scores:
    """A finished run's scores from its metrics.parquet; one line when it is not this
    version's or cannot be read."""
    try:
        values = pq.read_table(path).to_pylist()[0]
    except (OSError, pa.ArrowException, IndexError) as e:
        raise UserError(f"{path} cannot be read ({first_line(e)})") from None
    if values.get(FORMAT) != VERSION:
        raise UserError(f"{path} was written by another version of this pipeline")
    return Scores(**{f.name: finite(values.get(f.name)) for f in fields(Scores)})

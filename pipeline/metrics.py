"""Accuracy read back from the predictions file, and the published numbers it is checked
against (no torch here: the commands over finished runs read this module)."""

from __future__ import annotations

import math
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

PUBLISHED_TOLERANCE = 0.1  # points of top-1/top-5 a full ImageNet-1k val run may differ by


def accuracy(predictions_path: str) -> dict[str, float | int | None]:
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

    row: dict[str, float | int | None] = {
        "n_images": table.num_rows,
        "n_scored": n_scored,
        "n_errors": table.num_rows - n_scored,
        "n_labeled": n_labeled,
        "top1": percent("correct_top1", n_labeled),
        "top5": percent("correct_top5", n_labeled),
    }
    if "real_correct" in names:
        n_real = pc.sum(pc.is_valid(table["real_correct"])).as_py() or 0
        row |= {"n_real": n_real, "real_top1": percent("real_correct", n_real)}
    return row


def published(row: dict[str, Any]) -> dict[str, float | None]:
    """torchvision's published ImageNet-1K numbers for these weights, when this run is the
    one they were measured on: torchvision's weights, the whole 50,000-image val split, in
    ImageNet-1k's label space, scored without errors (else None). Recorded in the metrics
    row, so that the commands over finished runs need no torchvision."""
    import torchvision

    ref = None
    try:
        enum = torchvision.models.get_model_weights(row["model"])
    except ValueError:
        enum = None
    whole = (
        enum is not None
        and row["weights"] in enum.__members__
        and row["label_space"] == "imagenet-1k"
        and row["n_images"] == 50_000
        and row["n_scored"] == row["n_labeled"] == 50_000
        and row.get("dataset_rows") == 50_000  # all of it: not a shard of a larger split
        and row.get("limit") is None
        and str(row.get("split", "")).startswith("validation")
    )
    if whole:
        ref = enum[row["weights"]].meta["_metrics"].get("ImageNet-1K")
    return {
        "published_top1": ref["acc@1"] if ref else None,
        "published_top5": ref["acc@5"] if ref else None,
    }


def published_check(row: dict[str, Any]) -> str | None:
    """One line comparing a run with the published numbers in its metrics row (when it has
    them); flagged when either differs by more than PUBLISHED_TOLERANCE points."""
    ref1, ref5 = row.get("published_top1"), row.get("published_top5")
    if ref1 is None or ref5 is None or math.isnan(ref1):
        return None
    d1, d5 = row["top1"] - ref1, row["top5"] - ref5
    line = (
        f"published (torchvision {row['weights']}): top-1 {ref1:.3f}, top-5 "
        f"{ref5:.3f}; this run {d1:+.3f} / {d5:+.3f} points"
    )
    if off_published(d1, d5):
        line += (
            f"  WARNING: more than {PUBLISHED_TOLERANCE} points off: check the data "
            f"(a modified val set?), backend and amp"
        )
    return line


def off_published(*diffs: float) -> bool:
    """Whether a difference to the published numbers is more than the tolerance."""
    return max(abs(d) for d in diffs) > PUBLISHED_TOLERANCE

"""Top-k on the device, accuracy read back from the predictions file, and published numbers."""

from __future__ import annotations

import math
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

TOPK = 5
PUBLISHED_TOLERANCE = 0.1  # points of top-1/top-5 a full ImageNet-1k val run may differ by


def topk(
    logits: torch.Tensor, mask: torch.Tensor | None = None, k: int = TOPK
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) logits -> (ids, softmax probs) of the k best classes, best first; fp32 softmax.
    `mask` (C,) bool restricts the outputs to a class subset: the others get no probability,
    and k shrinks to the subset's size (Hendrycks et al.'s protocol for ImageNet-R/-A)."""
    logits = logits.float()
    if mask is not None:
        logits = logits.masked_fill(~mask, -math.inf)
        k = min(k, int(mask.sum()))
    probs, ids = logits.softmax(dim=-1).topk(min(k, logits.shape[-1]), dim=-1)
    return ids, probs


def hits(ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-1 correct, top-5 correct) per row, from (N, k) ids and (N,) labels."""
    match = ids == labels[:, None]
    return match[:, :1].any(dim=1), match[:, :TOPK].any(dim=1)


def accuracy(predictions_path: str) -> dict[str, float | int]:
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

    def percent(column: str, n: int) -> float:
        correct = pc.sum(pc.fill_null(table[column], False)).as_py() or 0
        return 100.0 * correct / n if n else math.nan

    row: dict[str, float | int] = {
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


def published(row: dict[str, Any]) -> dict[str, float] | None:
    """torchvision's published ImageNet-1K numbers for these weights, when this run is the
    one they were measured on: torchvision's weights, the whole 50,000-image val split, in
    ImageNet-1k's label space, scored without errors."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(row["model"])
    except ValueError:
        return None
    whole = (
        row["weights"] in enum.__members__
        and row["label_space"] == "imagenet-1k"
        and row["n_images"] == 50_000
        and row["n_scored"] == row["n_labeled"] == 50_000
        and row.get("limit") is None
        and row.get("shard") in ("0/1", None)
        and str(row.get("split", "")).startswith("validation")
    )
    return enum[row["weights"]].meta["_metrics"].get("ImageNet-1K") if whole else None


def published_check(row: dict[str, Any]) -> str | None:
    """One line comparing a full ImageNet-1k val run with the published numbers; flagged when
    either differs by more than PUBLISHED_TOLERANCE points."""
    ref = published(row)
    if ref is None:
        return None
    d1, d5 = row["top1"] - ref["acc@1"], row["top5"] - ref["acc@5"]
    line = (
        f"published (torchvision {row['weights']}): top-1 {ref['acc@1']:.3f}, top-5 "
        f"{ref['acc@5']:.3f}; this run {d1:+.3f} / {d5:+.3f} points"
    )
    if max(abs(d1), abs(d5)) > PUBLISHED_TOLERANCE:
        line += (
            f"  WARNING: more than {PUBLISHED_TOLERANCE} points off: check the data "
            f"(a modified val set?), backend and amp"
        )
    return line


# ----------------------------------------------------------- intervals and tests

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion, as fractions (nan, nan when n is 0)."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def percent_interval(percent: float, n: int) -> list[float]:
    """The Wilson interval, in percent, of an accuracy given in percent over n images (the
    count of successes is recovered from the metrics row; nan, nan when n is 0)."""
    if n == 0:  # the percent is nan then, and has no count to recover
        return [math.nan, math.nan]
    low, high = wilson(round(percent * n / 100), n)
    return [100 * low, 100 * high]


def mcnemar_exact(first_only: int, second_only: int) -> float:
    """McNemar's exact test: two-sided binomial p-value of the discordant counts (b, c)."""
    n, k = first_only + second_only, min(first_only, second_only)
    if n == 0:
        return 1.0
    # P(X <= k) for X ~ Binomial(n, 1/2), summed in log space: the exact integers
    # (math.comb) take minutes at ImageNet's counts
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(k + 1)]
    top = max(logs)
    log_tail = top + math.log(sum(math.exp(v - top) for v in logs)) - n * math.log(2)
    return min(1.0, 2 * math.exp(log_tail))


def paired_difference(
    both: int, first_only: int, second_only: int, neither: int
) -> tuple[float, float, float]:
    """(difference of the second proportion minus the first, and its 95% interval) for
    paired outcomes: Newcombe's hybrid score interval (method 10, Statist. Med. 1998)."""
    n = both + first_only + second_only + neither
    if n == 0:
        return math.nan, math.nan, math.nan
    p1, p2 = (both + first_only) / n, (both + second_only) / n
    l1, u1 = wilson(both + first_only, n)
    l2, u2 = wilson(both + second_only, n)
    rows = (
        (both + first_only)
        * (second_only + neither)
        * (both + second_only)
        * (first_only + neither)
    )
    phi = (both * neither - first_only * second_only) / math.sqrt(rows) if rows else 0.0
    d = p2 - p1
    lower = math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    upper = math.sqrt(max(0.0, (u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2))
    return d, max(-1.0, d - lower), min(1.0, d + upper)


def calibration(
    confidence: Any, correct: Any, bins: int = 15
) -> tuple[float, list[dict[str, float]]]:
    """Expected calibration error over `bins` equal-width bins of top-1 probability, and
    each bin's count, mean confidence and accuracy (the reliability diagram's points)."""
    import numpy as np

    confidence, correct = np.asarray(confidence, float), np.asarray(correct, bool)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)  # (k/M, (k+1)/M]
    counts = np.bincount(which, minlength=bins)
    conf = np.bincount(which, confidence, minlength=bins)
    hits = np.bincount(which, correct, minlength=bins)
    rows, ece, n = [], 0.0, max(len(confidence), 1)
    for k in range(bins):
        if counts[k]:
            mean_conf, acc = conf[k] / counts[k], hits[k] / counts[k]
            ece += counts[k] / n * abs(acc - mean_conf)
        else:
            mean_conf = acc = math.nan
        rows.append(
            {
                "lower": k / bins,
                "upper": (k + 1) / bins,
                "count": int(counts[k]),
                "confidence": float(mean_conf),
                "accuracy": float(acc),
            }
        )
    return float(ece), rows

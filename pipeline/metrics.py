"""Top-k: per batch on the device, and the run's accuracy from its predictions file."""

from __future__ import annotations

import math

import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

TOPK = 5


def topk(logits: torch.Tensor, k: int = TOPK) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) logits -> (ids, softmax probs) of the k best classes, best first; fp32 softmax."""
    probs, ids = logits.float().softmax(dim=-1).topk(min(k, logits.shape[-1]), dim=-1)
    return ids, probs


def hits(ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-1 correct, top-5 correct) per row, from (N, k) ids and (N,) labels."""
    match = ids == labels[:, None]
    return match[:, :1].any(dim=1), match[:, :TOPK].any(dim=1)


def accuracy(predictions_path: str) -> dict[str, float | int]:
    """Counts and top-1/top-5 (percent over labeled, scored rows) of a predictions file.

    Reading the file rather than summing during the loop makes the numbers the
    same whether the rows came from one run, a resumed one or merged shards.
    """
    table = pq.read_table(
        predictions_path, columns=["label", "error", "correct_top1", "correct_top5"]
    )
    scored = pc.is_null(table["error"])
    labeled = pc.and_(scored, pc.is_valid(table["label"]))
    n_labeled = pc.sum(labeled).as_py() or 0
    n_scored = pc.sum(scored).as_py() or 0

    def percent(column: str) -> float:
        correct = pc.sum(pc.fill_null(table[column], False)).as_py() or 0
        return 100.0 * correct / n_labeled if n_labeled else math.nan

    return {
        "n_images": table.num_rows,
        "n_scored": n_scored,
        "n_errors": table.num_rows - n_scored,
        "n_labeled": n_labeled,
        "top1": percent("correct_top1"),
        "top5": percent("correct_top5"),
    }

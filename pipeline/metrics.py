"""Top-k on the device, and the metrics row: accuracy from the predictions file + provenance."""

from __future__ import annotations

import datetime as dt
import math
import subprocess
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from pipeline.config import Config
from pipeline.model import LoadedModel

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


def provenance(
    cfg: Config,
    loaded: LoadedModel,
    *,
    device: torch.device,
    amp: torch.dtype | None,
    workers: int,
    streams: int,
    started: dt.datetime,
) -> dict[str, Any]:
    """The settings and versions that produced the numbers: one metrics row says it all."""
    import datasets
    import torchvision

    return {
        "dataset_path": cfg.dataset.path,
        "dataset_name": cfg.dataset.name,
        "split": cfg.dataset.split,
        "model": loaded.arch,
        "weights": loaded.weights,
        "weights_sha256": loaded.sha256,
        "batch_size": cfg.batch_size,
        "device": str(device),
        "amp": str(amp).removeprefix("torch.") if amp else "off",
        "backend": cfg.backend.value,
        "num_workers": workers,
        "streams": streams,
        "limit": cfg.limit,
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "datasets_version": datasets.__version__,
        "git_commit": git_commit(),
        "start_time": started.isoformat(timespec="seconds"),
    }


def git_commit() -> str | None:
    """The commit of the code that ran, when it runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def reference_accuracy(loaded: LoadedModel, cfg: Config) -> dict[str, float] | None:
    """torchvision's published ImageNet-1K numbers for these weights, when they apply."""
    import torchvision

    enum = torchvision.models.get_model_weights(loaded.arch)
    if loaded.weights not in enum.__members__ or "imagenet-1k" not in cfg.dataset.path.lower():
        return None
    return enum[loaded.weights].meta["_metrics"].get("ImageNet-1K")

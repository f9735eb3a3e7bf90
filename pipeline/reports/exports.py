"""An exported model against its source, image by image: what deployment checks look for.
A run is an export of another when its model's metadata names the other's model and
weights' sha256 (python -m pipeline.export writes them); paired only over the same rows
and labels.

The numbers: top-1 flips, top-5 set changes, the largest |Δ probability| of the source's
top-1 class (exact where the export ranks that class in its top-5; else a lower bound, said
so), and the flipped images, with thumbnails on the page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq

from pipeline.reports import thumbnails
from pipeline.runs import claims

if TYPE_CHECKING:
    from pipeline.reports.finished import Run

MAX_FLIPS = 50  # flipped images listed (the count covers all)


def export_of(source: Run, export: Run) -> bool:
    """Whether `export` is an export of `source`'s model and weights."""
    s, e = source.plan.model, export.plan.model
    return e.exported_from == s.model and e.exported_from_sha256 == s.weights_sha256


def _topk(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """(top-k ids, top-k probabilities) of every row; -1 and nan where it was not scored."""
    table = pq.read_table(run.dir / claims.PREDICTIONS, columns=["topk", "topk_prob"])
    k = max((len(v) for v in table["topk"].to_pylist() if v), default=0)
    ids = np.full((len(table), k), -1, dtype=np.int64)
    probs = np.full((len(table), k), np.nan)
    for row, (i, p) in enumerate(
        zip(table["topk"].to_pylist(), table["topk_prob"].to_pylist(), strict=True)
    ):
        if i:
            ids[row, : len(i)], probs[row, : len(p)] = i, p
    return ids, probs


def compare(
    source: Run, export: Run, n_thumbnails: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The export against its source over their common scored rows, and the thumbnails of
    the images whose top-1 flipped (kept out of report.json)."""
    both = source.scored & export.scored
    (s_ids, s_probs), (e_ids, e_probs) = _topk(source), _topk(export)
    flips = np.flatnonzero(both & (source.pred != export.pred))
    changed = both & ~(np.sort(s_ids, axis=1) == np.sort(e_ids, axis=1)).all(axis=1)
    top = s_ids[:, :1]  # the source's top-1 class of every row
    ranked = (e_ids == top).any(axis=1)
    e_prob = np.where(ranked, np.nansum(np.where(e_ids == top, e_probs, 0.0), axis=1), np.nan)
    # not in the export's top-k: its probability is at most the k-th one's
    gap = np.where(ranked, np.abs(s_probs[:, 0] - e_prob), s_probs[:, 0] - e_probs[:, -1])
    gap = np.where(both, gap, -np.inf)
    worst = int(np.argmax(gap)) if both.any() else None
    names = source.names
    listed = flips[np.argsort(-gap[flips], kind="stable")][:MAX_FLIPS]
    flipped = [
        {
            "index": int(source.index[k]),
            "id": source.ids[k],
            "label": names[source.label[k]] if source.label[k] >= 0 else None,
            "source_pred": names[source.pred[k]],
            "source_prob": float(s_probs[k, 0]),
            "export_pred": names[export.pred[k]],
            "export_prob": float(e_probs[k, 0]),
        }
        for k in listed
    ]
    result = {
        "source": str(source.dir),
        "export": str(export.dir),
        "exported_from": export.plan.model.exported_from,
        "n": int(both.sum()),
        "top1_flips": len(flips),
        "top5_changes": int(changed.sum()),
        "max_abs_dprob": None if worst is None else float(gap[worst]),
        "max_abs_dprob_exact": None if worst is None else bool(ranked[worst]),
        "max_abs_dprob_id": None if worst is None else source.ids[worst],
        "flipped": flipped,
    }
    return result, _pictures(source, listed[:n_thumbnails], flipped)


def _pictures(
    source: Run, picks: np.ndarray, flipped: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    if not len(picks):
        return []
    pictures, _ = thumbnails.of_rows(source, picks)
    return [{**f, "jpeg": p} for f, p in zip(flipped, pictures, strict=False) if p is not None]


def line(entry: dict[str, Any]) -> str:
    """The comparison in the command's words."""
    if "note" in entry:
        return f"{entry['export']}: {entry['note']}"
    exact = "" if entry["max_abs_dprob_exact"] in (True, None) else " (at least)"
    gap = "n/a" if entry["max_abs_dprob"] is None else f"{entry['max_abs_dprob']:.2g}{exact}"
    return (
        f"{entry['export']} is an export of {entry['source']} ({entry['exported_from']}): "
        f"{entry['top1_flips']} top-1 flips and {entry['top5_changes']} top-5 set changes in "
        f"{entry['n']} images; largest |Δp| of the source's top-1 class {gap}"
    )

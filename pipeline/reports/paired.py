"""A paired comparison of two runs over the same rows: top-1 agreement, McNemar's exact test,
the top-1 difference with its interval, the classes that changed most; refused when the
runs were scored against other labels or under another restriction of the outputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import UserError
from pipeline.reports import stats

if TYPE_CHECKING:
    from pipeline.reports.finished import Run

SAME_ROWS = (
    "dataset_path",
    "dataset_name",
    "split",
    "dataset_revision",
    "data_dir",
    "data_files",
    "dataset_fingerprint",
    "dataset_rows",
    "limit",
    "shard",
    "rows",
)
TOP_CLASSES = 20


def same_rows(a: Run, b: Run) -> bool:
    return all(
        getattr(a.plan.data, k) == getattr(b.plan.data, k) for k in SAME_ROWS
    ) and np.array_equal(a.index, b.index)


def check_pairable(first: Run, other: Run) -> None:
    """Two runs over the same rows are compared image by image only when they were scored
    against the same labels, row for row, under the same restriction of the outputs;
    otherwise their difference would be one of protocols, not of models."""
    where = f"{other.dir} and {first.dir} score the same rows"
    space = [(r.plan.labels.restricted, r.plan.labels.label_space) for r in (first, other)]
    if space[0] != space[1]:
        said = [
            f"{k} ({'restricted' if restricted else 'not restricted'})" for restricted, k in space
        ]
        raise UserError(
            f"{where} in other label spaces ({said[0]} vs {said[1]}): a paired comparison "
            f"would compare protocols; score both the same way, or report them one by one"
        )
    differ = np.flatnonzero(first.label != other.label)
    if differ.size:
        k = int(differ[0])
        raise UserError(
            f"{where} against other labels ({differ.size} rows differ; row "
            f"{int(first.index[k])}: {_label(first.label[k])} vs {_label(other.label[k])}): "
            f"their labels were read differently (dataset.classes?); report them one by one"
        )


def _label(value: int) -> str:
    return "unknown" if value < 0 else f"class {value}"


def paired(first: Run, other: Run) -> dict[str, Any]:
    """The second run against the first, image by image: top-1 agreement, McNemar's exact
    test on top-1 correctness, the top-1 difference with its interval, per-class changes."""
    names = first.names
    both_scored = first.scored & other.scored
    lab = first.labeled & other.labeled
    a, b = first.top1[lab], other.top1[lab]
    cells = [int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum()), int((~a & ~b).sum())]
    diff, lo, hi = stats.paired_difference(*cells)
    counts = np.bincount(first.label[lab], minlength=len(names))
    change = np.bincount(first.label[lab], weights=b.astype(float) - a, minlength=len(names))
    present = np.flatnonzero(counts)
    delta = 100 * change[present] / counts[present]
    order = np.lexsort((present, -np.abs(delta)))[:TOP_CLASSES]
    return {
        "run": str(other.dir),
        "with": str(first.dir),
        "n": int(lab.sum()),
        "agreement": float((first.pred[both_scored] == other.pred[both_scored]).mean())
        if both_scored.any()
        else None,
        "first_only": cells[1],
        "second_only": cells[2],
        "mcnemar_p": stats.mcnemar_exact(cells[1], cells[2]) if lab.any() else None,
        "top1_diff": None if diff is None else 100 * diff,
        "top1_diff_ci95": [None if x is None else 100 * x for x in (lo, hi)],
        "class_diffs": [
            {
                "class": int(present[k]),
                "name": names[present[k]],
                "n": int(counts[present[k]]),
                "top1_diff": float(delta[k]),
            }
            for k in order
        ],
    }

"""Top-k and accuracy on hand-built numbers."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline import inference
from pipeline.runs import metrics, predictions


def test_topk_is_best_first_with_softmax_probs():
    """topk returns class ids best first and their softmax probabilities."""
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0, 5.0, 4.0]])
    ids, probs = inference.topk(logits)
    assert ids.tolist() == [[5, 6, 1, 3, 2]]
    assert torch.allclose(probs, logits.softmax(-1)[0, [5, 6, 1, 3, 2]][None])


def test_hits_count_top1_and_top5():
    """A label at rank 1 is a top-1 and top-5 hit; at rank 4 only top-5; absent, neither."""
    ids = torch.tensor([[7, 1, 2, 3, 4], [1, 2, 3, 7, 5], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5]])
    top1, top5 = inference.hits(ids, torch.tensor([7, 7, 9, -1]))
    assert top1.tolist() == [True, False, False, False]
    assert top5.tolist() == [True, True, False, False]


def test_accuracy_counts_only_labeled_scored_rows(tmp_path):
    """top-1/top-5 are percent over rows that have a label and were scored."""
    tables: list[pa.Table] = []
    writer = predictions.PredictionWriter(
        tables.append, [f"c{i}" for i in range(10)], predictions.schema(), commit_rows=100
    )
    topk = np.array([[1, 2, 3, 4, 5], [2, 1, 3, 4, 5], [3, 4, 5, 6, 7]])
    writer.add(
        predictions.Scored(
            index=np.arange(5),
            id=[None] * 5,
            dataset_label=[1, 1, 1, None, 4],
            label=[1, 1, 1, None, 4],
            error=[None, None, None, None, "broken"],
            ok=np.array([True, True, True, True, False]),
            topk=np.vstack([topk, [[1, 2, 3, 4, 5]]]),
            topk_prob=np.full((4, 5), 0.2, np.float32),
            top1=np.array([True, False, False, False]),
            top5=np.array([True, True, False, False]),
        )
    )
    writer.commit()
    out = tmp_path / "p.parquet"
    pq.write_table(tables[0], out)
    r = metrics.accuracy(out)
    assert (r.n_images, r.n_scored, r.n_errors, r.n_labeled) == (5, 4, 1, 3)
    assert r.top1 is not None and r.top5 is not None
    assert math.isclose(r.top1, 100 / 3) and math.isclose(r.top5, 200 / 3)

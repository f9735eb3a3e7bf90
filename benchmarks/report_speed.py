"""How long `python -m pipeline.report` takes for 50,000 rows (two runs, paired), without
thumbnails: a synthetic finished run folder with ImageNet-1k val's shape.

    python benchmarks/report_speed.py [--rows 50000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa


def fake_run(folder: Path, rows: int, seed: int) -> Path:
    """A finished run folder: predictions with plausible top-5s, metrics, run.json."""
    from pipeline import labels, metrics, rundir, write

    rng = np.random.default_rng(seed)
    label = rng.integers(0, 1000, rows)
    right = rng.random(rows) < 0.565
    topk = rng.integers(0, 1000, (rows, 5))
    topk[right, 0] = label[right]
    probs = np.sort(rng.dirichlet(np.ones(8), rows)[:, :5].astype(np.float32), axis=1)[:, ::-1]
    names = pa.array(labels.categories())
    table = pa.table(
        {
            "index": np.arange(rows),
            "id": [f"ILSVRC2012_val_{i + 1:08d}.JPEG" for i in range(rows)],
            "label": label,
            "dataset_label": label,
            "pred": topk[:, 0],
            "pred_name": names.take(pa.array(topk[:, 0])),
            "topk": list(topk),
            "topk_prob": list(probs.copy()),
            "correct_top1": right,
            "correct_top5": (topk == label[:, None]).any(1),
            "error": pa.nulls(rows, pa.string()),
        },
        schema=write.schema(),
    )
    folder.mkdir(parents=True)
    (folder / rundir.PREDICTIONS).write_bytes(b"")
    import pyarrow.parquet as pq

    pq.write_table(table, folder / rundir.PREDICTIONS)
    plan = {"dataset_path": "ILSVRC/imagenet-1k", "split": "validation", "rows": [0, rows]}
    rundir.write_json(folder / rundir.RUN_FILE, {"results": plan, "runtime": {}})
    row = metrics.accuracy(str(folder / rundir.PREDICTIONS)) | plan | {
        "model": "alexnet", "weights": "none", "label_space": "imagenet-1k", "restricted": False,
    }  # fmt: skip
    rundir.write_metrics(folder / rundir.METRICS, row)
    return folder


def main() -> None:
    from pipeline import report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=50_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        a = fake_run(Path(tmp) / "a", args.rows, 0)
        b = fake_run(Path(tmp) / "b", args.rows, 1)
        for runs in ([a], [a, b]):
            t0 = time.perf_counter()
            report.write(runs, n_thumbnails=0)
            print(
                f"report of {len(runs)} run(s) x {args.rows} rows: {time.perf_counter() - t0:.2f} s"
            )


if __name__ == "__main__":
    main()

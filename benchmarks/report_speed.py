"""How long `python -m pipeline.report` takes for 50,000 rows, as a whole process (one run,
then two paired), without thumbnails: synthetic finished run folders with ImageNet-1k
val's shape. Side by side, the time a process takes just to import torchvision, which
the report used to do for its class names.

    python benchmarks/report_speed.py [--rows 50000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.runs.plan import RunPlan


def fake_run(folder: Path, rows: int, seed: int, template: RunPlan) -> Path:
    """A finished run folder: predictions with plausible top-5s, metrics, run.json (the
    plan of a real tiny run, its rows changed to these)."""
    from pipeline.data.imagenet import categories
    from pipeline.runs import claims, metrics, predictions
    from pipeline.runs.durable import write_json
    from pipeline.runs.folder import write_metrics

    label = np.random.default_rng(0).integers(0, 1000, rows)  # the same images: same labels
    rng = np.random.default_rng(seed)
    right = rng.random(rows) < 0.565
    topk = rng.integers(0, 1000, (rows, 5))
    topk[right, 0] = label[right]
    probs = np.sort(rng.dirichlet(np.ones(8), rows)[:, :5].astype(np.float32), axis=1)[:, ::-1]
    names = pa.array(categories())
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
        schema=predictions.schema(),
    )
    folder.mkdir(parents=True)
    pq.write_table(table, folder / claims.PREDICTIONS)
    plan = template.changed(dataset_rows=rows, rows=(0, rows), dataset_fingerprint=None)
    write_json(folder / claims.RUN_FILE, plan.record())
    write_metrics(
        folder / claims.METRICS, metrics.row(plan, metrics.accuracy(folder / claims.PREDICTIONS))
    )
    return folder


def template_plan(folder: Path) -> RunPlan:
    """The plan of a real run of the bundled sample (random weights)."""
    from pipeline import run
    from pipeline.cli import compose
    from pipeline.runs import claims

    run.evaluate(compose("model.weights=none", "progress=false", "device=cpu"), folder)
    return claims.read_plan(folder)


def seconds(command: list[str], repeat: int) -> float:
    """Median wall time of a whole process."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        template = template_plan(Path(tmp) / "sample")
        a = fake_run(Path(tmp) / "a", args.rows, 0, template)
        b = fake_run(Path(tmp) / "b", args.rows, 1, template)
        report = [sys.executable, "-m", "pipeline.report", "--thumbnails", "0"]
        torchvision = seconds([sys.executable, "-c", "import torchvision"], args.repeat)
        print(f"import torchvision alone (whole process): {torchvision:.2f} s")
        for runs in ([a], [a, b]):
            took = seconds([*report, *map(str, runs)], args.repeat)
            print(
                f"report of {len(runs)} run(s) x {args.rows} rows (whole process): {took:.2f} s, "
                f"{took / torchvision:.2f}x the torchvision import"
            )


if __name__ == "__main__":
    main()

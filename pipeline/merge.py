"""Combine the run folders of shards into one predictions/metrics pair.

    python -m pipeline.merge OUT_DIR SHARD_DIR [SHARD_DIR ...]

Everything is checked before anything is written: the shards must be finished,
come from one run (same plan but for the shard), tile its rows exactly (no
overlap, no gap) and hold valid predictions; the target must not be one of the
shards. The target is a run folder like any other (rundir.py): claimed by its
run.json, locked while written, every file durable; a merge killed at any moment
is finished by running it again.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import metrics, rundir
from pipeline.errors import UserError, one_line

PER_SHARD = ("shard", "rows")  # the results settings that differ between shards


def check_shards(
    out_dir: Path, shard_dirs: list[Path]
) -> tuple[dict[str, Any], list[rundir.Part], pa.Schema]:
    """(the merged run's plan record, the shards' predictions as parts, their schema) or one
    clear error."""
    target = out_dir.resolve()
    if any(d.resolve() == target for d in shard_dirs):
        raise UserError(f"{out_dir} is one of the shards; merge into a new folder")
    plans = [rundir.read_plan(d) for d in shard_dirs]
    for d in shard_dirs:
        if not (d / rundir.METRICS).exists():
            raise UserError(f"{d} is not finished (no {rundir.METRICS}); resume it first")
    common = {k: v for k, v in plans[0]["results"].items() if k not in PER_SHARD}
    for d, p in zip(shard_dirs, plans, strict=True):
        mine = {k: v for k, v in p["results"].items() if k not in PER_SHARD}
        diff = rundir.plan_difference(common, mine)
        if diff:
            raise UserError(f"{d} comes from a different run than {shard_dirs[0]}: {diff}")
    rows, limit = common["dataset_rows"], common["limit"]
    n = rows if limit is None else min(limit, rows)
    parts = sorted(
        (rundir.Part(p["results"]["rows"][0], p["results"]["rows"][1], d / rundir.PREDICTIONS)
         for d, p in zip(shard_dirs, plans, strict=True)),
        key=lambda q: (q.first, q.stop),
    )  # fmt: skip
    expected = 0
    for part in parts:
        if part.first != expected:
            what = "overlap" if part.first < expected else "gap"
            raise UserError(
                f"Shards do not tile rows 0..{n}: {what} at row {expected} ({part.path})"
            )
        expected = part.stop
    if expected != n:
        raise UserError(f"Shards cover rows 0..{expected}, expected 0..{n}")
    schema = pq.read_schema(parts[0].path).remove_metadata()
    for part in parts:
        reason = rundir.damage(part.path, part.first, part.stop, schema)
        if reason:
            raise UserError(f"{part.path} cannot be merged: {reason}")
    record = {
        "results": {**plans[0]["results"], "shard": "0/1", "rows": [0, n]},
        "runtime": plans[0]["runtime"],
    }
    rundir.check_claim(out_dir)  # before anything is written: the target must be ours
    rundir.refuse_other_plan(out_dir, record)
    return record, parts, schema


def merge_shards(out_dir: Path, shard_dirs: list[Path]) -> dict[str, Any]:
    """Check that the shards tile one run, then write its predictions and metrics to out_dir
    (or find them written by the same merge before)."""
    record, parts, schema = check_shards(out_dir, shard_dirs)
    with rundir.open_folder(out_dir) as folder:
        folder.check_plan(record)  # claims the folder; another plan there is refused
        if folder.finished:
            print(f"{out_dir} already holds this merge; nothing to do")
            return pd.read_parquet(out_dir / rundir.METRICS).iloc[0].to_dict()
        predictions = out_dir / rundir.PREDICTIONS
        rundir.write_segments([(p, p.first, p.stop) for p in parts], predictions, schema)
        shards = pd.concat([pd.read_parquet(d / rundir.METRICS) for d in shard_dirs])
        result = shards.iloc[0].to_dict() | metrics.accuracy(str(predictions))
        result |= {
            "shard": f"merged from {len(shard_dirs)}",
            "rows": str(record["results"]["rows"]),
            "wall_seconds": float(shards["wall_seconds"].max()),  # shards run side by side
            "images_per_sec": float(shards["images_per_sec"].sum()),
        }
        result |= metrics.published(result)
        rundir.write_metrics(out_dir / rundir.METRICS, result)  # last: marks it finished
        (out_dir / rundir.ERROR_FILE).unlink(missing_ok=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.merge", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "out_dir", type=Path, help="a new folder for the merged predictions and metrics"
    )
    parser.add_argument("shard_dirs", type=Path, nargs="+", help="run folders of the shards")
    args = parser.parse_args(argv)
    with one_line():
        r = merge_shards(args.out_dir, args.shard_dirs)
    print(
        f"merged {len(args.shard_dirs)} shards: top-1 {r['top1']:.3f}  top-5 {r['top5']:.3f}  "
        f"images {r['n_images']}  errors {r['n_errors']}  -> {args.out_dir}"
    )


if __name__ == "__main__":
    main()

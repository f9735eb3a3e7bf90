"""Combine the run folders of shards into one predictions/metrics pair.

    python -m pipeline.merge OUT_DIR SHARD_DIR [SHARD_DIR ...]

Everything is checked before anything is written: the shards must be finished,
come from one run (same plan but for the shard), tile its rows exactly (no
overlap, no gap) and hold valid predictions; the target must be a new folder,
not one of the shards. The target is then written whole or not at all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import metrics, rundir
from pipeline.config import UserError

PER_SHARD = ("shard", "rows")  # the results settings that differ between shards


def check_shards(
    out_dir: Path, shard_dirs: list[Path]
) -> tuple[dict[str, Any], list[rundir.Part], pa.Schema]:
    """(the merged run's plan record, the shards' predictions as parts, their schema) or one
    clear error."""
    target = out_dir.resolve()
    if any(d.resolve() == target for d in shard_dirs):
        raise UserError(f"{out_dir} is one of the shards; merge into a new folder")
    held = (rundir.RUN_FILE, rundir.PREDICTIONS, rundir.METRICS, rundir.PARTS)
    if any((out_dir / n).exists() for n in held):
        raise UserError(f"{out_dir} already holds a run; merge into a new folder")
    plans = [rundir.read_plan(d) for d in shard_dirs]
    for d, p in zip(shard_dirs, plans, strict=True):
        if "results" not in p:
            raise UserError(f"{d} was made by an older version of this pipeline")
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
    return record, parts, schema


def merge_shards(out_dir: Path, shard_dirs: list[Path]) -> dict[str, Any]:
    """Check that the shards tile one run, then write its predictions and metrics to out_dir."""
    record, parts, schema = check_shards(out_dir, shard_dirs)
    shards = pd.concat([pd.read_parquet(d / rundir.METRICS) for d in shard_dirs])
    with rundir.open_folder(out_dir) as folder:
        try:
            rundir.write_segments(
                [(p, p.first, p.stop) for p in parts], out_dir / rundir.PREDICTIONS, schema
            )
            folder.check_plan(record)
            result = shards.iloc[0].to_dict() | metrics.accuracy(str(out_dir / rundir.PREDICTIONS))
            result |= {
                "shard": f"merged from {len(shard_dirs)}",
                "rows": str(record["results"]["rows"]),
                "wall_seconds": float(shards["wall_seconds"].max()),  # shards run side by side
                "images_per_sec": float(shards["images_per_sec"].sum()),
            }
            rundir.write_metrics(out_dir / rundir.METRICS, result)
        except BaseException:  # the target is whole or empty, never half-written
            for name in (rundir.PREDICTIONS, rundir.RUN_FILE, rundir.METRICS):
                (out_dir / name).unlink(missing_ok=True)
            raise
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
    try:
        r = merge_shards(args.out_dir, args.shard_dirs)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    print(
        f"merged {len(args.shard_dirs)} shards: top-1 {r['top1']:.3f}  top-5 {r['top5']:.3f}  "
        f"images {r['n_images']}  errors {r['n_errors']}  -> {args.out_dir}"
    )


if __name__ == "__main__":
    main()

"""Combine the run folders of shards into one predictions/metrics pair.

    python -m pipeline.merge OUT_DIR SHARD_DIR [SHARD_DIR ...]

Refuses shards that overlap, leave rows out, are unfinished, or come from
different datasets, models or settings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import metrics, write
from pipeline.config import UserError

PER_SHARD = ("shard", "rows")  # the settings that may differ between shards


def merge_shards(out_dir: Path, shard_dirs: list[Path]) -> dict[str, Any]:
    """Check that the shards tile one run, then write its predictions and metrics to out_dir."""
    settings = [write.read_settings(d) for d in shard_dirs]
    common = {k: v for k, v in settings[0].items() if k not in PER_SHARD}
    for d, s in zip(shard_dirs, settings, strict=True):
        diff = sorted(
            k for k in common.keys() | s.keys() if k not in PER_SHARD and s.get(k) != common.get(k)
        )
        if diff:
            raise UserError(
                f"{d} comes from a different run than {shard_dirs[0]}: {', '.join(diff)} differ"
            )
        if not (d / "metrics.parquet").exists():
            raise UserError(f"{d} is not finished (no metrics.parquet); resume it first")
    n = (
        common["split_rows"]
        if common["limit"] is None
        else min(common["limit"], common["split_rows"])
    )
    spans = [
        (s["rows"][0], s["rows"][1], d / "predictions.parquet")
        for d, s in zip(shard_dirs, settings, strict=True)
    ]
    write.check_writable(out_dir)
    write.merge(spans, out_dir / "predictions.parquet", start=0, stop=n)
    write.check_resume(out_dir, common | {"shard": [0, 1], "rows": [0, n]})

    shards = pd.concat([pd.read_parquet(d / "metrics.parquet") for d in shard_dirs])
    result = shards.iloc[0].to_dict() | metrics.accuracy(str(out_dir / "predictions.parquet"))
    wall = float(shards["wall_seconds"].max())  # shards run side by side
    result |= {
        "shard": f"merged from {len(shard_dirs)}",
        "wall_seconds": wall,
        "images_per_sec": float(shards["images_per_sec"].sum()),
    }
    write.write_metrics(out_dir / "metrics.parquet", result)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.merge", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("out_dir", type=Path, help="folder for the merged predictions and metrics")
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

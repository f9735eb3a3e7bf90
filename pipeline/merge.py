"""Combine the run folders of shards into one predictions/metrics pair.

    python -m pipeline.merge OUT_DIR SHARD_DIR [SHARD_DIR ...]

Everything is checked before anything is written (runs/merge.py): the shards must be
finished, come from one run and tile its rows exactly; the target is a run folder like any
other, finished by running the merge again after any interruption.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.errors import one_line
from pipeline.reports.stats import number
from pipeline.runs.claims import METRICS
from pipeline.runs.merge import merge_shards


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
        merged_before = (args.out_dir / METRICS).exists()
        r = merge_shards(args.out_dir, args.shard_dirs)
    if merged_before:
        print(f"{args.out_dir} already holds this merge; nothing to do")
        return
    print(
        f"merged {len(args.shard_dirs)} shards: top-1 {number(r['top1'])}  "
        f"top-5 {number(r['top5'])}  "
        f"images {r['n_images']}  errors {r['n_errors']}  -> {args.out_dir}"
    )


if __name__ == "__main__":
    main()

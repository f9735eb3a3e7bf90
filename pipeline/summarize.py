"""One table of all runs of a sweep, printed and written to summary.parquet (reports/sweep.py
makes it).

    python -m pipeline.summarize outputs/multirun/DATE/TIME

Every job of the sweep is a row: `done` (with its numbers), `failed: <error>`
(the reason its last attempt recorded), `unfinished (N rows committed)` (killed,
stopped or still running), `no results yet` (started, nothing committed) or
`not started`. A sweep prints this table when it ends (`SweepReport`), and merges
the shards of a shard sweep (jobs that differ only in shard.index) into SWEEP/merged
once they have all finished, or names those that have not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pipeline.errors import UserError, one_line
from pipeline.reports import mce
from pipeline.reports.sweep import expected_jobs, imagenet_c_summary, merge_sweep, summarize


def print_table(table: pd.DataFrame) -> None:
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(table.drop(columns="dir").to_string(index=False, float_format="%.3f"))


LAST_SWEEP: dict[str, int] = {}  # what SweepReport found, for the entry point's exit status


class SweepReport(Callback):
    """Hydra callback (conf/config.yaml): when a sweep ends, print its table and count the
    jobs that did not finish, so that `python -m pipeline -m ...` can exit non-zero."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            table = summarize(sweep_dir)
        except UserError as e:
            print(f"error: cannot summarize {sweep_dir}: {e}", file=sys.stderr)
            return
        print_table(table)
        failed = int((table["status"] != "done").sum()) + merge_shards_of(sweep_dir, table)
        LAST_SWEEP.update(jobs=len(table), failed=failed)
        print_imagenet_c(sweep_dir, table)


def print_imagenet_c(sweep_dir: Path, table: pd.DataFrame) -> None:
    try:
        entries = imagenet_c_summary(sweep_dir, table)
    except UserError as e:
        print(f"error: ImageNet-C: {e}", file=sys.stderr)
        return
    for entry in entries:
        print("\n".join(["", *mce.lines(entry)]))


def merge_shards_of(sweep_dir: Path, table: pd.DataFrame) -> int:
    """Merge the sweep's shard sweeps whose shards all finished (reports.sweep.merge_sweep),
    print what happened; how many merges failed."""
    done = set(table.loc[table["status"] == "done", "job"].astype(int))
    lines, failed = merge_sweep(sweep_dir, expected_jobs(sweep_dir), done)
    for line in lines:
        print(line, file=sys.stderr if line.startswith("error") else sys.stdout)
    return failed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.summarize", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("sweep_dir", type=Path, help="outputs/multirun/DATE/TIME")
    args = parser.parse_args(argv)
    with one_line():
        table = summarize(args.sweep_dir)
    print_table(table)
    print(f"wrote {args.sweep_dir / 'summary.parquet'}")
    with one_line():
        merge_shards_of(args.sweep_dir, table)
    print_imagenet_c(args.sweep_dir, table)


if __name__ == "__main__":
    main()

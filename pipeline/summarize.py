"""One table of all runs of a sweep, printed and written to summary.parquet.

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
import pyarrow as pa
import pyarrow.parquet as pq
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline import metrics, plan, rundir, stats
from pipeline.config import register
from pipeline.errors import UserError, one_line

COLUMNS = [
    "job",
    "status",
    "overrides",
    "dataset",
    "split",
    "model",
    "params_m",
    "gmacs",
    "batch_size",
    "device",
    "amp",
    "label_space",
    "top1",
    "top1_ci95",
    "top5",
    "top5_ci95",
    "n_images",
    "n_errors",
    "images_per_sec",
    "dir",
]


def expected_jobs(sweep_dir: Path) -> list[list[str]]:
    """The overrides of every job the sweep launched, from Hydra's multirun.yaml (a config's
    hydra.sweeper.params first, as Hydra's basic sweeper puts them)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra = OmegaConf.load(sweep_dir / "multirun.yaml").hydra
    params = [f"{k}={v}" for k, v in (hydra.sweeper.get("params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides(params + list(hydra.overrides.task))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def job_row(job_dir: Path, number: int, overrides: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"job": number, "overrides": " ".join(overrides), "dir": str(job_dir)}
    config = job_dir / ".hydra" / "config.yaml"
    if config.exists():
        cfg = OmegaConf.load(config)
        row |= {
            "dataset": plan.dataset_title(
                cfg.dataset.get("title"), cfg.dataset.path, cfg.dataset.get("data_files")
            ),
            "split": cfg.dataset.split,
            "model": cfg.model.arch,
            "batch_size": cfg.batch_size,
            "device": cfg.device,
            "amp": cfg.amp,
        }
    if (job_dir / rundir.METRICS).exists():
        return row | finished(job_dir)
    if (job_dir / rundir.ERROR_FILE).exists():
        return row | {"status": f"failed: {(job_dir / rundir.ERROR_FILE).read_text().strip()}"}
    committed = rundir.committed_rows(job_dir)
    if committed:
        return row | {"status": f"unfinished ({committed} rows committed)"}
    try:
        rundir.check_claim(job_dir)  # a job refused for its folder could record nothing there
    except UserError as e:
        return row | {"status": f"failed: {e}"}
    return row | {"status": "no results yet" if job_dir.exists() else "not started"}


def finished(job_dir: Path) -> dict[str, Any]:
    """A finished job's numbers, from its plan and its metrics row, with 95% Wilson
    intervals of top-1 and top-5 as '[low, high]' in percent."""
    the_plan, s = rundir.read_plan(job_dir), metrics.read(job_dir / rundir.METRICS)
    out: dict[str, Any] = {
        "dataset": the_plan.title,
        "split": the_plan.split,
        "model": the_plan.model,  # as resolved: timm:resnet18 is timm:resnet18.a1_in1k
        "params_m": the_plan.params / 1e6,
        "gmacs": the_plan.gmacs,
        "batch_size": the_plan.batch_size,  # the one that finished (oom_retry may halve it)
        "device": the_plan.device,
        "amp": the_plan.amp,
        "label_space": the_plan.label_space,
        "status": "done" if s.n_scored else "failed: no image could be scored",
    }
    for key in ("top1", "top5"):
        low, high = stats.percent_interval(getattr(s, key), s.n_labeled)
        out |= {
            key: getattr(s, key),
            f"{key}_ci95": f"[{stats.number(low, 2)}, {stats.number(high, 2)}]",
        }
    return out | {k: getattr(s, k) for k in ("n_images", "n_errors", "images_per_sec")}


def summarize(sweep_dir: Path) -> pd.DataFrame:
    """The sweep's table; also written to sweep_dir/summary.parquet."""
    if not (sweep_dir / "multirun.yaml").exists():
        raise UserError(f"{sweep_dir} is not a Hydra sweep folder (no multirun.yaml)")
    register()  # a job's saved config holds our resolvers: ${pipeline_file:...}
    jobs = expected_jobs(sweep_dir)
    table = pd.DataFrame([job_row(sweep_dir / str(i), i, o) for i, o in enumerate(jobs)])
    table = table.reindex(columns=COLUMNS).astype(
        {"batch_size": "Int64", "n_images": "Int64", "n_errors": "Int64"}
    )
    rundir.check_ours(sweep_dir / SUMMARY, is_summary)
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), **MARK})
    rundir.durable_write(sweep_dir / SUMMARY, lambda tmp: pq.write_table(arrow, tmp))
    return table


SUMMARY = "summary.parquet"
MARK = {b"alexnet-eval": b"sweep summary"}  # in the file's schema: this pipeline wrote it


def is_summary(path: Path) -> bool:
    """Whether a summary.parquet is this pipeline's: marked so, or (written before the mark)
    holding exactly the table's columns."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException):
        return False
    return MARK.items() <= (schema.metadata or {}).items() or schema.names == COLUMNS


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


def imagenet_c_summary(sweep_dir: Path, table: pd.DataFrame) -> list[dict[str, Any]]:
    """ImageNet-C's errors, CE and mCE of the sweep's finished ImageNet-C runs (none when it
    has none); also written to SWEEP/imagenet_c.json."""
    from pipeline import imagenet_c

    done = [Path(d) for d in table.loc[table["status"] == "done", "dir"]]
    runs = [(str(d), rundir.read_plan(d), metrics.read(d / rundir.METRICS)) for d in done]
    entries = imagenet_c.summary(imagenet_c.gather(runs))
    if entries:
        rundir.check_ours(sweep_dir / "imagenet_c.json", imagenet_c.is_summary_file)
        rundir.write_json(sweep_dir / "imagenet_c.json", entries)
    return entries


def print_imagenet_c(sweep_dir: Path, table: pd.DataFrame) -> None:
    from pipeline import imagenet_c

    try:
        entries = imagenet_c_summary(sweep_dir, table)
    except UserError as e:
        print(f"error: ImageNet-C: {e}", file=sys.stderr)
        return
    for entry in entries:
        print("\n".join(["", *imagenet_c.lines(entry)]))


def merge_shards_of(sweep_dir: Path, table: pd.DataFrame) -> int:
    """Merge the sweep's shard sweeps whose shards all finished (merge.merge_sweep), print
    what happened; how many merges failed."""
    from pipeline.merge import merge_sweep

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

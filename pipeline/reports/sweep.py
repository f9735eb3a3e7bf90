"""A sweep's jobs as one table (summary.parquet), its ImageNet-C runs' errors
(imagenet_c.json), and its shard sweeps merged once all their shards have finished. The
command and Hydra's end-of-sweep callback are pipeline/summarize.py.

Every job of the sweep is a row: `done` (with its numbers), `failed: <error>` (the reason
its last attempt recorded, or why its folder was refused), `unfinished (N rows
committed)` (killed, stopped or still running), `no results yet` (started, nothing
committed) or `not started`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import OmegaConf

from pipeline.config import plain, register
from pipeline.errors import UserError
from pipeline.reports import mce, stats
from pipeline.reports.stats import number
from pipeline.runs import claims, metrics, parts
from pipeline.runs.durable import durable_write, write_json
from pipeline.runs.merge import merge_shards
from pipeline.runs.plan import dataset_title

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
            "dataset": dataset_title(
                cfg.dataset.get("title"), cfg.dataset.path, plain(cfg.dataset.get("data_files"))
            ),
            "split": cfg.dataset.split,
            "model": cfg.model.arch,
            "batch_size": cfg.batch_size,
            "device": cfg.device,
            "amp": cfg.amp,
        }
    if (job_dir / claims.METRICS).exists():
        return row | finished(job_dir)
    if (job_dir / claims.ERROR_FILE).exists():
        return row | {"status": f"failed: {(job_dir / claims.ERROR_FILE).read_text().strip()}"}
    committed = parts.committed_rows(job_dir)
    if committed:
        return row | {"status": f"unfinished ({committed} rows committed)"}
    try:
        claims.check_claim(job_dir)  # a job refused for its folder could record nothing there
    except UserError as e:
        return row | {"status": f"failed: {e}"}
    return row | {"status": "no results yet" if job_dir.exists() else "not started"}


def finished(job_dir: Path) -> dict[str, Any]:
    """A finished job's numbers, from its plan and its metrics row, with 95% Wilson
    intervals of top-1 and top-5 as '[low, high]' in percent."""
    p, s = claims.read_plan(job_dir), metrics.read(job_dir / claims.METRICS)
    out: dict[str, Any] = {
        "dataset": p.data.title,
        "split": p.data.split,
        "model": p.model.model,  # as resolved: timm:resnet18 is timm:resnet18.a1_in1k
        "params_m": p.model.params / 1e6,
        "gmacs": p.model.gmacs,
        "batch_size": p.runtime.batch_size,  # the one that finished (oom_retry may halve it)
        "device": p.runtime.device,
        "amp": p.runtime.amp,
        "label_space": p.labels.label_space,
        "status": "done" if s.n_scored else "failed: no image could be scored",
    }
    for key in ("top1", "top5"):
        low, high = stats.percent_interval(getattr(s, key), s.n_labeled)
        out |= {
            key: getattr(s, key),
            f"{key}_ci95": f"[{number(low, 2)}, {number(high, 2)}]",
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
    claims.check_ours(sweep_dir / SUMMARY, is_summary)
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), **MARK})
    durable_write(sweep_dir / SUMMARY, lambda tmp: pq.write_table(arrow, tmp))
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


def imagenet_c_summary(sweep_dir: Path, table: pd.DataFrame) -> list[dict[str, Any]]:
    """ImageNet-C's errors, CE and mCE of the sweep's finished ImageNet-C runs (none when it
    has none); also written to SWEEP/imagenet_c.json."""
    done = [Path(d) for d in table.loc[table["status"] == "done", "dir"]]
    runs = [(str(d), claims.read_plan(d), metrics.read(d / claims.METRICS)) for d in done]
    entries = mce.summary(mce.gather(runs))
    if entries:
        claims.check_ours(sweep_dir / "imagenet_c.json", mce.is_summary_file)
        write_json(sweep_dir / "imagenet_c.json", entries)
    return entries


@dataclass(frozen=True)
class ShardSweep:
    """Jobs of a sweep that differ only in shard.index: one run, split into shards."""

    overrides: tuple[str, ...]  # the other overrides, the same for every shard
    jobs: dict[int, int]  # shard index -> job number
    count: int  # shard.count


def shard_sweeps(sweep_dir: Path, jobs: list[list[str]]) -> list[ShardSweep]:
    """The shard sweeps among a sweep's jobs (their shard.count from the command line or
    from a job's resolved config)."""
    groups: dict[tuple[str, ...], dict[int, int]] = {}
    for job, overrides in enumerate(jobs):
        index = [o.split("=", 1)[1] for o in overrides if o.startswith("shard.index=")]
        rest = tuple(o for o in overrides if not o.startswith("shard.index="))
        if index and index[0].isdigit():
            groups.setdefault(rest, {})[int(index[0])] = job
    found = []
    for rest, shards in groups.items():
        count = _shard_count(rest, [sweep_dir / str(j) for j in shards.values()])
        if count and count > 1 and len(shards) > 1:
            found.append(ShardSweep(rest, shards, count))
    return found


def _shard_count(overrides: tuple[str, ...], job_dirs: list[Path]) -> int | None:
    from omegaconf import OmegaConf

    given = [o.split("=", 1)[1] for o in overrides if o.startswith("shard.count=")]
    if given:
        return int(given[0]) if given[0].isdigit() else None
    for d in job_dirs:
        if (d / ".hydra" / "config.yaml").exists():
            return int(OmegaConf.load(d / ".hydra" / "config.yaml").shard.count)
    return None


def merge_sweep(sweep_dir: Path, jobs: list[list[str]], done: set[int]) -> tuple[list[str], int]:
    """Merge every shard sweep of a finished sweep whose shards all finished, into
    SWEEP/merged (SWEEP/merged-<k> when there are several); name the shards that did not.
    (the lines to print, how many merges failed)."""
    sweeps, lines, failed = shard_sweeps(sweep_dir, jobs), [], 0
    for k, group in enumerate(sweeps):
        target = sweep_dir / ("merged" if len(sweeps) == 1 else f"merged-{k}")
        what = " ".join(group.overrides) or "the sweep"
        absent = [i for i in range(group.count) if i not in group.jobs]
        unfinished = [
            i for i in range(group.count) if i in group.jobs and group.jobs[i] not in done
        ]
        if absent or unfinished:
            named = ", ".join(f"{i} (job {group.jobs[i]})" for i in unfinished) or "none"
            lines.append(
                f"shards of {what} not merged: shards {named} did not finish"
                + (f", shards {absent} are not in the sweep" if absent else "")
                + f"; rerun the sweep with hydra.sweep.dir={sweep_dir} (finished shards are "
                f"not scored again) and it merges them into {target}"
            )
            failed += bool(absent)
            continue
        merged_before = (target / claims.METRICS).exists()
        try:
            row = merge_shards(target, [sweep_dir / str(group.jobs[i]) for i in range(group.count)])
        except UserError as e:
            lines.append(f"error: cannot merge the shards of {what}: {e}")
            failed += 1
            continue
        if merged_before:
            lines.append(f"the {group.count} shards of {what} are merged in {target} already")
            continue
        lines.append(
            f"merged {group.count} shards of {what} into {target}: top-1 {number(row['top1'])}  "
            f"top-5 {number(row['top5'])}  images {row['n_images']}  errors {row['n_errors']}"
        )
    return lines, failed

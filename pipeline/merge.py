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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import metrics, rundir
from pipeline.errors import UserError, one_line
from pipeline.plan import RESULTS, RunPlan, covered_rows
from pipeline.stats import number

PER_SHARD = ("shard", "rows")  # the results settings that differ between shards


def check_shards(out_dir: Path, shard_dirs: list[Path]) -> tuple[RunPlan, list[rundir.Part]]:
    """(the merged run's plan, the shards' predictions as parts) or one clear error."""
    target = out_dir.resolve()
    if any(d.resolve() == target for d in shard_dirs):
        raise UserError(f"{out_dir} is one of the shards; merge into a new folder")
    plans = [finished_plan(d) for d in shard_dirs]
    common = {k: v for k, v in plans[0].part(RESULTS).items() if k not in PER_SHARD}
    for d, p in zip(shard_dirs, plans, strict=True):
        mine = {k: v for k, v in p.part(RESULTS).items() if k not in PER_SHARD}
        diff = rundir.plan_difference(common, mine)
        if diff:
            raise UserError(f"{d} comes from a different run than {shard_dirs[0]}: {diff}")
    n = covered_rows(plans[0].dataset_rows or 0, plans[0].limit)
    merged = replace(plans[0], shard="0/1", rows=(0, n), merged_shards=len(plans))
    parts = tiling(plans, shard_dirs, n)
    for part in parts:
        reason = rundir.why_damaged(part.path, part.first, part.stop, merged.schema)
        if reason:
            raise UserError(f"{part.path} cannot be merged: {reason}")
    rundir.check_claim(out_dir)  # before anything is written: the target must be ours
    rundir.refuse_other_plan(out_dir, merged)
    return merged, parts


def finished_plan(shard: Path) -> RunPlan:
    the_plan = rundir.read_plan(shard)
    if not (shard / rundir.METRICS).exists():
        raise UserError(f"{shard} is not finished (no {rundir.METRICS}); resume it first")
    return the_plan


def tiling(plans: list[RunPlan], shard_dirs: list[Path], n: int) -> list[rundir.Part]:
    """The shards' predictions as parts, in row order, which must tile rows 0..n."""
    parts = sorted(
        (
            rundir.Part(p.rows[0], p.rows[1] or 0, d / rundir.PREDICTIONS)
            for d, p in zip(shard_dirs, plans, strict=True)
        ),
        key=lambda q: (q.first, q.stop),
    )
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
    return parts


def merge_shards(out_dir: Path, shard_dirs: list[Path]) -> dict[str, Any]:
    """Check that the shards tile one run, then write its predictions and metrics to out_dir
    (or find them written by the same merge before); the metrics row."""
    merged, parts = check_shards(out_dir, shard_dirs)  # another plan there is refused
    with rundir.open_folder(out_dir) as folder:
        if folder.finished:  # the same merge, done before: nothing is written again
            return pd.read_parquet(out_dir / rundir.METRICS).iloc[0].to_dict()
        folder.check_plan(merged)  # claims the folder
        predictions = out_dir / rundir.PREDICTIONS
        rundir.write_segments([(p, p.first, p.stop) for p in parts], predictions, merged.schema)
        shards = [metrics.read(d / rundir.METRICS) for d in shard_dirs]
        scores = replace(
            metrics.accuracy(predictions),
            wall_seconds=max(s.wall_seconds for s in shards),  # shards run side by side
            images_per_sec=sum(s.images_per_sec for s in shards),
        )
        row = metrics.row(merged, metrics.with_published(merged, scores))
        folder.finish(row)  # metrics.parquet last: it marks the merge finished
    return row


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
        merged_before = (target / rundir.METRICS).exists()
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
        merged_before = (args.out_dir / rundir.METRICS).exists()
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

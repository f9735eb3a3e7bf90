"""Combine the run folders of shards into one predictions/metrics pair (the command is
pipeline/merge.py; a sweep's shard sweeps merge through reports/sweep.py).

Everything is checked before anything is written: the shards must be finished,
come from one run (same plan but for the shard), tile its rows exactly (no
overlap, no gap) and hold valid predictions; the target must not be one of the
shards. The target is a run folder like any other (rundir.py): claimed by its
run.json, locked while written, every file durable; a merge killed at any moment
is finished by running it again.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.errors import UserError
from pipeline.runs import claims, metrics, parts
from pipeline.runs.folder import open_folder, plan_difference, refuse_other_plan
from pipeline.runs.plan import RESULTS, RunPlan, covered_rows

PER_SHARD = ("shard", "rows")  # the results settings that differ between shards


def check_shards(out_dir: Path, shard_dirs: list[Path]) -> tuple[RunPlan, list[parts.Part]]:
    """(the merged run's plan, the shards' predictions as parts) or one clear error."""
    target = out_dir.resolve()
    if any(d.resolve() == target for d in shard_dirs):
        raise UserError(f"{out_dir} is one of the shards; merge into a new folder")
    plans = [finished_plan(d) for d in shard_dirs]
    common = {k: v for k, v in plans[0].part(RESULTS).items() if k not in PER_SHARD}
    for d, p in zip(shard_dirs, plans, strict=True):
        mine = {k: v for k, v in p.part(RESULTS).items() if k not in PER_SHARD}
        diff = plan_difference(common, mine)
        if diff:
            raise UserError(f"{d} comes from a different run than {shard_dirs[0]}: {diff}")
    first = plans[0]
    n = covered_rows(first.data.dataset_rows or 0, first.data.limit)
    merged = first.changed(shard="0/1", rows=(0, n), merged_shards=len(plans))
    tiles = tiling(plans, shard_dirs, n)
    for part in tiles:
        reason = parts.why_damaged(part.path, part.first, part.stop, merged.schema)
        if reason:
            raise UserError(f"{part.path} cannot be merged: {reason}")
    claims.check_claim(out_dir)  # before anything is written: the target must be ours
    refuse_other_plan(out_dir, merged)
    return merged, tiles


def finished_plan(shard: Path) -> RunPlan:
    the_plan = claims.read_plan(shard)
    if not (shard / claims.METRICS).exists():
        raise UserError(f"{shard} is not finished (no {claims.METRICS}); resume it first")
    return the_plan


def tiling(plans: list[RunPlan], shard_dirs: list[Path], n: int) -> list[parts.Part]:
    """The shards' predictions as parts, in row order, which must tile rows 0..n."""
    tiles = sorted(
        (
            parts.Part(p.data.rows[0], p.data.rows[1] or 0, d / claims.PREDICTIONS)
            for d, p in zip(shard_dirs, plans, strict=True)
        ),
        key=lambda q: (q.first, q.stop),
    )
    expected = 0
    for part in tiles:
        if part.first != expected:
            what = "overlap" if part.first < expected else "gap"
            raise UserError(
                f"Shards do not tile rows 0..{n}: {what} at row {expected} ({part.path})"
            )
        expected = part.stop
    if expected != n:
        raise UserError(f"Shards cover rows 0..{expected}, expected 0..{n}")
    return tiles


def merge_shards(out_dir: Path, shard_dirs: list[Path]) -> dict[str, Any]:
    """Check that the shards tile one run, then write its predictions and metrics to out_dir
    (or find them written by the same merge before); the metrics row."""
    merged, tiles = check_shards(out_dir, shard_dirs)  # another plan there is refused
    with open_folder(out_dir) as folder:
        if folder.finished:  # the same merge, done before: nothing is written again
            return pd.read_parquet(out_dir / claims.METRICS).iloc[0].to_dict()
        folder.check_plan(merged)  # claims the folder
        predictions = out_dir / claims.PREDICTIONS
        parts.write_segments([(p, p.first, p.stop) for p in tiles], predictions, merged.schema)
        shards = [metrics.read(d / claims.METRICS) for d in shard_dirs]
        scores = replace(
            metrics.accuracy(predictions),
            wall_seconds=max(s.wall_seconds for s in shards),  # shards run side by side
            images_per_sec=sum(s.images_per_sec for s in shards),
        )
        row = metrics.row(merged, metrics.with_published(merged, scores))
        folder.finish(row)  # metrics.parquet last: it marks the merge finished
    return row

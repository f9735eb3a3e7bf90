"""One run, start to finish: plan, load, open the folder, score the missing rows, finish.

`evaluate` takes the typed `Config`, so it runs without Hydra too (the benchmark
does); `python -m pipeline` (__main__.py) composes that Config with Hydra.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from pipeline import (
    data,
    distributed,
    inference,
    labels,
    metrics,
    model,
    plan,
    rundir,
    splits,
    stop,
    write,
)
from pipeline.config import Config, check_values, plain
from pipeline.errors import UserError
from pipeline.stats import number
from pipeline.transforms import Preprocess

log = logging.getLogger("pipeline")


def evaluate(cfg: Config, out_dir: Path) -> dict[str, Any] | None:
    """Score the configured split; write predictions.parquet + metrics.parquet to out_dir.

    Returns the metrics row (None on ranks other than 0 under torchrun). A signal
    (Ctrl-C, SIGTERM, Slurm's SIGUSR2) stops it between batches with everything scored
    committed, raising `stop.Stopped`; a plain rerun into the folder finishes it.
    """
    started = dt.datetime.now(dt.timezone.utc)
    check_values(cfg)
    with stop.cooperative() as stopper:
        group, device = distributed.setup(cfg.device)
        out_dir = Path(group.broadcast(str(out_dir)))  # every rank writes into rank 0's folder
        settings = plan.resolve_settings(cfg, device, group.world)
        folder = rundir.RunFolder(out_dir, owner=group.rank == 0)
        group.on_rank0(folder.lock)  # refused here if the folder is not ours to write
        rundir.check_writable(out_dir)  # from every rank (another node, maybe)
        try:
            return _run(cfg, folder, group, settings, stopper, started)
        finally:
            folder.unlock()


def _run(
    cfg: Config,
    folder: rundir.RunFolder,
    group: distributed.Group,
    settings: plan.Settings,
    stopper: stop.Stop,
    started: dt.datetime,
) -> dict[str, Any] | None:
    hint = resume_hint(folder.path)
    stopper.check(hint)
    split, space, real, loaded = load_inputs(cfg, group)
    rows = distributed.plan_rows(split.num_rows, cfg)
    the_plan = plan.build(
        cfg,
        settings,
        split_name=split.name,
        num_rows=split.num_rows,
        fingerprint=split.fingerprint,
        image_column=split.image_column,
        rows=rows,
        loaded=loaded,
        labels=space,
        real=real,
        started=started,
    )
    schema = write.schema(space.label_type, real=real is not None)
    todo = group.on_rank0(lambda: missing_rows(folder, the_plan, schema, rows))
    if todo is None:
        if group.rank != 0:
            return None
        print(f"{folder.path} is already complete; nothing to do")
        return pd.read_parquet(folder.path / rundir.METRICS).iloc[0].to_dict()
    mine = distributed.share(todo, group)
    if real is not None:
        positions = data.positions_of(mine, split.num_rows or 0)
        real.check(
            splits.row_ids(split, positions, cfg.dataset.id_column),
            positions.tolist(),
            data.imagenet_labels(split, space, cfg.dataset.label_column, positions),
        )
    stopper.check(hint)
    net = model.place(
        loaded.model, settings.device, channels_last=cfg.channels_last, compile=cfg.compile
    )
    scored, wall = score_rows(
        cfg,
        split,
        loaded,
        net,
        settings=settings,
        folder=folder,
        todo=mine,
        space=space,
        real=real,
        schema=schema,
        stopper=stopper,
        show=group.rank == 0,
    )
    total, wall = group.reduce(scored, "sum"), group.reduce(wall, "max")
    stopper.check(hint, signum=int(group.reduce(stopper.signum or 0, "max")))
    group.barrier()
    if group.rank != 0:
        return None
    timing = {"images_per_sec": total / wall if wall > 0 else 0.0, "wall_seconds": wall}

    def metrics_row(predictions: Path) -> dict[str, Any]:
        row = metrics.accuracy(str(predictions)) | the_plan.columns() | timing
        return row | metrics.published(row)

    result = folder.finish(schema, *rows, metrics_row)
    print_summary(result, folder.path)
    check_scored(result, folder.path)
    return result


def check_scored(row: dict[str, Any], out_dir: Path) -> None:
    """A finished run that scored no image is a failure the user must see (exit non-zero),
    though its folder, every row's error included, is complete."""
    if row["n_scored"] == 0:
        what = (
            f"none of its {row['n_images']} images could be scored"
            if row["n_images"]
            else ("the split has no rows to score")
        )
        raise UserError(f"{out_dir}: {what}; see the error column of {rundir.PREDICTIONS}")


def load_inputs(
    cfg: Config, group: distributed.Group
) -> tuple[splits.Split, labels.LabelSpace, labels.RealLabels | None, model.LoadedModel]:
    """The split, what its labels mean, the ReaL labels if asked for, and the model: in
    that order, so that a label refusal never waits for the weights."""
    model.start_hashing(cfg.model.arch, cfg.model.weights)  # while the dataset loads
    split = group.rank0_first(lambda: splits.load_split(source(cfg)))
    space = resolve_labels(cfg, split)
    real = load_real(cfg, split)
    return split, space, real, model.load_model(**asdict(cfg.model))


def source(cfg: Config) -> splits.Source:
    """The split's source, from dataset.* of the config."""
    d = cfg.dataset
    return splits.Source(
        **{
            f.name: plain(getattr(d, f.name))
            for f in fields(splits.Source)
            if f.name != "image_roots"
        },
        image_roots=tuple(d.image_roots),
    )


def resolve_labels(cfg: Config, split: splits.Split) -> labels.LabelSpace:
    """The label space of this split (labels.py), from its features and, where it takes
    them, its folder names or distinct string values."""
    column = cfg.dataset.label_column
    return labels.resolve(
        split.table.features,
        label_column=column,
        classes=cfg.dataset.classes,
        restrict=str(cfg.dataset.restrict).lower(),
        folder_names=splits.folder_names(split) if column else None,
        string_values=splits.string_values(split, column),
    )


def load_real(cfg: Config, split: splits.Split) -> labels.RealLabels | None:
    if cfg.metrics.real_labels is None:
        return None
    if split.num_rows is None:
        raise UserError(
            "metrics.real_labels needs dataset.streaming=false: every row's file name is "
            "checked against the ReaL file before scoring"
        )
    return labels.RealLabels.load(cfg.metrics.real_labels)


def missing_rows(
    folder: rundir.RunFolder, the_plan: plan.RunPlan, schema: Any, rows: tuple[int, int | None]
) -> data.Todo | None:
    """Rank 0: record (or check) the plan, then the rows no valid part holds; None when the
    folder is finished."""
    folder.check_plan(the_plan.record())
    if folder.finished:
        return None
    coverage = folder.scan(schema, *rows)
    done = sum(b - a for _, a, b in coverage.segments)
    if done:
        log.info(
            "resuming: %d rows already committed, %s to score",
            done,
            rundir.rows_of(coverage.missing) or "the rest",
        )
    return coverage.missing


def score_rows(
    cfg: Config,
    split: splits.Split,
    loaded: model.LoadedModel,
    net: torch.nn.Module,
    *,
    settings: plan.Settings,
    folder: rundir.RunFolder,
    todo: data.Todo,
    space: labels.LabelSpace,
    real: labels.RealLabels | None,
    schema: Any,
    stopper: stop.Stop,
    show: bool,
) -> tuple[int, float]:
    """Score the rows in `todo`, committing parts as they come; (images scored, seconds)."""
    device = settings.device
    preprocess = Preprocess.from_transforms(loaded.transforms, cfg.backend.value)
    batches = data.iter_batches(
        split,
        todo=todo,
        batch_size=cfg.batch_size,
        num_workers=settings.workers,
        pin_memory=device.type == "cuda",
        chunk_rows=max(cfg.batch_size * max(settings.workers, 1) * 8, 1024),
        labels=space,
        label_column=cfg.dataset.label_column,
        id_column=cfg.dataset.id_column,
        preprocess=preprocess,
    )
    writer = write.PredictionWriter(
        folder.commit_part, loaded.categories, schema, commit_rows=cfg.commit_rows, real=real
    )
    mask = None
    if space.subset is not None:
        mask = torch.zeros(len(loaded.categories), dtype=torch.bool)
        mask[list(space.subset)] = True
    bar = tqdm(
        total=rundir.rows_of(todo),
        unit="img",
        disable=not (cfg.progress and show),
        dynamic_ncols=True,
    )
    t0 = time.perf_counter()
    try:
        with contextlib.closing(batches), inference.threads_per_stream(settings.streams, device):
            scored = inference.score(
                batches,
                writer,
                net,
                preprocess,
                device=device,
                amp=settings.amp,
                streams=settings.streams,
                on_error=cfg.on_error.value,
                channels_last=cfg.channels_last,
                progress=bar,
                mask=mask,
                should_stop=lambda: stopper.requested,
            )
    except torch.OutOfMemoryError:  # outside the forward: pinned host memory, say
        raise UserError(
            f"Out of memory feeding {device} at batch_size={cfg.batch_size}. "
            f"{resume_hint(folder.path)}"
        ) from None
    except RuntimeError as e:
        if "DataLoader worker" not in str(e):
            raise
        raise UserError(
            f"A data worker died ({str(e).splitlines()[0]}). {resume_hint(folder.path)}"
        ) from e
    finally:
        writer.commit()  # what was scored before a failure or a stop is kept for the resume
    return scored, time.perf_counter() - t0


def resume_hint(out_dir: Path) -> str:
    return f"Run again with output_dir={out_dir} to finish the rest."


def print_summary(r: dict[str, Any], out_dir: Path) -> None:
    line = (
        f"top-1 {number(r['top1'])}  top-5 {number(r['top5'])}  ({r['n_labeled']} labeled)  "
        f"images {r['n_images']}  errors {r['n_errors']}  {r['images_per_sec']:.1f} img/s"
    )
    print(line)
    restricted = ", outputs restricted to these classes" if r["restricted"] else ""
    print(f"label space: {r['label_space']} ({r['label_source']}){restricted}")
    if "real_top1" in r:
        print(
            f"ImageNet-ReaL top-1 {number(r['real_top1'])}  ({r['n_real']} images with ReaL labels)"
        )
    check = metrics.published_check(r)
    if check:
        print(check)
    if r["n_errors"]:
        print(
            f"{r['n_errors']} image(s) could not be scored: see the `error` column; "
            "they are left out of top-1/top-5"
        )
    print(f"wrote {out_dir / rundir.PREDICTIONS} and {out_dir / rundir.METRICS}")

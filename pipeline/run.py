"""One run, start to finish: resolve, load, plan, score the missing rows, finish.

`evaluate` takes the typed `Config`, so it runs without Hydra too (the benchmark
does); `python -m pipeline` (__main__.py) composes that Config with Hydra. Under
torchrun the ranks meet through `distributed.Group`, whose calls do nothing in one
process: read `_run` as the one-process data flow.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from pipeline import (
    corrupt,
    data,
    distributed,
    imagenet_c,
    inference,
    labels,
    metrics,
    model,
    plan,
    predictions,
    rundir,
    settings,
    splits,
    stop,
)
from pipeline.config import Config, check_values, plain
from pipeline.errors import UserError
from pipeline.real import RealLabels
from pipeline.stats import number
from pipeline.transforms import Preprocess

log = logging.getLogger("pipeline")


@dataclass(frozen=True)
class Inputs:
    """What a run scores: the split, what its labels mean, the ReaL labels, the model."""

    split: splits.Split
    labels: labels.LabelSpace
    real: RealLabels | None
    model: model.LoadedModel
    corruption: imagenet_c.Corruption  # ImageNet-C's, where the dataset is


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
        resolved = settings.resolve(cfg, device, group.world, sharing=group.sharing)
        folder = rundir.RunFolder(Path(group.broadcast(str(out_dir))), owner=group.rank == 0)
        group.on_rank0(folder.lock)  # refused here if the folder is not ours to write
        rundir.check_writable(folder.path)  # from every rank (another node, maybe)
        try:
            return _run(cfg, resolved, folder, group, stopper, started)
        finally:
            folder.unlock()


def _run(
    cfg: Config,
    resolved: settings.Settings,
    folder: rundir.RunFolder,
    group: distributed.Group,
    stopper: stop.Stop,
    started: dt.datetime,
) -> dict[str, Any] | None:
    hint = resume_hint(folder.path)
    stopper.check(hint)
    inputs = load_inputs(cfg, group)
    the_plan = plan.build(
        cfg,
        resolved,
        split=inputs.split,
        rows=distributed.plan_rows(inputs.split.num_rows, cfg, group.world),
        model=inputs.model,
        labels=inputs.labels,
        real=inputs.real,
        corruption=inputs.corruption,
        started=started,
    )
    todo = group.on_rank0(lambda: missing_rows(folder, the_plan))
    if todo is None:
        return already_complete(folder.path) if group.rank == 0 else None
    mine = distributed.share(todo, group)
    note(
        f"scoring {rundir.rows_of(mine) or 'all'} rows of {the_plan.title} "
        f"({the_plan.split}) with {the_plan.model} ({the_plan.weights}) on {the_plan.device}, "
        f"batch_size={the_plan.batch_size}, num_workers={the_plan.num_workers}, amp {the_plan.amp}"
    )
    if group.world > 1:
        log.info("rank %d of %d scores %s rows", group.rank, group.world, rundir.rows_of(mine))
    check_real(inputs, mine)
    stopper.check(hint)
    retry = cfg.oom_retry and group.world == 1  # ranks halving apart would not meet again
    the_plan, scored, wall = score_retrying(
        the_plan, inputs, folder, mine, stopper, retry=retry, show=group.rank == 0
    )
    scored, wall = int(sum(group.gather(scored))), max(group.gather(wall))  # all ranks
    stopper.check(hint, signum=int(max(group.gather(stopper.signum or 0))))
    group.barrier()
    if group.rank != 0:
        return None
    return finish(folder, the_plan, scored=scored, wall=wall)


def load_inputs(cfg: Config, group: distributed.Group) -> Inputs:
    """The split, what its labels mean, the ReaL labels if asked for, and the model: in
    that order, so that a label refusal never waits for the weights."""
    model.start_hashing(cfg.model.arch, cfg.model.weights)  # while the dataset loads
    library = corrupt.library()[1] if cfg.dataset.corrupt not in (None, "none") else None
    split = group.rank0_first(lambda: splits.load_split(source(cfg)))
    return Inputs(
        split=split,
        labels=resolve_labels(cfg, split),
        real=load_real(cfg, split),
        model=model.load_model(**asdict(cfg.model, dict_factory=model_arguments)),
        corruption=imagenet_c.of(cfg.dataset, library),
    )


def model_arguments(items: list[tuple[str, Any]]) -> dict[str, Any]:
    """model.* as load_model's arguments: model.name is in model.arch already."""
    return {k: v for k, v in items if k != "name"}


def source(cfg: Config) -> splits.Source:
    """The split's source, from dataset.* of the config (for ImageNet-C, its cell's folder
    of the release, or the clean val split)."""
    d = cfg.dataset
    given = {f.name: plain(getattr(d, f.name)) for f in fields(splits.Source)}
    given |= {"image_roots": tuple(d.image_roots)} | imagenet_c.source_of(d)
    return splits.Source(**given)


def resolve_labels(cfg: Config, split: splits.Split) -> labels.LabelSpace:
    """The label space of this split (labels.py), from its features and, where it takes
    them, its folder names or distinct string values."""
    column = cfg.dataset.label_column
    return labels.resolve(
        split.table.features,
        label_column=column,
        classes=cfg.dataset.classes,
        restrict=cfg.dataset.restrict,
        folder_names=splits.folder_names(split) if column else None,
        string_values=splits.string_values(split, column),
    )


def load_real(cfg: Config, split: splits.Split) -> RealLabels | None:
    if cfg.metrics.real_labels is None:
        return None
    if split.num_rows is None:
        raise UserError(
            "metrics.real_labels needs dataset.streaming=false: every row's file name is "
            "checked against the ReaL file before scoring"
        )
    return RealLabels.load(cfg.metrics.real_labels)


def missing_rows(folder: rundir.RunFolder, the_plan: plan.RunPlan) -> data.Todo | None:
    """Rank 0: record (or check) the plan, then the rows no valid part holds; None when the
    folder is finished."""
    folder.check_plan(the_plan)
    if folder.finished:
        return None
    coverage = folder.scan()
    done = sum(b - a for _, a, b in coverage.segments)
    if done:
        log.info(
            "resuming: %d rows already committed, %s to score",
            done,
            rundir.rows_of(coverage.missing) or "the rest",
        )
    return coverage.missing


def already_complete(out_dir: Path) -> dict[str, Any]:
    say(f"{out_dir} is already complete; nothing to do")
    return pd.read_parquet(out_dir / rundir.METRICS).iloc[0].to_dict()


def check_real(inputs: Inputs, todo: data.Todo) -> None:
    """With ReaL labels, every row to score must name its val image, before any is."""
    if inputs.real is None:
        return
    split = inputs.split
    positions = data.positions_of(todo, split.num_rows or 0)
    inputs.real.check(
        splits.row_ids(split, positions, split.source.id_column),
        positions.tolist(),
        data.imagenet_labels(split, inputs.labels, positions),
    )


def score_retrying(
    the_plan: plan.RunPlan,
    inputs: Inputs,
    folder: rundir.RunFolder,
    todo: data.Todo,
    stopper: stop.Stop,
    *,
    retry: bool,
    show: bool,
) -> tuple[plan.RunPlan, int, float]:
    """score_rows; out of device memory with oom_retry, the rows not yet committed again at
    half the batch size (a warning says so; the plan, run.json and the metrics row hold
    the batch size that finished), down to 1. (the plan, images scored, seconds)"""
    scored, wall = 0, 0.0
    while True:
        start, left = time.perf_counter(), rundir.rows_of(todo)
        try:
            n, _ = score_rows(the_plan, inputs, folder, todo, stopper, show=show)
            return the_plan, scored + n, wall + time.perf_counter() - start
        except inference.OutOfMemory as e:
            if not retry or the_plan.batch_size == 1:
                raise UserError(f"{e}. {resume_hint(folder.path)}") from None
            todo = folder.scan().missing
            scored += (left or 0) - (rundir.rows_of(todo) or 0)
            wall += time.perf_counter() - start
        half = the_plan.batch_size // 2
        log.warning(
            "out of %s memory at batch_size=%d: the %s rows left go on at batch_size=%d "
            "(oom_retry)", the_plan.device_type, the_plan.batch_size, rundir.rows_of(todo), half,
        )  # fmt: skip
        the_plan = replace(the_plan, batch_size=half)
        folder.check_plan(the_plan)


def score_rows(
    the_plan: plan.RunPlan,
    inputs: Inputs,
    folder: rundir.RunFolder,
    todo: data.Todo,
    stopper: stop.Stop,
    *,
    show: bool,
) -> tuple[int, float]:
    """Score the rows in `todo`, committing parts as they come; (images scored, seconds)."""
    p, device = the_plan, torch.device(the_plan.device)
    net = model.place(inputs.model.model, device, channels_last=p.channels_last, compile=p.compile)
    preprocess = Preprocess.from_transforms(
        inputs.model.transforms,
        p.backend,
        protocol=p.protocol,
        corrupt=inputs.corruption.on_the_fly,
    )
    batches = make_batches(p, inputs, todo, preprocess)
    writer = predictions.PredictionWriter(
        folder.commit_part,
        list(p.categories),
        p.schema,
        commit_rows=p.commit_rows,
        real=inputs.real,
    )
    bar = tqdm(total=rundir.rows_of(todo), unit="img", disable=not (p.progress and show))
    t0 = time.perf_counter()
    try:
        with (
            loop_faults(folder.path, device, p.batch_size),
            contextlib.closing(batches),
            inference.threads_per_stream(p.streams, p.threads, device),
        ):
            scored = inference.score(
                batches,
                writer,
                net,
                preprocess,
                device=device,
                amp=p.amp_dtype,
                streams=p.streams,
                on_error=p.on_error,
                channels_last=p.channels_last,
                progress=bar,
                mask=inference.output_mask(inputs.labels.subset, len(p.categories)),
                should_stop=lambda: stopper.requested,
            )
    finally:
        writer.commit()  # what was scored before a failure or a stop is kept for the resume
    return scored, time.perf_counter() - t0


def make_batches(
    the_plan: plan.RunPlan, inputs: Inputs, todo: data.Todo, preprocess: Preprocess
) -> Generator[dict[str, Any], None, None]:
    """The DataLoader batches of the rows to score; a streamed split is read in chunks of
    enough rows to keep every worker busy."""
    p = the_plan
    return data.iter_batches(
        inputs.split,
        todo=todo,
        batch_size=p.batch_size,
        num_workers=p.num_workers,
        pin_memory=p.device_type == "cuda",
        chunk_rows=max(p.batch_size * max(p.num_workers, 1) * 8, 1024),
        labels=inputs.labels,
        preprocess=preprocess,
    )


@contextlib.contextmanager
def loop_faults(out_dir: Path, device: torch.device, batch_size: int) -> Iterator[None]:
    """Faults of the loop a user can act on, as one line with the resume hint: out of memory
    outside the forward (pinned host memory, say), a DataLoader worker that died."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise inference.OutOfMemory(device, batch_size, "feeding it at") from None
    except RuntimeError as e:
        if "DataLoader worker" not in str(e):
            raise
        raise UserError(
            f"A data worker died ({str(e).splitlines()[0]}). {resume_hint(out_dir)}"
        ) from e


def finish(
    folder: rundir.RunFolder, the_plan: plan.RunPlan, *, scored: int, wall: float
) -> dict[str, Any]:
    """The parts merged into predictions.parquet, the metrics row written (marking the
    folder finished) and printed; a run that scored nothing is then a failure."""
    predictions_file = folder.merge_parts()
    scores = replace(
        metrics.accuracy(predictions_file),
        images_per_sec=scored / wall if wall > 0 else 0.0,
        wall_seconds=wall,
    )
    scores = metrics.with_published(the_plan, scores)
    row = metrics.row(the_plan, scores)
    folder.finish(row)
    print_summary(the_plan, scores, folder.path)
    check_scored(scores, folder.path)
    return row


def check_scored(scores: metrics.Scores, out_dir: Path) -> None:
    """A finished run that scored no image is a failure the user must see (exit non-zero),
    though its folder, every row's error included, is complete."""
    if scores.n_scored == 0:
        what = (
            f"none of its {scores.n_images} images could be scored"
            if scores.n_images
            else "the split has no rows to score"
        )
        raise UserError(f"{out_dir}: {what}; see the error column of {rundir.PREDICTIONS}")


def resume_hint(out_dir: Path) -> str:
    return f"Run again with output_dir={out_dir} to finish the rest."


def say(text: str) -> None:
    """A line for the user, kept in the job's log file too (Hydra's pipeline.log), whose
    console handler it skips: the summary reads the same in both."""
    print(text)
    note(text)


def note(text: str) -> None:
    """A line for the job's log file only (what ran, for whoever reads the log later)."""
    record = logging.LogRecord(log.name, logging.INFO, __file__, 0, text, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def ways(p: plan.RunPlan) -> str:
    """How many ways the run scored, and how to ask for the other."""
    outputs = len(p.categories)
    if p.label_space.startswith("subset:"):
        n = int(p.label_space.split(":")[1])
        if p.restricted:
            return f"scored {n}-way, among these classes (dataset.restrict=false: {outputs}-way)"
        return f"scored {outputs}-way (dataset.restrict=true: among these {n} classes only)"
    return f"scored {outputs}-way"


def print_summary(the_plan: plan.RunPlan, s: metrics.Scores, out_dir: Path) -> None:
    say(
        f"top-1 {number(s.top1)}  top-5 {number(s.top5)}  ({s.n_labeled} labeled)  "
        f"images {s.n_images}  errors {s.n_errors}  {s.images_per_sec:.1f} img/s"
    )
    say(f"label space: {the_plan.label_space} ({the_plan.label_source}); {ways(the_plan)}")
    if s.n_real is not None:
        say(f"ImageNet-ReaL top-1 {number(s.real_top1)}  ({s.n_real} images with ReaL labels)")
    check = metrics.published_check(the_plan, s)
    if check:
        say(check)
    if s.n_errors:
        say(
            f"{s.n_errors} image(s) could not be scored: see the `error` column; "
            "they are left out of top-1/top-5"
        )
    say(f"wrote {out_dir / rundir.PREDICTIONS} and {out_dir / rundir.METRICS}")

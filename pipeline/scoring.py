"""Scoring the rows a run has to score: the model placed, the batches made, the loop run
(inference.py) with every fault a user can act on as one line, and out of device memory
the rows left again at half the batch size (oom_retry).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline import inference, stop, summary
from pipeline.data import labels, loader, source
from pipeline.data.real import RealLabels
from pipeline.data.transforms import Preprocess
from pipeline.errors import UserError, first_line
from pipeline.models.base import LoadedModel
from pipeline.models.load import place
from pipeline.request import Corruption
from pipeline.runs import parts, predictions
from pipeline.runs.folder import RunFolder
from pipeline.runs.plan import RunPlan, RuntimePlan

log = logging.getLogger("pipeline")


@dataclass(frozen=True)
class Inputs:
    """What a run scores: the split, what its labels mean, the ReaL labels, the model."""

    split: source.Split
    labels: labels.LabelSpace
    real: RealLabels | None
    model: LoadedModel
    corruption: Corruption  # ImageNet-C's, where the dataset is


def score_retrying(
    the_plan: RunPlan,
    inputs: Inputs,
    folder: RunFolder,
    todo: loader.Todo,
    stopper: stop.Stop,
    *,
    retry: bool,
    show: bool,
) -> tuple[RunPlan, int, float]:
    """score_rows; out of device memory with oom_retry, the rows not yet committed again at
    half the batch size (a warning says so; the plan, run.json and the metrics row hold
    the batch size that finished), down to 1. (the plan, images scored, seconds)"""
    scored, wall = 0, 0.0
    while True:
        start, left = time.perf_counter(), parts.rows_of(todo)
        try:
            n, _ = score_rows(the_plan, inputs, folder, todo, stopper, show=show)
            return the_plan, scored + n, wall + time.perf_counter() - start
        except inference.OutOfMemory as e:
            if not retry or the_plan.runtime.batch_size == 1:
                raise UserError(f"{e}. {summary.resume_hint(folder.path)}") from None
            todo = folder.scan().missing
            scored += (left or 0) - (parts.rows_of(todo) or 0)
            wall += time.perf_counter() - start
        r = the_plan.runtime
        log.warning(
            "out of %s memory at batch_size=%d: the %s rows left go on at batch_size=%d "
            "(oom_retry)", r.device_type, r.batch_size, parts.rows_of(todo), r.batch_size // 2,
        )  # fmt: skip
        the_plan = the_plan.changed(batch_size=r.batch_size // 2)
        folder.check_plan(the_plan)


def score_rows(
    the_plan: RunPlan,
    inputs: Inputs,
    folder: RunFolder,
    todo: loader.Todo,
    stopper: stop.Stop,
    *,
    show: bool,
) -> tuple[int, float]:
    """Score the rows in `todo`, committing parts as they come; (images scored, seconds)."""
    r, device = the_plan.runtime, torch.device(the_plan.runtime.device)
    net = place(inputs.model.model, device, channels_last=r.channels_last, compile=r.compile)
    preprocess = Preprocess.from_transforms(
        inputs.model.transforms,
        the_plan.pixels.backend,
        protocol=the_plan.pixels.protocol,
        corrupt=inputs.corruption.on_the_fly,
    )
    batches = make_batches(r, inputs, todo, preprocess)
    categories = the_plan.model.categories
    writer = predictions.PredictionWriter(
        folder.commit_part, list(categories), the_plan.schema, commit_rows=r.commit_rows,
        real=inputs.real,
    )  # fmt: skip
    bar = tqdm(total=parts.rows_of(todo), unit="img", disable=not (r.progress and show))
    t0 = time.perf_counter()
    try:
        with (
            loop_faults(folder.path, device, r.batch_size),
            contextlib.closing(batches),
            inference.threads_per_stream(r.streams, r.threads, device),
        ):
            scored = inference.score(
                batches, writer, net, preprocess, r, progress=bar,
                mask=inference.output_mask(inputs.labels.subset, len(categories)),
                should_stop=lambda: stopper.requested,
            )  # fmt: skip
    finally:
        writer.commit()  # what was scored before a failure or a stop is kept for the resume
    return scored, time.perf_counter() - t0


def make_batches(
    r: RuntimePlan, inputs: Inputs, todo: loader.Todo, preprocess: Preprocess
) -> Generator[loader.Batch, None, None]:
    """The DataLoader batches of the rows to score; a streamed split is read in chunks of
    enough rows to keep every worker busy."""
    return loader.iter_batches(
        inputs.split,
        todo=todo,
        batch_size=r.batch_size,
        num_workers=r.num_workers,
        pin_memory=r.device_type == "cuda",
        chunk_rows=max(r.batch_size * max(r.num_workers, 1) * 8, 1024),
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
            f"A data worker died ({first_line(e)}). {summary.resume_hint(out_dir)}"
        ) from e

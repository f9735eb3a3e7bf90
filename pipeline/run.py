"""One run, start to finish: resolve, load, plan, score the missing rows, finish.

`evaluate` takes the typed `Config`, so it runs without Hydra too (the benchmark does),
and reads it once (resolve.py); from there every stage receives its part of the Request,
then of the plan. `python -m pipeline` (__main__.py) composes that Config with Hydra.
Under torchrun the ranks meet through `distributed.Group`, whose calls do nothing in one
process: read `_run` as the one-process data flow.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline import distributed, planning, resolve, settings, stop, summary
from pipeline.config import Config
from pipeline.data import corrupt, labels, loader, source
from pipeline.data.classes import Classes
from pipeline.data.imagenet import IMAGENET_1K
from pipeline.data.real import RealLabels
from pipeline.errors import UserError
from pipeline.models import registry, zeroshot
from pipeline.models.load import load_model, start_hashing
from pipeline.request import ModelRequest, Request
from pipeline.runs import claims, metrics, parts
from pipeline.runs.durable import check_writable
from pipeline.runs.folder import RunFolder
from pipeline.runs.plan import RunPlan, RuntimePlan
from pipeline.scoring import Inputs, score_retrying

log = logging.getLogger("pipeline")


@dataclass(frozen=True)
class Finished:
    """A finished run: its plan, its scores, and the metrics row they make."""

    plan: RunPlan
    scores: metrics.Scores

    @property
    def row(self) -> dict[str, Any]:
        return metrics.row(self.plan, self.scores)


def evaluate(cfg: Config, out_dir: Path) -> Finished:
    """Score the configured split; write predictions.parquet + metrics.parquet to out_dir.
    The one place a run reads the Config: the rest is `execute`'s."""
    return execute(resolve.request(cfg), out_dir)


def execute(asked: Request, out_dir: Path) -> Finished:
    """Score the requested split into out_dir. Returns the finished run (on every rank under
    torchrun: rank 0 finishes the folder and hands it to the others). A signal (Ctrl-C,
    SIGTERM, Slurm's SIGUSR2) stops it between batches with everything scored committed,
    raising `stop.Stopped`; a plain rerun into the folder finishes it."""
    started = dt.datetime.now(dt.timezone.utc)
    with stop.cooperative() as stopper:
        group, device = distributed.setup(asked.runtime.device)
        runtime = settings.resolve(asked.runtime, device, group.world, sharing=group.sharing)
        folder = RunFolder(Path(group.broadcast(str(out_dir))), owner=group.rank == 0)
        group.on_rank0(folder.lock)  # refused here if the folder is not ours to write
        check_writable(folder.path)  # from every rank (another node, maybe)
        try:
            return _run(asked, runtime, folder, group, stopper, started)
        finally:
            folder.unlock()


def _run(
    asked: Request,
    runtime: RuntimePlan,
    folder: RunFolder,
    group: distributed.Group,
    stopper: stop.Stop,
    started: dt.datetime,
) -> Finished:
    hint = summary.resume_hint(folder.path)
    stopper.check(hint)
    inputs = load_inputs(asked, group, runtime.device)
    rows = distributed.plan_rows(inputs.split.num_rows, asked.rows, group.world)
    the_plan = planning.build(
        asked, runtime, split=inputs.split, rows=rows, model=inputs.model,
        labels=inputs.labels, real=inputs.real, corruption=inputs.corruption, started=started,
    )  # fmt: skip
    todo = group.on_rank0(lambda: missing_rows(folder, the_plan))
    if todo is None:
        return group.on_rank0(lambda: already_complete(folder.path, the_plan))
    mine = distributed.share(todo, group)
    summary.note_start(the_plan, parts.rows_of(mine))
    if group.world > 1:
        log.info("rank %d of %d scores %s rows", group.rank, group.world, parts.rows_of(mine))
    check_real(inputs, mine)
    stopper.check(hint)
    retry = asked.runtime.oom_retry and group.world == 1  # ranks halving apart would not meet
    the_plan, scored, wall = score_retrying(
        the_plan, inputs, folder, mine, stopper, retry=retry, show=group.rank == 0
    )
    scored, wall = int(sum(group.gather(scored))), max(group.gather(wall))  # all ranks
    stopper.check(hint, signum=int(max(group.gather(stopper.signum or 0))))
    group.barrier()
    return group.on_rank0(lambda: finish(folder, the_plan, scored=scored, wall=wall))


def load_inputs(asked: Request, group: distributed.Group, device: str = "cpu") -> Inputs:
    """The split, what its labels mean as the head's classes, the ReaL labels if asked for,
    and the model: in that order where the head's classes are known before its weights, so
    that a label refusal never waits for them. A zero-shot model's classes are decided
    from the split first (its head is built from their names, on `device`)."""
    start_hashing(asked.model)  # while the dataset loads
    split = group.rank0_first(lambda: source.load_split(asked.source))
    wanted = asked.model
    if zero_shot(wanted):
        wanted = replace(wanted, prompts=zero_shot_prompts(asked, split, device))
        asked = replace(asked, model=wanted)
    early = registry.source(wanted.library).head_classes(wanted)
    # rank 0 first: a zero-shot head it builds is cached for the others
    model = None if early is not None else group.rank0_first(lambda: load_model(wanted))
    classes = early if early is not None else model.classes  # type: ignore[union-attr]
    imagenet_only(asked, classes)
    space = resolve_labels(asked, split, classes)
    real = load_real(asked.real_labels, split)
    model = model or group.rank0_first(lambda: load_model(wanted))
    assert model.classes.names == classes.names, "the head's classes, known early, held"
    corruption = asked.corruption
    if corruption.on_the_fly:  # the library that makes it, now that it is imported
        corruption = replace(corruption, source=f"{corrupt.library()[1]} on the fly (approximate)")
    return Inputs(split=split, labels=space, real=real, model=model, corruption=corruption)


def zero_shot(asked: ModelRequest) -> bool:
    """Whether the model is zero-shot (its source says; most have a head)."""
    answer = getattr(registry.source(asked.library), "zero_shot", None)
    return bool(answer and answer(asked))


def zero_shot_prompts(asked: Request, split: source.Split, device: str) -> zeroshot.Prompts:
    """A zero-shot head's text: ImageNet-1k's names where the split's labels read as
    ImageNet-1k classes (or it has none), else the split's own class names."""
    column = asked.source.label_column
    try:
        resolve_labels(asked, split, IMAGENET_1K)
        own = None
    except UserError as e:
        own = labels.own_names(
            split.table.features,
            label_column=column,
            folder_names=source.folder_names(split) if column else None,
            string_values=source.string_values(split, column),
        )
        if own is None:
            raise UserError(
                f"{e}; a zero-shot head is built from class names: give the labels names "
                f"(a ClassLabel, class folders, strings) or dataset.classes"
            ) from None
    m = asked.model
    return zeroshot.prompts(own, classnames=m.classnames, templates=m.templates, device=device)


def imagenet_only(asked: Request, classes: Classes) -> None:
    """What only an ImageNet-1k head can be scored with: one line each, saying why not."""
    if classes.kind == IMAGENET_1K.kind:
        return
    what = f"the model's head is {classes.kind}, not ImageNet-1k"
    if asked.real_labels is not None:
        raise UserError(f"metrics.real_labels are ImageNet-1k val's reassessed labels; {what}")
    if asked.corruption.name is not None:
        raise UserError(
            f"ImageNet-C (dataset.corruption, dataset.corrupt) is scored as ImageNet-1k "
            f"classes, against AlexNet's errors; {what}"
        )


def resolve_labels(asked: Request, split: source.Split, classes: Classes) -> labels.LabelSpace:
    """The label space of this split (data/labels.py): its labels as the head's classes,
    from its features and, where it takes them, its folder names or distinct strings."""
    column = asked.source.label_column
    return labels.resolve(
        split.table.features,
        label_column=column,
        asked=asked.labels,
        folder_names=source.folder_names(split) if column else None,
        string_values=source.string_values(split, column),
        classes=classes,
    )


def load_real(path: str | None, split: source.Split) -> RealLabels | None:
    if path is None:
        return None
    if split.num_rows is None:
        raise UserError(
            "metrics.real_labels needs dataset.streaming=false: every row's file name is "
            "checked against the ReaL file before scoring"
        )
    return RealLabels.load(path)


def missing_rows(folder: RunFolder, the_plan: RunPlan) -> loader.Todo | None:
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
            parts.rows_of(coverage.missing) or "the rest",
        )
    return coverage.missing


def already_complete(out_dir: Path, the_plan: RunPlan) -> Finished:
    summary.say(f"{out_dir} is already complete; nothing to do")
    return Finished(the_plan, metrics.read(out_dir / claims.METRICS))


def check_real(inputs: Inputs, todo: loader.Todo) -> None:
    """With ReaL labels, every row to score must name its val image, before any is."""
    if inputs.real is None:
        return
    split = inputs.split
    positions = loader.positions_of(todo, split.num_rows or 0)
    inputs.real.check(
        source.row_ids(split, positions, split.source.id_column),
        positions.tolist(),
        loader.class_labels(split, inputs.labels, positions),
    )


def finish(folder: RunFolder, the_plan: RunPlan, *, scored: int, wall: float) -> Finished:
    """The parts merged into predictions.parquet, the metrics row written (marking the
    folder finished) and printed; a run that scored nothing is then a failure."""
    predictions_file = folder.merge_parts()
    scores = replace(
        metrics.accuracy(predictions_file),
        images_per_sec=scored / wall if wall > 0 else 0.0,
        wall_seconds=wall,
    )
    done = Finished(the_plan, metrics.with_published(the_plan, scores))
    folder.finish(done.row)
    summary.print_summary(the_plan, done.scores, folder.path)
    summary.check_scored(done.scores, folder.path)
    return done

"""What a run says: the lines it prints when it finishes (kept in the job's log too), what
it notes in the log when it starts, and the hint for finishing a stopped run.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.errors import UserError
from pipeline.reports.stats import number
from pipeline.runs import metrics
from pipeline.runs.claims import METRICS, PREDICTIONS
from pipeline.runs.plan import RunPlan

log = logging.getLogger("pipeline")


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


def note_start(p: RunPlan, rows: int | None) -> None:
    r = p.runtime
    note(
        f"scoring {rows or 'all'} rows of {p.data.title} ({p.data.split}) with "
        f"{p.model.model} ({p.model.weights}) on {r.device}, batch_size={r.batch_size}, "
        f"num_workers={r.num_workers}, amp {r.amp}"
    )


def resume_hint(out_dir: Path) -> str:
    return f"Run again with output_dir={out_dir} to finish the rest."


def ways(p: RunPlan) -> str:
    """How many ways the run scored, and how to ask for the other."""
    outputs, labels = len(p.model.categories), p.labels
    if labels.label_space.startswith("subset:"):
        n = int(labels.label_space.split(":")[1])
        if labels.restricted:
            return f"scored {n}-way, among these classes (dataset.restrict=false: {outputs}-way)"
        return f"scored {outputs}-way (dataset.restrict=true: among these {n} classes only)"
    return f"scored {outputs}-way"


def top_k(p: RunPlan) -> str:
    """top-5, or top-k for a head (or a restriction) of k < 5 classes (the metrics row's
    top5 column is then that)."""
    k = min(5, len(p.model.categories))
    if p.labels.restricted:
        k = min(k, int(p.labels.label_space.split(":")[1]))
    return f"top-{k}"


def print_summary(p: RunPlan, s: metrics.Scores, out_dir: Path) -> None:
    k = top_k(p)
    fewer = f"  ({k[4:]} classes: the top5 column is {k})" if k != "top-5" else ""
    say(
        f"top-1 {number(s.top1)}  {k} {number(s.top5)}  ({s.n_labeled} labeled)  "
        f"images {s.n_images}  errors {s.n_errors}  {s.images_per_sec:.1f} img/s{fewer}"
    )
    say(f"label space: {p.labels.label_space} ({p.labels.label_source}); {ways(p)}")
    if s.n_real is not None:
        say(f"ImageNet-ReaL top-1 {number(s.real_top1)}  ({s.n_real} images with ReaL labels)")
    check = metrics.published_check(p, s)
    if check:
        say(check)
    if s.n_errors:
        say(
            f"{s.n_errors} image(s) could not be scored: see the `error` column; "
            "they are left out of top-1/top-5"
        )
    say(f"wrote {out_dir / PREDICTIONS} and {out_dir / METRICS}")


def check_scored(scores: metrics.Scores, out_dir: Path) -> None:
    """A finished run that scored no image is a failure the user must see (exit non-zero),
    though its folder, every row's error included, is complete."""
    if scores.n_scored == 0:
        what = (
            f"none of its {scores.n_images} images could be scored"
            if scores.n_images
            else "the split has no rows to score"
        )
        raise UserError(f"{out_dir}: {what}; see the error column of {PREDICTIONS}")

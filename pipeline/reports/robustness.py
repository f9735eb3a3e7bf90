"""Effective robustness (Taori et al. 2020, "Measuring robustness to natural distribution
shifts in image classification"; their imagenet-testbed) over a sweep of models x
datasets: each model's top-1 on a shifted dataset against its top-1 on ImageNet val, both
on logit- (or probit-) scaled axes, a line fitted through the models there, and each
model's effective robustness: its shifted top-1 minus the line's at its val top-1, in
points.

A point is one finished, labelled run; its dataset is the run's title (dataset.title). Only
1000-way top-1 compares with val's: a run restricted to a subset (R/A's 200 classes) is
left out, saying so; ImageNet-C cells have their own section.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from pipeline.errors import UserError
from pipeline.runs.metrics import Scores
from pipeline.runs.plan import RunPlan

VAL = "imagenet-val"  # the dataset.title of the val runs: the x axis
MIN_MODELS = 3  # a line through two models passes through both: no robustness to measure
# the spread of val top-1 (points, highest minus lowest model) a line needs: models that
# agree on val to within it leave the slope to noise (three of equal val top-1 got an
# arbitrary one); Taori et al.'s testbed spans some 60 points
MIN_SPREAD = 2.0


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _expit(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# the axis scale: accuracy (0..1, open) -> axis, and back
SCALES: dict[str, tuple[Callable[[float], float], Callable[[float], float]]] = {
    "logit": (_logit, _expit),
    "probit": (NormalDist().inv_cdf, NormalDist().cdf),
}


@dataclass(frozen=True)
class Point:
    """One model on one dataset: its top-1 (%) over n labelled images, and where it is from."""

    model: str
    dataset: str
    top1: float
    n: int
    run: str
    zero_shot: bool = False  # a CLIP-like model: plotted apart, not on the line's fit


def model_name(plan: RunPlan) -> str:
    """The model as the plot labels it: its arch, and its weights where they are not the
    library's pretrained ones (a checkpoint by its digest)."""
    m = plan.model
    if m.weights == "pretrained":
        return m.model
    if m.weights == "checkpoint":
        return f"{m.model} ({(m.weights_sha256 or '?')[:8]})"
    return f"{m.model} ({m.weights})"


def points(runs: Iterable[tuple[str, RunPlan, Scores]]) -> tuple[list[Point], list[str]]:
    """The runs that can be points, and a note for each one that cannot and why; two runs
    of one model on one dataset are both left out (which one is meant is not known)."""
    kept: dict[tuple[str, str], Point] = {}
    notes, doubled = [], set()
    for where, plan, scores in runs:
        dataset, model = plan.data.title, model_name(plan)
        if plan.pixels.corruption is not None:
            continue
        if scores.top1 is None or not scores.n_labeled:
            notes.append(f"{where} ({model} on {dataset}): no labelled image scored")
            continue
        if plan.model.classes != "imagenet-1k":
            notes.append(
                f"{where} ({model} on {dataset}): its head is {plan.model.classes}, and effective "
                f"robustness is ImageNet-1k's (its val and shifted sets)"
            )
            continue
        if plan.labels.restricted:
            notes.append(
                f"{where} ({model} on {dataset}): outputs restricted to {plan.labels.label_space}, "
                f"whose top-1 is not comparable with val's 1000-way one; run it with "
                f"dataset.restrict=false to plot it"
            )
            continue
        key = (model, dataset)
        if key in kept or key in doubled:
            doubled.add(key)
            other = kept.pop(key, None)
            notes.append(
                f"{model} on {dataset} is in two runs ({other.run + ', ' if other else ''}"
                f"{where}): both left out"
            )
            continue
        zero_shot = plan.model.zero_shot_names_sha256 is not None
        kept[key] = Point(model, dataset, scores.top1, scores.n_labeled, where, zero_shot)
    return list(kept.values()), notes


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """The least-squares line y = slope * x + intercept."""
    slope, intercept = np.polyfit(np.asarray(xs), np.asarray(ys), 1)
    return float(slope), float(intercept)


def summary(
    runs: Iterable[tuple[str, RunPlan, Scores]], val: str = VAL, scale: str = "logit"
) -> dict[str, Any]:
    """report.json's effective_robustness: per shifted dataset, each model's val and shifted
    top-1, the line through them on the scaled axes, and each model's effective robustness
    (None with fewer than three models, or val top-1s within MIN_SPREAD points); notes for
    every run or model left out. Nothing at all where no plot was possible: fewer than two
    models or two datasets among the runs (a single run's report)."""
    if scale not in SCALES:
        raise UserError(f"--scale {scale}: choose one of {', '.join(SCALES)}")
    runs = [r for r in runs if r[1].pixels.corruption is None]
    found, notes = points(runs)
    on_val = {p.model: p for p in found if p.dataset == val}
    shifted = [p for p in found if p.dataset != val]
    empty = {"val": val, "scale": scale, "datasets": [], "notes": []}
    if not shifted or not on_val:
        models = {model_name(plan) for _, plan, _ in runs}
        if len(models) < 2 or len({plan.data.title for _, plan, _ in runs}) < 2:
            return empty
        if shifted:
            notes.append(
                f"no run on {val} (dataset.title) to plot the others against (--val TITLE)"
            )
        return empty | {"notes": notes}
    entries = [
        _dataset_entry(dataset, [p for p in shifted if p.dataset == dataset], on_val, val, scale)
        for dataset in dict.fromkeys(p.dataset for p in shifted)
    ]
    return {"val": val, "scale": scale, "datasets": entries, "notes": notes}


def _dataset_entry(
    dataset: str, shifted: list[Point], on_val: dict[str, Point], val: str, scale: str
) -> dict[str, Any]:
    """One shifted dataset's models, the line through them and their effective robustness."""
    to_axis, from_axis = SCALES[scale]
    rows: list[dict[str, Any]] = []
    left: list[str] = []
    for p in shifted:
        v = on_val.get(p.model)
        if v is None:
            left.append(f"{p.model}: no run on {val}")
        elif not (0 < v.top1 < 100 and 0 < p.top1 < 100):
            left.append(f"{p.model}: a top-1 of 0 or 100% has no place on {scale} axes")
        else:
            rows.append({"model": p.model, "val_top1": v.top1, "top1": p.top1,
                         "n_val": v.n, "n": p.n, "val_run": v.run, "run": p.run,
                         "zero_shot": p.zero_shot})  # fmt: skip
    entry: dict[str, Any] = {"dataset": dataset, "models": rows, "left_out": left, "fit": None}
    trained = [r for r in rows if not r["zero_shot"]]  # the line is the ImageNet-trained ones'
    spread = max((r["val_top1"] for r in trained), default=0) - min(
        (r["val_top1"] for r in trained), default=0
    )
    if len(trained) >= 2 and spread < MIN_SPREAD:
        left.append(
            f"no line can be fitted: the {len(trained)} models' {val} top-1 span {spread:.2f} "
            f"points, and a fit needs them to span {MIN_SPREAD:g} or more"
        )
        return entry
    measured = len(trained) >= MIN_MODELS
    if len(trained) >= 2:
        slope, intercept = fit(
            [to_axis(r["val_top1"] / 100) for r in trained],
            [to_axis(r["top1"] / 100) for r in trained],
        )
        entry["fit"] = {"slope": slope, "intercept": intercept, "models": len(trained)}
        for r in rows:
            r["expected_top1"] = 100 * from_axis(slope * to_axis(r["val_top1"] / 100) + intercept)
            r["effective_robustness"] = r["top1"] - r["expected_top1"] if measured else None
    if not measured:
        why = " (a line through two passes through both)" if len(trained) == 2 else ""
        left.append(
            f"effective robustness needs {MIN_MODELS} or more ImageNet-trained models on "
            f"{val} and {dataset} (zero-shot ones are measured against their line); it has "
            f"{len(trained)}{why}"
        )
    return entry


def lines(er: dict[str, Any]) -> list[str]:
    """The effective robustness as the report command prints it."""
    out = []
    for d in er["datasets"]:
        head = f"effective robustness on {d['dataset']} (against {er['val']}, {er['scale']} fit"
        measured = [r for r in d["models"] if r.get("effective_robustness") is not None]
        if not measured:
            out.append(f"{head}): {'; '.join(d['left_out'])}")
            continue
        models = ", ".join(
            f"{r['model']}{' (zero-shot)' if r.get('zero_shot') else ''} "
            f"{r['effective_robustness']:+.2f}"
            for r in measured
        )
        out.append(f"{head} through {d['fit']['models']} models, points): {models}")
    return out + [f"  left out: {n}" for n in er["notes"]]

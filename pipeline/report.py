"""report.html + report.json for finished runs: how good the model is, how sure that number
is, where it fails, and whether run B really differs from run A.

    python -m pipeline.report RUN [RUN ...] [--thumbnails N] [--val TITLE] [--scale S]

Written into the first RUN folder: report.html (one self-contained file: inline CSS,
plots as inline SVG, thumbnails as data URIs, nothing from the network) and
report.json (every number the page shows, under stable keys). Runs over the same rows
as the first get a paired comparison with it; runs over other data a side-by-side row.
Models run on val and on shifted datasets get the effective-robustness plot.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import io
import json
import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import imagenet_c, metrics, robustness, rundir, stats
from pipeline.errors import UserError, one_line
from pipeline.plan import RunPlan

INTERVAL = "Wilson score interval, 95%"
DIFF_INTERVAL = "Newcombe's hybrid score interval for paired proportions (method 10), 95%"
SAME_ROWS = (
    "dataset_path",
    "dataset_name",
    "split",
    "dataset_revision",
    "data_dir",
    "data_files",
    "dataset_fingerprint",
    "dataset_rows",
    "limit",
    "shard",
    "rows",
)
TOP_CLASSES, TOP_PAIRS, MAX_ERRORS = 20, 20, 200
# the median images per class below which per-class accuracy cannot rank classes: with one
# image each, every class is 0 or 100% and the best and worst lists are ties in id order
MIN_PER_CLASS = 10


@dataclass
class Run:
    """A finished run folder: its plan, its metrics row, and its predictions as arrays."""

    dir: Path
    plan: RunPlan
    scores: metrics.Scores
    index: np.ndarray
    ids: list[str | None]
    label: np.ndarray  # -1: unknown
    pred: np.ndarray  # -1: not scored
    confidence: np.ndarray  # top-1 probability; nan: not scored
    top1: np.ndarray  # bool
    errors: list[tuple[int, str | None, str]]

    @property
    def names(self) -> tuple[str, ...]:
        """The model's class names, as the run recorded them."""
        return self.plan.categories

    @property
    def scored(self) -> np.ndarray:
        return self.pred >= 0

    @property
    def labeled(self) -> np.ndarray:
        return self.scored & (self.label >= 0)


def load(d: Path) -> Run:
    """A finished run folder, or one line saying why it is not."""
    the_plan = rundir.read_plan(d)
    if not (d / rundir.METRICS).exists():
        raise UserError(f"{d} is not finished (no {rundir.METRICS}); resume it first")
    cols = ["index", "id", "label", "pred", "topk_prob", "correct_top1", "error"]
    try:
        table = pq.read_table(d / rundir.PREDICTIONS, columns=cols)
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{d} holds damaged results ({str(e).splitlines()[0]})") from None
    error = table["error"].to_pylist()
    return Run(
        dir=d,
        plan=the_plan,
        scores=metrics.read(d / rundir.METRICS),
        index=table["index"].to_numpy(),
        ids=table["id"].to_pylist(),
        label=pc.fill_null(table["label"], -1).to_numpy(),
        pred=pc.fill_null(table["pred"], -1).to_numpy(),
        confidence=pc.fill_null(pc.list_element(table["topk_prob"], 0), math.nan).to_numpy(),
        top1=pc.fill_null(table["correct_top1"], False).to_numpy(zero_copy_only=False),
        errors=[(i, table["id"][i].as_py(), e) for i, e in enumerate(error) if e is not None],
    )


def single(run: Run) -> dict[str, Any]:
    """One run's numbers: metrics with intervals, calibration, classes, confusions, errors;
    None (null in report.json, n/a on the page) for what needs labels it does not have."""
    p, s, labeled = run.plan, run.scores, run.labeled
    n = int(labeled.sum())
    ece, bins = stats.calibration(run.confidence[labeled], run.top1[labeled])
    return {
        "dir": str(run.dir),
        "dataset": p.title,
        "split": p.split,
        "model": p.model,
        "weights": p.weights,
        "label_space": p.label_space,
        "restricted": p.restricted,
        **{k: getattr(s, k) for k in ("n_images", "n_scored", "n_errors", "n_labeled")},
        "top1": s.top1,
        "top1_ci95": stats.percent_interval(s.top1, n),
        "top5": s.top5,
        "top5_ci95": stats.percent_interval(s.top5, n),
        "ece": ece,
        "reliability": bins,
        "published": published(s, p.published_by),
        "classes": per_class(run),
        "confusions": confusions(run),
        "errors": [{"index": i, "id": name, "error": e} for i, name, e in run.errors[:MAX_ERRORS]],
    }


def published(s: metrics.Scores, by: str | None) -> dict[str, Any] | None:
    """The published numbers beside the run's, where they apply, and whose they are."""
    if s.published_top1 is None or s.published_top5 is None or s.top1 is None or s.top5 is None:
        return None
    d1, d5 = s.top1 - s.published_top1, s.top5 - s.published_top5
    return {
        "by": by,
        "top1": s.published_top1,
        "top5": s.published_top5,
        "top1_diff": d1,
        "top5_diff": d5,
        "tolerance": metrics.PUBLISHED_TOLERANCE,
        "off": metrics.off_published(d1, d5),
    }


def per_class(run: Run) -> dict[str, Any]:
    """Top-1 accuracy of every class with labeled images: its histogram, worst and best."""
    lab, names = run.labeled, run.names
    counts = np.bincount(run.label[lab], minlength=len(names))
    hits = np.bincount(run.label[lab], weights=run.top1[lab], minlength=len(names))
    present = np.flatnonzero(counts)
    acc = 100 * hits[present] / counts[present]
    order = np.lexsort((present, acc))  # by accuracy, then class id

    def entry(k: int) -> dict[str, Any]:
        c = int(present[k])
        return {"class": c, "name": names[c], "n": int(counts[c]), "top1": float(acc[k])}

    histogram, edges = np.histogram(acc, bins=10, range=(0, 100))
    median = float(np.median(counts[present])) if len(present) else 0.0
    few = median < MIN_PER_CLASS
    return {
        "n_classes": len(present),
        "median_images": median,
        "note": f"per-class top-1 rests on {median:g} image(s) per class (the median): too "
        f"few to rank classes (it takes {MIN_PER_CLASS}), so no best or worst classes are "
        f"listed"
        if few and len(present)
        else None,
        "histogram": {"edges": edges.tolist(), "counts": histogram.tolist()},
        "worst": [] if few else [entry(k) for k in order[:TOP_CLASSES]],
        "best": [] if few else [entry(k) for k in order[::-1][:TOP_CLASSES]],
    }


def confusions(run: Run) -> list[dict[str, Any]]:
    """The most frequent (true -> predicted) top-1 mistakes."""
    miss, names = run.labeled & ~run.top1, run.names
    pairs, counts = np.unique(run.label[miss] * len(names) + run.pred[miss], return_counts=True)
    order = np.lexsort((pairs, -counts))[:TOP_PAIRS]
    return [
        {
            "true": int(pairs[k] // len(names)),
            "true_name": names[pairs[k] // len(names)],
            "pred": int(pairs[k] % len(names)),
            "pred_name": names[pairs[k] % len(names)],
            "count": int(counts[k]),
        }
        for k in order
    ]


def same_rows(a: Run, b: Run) -> bool:
    return all(getattr(a.plan, k) == getattr(b.plan, k) for k in SAME_ROWS) and np.array_equal(
        a.index, b.index
    )


def check_pairable(first: Run, other: Run) -> None:
    """Two runs over the same rows are compared image by image only when they were scored
    against the same labels, row for row, under the same restriction of the outputs;
    otherwise their difference would be one of protocols, not of models."""
    where = f"{other.dir} and {first.dir} score the same rows"
    space = [(r.plan.restricted, r.plan.label_space) for r in (first, other)]
    if space[0] != space[1]:
        said = [
            f"{k} ({'restricted' if restricted else 'not restricted'})" for restricted, k in space
        ]
        raise UserError(
            f"{where} in other label spaces ({said[0]} vs {said[1]}): a paired comparison "
            f"would compare protocols; score both the same way, or report them one by one"
        )
    differ = np.flatnonzero(first.label != other.label)
    if differ.size:
        k = int(differ[0])
        raise UserError(
            f"{where} against other labels ({differ.size} rows differ; row "
            f"{int(first.index[k])}: {_label(first.label[k])} vs {_label(other.label[k])}): "
            f"their labels were read differently (dataset.classes?); report them one by one"
        )


def _label(value: int) -> str:
    return "unknown" if value < 0 else f"class {value}"


def paired(first: Run, other: Run) -> dict[str, Any]:
    """The second run against the first, image by image: top-1 agreement, McNemar's exact
    test on top-1 correctness, the top-1 difference with its interval, per-class changes."""
    names = first.names
    both_scored = first.scored & other.scored
    lab = first.labeled & other.labeled
    a, b = first.top1[lab], other.top1[lab]
    cells = [int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum()), int((~a & ~b).sum())]
    diff, lo, hi = stats.paired_difference(*cells)
    counts = np.bincount(first.label[lab], minlength=len(names))
    change = np.bincount(first.label[lab], weights=b.astype(float) - a, minlength=len(names))
    present = np.flatnonzero(counts)
    delta = 100 * change[present] / counts[present]
    order = np.lexsort((present, -np.abs(delta)))[:TOP_CLASSES]
    return {
        "run": str(other.dir),
        "with": str(first.dir),
        "n": int(lab.sum()),
        "agreement": float((first.pred[both_scored] == other.pred[both_scored]).mean())
        if both_scored.any()
        else None,
        "first_only": cells[1],
        "second_only": cells[2],
        "mcnemar_p": stats.mcnemar_exact(cells[1], cells[2]) if lab.any() else None,
        "top1_diff": None if diff is None else 100 * diff,
        "top1_diff_ci95": [None if x is None else 100 * x for x in (lo, hi)],
        "class_diffs": [
            {
                "class": int(present[k]),
                "name": names[present[k]],
                "n": int(counts[present[k]]),
                "top1_diff": float(delta[k]),
            }
            for k in order
        ],
    }


def thumbnails(run: Run, count: int) -> tuple[list[dict[str, Any]], str]:
    """The most confident mistakes, read back from the dataset by row index, once the
    dataset is shown to be the one that was scored (or why they are left out)."""
    wrong = np.flatnonzero(run.labeled & ~run.top1)
    picks = wrong[np.argsort(-run.confidence[wrong], kind="stable")][:count]
    if count == 0 or not len(picks):
        return [], "no mistakes to show" if count else "thumbnails not asked for"
    try:
        split, images = dataset_images(run, picks)
    except UserError as e:
        return [], f"thumbnails left out: {e}"
    except Exception as e:  # moved, offline, deleted: the page says so and goes on
        return [], f"the dataset could not be read for thumbnails ({str(e).splitlines()[0][:200]})"
    shown = []
    for k, image in zip(picks, images, strict=True):
        picture = thumbnail(image, split.roots)
        if picture is None:
            continue
        shown.append(
            {
                "index": int(run.index[k]),
                "id": run.ids[k],
                "confidence": float(run.confidence[k]),
                "label": run.names[run.label[k]],
                "pred": run.names[run.pred[k]],
                "jpeg": picture,
            }
        )
    return shown, f"the {len(shown)} most confident top-1 mistakes"


def dataset_images(run: Run, picks: np.ndarray) -> tuple[Any, list[Any]]:
    """The split a run scored and the encoded images of rows `picks`; a UserError when the
    data has changed since (another fingerprint or length, or a row whose id is not the
    one the run recorded): a new image would show under an old image's row."""
    from pipeline import splits

    p = run.plan
    if p.dataset_fingerprint is None:
        raise UserError("the run streamed its split: there is no fingerprint to check it by")
    source = replace(p.source, streaming=False, label_column=None)
    split = splits.load_split(source)
    if (split.fingerprint, split.num_rows) != (p.dataset_fingerprint, p.dataset_rows):
        raise UserError("the dataset has changed since the run (its fingerprint differs)")
    rows = run.index[picks]
    now = splits.row_ids(split, rows, source.id_column)
    for row, k, id_now in zip(rows, picks, now, strict=True):
        if run.ids[k] != id_now:
            raise UserError(
                f"row {row} of the dataset is {id_now!r} now, {run.ids[k]!r} in the run"
            )
    column = split.table.select_columns([split.image_column])
    return split, column[[int(r) for r in rows]][split.image_column]


def thumbnail(image: Any, roots: Any) -> str | None:
    """A 160-pixel JPEG of an encoded image, base64; None when it does not decode."""
    from pipeline.images import open_image, read_bytes, to_rgb

    try:
        picture = to_rgb(open_image(read_bytes(image, roots)))
    except Exception:  # any decoder failure: that thumbnail is left out
        return None
    picture.thumbnail((160, 160))
    buf = io.BytesIO()
    picture.save(buf, "JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode()


def build(
    dirs: list[Path], n_thumbnails: int, val: str = robustness.VAL, scale: str = "logit"
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """report.json's content, and the thumbnails (kept out of the JSON); `val` and `scale`:
    the effective-robustness plot's x axis and its scale."""
    runs = [load(d) for d in dirs]
    first = runs[0]
    pairs = [r for r in runs[1:] if same_rows(first, r)]
    for other in pairs:
        check_pairable(first, other)
    report = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "interval": INTERVAL,
        "difference_interval": DIFF_INTERVAL,
        "ece_bins": stats.ECE_BINS,
        "runs": [single(r) for r in runs],
        "imagenet_c": imagenet_c.summary(
            imagenet_c.gather((str(r.dir), r.plan, r.scores) for r in runs)
        ),
        "effective_robustness": robustness.summary(
            ((str(r.dir), r.plan, r.scores) for r in runs), val, scale
        ),
        "paired": [paired(first, r) for r in pairs],
    }
    shown, note = thumbnails(first, n_thumbnails)
    report["thumbnails"] = {"shown": len(shown), "note": note}
    return report, shown


def write(
    dirs: list[Path],
    n_thumbnails: int,
    out: Path | None = None,
    val: str = robustness.VAL,
    scale: str = "logit",
) -> dict[str, Any]:
    """Write report.json and report.html into `out` (the first run's folder by default)."""
    from pipeline import report_html

    out = out or dirs[0]
    rundir.check_ours(out / "report.json", is_report_json)
    rundir.check_ours(out / "report.html", is_report_page)
    report, shown = build(dirs, n_thumbnails, val, scale)
    rundir.write_json(out / "report.json", report)
    page = report_html.render(report, shown)
    rundir.durable_write(out / "report.html", lambda tmp: tmp.write_text(page))
    return report


def is_report_json(path: Path) -> bool:
    """Whether a report.json is this pipeline's: an object under report.json's own keys."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and content.keys() >= REPORT_KEYS


REPORT_KEYS = {"created", "interval", "difference_interval", "runs", "paired"}


def is_report_page(path: Path) -> bool:
    """Whether a report.html is this pipeline's: its head names it (report_html.TITLE)."""
    from pipeline import report_html

    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return False
    return f"<title>{report_html.TITLE}</title>" in head


def targets(paths: list[Path]) -> tuple[list[Path], Path]:
    """The run folders to report on and where the report goes: the folders given, or a
    sweep folder's finished jobs in job order (the report then in the sweep folder)."""
    if len(paths) != 1 or not (paths[0] / "multirun.yaml").exists():
        return paths, paths[0]
    jobs = sorted(
        (d for d in paths[0].iterdir() if d.name.isdigit() and (d / rundir.METRICS).exists()),
        key=lambda d: int(d.name),
    )
    if not jobs:
        raise UserError(f"{paths[0]} holds no finished job to report on")
    return jobs, paths[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "runs",
        type=Path,
        nargs="+",
        help="finished run folders (the first gets the report), or one sweep folder (its "
        "finished jobs, the report in the sweep folder)",
    )
    parser.add_argument(
        "--thumbnails", type=int, default=24, help="most confident mistakes to show (0: none)"
    )
    parser.add_argument(
        "--val",
        default=robustness.VAL,
        help="effective robustness: the dataset.title of the val runs, the x axis "
        f"(default {robustness.VAL})",
    )
    parser.add_argument(
        "--scale",
        choices=sorted(robustness.SCALES),
        default="logit",
        help="effective robustness: the axes' scale (default logit)",
    )
    args = parser.parse_args(argv)
    with one_line(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the page says what matters; a library's noise not
        dirs, out = targets(args.runs)
        report = write(dirs, args.thumbnails, out, args.val, args.scale)
    first, num = report["runs"][0], stats.number
    lo, hi = first["top1_ci95"]
    print(f"top-1 {num(first['top1'])} [{num(lo)}, {num(hi)}]  ECE {num(first['ece'], 4)}")
    for p in report["paired"]:
        print(
            f"vs {p['run']}: agreement {num(p['agreement'], 4)}, top-1 "
            f"{stats.signed(p['top1_diff'])} points, McNemar p={num(p['mcnemar_p'], 3, 'g')}"
        )
    for entry in report["imagenet_c"]:
        print("\n".join(imagenet_c.lines(entry)))
    for line in robustness.lines(report["effective_robustness"]):
        print(line)
    print(f"wrote {out / 'report.html'} and {out / 'report.json'}")


if __name__ == "__main__":
    main()

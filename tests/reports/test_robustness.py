"""The effective-robustness plot: models x (val + shifted datasets), the line through the
models on scaled axes recomputed independently (scipy), what cannot be a point left out
saying why, and the page as Chromium lays it out."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from helpers import (
    GOLDFISH,
    SPRINGER,
    TENCH,
    headless,
    labelled,
    needs_chromium,
    run_cli,
)

from pipeline import run
from pipeline.reports import numbers as report
from pipeline.runs import claims

scipy_stats = pytest.importorskip("scipy.stats")
VAL = [TENCH] * 5 + [GOLDFISH] * 3 + [SPRINGER] * 2  # a model answering c: its share here
SHIFTED = [TENCH] * 2 + [GOLDFISH] * 3 + [SPRINGER] * 5


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_effective_robustness_of_three_models(config, tmp_path, answering):
    """Three models on val and a shifted set: the logit (and probit) line through them and
    each model's distance above it equal scipy's least squares on the transformed top-1;
    a restricted run and a model without val are left out, each with its reason."""
    val = labelled(tmp_path / "val.parquet", VAL)
    shifted = labelled(tmp_path / "shifted.parquet", SHIFTED)
    two = labelled(tmp_path / "two.parquet", [0, 1, 1], names=["tench", "goldfish"])
    dirs = []
    for c in (TENCH, GOLDFISH, SPRINGER):
        for title, path in (("imagenet-val", val), ("shifted", shifted), ("two-class", two)):
            out = tmp_path / f"{c}-{title}"
            data = ["dataset=parquet", f"dataset.data_files={path}", f"dataset.title={title}"]
            data += ["dataset.restrict=true"] * (title == "two-class")
            run.evaluate(config(*data, answering(c), "progress=false"), out)
            dirs.append(out)
    lone = tmp_path / "lone"
    data = ["dataset=parquet", f"dataset.data_files={shifted}", "dataset.title=shifted"]
    run.evaluate(config(*data, answering(TENCH, then=1)), lone)
    found = report.write([*dirs, lone], n_thumbnails=0)["effective_robustness"]
    (entry,) = found["datasets"]
    assert entry["dataset"] == "shifted" and found["val"] == "imagenet-val"
    by_model = {r["model"]: r for r in entry["models"]}
    assert len(by_model) == 3
    val_top1 = [100 * VAL.count(c) / 10 for c in (TENCH, GOLDFISH, SPRINGER)]
    top1 = [100 * SHIFTED.count(c) / 10 for c in (TENCH, GOLDFISH, SPRINGER)]
    rows = sorted(by_model.values(), key=lambda r: -r["val_top1"])
    assert [r["val_top1"] for r in rows] == pytest.approx(val_top1)
    assert [r["top1"] for r in rows] == pytest.approx(top1)
    xs, ys = [logit(v / 100) for v in val_top1], [logit(t / 100) for t in top1]
    line = scipy_stats.linregress(xs, ys)
    assert entry["fit"]["slope"] == pytest.approx(line.slope)
    assert entry["fit"]["intercept"] == pytest.approx(line.intercept)
    for r, x, y in zip(rows, xs, top1, strict=True):
        on_line = 100 / (1 + math.exp(-(line.slope * x + line.intercept)))
        assert r["effective_robustness"] == pytest.approx(y - on_line)
    assert "no run on imagenet-val" in " ".join(entry["left_out"])  # the lone checkpoint
    restricted = [n for n in found["notes"] if "two-class" in n]
    assert len(restricted) == 3 and "restricted to subset:2" in restricted[0]
    probit = report.build(dirs, 0, scale="probit")[0]["effective_robustness"]["datasets"][0]
    z = [scipy_stats.norm.ppf(v / 100) for v in val_top1]
    assert probit["fit"]["slope"] == pytest.approx(
        scipy_stats.linregress(z, [scipy_stats.norm.ppf(t / 100) for t in top1]).slope
    )


def test_two_runs_of_one_model_on_one_dataset_are_left_out(config, tmp_path, answering):
    """Which of two runs of one model on one dataset is meant is not known: in a sweep that
    could be plotted, neither is a point, and the report says so instead of picking one;
    in a report of those two runs alone (no plot possible) it says nothing."""
    val = labelled(tmp_path / "val.parquet", VAL)
    shifted = labelled(tmp_path / "shifted.parquet", SHIFTED)
    runs = [(TENCH, val, "imagenet-val"), (TENCH, val, "imagenet-val")]
    runs += [(GOLDFISH, val, "imagenet-val"), (TENCH, shifted, "shifted")]
    dirs = []
    for k, (c, path, title) in enumerate(runs):
        dirs.append(tmp_path / f"r{k}")
        data = ["dataset=parquet", f"dataset.data_files={path}", f"dataset.title={title}"]
        run.evaluate(config(*data, answering(c), "progress=false"), dirs[-1])
    found = report.build(dirs, 0)[0]["effective_robustness"]
    assert "is in two runs" in found["notes"][0]
    assert [d["dataset"] for d in found["datasets"]] == ["shifted"]
    assert report.build(dirs[:2], 0)[0]["effective_robustness"] == {
        "val": "imagenet-val", "scale": "logit", "datasets": [], "notes": []
    }  # fmt: skip


def test_no_line_through_models_of_equal_val_accuracy(config, tmp_path, answering):
    """Three models with the same val top-1: no line is fitted (its slope would be noise),
    the note says why and what spread a fit needs, no model gets an effective robustness,
    and no numpy warning reaches the user."""
    import warnings

    val = labelled(tmp_path / "val.parquet", [TENCH] * 3 + [GOLDFISH] * 3 + [SPRINGER] * 3 + [5])
    shifted = labelled(tmp_path / "shifted.parquet", SHIFTED)
    dirs = []
    for c in (TENCH, GOLDFISH, SPRINGER):
        for title, path in (("imagenet-val", val), ("shifted", shifted)):
            dirs.append(tmp_path / f"{c}-{title}")
            data = ["dataset=parquet", f"dataset.data_files={path}", f"dataset.title={title}"]
            run.evaluate(config(*data, answering(c), "progress=false"), dirs[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = report.build(dirs, 0)[0]["effective_robustness"]
    (entry,) = found["datasets"]
    assert entry["fit"] is None
    assert all(r.get("effective_robustness") is None for r in entry["models"])
    assert any(
        "no line can be fitted" in n and "span 0.00 points" in n and "2 or more" in n
        for n in entry["left_out"]
    ), entry["left_out"]


PRESET = """path: parquet
data_files: {path}
title: {title}
"""
# Laid out by the browser: the effective-robustness plot's size and its points
PROBE = """<script>addEventListener("load", () => {
  const h = [...document.querySelectorAll("h2")].find(e => e.textContent.startsWith("Effective"));
  const svg = h && h.nextElementSibling.nextElementSibling.querySelector("svg");
  const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  document.body.setAttribute("data-plot", `${Math.round(box.width)}x${Math.round(box.height)}`);
});</script>"""


@pytest.mark.slow
@needs_chromium
def test_a_two_model_sweep_and_its_plot(repo_root, tmp_path, answering):
    """One -m sweep of two checkpoints over the user's own val and shifted presets (found
    through hydra.searchpath), then `pipeline.report SWEEP`: the plot of both models with
    the line through them, laid out by Chromium, and effective robustness left n/a (a line
    through two models passes through both)."""
    presets = tmp_path / "conf" / "dataset"
    presets.mkdir(parents=True)
    for title, labels in (("imagenet-val", VAL), ("shifted", SHIFTED)):
        path = labelled(tmp_path / f"{title}.parquet", labels)
        (presets / f"my-{title}.yaml").write_text(PRESET.format(path=path, title=title))
    weights = ",".join(answering(c).split("=", 1)[1] for c in (TENCH, GOLDFISH))
    sweep = tmp_path / "sweep"
    proc = run_cli(
        ["-m", "dataset=my-imagenet-val,my-shifted", f"model.weights={weights}",
         f"hydra.searchpath=[file://{tmp_path / 'conf'}]", f"hydra.sweep.dir={sweep}",
         "progress=false"],
        cwd=repo_root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.report", str(sweep), "--thumbnails", "0"],
        capture_output=True, text=True, cwd=repo_root, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "effective robustness on shifted (against imagenet-val, logit fit)" in proc.stdout
    assert "needs 3 or more ImageNet-trained models" in proc.stdout
    (entry,) = json.loads((sweep / "report.json").read_text())["effective_robustness"]["datasets"]
    assert {(r["val_top1"], r["top1"]) for r in entry["models"]} == {(50.0, 20.0), (30.0, 30.0)}
    assert all(r["effective_robustness"] is None for r in entry["models"])
    assert all(r["expected_top1"] == pytest.approx(r["top1"]) for r in entry["models"])
    assert (sweep / "0" / claims.METRICS).exists()
    probe = tmp_path / "probe.html"
    probe.write_text((sweep / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    dom = headless(tmp_path, "--virtual-time-budget=5000", "--dump-dom", f"file://{probe}")
    width, height = (int(v) for v in dom.split('data-plot="')[1].split('"')[0].split("x"))
    assert width > 300 and height > 250


def test_a_single_run_report_has_no_robustness_section(config, tmp_path, answering):
    """One run on one dataset can be no plot: its report says nothing of effective
    robustness (no red 'left out' note), in the page or in report.json."""
    shifted = labelled(tmp_path / "shifted.parquet", SHIFTED)
    out = tmp_path / "one"
    data = ["dataset=parquet", f"dataset.data_files={shifted}", "dataset.title=shifted"]
    run.evaluate(config(*data, answering(TENCH)), out)
    er = report.write([out], n_thumbnails=0)["effective_robustness"]
    assert er["datasets"] == [] and er["notes"] == []
    assert "Effective robustness" not in (out / "report.html").read_text()

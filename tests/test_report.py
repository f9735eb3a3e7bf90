"""The report: its numbers recomputed independently (scipy, plain loops) on runs whose
answers are known, and its page checked as a browser shows it."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess

import pytest
from helpers import hub_dataset, jpeg, photo
from test_labels import GOLDFISH, TENCH

from pipeline import metrics, report, run

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.fixture
def two_class_runs(config, tmp_path, answering):
    """10 images, 6 tench and 4 goldfish; run A always answers tench, run B goldfish."""
    import datasets

    rows = {"image": [{"bytes": jpeg(photo(i)), "path": f"{i}.jpg"} for i in range(10)]}
    rows["label"] = [0] * 6 + [1] * 4
    path = tmp_path / "two.parquet"
    hub_dataset(rows, label=datasets.ClassLabel(names=["tench", "goldfish"])).to_parquet(path)
    data = ["dataset=parquet", f"dataset.data_files={path}", "progress=false"]
    run.evaluate(config(*data, answering(TENCH)), tmp_path / "a")
    run.evaluate(config(*data, answering(GOLDFISH)), tmp_path / "b")
    return tmp_path / "a", tmp_path / "b"


def test_report_numbers_on_runs_with_known_answers(two_class_runs):
    """Wilson intervals, ECE, agreement, McNemar's exact test and the paired difference,
    each recomputed independently."""
    a, b = two_class_runs
    rep = report.write([a, b], n_thumbnails=0)
    first, second = rep["runs"]
    assert (first["top1"], second["top1"]) == (60.0, 40.0)
    lo, hi = scipy_stats.binomtest(6, 10).proportion_ci(0.95, method="wilson")
    assert first["top1_ci95"] == pytest.approx([100 * lo, 100 * hi], rel=1e-9)
    # ECE: one bin holds every image, at confidence ~1 (a 20-logit margin over 2 classes)
    confidence = 1 / (1 + math.exp(-20))
    assert first["ece"] == pytest.approx(abs(0.6 - confidence), abs=1e-6)
    assert [b["count"] for b in first["reliability"]][-1] == 10
    (pair,) = rep["paired"]
    assert (pair["first_only"], pair["second_only"], pair["agreement"]) == (6, 4, 0.0)
    assert pair["mcnemar_p"] == pytest.approx(scipy_stats.binomtest(4, 10, 0.5).pvalue)
    assert pair["top1_diff"] == pytest.approx(-20.0)
    low, high = pair["top1_diff_ci95"]
    assert low < -20 < high and low >= -100 and high <= 100
    assert first["confusions"][0] == {
        "true": GOLDFISH, "true_name": "goldfish", "pred": TENCH, "pred_name": "tench", "count": 4,
    }  # fmt: skip
    assert {c["name"]: c["top1"] for c in first["classes"]["worst"]} == {
        "goldfish": 0.0,
        "tench": 100.0,
    }
    saved = json.loads((a / "report.json").read_text())
    assert saved["paired"][0]["mcnemar_p"] == pair["mcnemar_p"]


def newcombe_by_hand(a: int, b: int, c: int, d: int) -> tuple[float, float]:
    """Newcombe (1998) method 10, written out again from the paper's formulas."""
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    z = 1.959963984540054

    def wilson(x: float, m: int) -> tuple[float, float]:
        q = x / m
        root = z * math.sqrt(q * (1 - q) / m + z * z / (4 * m * m))
        return (
            (q + z * z / (2 * m) - root) / (1 + z * z / m),
            (q + z * z / (2 * m) + root) / (1 + z * z / m),
        )

    (l1, u1), (l2, u2) = wilson(a + b, n), wilson(a + c, n)
    phi = (a * d - b * c) / math.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    dl = math.sqrt((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2)
    du = math.sqrt((u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2)
    return p2 - p1 - dl, p2 - p1 + du


@pytest.mark.parametrize("cells", [(40000, 1200, 800, 8000), (30, 7, 2, 11), (500, 0, 3, 20)])
def test_paired_difference_interval(cells):
    """The paired interval equals the paper's formulas, and at ImageNet scale the simple
    Wald interval for paired proportions (which it should then approach)."""
    d, lo, hi = metrics.paired_difference(*cells)
    assert (lo, hi) == pytest.approx(newcombe_by_hand(*cells), abs=1e-12)
    if cells[0] > 1000:
        _a, b, c, _ = cells
        n = sum(cells)
        se = math.sqrt((b + c) - (c - b) ** 2 / n) / n
        assert (lo, hi) == pytest.approx((d - 1.96 * se, d + 1.96 * se), abs=5e-4)


def test_calibration_bins_are_right_closed():
    """15 equal bins of (k/15, (k+1)/15]; ECE is the count-weighted |accuracy - confidence|."""
    ece, bins = metrics.calibration([1 / 15, 0.5, 0.5, 1.0], [True, True, False, True])
    assert [b["count"] for b in bins if b["count"]] == [1, 2, 1]
    assert bins[0]["count"] == 1 and bins[14]["count"] == 1
    by_hand = (1 * abs(1 - 1 / 15) + 2 * abs(0.5 - 0.5) + 1 * abs(1 - 1.0)) / 4
    assert ece == pytest.approx(by_hand)


def test_page_is_self_contained_with_thumbnails(config, tmp_path):
    """report.html loads nothing from the network; the most confident mistakes are shown
    as thumbnails read back from the dataset; a dataset that moved is said, not fatal."""
    out = tmp_path / "sample"
    run.evaluate(config("model.weights=none"), out)
    rep = report.write([out], n_thumbnails=3)
    page = (out / "report.html").read_text()
    assert rep["thumbnails"]["shown"] == 3 and page.count("data:image/jpeg;base64,") == 3
    external = r'(?:src|href)="(?!data:|#)|url\((?!#)|<script|<link|@import'
    assert re.search(external, page) is None  # only data: URIs and in-page (#id) references
    assert "<svg" in page and "Reliability" in page
    plan = json.loads((out / "run.json").read_text())
    plan["results"]["data_files"] = str(tmp_path / "moved.parquet")
    (out / "run.json").write_text(json.dumps(plan))
    rep = report.write([out], n_thumbnails=3)
    assert rep["thumbnails"]["shown"] == 0
    assert "could not be read" in rep["thumbnails"]["note"]
    assert "could not be read" in (out / "report.html").read_text()


def test_runs_over_other_data_are_side_by_side_not_paired(config, tmp_path, two_class_runs):
    """A run over other rows is not compared image by image; it stands in the table."""
    a, _ = two_class_runs
    run.evaluate(config("model.weights=none"), tmp_path / "sample")
    rep = report.write([a, tmp_path / "sample"], n_thumbnails=0)
    assert rep["paired"] == [] and len(rep["runs"]) == 2
    assert "All runs, side by side" in (a / "report.html").read_text()


def test_cli_refuses_unfinished_runs(tmp_path, capsys):
    """python -m pipeline.report on a folder that is not a finished run: one line, exit 2."""
    with pytest.raises(SystemExit) as e:
        report.main([str(tmp_path)])
    assert e.value.code == 2 and "not a run folder" in capsys.readouterr().err


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    chromium() is None, reason="headless Chromium is not installed (.ci/run installs it)"
)
def test_page_renders_in_headless_chromium(two_class_runs, tmp_path):
    """The page, opened by a real browser, renders to a screenshot that is not blank."""
    from PIL import Image, ImageStat

    a, b = two_class_runs
    report.write([a, b], n_thumbnails=4)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,1600",
            f"file://{a / 'report.html'}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    stat = ImageStat.Stat(Image.open(shot).convert("L"))
    assert stat.stddev[0] > 10  # text, tables and plots, not one flat colour


@pytest.mark.parametrize(("b", "c"), [(0, 0), (0, 5), (6, 4), (100, 80), (21000, 19500)])
def test_mcnemar_exact_matches_scipy_at_any_count(b, c):
    """McNemar's exact p-value equals scipy's two-sided binomial test, up to ImageNet-sized
    discordant counts (computed in log space, in milliseconds)."""
    expected = scipy_stats.binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0
    assert metrics.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9)

"""The report: its numbers recomputed independently (scipy, plain loops) on runs whose
answers are known, and its page checked as a browser shows it."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from typing import Any

import pytest
from helpers import GOLDFISH, TENCH, headless, hub_dataset, jpeg, labelled, needs_chromium, photo

from pipeline import report as report_command
from pipeline import run
from pipeline.errors import UserError
from pipeline.reports import numbers as report
from pipeline.reports import stats

scipy_stats = pytest.importorskip("scipy.stats")


def two_classes(tmp_path) -> list[str]:
    """The overrides of a split of 10 images, 6 tench and 4 goldfish (a ClassLabel of those
    two names), scored among the two classes."""
    path = labelled(tmp_path / "two.parquet", [0] * 6 + [1] * 4, ["tench", "goldfish"])
    return ["dataset=parquet", f"dataset.data_files={path}", "dataset.restrict=true"]


@pytest.fixture
def two_class_runs(config, tmp_path, answering):
    """10 images, 6 tench and 4 goldfish, scored among the two classes; run A always
    answers tench, run B goldfish."""
    data = two_classes(tmp_path)
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
    assert first["classes"]["worst"] == first["classes"]["best"] == []  # 5 images a class
    assert "rests on 5 image(s) per class" in first["classes"]["note"]
    assert "rests on 5 image(s)" in (a / "report.html").read_text()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "MIN_PER_CLASS", 4)
        classes = report.write([a, b], n_thumbnails=0)["runs"][0]["classes"]
    assert classes["note"] is None
    assert {c["name"]: c["top1"] for c in classes["worst"]} == {"goldfish": 0.0, "tench": 100.0}
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
    d, lo, hi = stats.paired_difference(*cells)
    assert (lo, hi) == pytest.approx(newcombe_by_hand(*cells), abs=1e-12)
    if cells[0] > 1000:
        _a, b, c, _ = cells
        n = sum(cells)
        se = math.sqrt((b + c) - (c - b) ** 2 / n) / n
        assert (lo, hi) == pytest.approx((d - 1.96 * se, d + 1.96 * se), abs=5e-4)


def test_calibration_bins_are_right_closed():
    """15 equal bins of (k/15, (k+1)/15]; ECE is the count-weighted |accuracy - confidence|."""
    ece, bins = stats.calibration([1 / 15, 0.5, 0.5, 1.0], [True, True, False, True])
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
    assert "thumbnails left out: Could not load dataset" in rep["thumbnails"]["note"]
    assert "thumbnails left out: Could not load dataset" in (out / "report.html").read_text()


def test_runs_over_other_data_are_side_by_side_not_paired(config, tmp_path, two_class_runs):
    """A run over other rows is not compared image by image; it stands in the table."""
    a, _ = two_class_runs
    run.evaluate(config("model.weights=none"), tmp_path / "sample")
    rep = report.write([a, tmp_path / "sample"], n_thumbnails=0)
    assert rep["paired"] == [] and len(rep["runs"]) == 2
    assert "All runs, side by side" in (a / "report.html").read_text()


def strict_json(text: str):
    """JSON as a browser's JSON.parse reads it: NaN and Infinity are not JSON."""
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in report.json"))


@pytest.mark.parametrize("kind", ["unlabeled", "all-errors"])
def test_runs_without_labeled_scored_images_report_na(config, tmp_path, capsys, kind):
    """An unlabeled run (dataset.label_column=null) and a run whose every image failed get a
    report: what needs labeled, scored images is null in report.json (strict JSON) and n/a
    on the page and in the summary line, never a number such as ECE 0.0000."""
    import datasets

    out = tmp_path / kind
    if kind == "unlabeled":
        run.evaluate(config("model.weights=none", "dataset.label_column=null"), out)
    else:
        rows: dict[str, list[Any]] = {
            "image": [{"bytes": b"not an image", "path": f"{i}.jpg"} for i in range(3)]
        }
        rows["label"] = [0, 1, 0]
        path = tmp_path / "broken.parquet"
        hub_dataset(rows, label=datasets.ClassLabel(names=["tench", "goldfish"])).to_parquet(path)
        data = ["model.weights=none", "dataset=parquet", f"dataset.data_files={path}"]
        with pytest.raises(UserError, match="none of its 3 images could be scored"):
            run.evaluate(config(*data), out)
    capsys.readouterr()
    report_command.main([str(out), "--thumbnails", "3"])
    printed = capsys.readouterr().out
    assert "top-1 n/a [n/a, n/a]  ECE n/a" in printed
    saved = strict_json((out / "report.json").read_text())
    (first,) = saved["runs"]
    assert [first[k] for k in ("top1", "top5", "ece")] == [None, None, None]
    assert first["top1_ci95"] == [None, None] and first["n_labeled"] == 0
    assert all(b["accuracy"] is None for b in first["reliability"])
    page = (out / "report.html").read_text()
    assert "<b>n/a</b>" in page and "ECE 0.0000" not in page


def label_runs(config, tmp_path, answering, **variants: list[str]):
    """Runs over the same 10 rows (6 tench, 4 goldfish), each with its own overrides (scored
    among the two classes unless they say otherwise)."""
    data = two_classes(tmp_path)
    data.append(answering(TENCH))
    for name, overrides in variants.items():
        run.evaluate(config(*data, *overrides), tmp_path / name)
    return [tmp_path / name for name in variants]


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (["dataset.classes=[goldfish,tench]"], r"against other labels \(10 rows differ; row 0"),
        (["dataset.restrict=false"], r"in other label spaces \(subset:2 \(restricted\) vs "),
    ],
    ids=["labels-read-otherwise", "restricted-vs-not"],
)
def test_runs_scored_under_other_labels_are_not_paired(config, tmp_path, answering, other, message):
    """Two runs over the same rows whose labels were read differently, or whose outputs
    were restricted in one and not the other, are refused for a paired comparison (it would
    measure the protocols, not the models), naming the difference."""
    first, second = label_runs(config, tmp_path, answering, a=[], b=other)
    with pytest.raises(UserError, match=message):
        report.write([first, second], n_thumbnails=0)


def test_thumbnails_are_left_out_when_the_dataset_changed(config, tmp_path, answering):
    """After the dataset changes (another image at a scored row), thumbnails are left out,
    saying why, instead of showing a new image under an old image's row."""
    (first,) = label_runs(config, tmp_path, answering, a=[])
    assert report.write([first], n_thumbnails=2)["thumbnails"]["shown"] == 2
    import datasets

    rows: dict[str, list[Any]] = {
        "image": [{"bytes": jpeg(photo(i + 50)), "path": f"new{i}.jpg"} for i in range(10)]
    }
    rows["label"] = [0] * 6 + [1] * 4
    names = datasets.ClassLabel(names=["tench", "goldfish"])
    hub_dataset(rows, label=names).to_parquet(tmp_path / "two.parquet")
    rep = report.write([first], n_thumbnails=2)
    assert rep["thumbnails"]["shown"] == 0
    assert "thumbnails left out: the dataset has changed since the run" in rep["thumbnails"]["note"]


@pytest.mark.slow
def test_a_report_imports_neither_torch_nor_torchvision(config, tmp_path, repo_root):
    """A report, thumbnails included, is made from the run's own files: class names and
    published numbers come from run.json and metrics.parquet, so the command starts
    without torch (whose import was most of a 7-second report)."""
    out = tmp_path / "sample"
    run.evaluate(config("model.weights=none"), out)
    code = (
        "import sys; from pipeline import report; report.main([sys.argv[1]]); "
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)], capture_output=True, text=True, cwd=repo_root
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert strict_json((out / "report.json").read_text())["thumbnails"]["shown"] > 0


def test_cli_refuses_unfinished_runs(tmp_path, capsys):
    """python -m pipeline.report on a folder that is not a finished run: one line, exit 2."""
    with pytest.raises(SystemExit) as e:
        report_command.main([str(tmp_path)])
    assert e.value.code == 2 and "not a run folder" in capsys.readouterr().err


@needs_chromium
def test_page_renders_in_headless_chromium(two_class_runs, tmp_path):
    """The page, opened by a real browser, renders to a screenshot that is not blank."""
    from PIL import Image, ImageStat

    a, b = two_class_runs
    report.write([a, b], n_thumbnails=4)
    shot = tmp_path / "shot.png"
    headless(
        tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", f"file://{a / 'report.html'}"
    )
    stat = ImageStat.Stat(Image.open(shot).convert("L"))
    assert stat.stddev[0] > 10  # text, tables and plots, not one flat colour


# Laid out by the browser: a caption wider than its figure, or a figure over its neighbour
OVERLAPS = """<script>addEventListener("load", () => {
  const figures = [...document.querySelectorAll(".thumbs figure")];
  let bad = 0;
  figures.forEach((f, i) => {
    const r = f.getBoundingClientRect(), next = figures[i + 1];
    if (f.scrollWidth > f.clientWidth + 1) bad++;
    if (next) {
      const s = next.getBoundingClientRect();
      if (s.top < r.bottom && s.left > r.left && s.left < r.right) bad++;
    }
  });
  document.body.setAttribute("data-overlaps", `${bad}/${figures.length}`);
});</script>"""


@needs_chromium
def test_long_ids_in_captions_stay_inside_their_thumbnails(config, tmp_path, answering):
    """Captions with ids of 130 characters and no spaces wrap inside their figures, as
    Chromium lays the page out (a probe script in a copy of the page measures it)."""
    import datasets

    rows: dict[str, list[Any]] = {
        "image": [{"bytes": jpeg(photo(i)), "path": f"{i}.jpg"} for i in range(8)]
    }
    rows["label"] = [1] * 8
    rows["id"] = ["a_very_long_identifier_without_any_spaces_" * 3 + f"{i:03d}" for i in range(8)]
    path = tmp_path / "long.parquet"
    hub_dataset(rows, label=datasets.ClassLabel(names=["tench", "goldfish"])).to_parquet(path)
    data = ["dataset=parquet", f"dataset.data_files={path}", "dataset.id_column=id"]
    run.evaluate(config(*data, answering(TENCH)), tmp_path / "run")
    assert report.write([tmp_path / "run"], n_thumbnails=8)["thumbnails"]["shown"] == 8
    probe = tmp_path / "probe.html"
    probe.write_text(
        (tmp_path / "run" / "report.html").read_text().replace("</body>", OVERLAPS + "</body>")
    )
    dom = headless(tmp_path, "--virtual-time-budget=5000", "--dump-dom", f"file://{probe}")
    assert 'data-overlaps="0/8"' in dom


@pytest.mark.parametrize(("b", "c"), [(0, 0), (0, 5), (6, 4), (100, 80), (21000, 19500)])
def test_mcnemar_exact_matches_scipy_at_any_count(b, c):
    """McNemar's exact p-value equals scipy's two-sided binomial test, up to ImageNet-sized
    discordant counts (computed in log space, in milliseconds)."""
    expected = scipy_stats.binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0
    assert stats.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9)


def test_report_and_summary_replace_only_their_own_files(config, tmp_path, answering):
    """A report.html, report.json or summary.parquet of the user's own where the pipeline
    would write one is refused, byte-identical; the pipeline's own are replaced. A job
    whose folder was refused shows that reason in the sweep table."""
    from helpers import snapshot, user_files

    from pipeline.reports import sweep as summarize

    (run_dir,) = label_runs(config, tmp_path, answering, a=[])
    for name in ("report.html", "report.json"):
        user_files(run_dir, {name: b"my own"})
        with pytest.raises(UserError, match=f"{name} exists and was not written by this"):
            report.write([run_dir], n_thumbnails=0)
        assert (run_dir / name).read_bytes() == b"my own"
        (run_dir / name).unlink()
    report.write([run_dir], n_thumbnails=0)
    report.write([run_dir], n_thumbnails=0)  # its own: replaced
    sweep = tmp_path / "sweep"
    user_files(sweep, {
        "multirun.yaml": b"hydra:\n  job:\n    name: pipeline\n  sweeper:\n    params: null\n"
                         b"  overrides:\n    task: []\n",
        "summary.parquet": b"my own table",
        "0/notes.txt": b"mine",
    })  # fmt: skip
    before = snapshot(sweep)
    with pytest.raises(UserError, match=r"summary\.parquet exists and was not written by"):
        summarize.summarize(sweep)
    assert snapshot(sweep) == before
    (sweep / "summary.parquet").unlink()
    (status,) = summarize.summarize(sweep)["status"]
    assert status.startswith("failed: ") and "not a run folder of this pipeline" in status
    summarize.summarize(sweep)  # its own summary: replaced

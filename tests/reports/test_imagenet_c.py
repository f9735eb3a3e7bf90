"""ImageNet-C: the release's layout scored crop only, its refusals, CE and mCE against a
hand computation, and the corruptions made on the fly."""

from __future__ import annotations

import io
import json
import random
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import GOLDFISH, SPRINGER, TENCH, crop_of, jpeg, photo, run_cli, wnid
from PIL import Image

from pipeline import run
from pipeline.choices import Backend, Protocol
from pipeline.cli import check_command_line
from pipeline.data import imagenet_c
from pipeline.data.transforms import Preprocess
from pipeline.errors import UserError
from pipeline.reports import mce
from pipeline.request import CLEAN, RELEASE
from pipeline.runs import claims, metrics

CLASSES = (TENCH, GOLDFISH, SPRINGER)


def release(root: Path, cells: dict[str, tuple[int, ...]], per_class: int = 2) -> Path:
    """ImageNet-C's layout: <corruption>/<severity>/<wnid>/ILSVRC2012_val_*.JPEG at 224x224,
    the classes' images differing by cell."""
    k = 0
    for corruption, severities in cells.items():
        for severity in severities:
            for label in CLASSES:
                folder = root / corruption / str(severity) / wnid(label)
                folder.mkdir(parents=True)
                for _ in range(per_class):
                    k += 1
                    image = photo(k, (224, 224))
                    (folder / f"ILSVRC2012_val_{k:08d}.JPEG").write_bytes(jpeg(image))
    return root


def clean_val(root: Path) -> Path:
    """A clean val folder as ImageNet's: full-size images, val file names."""
    for i, label in enumerate(CLASSES):
        (root / wnid(label)).mkdir(parents=True)
        image = photo(100 + i, (300, 260))
        (root / wnid(label) / f"ILSVRC2012_val_{i + 1:08d}.JPEG").write_bytes(jpeg(image))
    return root


def test_a_cell_of_the_release_is_scored_crop_only(config, tmp_path, answering):
    """dataset=imagenet-c reads <path>/<corruption>/<severity>: the wnid folders are the
    labels, the images go to the model cropped only, and the plan records the protocol and
    the cell (a resume under another protocol is refused)."""
    root = release(tmp_path / "c", {"fog": (2,)})
    data = ["dataset=imagenet-c", f"dataset.path={root}", "dataset.corruption=fog/2"]
    result = run.evaluate(config(*data, answering(GOLDFISH)), tmp_path / "out")
    frame = pd.read_parquet(tmp_path / "out" / claims.PREDICTIONS)
    assert sorted(set(frame["label"])) == sorted(CLASSES) and result.row["top1"] == pytest.approx(
        100 / 3
    )
    plan = claims.read_plan(tmp_path / "out")
    px = plan.pixels
    assert (px.corruption, px.severity, px.protocol) == ("fog", 2, Protocol.crop)
    assert px.corruption_source == RELEASE and "crop only" in plan.model.preprocess
    with pytest.raises(UserError, match=r"protocol: 'crop' -> 'standard'"):
        run.evaluate(
            config(*data, answering(GOLDFISH), "dataset.protocol=standard"), tmp_path / "out"
        )


@pytest.mark.parametrize("size", [(224, 224), (240, 230)])
def test_crop_only_pixels_are_the_authors_transform_bit_for_bit(size):
    """The crop-only protocol gives, in fp32, exactly the tensor of the authors' evaluation
    (hendrycks/robustness ImageNet-C/test.py: CenterCrop(224), ToTensor(), Normalize)."""
    from torchvision import transforms as trn
    from torchvision.models import AlexNet_Weights

    image = Image.open(io.BytesIO(jpeg(photo(3, size)))).convert("RGB")
    authors = trn.Compose(
        [
            trn.CenterCrop(224),
            trn.ToTensor(),
            trn.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )(image)
    pre = Preprocess.from_transforms(
        AlexNet_Weights.IMAGENET1K_V1.transforms(), Backend.pil, protocol=Protocol.crop
    )
    ours = pre.normalize(pre.crop(image)[None])[0]
    assert torch.equal(ours, authors)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["dataset.corruption=fgo", "dataset.severity=3"],
            r"fgo is not an ImageNet-C corruption. Did you mean 'fog'\?",
        ),
        (
            ["dataset.corruption=fog", "dataset.severity=6"],
            r"dataset.severity=6; ImageNet-C's severities are 1..5",
        ),
        (["dataset.corruption=fog"], r"dataset.severity=None; ImageNet-C's severities are 1..5"),
        (
            ["dataset.corruption=fog/3", "dataset.severity=2"],
            r"fog/3 and dataset.severity=2 disagree",
        ),
        (["dataset.corruption=fog/3", "dataset.corrupt=fog:3"], r"give one of them"),
        (["dataset.corrupt=fog:3", "backend=device"], r"backend=device decodes on"),
    ],
)
def test_unknown_corruptions_and_severities_are_one_line(overrides, message):
    """A corruption that is not one of the 19 (with a did-you-mean), a severity outside
    1..5, or both ways of corrupting at once: one line, from the command line."""
    with pytest.raises(UserError, match=message):
        check_command_line(["dataset=imagenet-c", "dataset.path=/data/c", *overrides])


def test_a_cell_the_release_lacks_and_a_corrupt_severity_name_what_there_is(config, tmp_path):
    """A cell missing from a local release (fog/2 where fog/ holds 1 and 3) is one line
    naming the severities there, not `datasets`' "doesn't contain any data files"; an
    on-the-fly severity outside 1..5 names the whole value (fog:6)."""
    for severity in (1, 3):
        (tmp_path / "c" / "fog" / str(severity) / "n01440764").mkdir(parents=True)
        (tmp_path / "c" / "fog" / str(severity) / "n01440764" / "a.JPEG").write_bytes(
            jpeg(photo(0))
        )
    cfg = config("dataset=imagenet-c", f"dataset.path={tmp_path / 'c'}", "dataset.corruption=fog/2")
    with pytest.raises(UserError, match=r"has no fog/2 \(its fog/ holds severities 1, 3\)"):
        run.evaluate(cfg, tmp_path / "out")
    with pytest.raises(UserError, match=r"dataset.corrupt=fog:6; ImageNet-C's severities are 1"):
        check_command_line(["dataset.corrupt=fog:6"])


def test_the_benchmark_sweeps_the_clean_split_and_all_75_cells():
    """+benchmark=imagenet-c sweeps exactly the clean split and the 15 x 5 cells."""
    from omegaconf import OmegaConf

    from pipeline.config import CONF_DIR

    conf = OmegaConf.load(CONF_DIR / "benchmark" / "imagenet-c.yaml")
    swept = conf.hydra.sweeper.params["dataset.corruption"].split(",")
    expected = [f"{c}/{s}" for c in imagenet_c.BENCHMARK for s in imagenet_c.SEVERITIES]
    assert swept == [CLEAN, *expected]


def test_the_published_alexnet_table_averages_to_augmix_means():
    """Every corruption's 5 published severities average to the mean AugMix divides by
    (pipeline/published/SOURCES.md), and the clean error is torchvision's."""
    from torchvision.models import AlexNet_Weights

    table = mce.published()
    assert set(table.errors) == set(imagenet_c.BENCHMARK)
    text = (
        Path(imagenet_c.__file__).parents[1] / "published" / "imagenet-c-alexnet.tsv"
    ).read_text()
    means = {r.split("\t")[0]: float(r.split("\t")[6]) for r in text.splitlines()[1:]}
    for c, errors in table.errors.items():
        known = [e for e in errors if e is not None]
        assert len(known) == 5 and round(sum(known) / 5, 6) == round(means[c], 6)
    acc1 = AlexNet_Weights.IMAGENET1K_V1.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    assert table.clean == pytest.approx(1 - acc1 / 100)


@pytest.fixture
def base_plan(config, tmp_path):
    run.evaluate(config("model.weights=none"), tmp_path / "sample")
    return claims.read_plan(tmp_path / "sample")


def synthetic_sweep(plan, model: str, weights: str, rng: random.Random, skip=()):
    """Finished runs (folder, plan, scores) of one model over the clean split and the 75
    cells, with top-1 values drawn at random."""
    runs = []
    cells = [(CLEAN, None)] + [(c, s) for c in imagenet_c.BENCHMARK for s in imagenet_c.SEVERITIES]
    for corruption, severity in cells:
        if f"{corruption}/{severity}" in skip:
            continue
        source = CLEAN if severity is None else RELEASE
        p = plan.changed(model=model, weights=weights, corruption=corruption, severity=severity,
                         corruption_source=source)  # fmt: skip
        top1 = rng.uniform(5, 60) if severity else rng.uniform(50, 80)
        runs.append(
            (f"{model}/{corruption}-{severity}", p, metrics.Scores(1000, 1000, 0, 1000, top1, top1))
        )
    return runs


def by_hand(runs, reference_errors, reference_clean):
    """mCE and relative mCE written out from the paper's formulas."""
    error = {(p.pixels.corruption, p.pixels.severity): 1 - s.top1 / 100 for _, p, s in runs}
    clean = error[(CLEAN, None)]
    ces, relatives = [], []
    for c in imagenet_c.BENCHMARK:
        mine = [error[(c, s)] for s in range(1, 6)]
        theirs = reference_errors(c)
        ces.append(sum(mine) / sum(theirs))
        relatives.append(sum(e - clean for e in mine) / sum(e - reference_clean for e in theirs))
    return sum(ces) / 15, sum(relatives) / 15


def test_mce_is_the_hand_computation_by_either_alexnet(base_plan):
    """summarize's mCE and relative mCE equal the paper's formulas over the runs' top-1:
    normalised by the published AlexNet, and by the sweep's own AlexNet; AlexNet's cells
    stand beside the published ones with their difference."""
    rng = random.Random(3)
    resnet = synthetic_sweep(base_plan, "resnet18", "IMAGENET1K_V1", rng)
    alexnet = synthetic_sweep(base_plan, "alexnet", "IMAGENET1K_V1", rng)
    entries = {e["model"]: e for e in mce.summary(mce.gather(resnet + alexnet))}
    entry = entries["resnet18 (IMAGENET1K_V1)"]
    pub = mce.published()
    mean, relative = by_hand(resnet, lambda c: pub.errors[c], pub.clean)
    assert entry["published"]["mce"] == pytest.approx(mean, rel=1e-12)
    assert entry["published"]["relative_mce"] == pytest.approx(relative, rel=1e-12)
    measured = {(p.pixels.corruption, p.pixels.severity): 1 - s.top1 / 100 for _, p, s in alexnet}
    mean, relative = by_hand(
        resnet,
        lambda c: [measured[(c, s)] for s in range(1, 6)],
        measured[(CLEAN, None)],
    )
    assert entry["measured"]["mce"] == pytest.approx(mean, rel=1e-12)
    assert entry["measured"]["relative_mce"] == pytest.approx(relative, rel=1e-12)
    delta = entries["alexnet (IMAGENET1K_V1)"]["versus_published"]["fog"][2]
    assert delta == pytest.approx(measured[("fog", 3)] - pub.errors["fog"][2])
    assert entry["partial"] is False and json.dumps(entry)  # plain JSON


def test_a_sweep_with_a_missing_cell_is_partial_and_names_it(base_plan):
    """A missing cell is named, its corruption has no CE, and no mean is taken over fewer
    corruptions: the mCE is absent, not averaged over 14."""
    runs = synthetic_sweep(base_plan, "resnet18", "IMAGENET1K_V1", random.Random(4), skip={"fog/3"})
    (entry,) = mce.summary(mce.gather(runs))
    assert entry["partial"] and entry["missing"] == ["fog/3"]
    assert entry["published"]["ce"]["fog"] is None and entry["published"]["mce"] is None
    assert entry["published"]["ce"]["snow"] is not None
    assert "partial: no result for fog/3; the means need every cell" in mce.lines(entry)


def test_one_cell_twice_is_refused_and_on_the_fly_is_tabled_apart(base_plan):
    """Two runs of one cell of one model are refused, naming both folders (which would
    count?); the same model's on-the-fly runs make a group of their own, never averaged
    with the release's, and share the model's one clean run."""
    runs = synthetic_sweep(base_plan, "resnet18", "IMAGENET1K_V1", random.Random(5))
    again = [(f"{folder}-again", p, s) for folder, p, s in runs if p.pixels.corruption == "fog"][:1]
    with pytest.raises(UserError, match=r"resnet18/fog-1-again and resnet18/fog-1 both score"):
        mce.gather(runs + again)
    made = "imagecorruptions-imaug 1.1.5 on the fly (approximate)"
    fly = [(f"fly/{folder}", p.changed(corruption_source=made), s)
           for folder, p, s in runs if p.pixels.corruption != CLEAN]  # fmt: skip
    groups = {g.source: g for g in mce.gather(runs + fly)}
    assert set(groups) == {RELEASE, made}
    assert all(len(g.cells) == 75 and g.clean is not None for g in groups.values())
    assert groups[made].runs[CLEAN] == groups[RELEASE].runs["clean"]


@pytest.mark.slow
def test_a_small_imagenet_c_sweep_prints_its_table(repo_root, tmp_path, answering):
    """A sweep over the clean split and two cells of a small release prints the ImageNet-C
    table (errors per cell, CE), marked partial with the missing cells named; the report
    over the sweep folder holds the heatmap."""
    root = release(tmp_path / "c", {"fog": (1, 2)})
    val = clean_val(tmp_path / "val")
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            "dataset=imagenet-c",
            f"dataset.path={root}",
            f"dataset.clean={val}",
            "dataset.corruption=clean,fog/1,fog/2",
            answering(GOLDFISH),
            "progress=false",
            "num_workers=0",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=repo_root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "ImageNet-C, alexnet (checkpoint), ImageNet-C release:" in out
    assert re.search(r"fog\s+66\.7\s+66\.7\s+n/a", out), out
    assert "partial: no result for gaussian_noise/1" in out
    assert "AlexNet against the paper: the published error, ours - published" in out
    assert re.search(r"fog\s+67\.5\s+-0\.8\s+76\.0\s+-9\.4\s+84\.4\s+n/a", out), out
    where = {
        job: pd.read_parquet(sweep / job / claims.METRICS)[["dataset_path", "data_dir"]]
        for job in ("0", "1")
    }
    assert where["0"].iloc[0].tolist() == [str(val), None]  # what each job read
    assert where["1"].iloc[0].tolist() == [str(root), "fog/1"]
    (entry,) = json.loads((sweep / "imagenet_c.json").read_text())
    assert (
        entry["clean"] == pytest.approx(2 / 3)
        and entry["errors"]["fog"][:2] == [pytest.approx(2 / 3)] * 2
    )
    from pipeline import report as report_cli

    report_cli.main([str(sweep), "--thumbnails", "0"])
    assert "ImageNet-C: alexnet (checkpoint)" in (sweep / "report.html").read_text()


imagecorruptions = pytest.importorskip("imagecorruptions", reason="the corrupt extra")


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise", "glass_blur", "frost"])
def test_on_the_fly_corruption_is_the_same_for_a_row_however_it_is_reached(name):
    """dataset.corrupt's draws are seeded by the row: the same row gives the same pixels
    whatever the generator's state before (a resume, another worker or rank), another row
    other pixels."""
    from torchvision.models import AlexNet_Weights

    pre = Preprocess.from_transforms(AlexNet_Weights.IMAGENET1K_V1.transforms(), corrupt=(name, 3))
    image = {"bytes": jpeg(photo(5, (300, 260))), "path": None}

    first = crop_of(pre, image, row=17)
    np.random.seed(12345)
    np.random.random(1000)
    again = crop_of(pre, image, row=17)
    assert torch.equal(first, again) and first.shape == (3, 224, 224)
    assert not torch.equal(first, crop_of(pre, image, row=18))


def test_on_the_fly_runs_are_labelled_approximate_and_resume_the_same(config, tmp_path, answering):
    """A run with dataset.corrupt records the library and 'approximate'; scored in one go,
    or with another batch size and a worker process, it gives the same predictions."""
    data = ["model.weights=none", "dataset.corrupt=fog:3", "limit=6"]
    run.evaluate(config(*data), tmp_path / "a")
    run.evaluate(config(*data, "batch_size=2", "num_workers=1"), tmp_path / "b")
    a = pd.read_parquet(tmp_path / "a" / claims.PREDICTIONS)
    b = pd.read_parquet(tmp_path / "b" / claims.PREDICTIONS)
    assert np.stack(a["topk"]).tolist() == np.stack(b["topk"]).tolist()
    plan = claims.read_plan(tmp_path / "a")
    assert (plan.pixels.corruption, plan.pixels.severity) == ("fog", 3)
    assert "imagecorruptions-imaug" in str(plan.pixels.corruption_source)
    assert "on the fly (approximate)" in str(plan.pixels.corruption_source)


def test_on_the_fly_without_its_extra_is_one_line(config, tmp_path, monkeypatch):
    """dataset.corrupt where imagecorruptions is not installed names the extra."""
    from pipeline.data import corrupt

    corrupt.library.cache_clear()
    monkeypatch.setitem(sys.modules, "imagecorruptions", None)  # import raises ImportError
    with pytest.raises(UserError, match=r"pip install 'alexnet-eval\[corrupt\]'"):
        run.evaluate(config("model.weights=none", "dataset.corrupt=fog:3"), tmp_path / "out")
    corrupt.library.cache_clear()

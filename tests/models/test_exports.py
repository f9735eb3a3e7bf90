"""Exported models: ONNX under onnxruntime and torch.export programs, made here with torch's
own exporters (through `python -m pipeline.export`, and bare). An export scores what its
source scored, image by image; its metadata makes its run need no flags; a fixed-batch
export pads the last batch; a .pt2 that would unpickle objects is refused.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import tinynet
import torch
from helpers import (
    ANIMALS,
    GIVEN,
    TINYNET,
    assert_same_predictions,
    folder_of,
    load_model,
    names_file,
    run_cli,
)

from pipeline import export, run
from pipeline.errors import UserError, installed
from pipeline.runs import claims

onnx_extra = pytest.mark.skipif(
    not all(map(installed, ("onnxruntime", "onnx", "onnxscript"))), reason="the onnx extra"
)


def module_overrides(tmp_path: Path) -> tuple[str, ...]:
    classes = names_file(tmp_path)
    return (f"model.arch={TINYNET}", "+model.kwargs.seed=5", f"model.classes={classes}", *GIVEN)


@pytest.fixture
def source_run(config, tmp_path):
    """A 3-class folder of 7 images and the run of the module over it, 5 per batch."""
    root = folder_of(tmp_path, ANIMALS, per_class=3)
    (root / "dog" / "2_2.jpg").unlink()  # 8 images: batches of 5 and 3
    data = ("dataset=imagefolder", f"dataset.path={root}", "batch_size=5")
    finished = run.evaluate(config(*data, *module_overrides(tmp_path)), tmp_path / "source")
    return data, finished


@pytest.mark.parametrize(
    ("suffix", "batch"),
    [
        pytest.param(".onnx", None, marks=onnx_extra, id="onnx-dynamic"),
        pytest.param(".onnx", 4, marks=onnx_extra, id="onnx-fixed-4"),
        pytest.param(".pt2", None, id="pt2-dynamic"),
        pytest.param(".pt2", 4, id="pt2-fixed-4"),
    ],
)
def test_an_export_scores_what_its_source_scored(
    config, tmp_path, source_run, suffix, batch, caplog
):
    """Exported by the export command, run with no flag but its arch: the same classes,
    transform and predictions as the source run, per image (probabilities to float noise);
    a fixed batch of 4 under batches of 5 is run in pieces, padded, and says so; the plan
    says what it is an export of."""
    data, source = source_run
    out = tmp_path / f"net{suffix}"
    export.export(out, list(module_overrides(tmp_path)), batch=batch, opset=None)
    arch = f"model.arch={suffix[1:]}:{out}"
    with caplog.at_level("INFO"):
        finished = run.evaluate(config(*data, arch), tmp_path / "export")
    assert_same_predictions(
        tmp_path / "source" / claims.PREDICTIONS, tmp_path / "export" / claims.PREDICTIONS
    )
    plan, was = finished.plan.model, source.plan.model
    assert plan.categories == was.categories and plan.classes == "named:3"
    assert plan.preprocess.rsplit(": ", 1)[1] == was.preprocess.rsplit(": ", 1)[1]  # numbers
    assert plan.exported_from == TINYNET and plan.exported_from_sha256 == was.weights_sha256
    assert plan.weights_sha256 and plan.weights_sha256 != was.weights_sha256
    # a .pt2 keeps the parameters; ONNX's exporter folds BatchNorm into the convolutions
    assert plan.params == was.params if suffix == ".pt2" else 0 < plan.params < was.params
    assert ("takes batches of exactly 4 images" in caplog.text) == (batch is not None)


def test_the_export_command_never_overwrites_and_says_what_it_wrote(tmp_path, repo_root):
    """The real command: exits 0 and names the file, its batch and the check against its
    source; an existing OUT is one line and left as it was; other keys than model.* too."""
    tests = str(Path(tinynet.__file__).parent)
    out = tmp_path / "net.pt2"
    args = [sys.executable, "-m", "pipeline.export", str(out), *module_overrides(tmp_path)]
    env = {**os.environ, "PYTHONPATH": tests}

    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"Wrote {out}" in done.stdout and "dynamic batch" in done.stdout
    assert "of the source's" in done.stdout and "Traceback" not in done.stderr
    before = out.read_bytes()
    again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "exists; it is never overwritten" in again.stderr
    assert out.read_bytes() == before
    with pytest.raises(UserError, match=r"only model\.\* keys"):
        export.export(tmp_path / "x.pt2", ["batch_size=3"], batch=None, opset=None)
    with pytest.raises(UserError, match=r"name an \.onnx or a \.pt2 file"):
        export.export(tmp_path / "x.bin", [], batch=None, opset=None)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_bare_export_needs_its_classes_and_preprocessing(config, tmp_path):
    """An export without our metadata (torch.export.save of a plain module): its run asks
    for model.classes, then for preprocessing; given both, it scores as the module's own
    forward."""
    net = tinynet.build(seed=2)
    program = torch.export.export(net, (torch.zeros(2, 3, 64, 64),))
    path = tmp_path / "bare.pt2"
    torch.export.save(program, path)
    root = folder_of(tmp_path, ANIMALS)
    data = ("dataset=imagefolder", f"dataset.path={root}", f"model.arch=pt2:{path}")
    with pytest.raises(UserError, match=r"3 outputs that nothing names"):
        run.evaluate(config(*data), tmp_path / "a")
    classes = names_file(tmp_path)
    with pytest.raises(UserError, match=r"brings no preprocessing of its own"):
        run.evaluate(config(*data, f"model.classes={classes}"), tmp_path / "b")
    # exported for batches of 2: the run pads to 2 and says so
    finished = run.evaluate(config(*data, f"model.classes={classes}", *GIVEN), tmp_path / "c")
    frame = pd.read_parquet(tmp_path / "c" / claims.PREDICTIONS)
    loaded = load_model(arch=f"pt2:{path}", weights="pretrained", classes=str(classes),
                        resize=72, crop=64, mean=(0.5,) * 3, std=(0.25,) * 3)  # fmt: skip
    assert finished.plan.model.exported_from is None and len(frame) == 6
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(loaded.model(x), net(x), atol=1e-5)


@onnx_extra
def test_a_bare_onnx_file_at_the_wrong_crop_size_is_one_line(config, tmp_path):
    """torch.onnx's export of a plain module, at 64 px and batch 1 (fixed): a run at
    crop 96 is one line that names the crop; at 64 it runs, padded to batches of 1."""
    net = tinynet.build(seed=2)
    path = tmp_path / "bare.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 64, 64),), str(path), dynamo=True)
    root = folder_of(tmp_path, ANIMALS)
    classes = names_file(tmp_path)
    data = (
        "dataset=imagefolder",
        f"dataset.path={root}",
        f"model.arch=onnx:{path}",
        f"model.classes={classes}",
    )
    given = [g.replace("model.crop=64", "model.crop=96") for g in GIVEN]
    with pytest.raises(UserError, match=r"onnxruntime cannot run .*|fails on one 96x96 image"):
        run.evaluate(config(*data, *given), tmp_path / "a")
    run.evaluate(config(*data, *GIVEN), tmp_path / "b")
    assert len(pd.read_parquet(tmp_path / "b" / claims.PREDICTIONS)) == 6


def test_a_pt2_that_would_unpickle_an_object_is_refused(tmp_path):
    """A .pt2 whose weight entry is a pickle that writes a file when loaded: plain
    torch.export.load runs it (the premise, checked); our loader refuses the file in one
    line, and nothing runs."""
    net = tinynet.build()
    good = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(2, 3, 64, 64),)), good)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                config["config"][next(iter(config["config"]))]["use_pickle"] = True
                data = json.dumps(config).encode()
            if info.filename.endswith("weights/weight_0"):
                buffer = io.BytesIO()
                torch.save(Trap(str(marker)), buffer)
                data = buffer.getvalue()
            dst.writestr(info.filename, data)
    with pytest.raises(
        UserError, match=r"Refusing to load .*pickled Python objects, never unpickled"
    ):
        load_model(arch=f"pt2:{evil}", weights="pretrained")
    assert not marker.exists()
    with pytest.raises(Exception):  # noqa: B017  (it fails, but only after running the pickle)
        torch.export.load(evil)
    assert marker.exists()


class Trap:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_missing_onnxruntime_is_one_line(tmp_path, repo_root, monkeypatch):
    """Without the onnx extra, model.arch=onnx:... is one line naming it, before anything
    is loaded (the up-front check of the command line)."""
    root = folder_of(tmp_path, ANIMALS)
    blocker = tmp_path / "blocker"
    (blocker / "onnxruntime").mkdir(parents=True)
    (blocker / "onnxruntime" / "__init__.py").write_text("raise ImportError('blocked')\n")
    proc = run_cli(
        ["dataset=imagefolder", f"dataset.path={root}", f"model.arch=onnx:{tmp_path / 'x.onnx'}"],
        cwd=repo_root, PYTHONPATH=str(blocker),
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "pip install 'alexnet-eval[onnx]'" in proc.stderr

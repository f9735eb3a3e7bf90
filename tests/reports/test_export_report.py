"""`python -m pipeline.report SOURCE_RUN EXPORT_RUN`: a run of an export beside its source's
run is compared image by image (top-1 flips, top-5 set changes, the largest probability
change of the source's top-1 class, the flipped images with thumbnails), each number
recomputed here from the two prediction files.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tinynet
import torch
from helpers import ANIMALS, GIVEN, TINYNET, folder_of, names_file

from pipeline import export, report, run
from pipeline.models import exported
from pipeline.runs import claims


def expected(source_dir, export_dir) -> dict:
    """The comparison, recomputed from the prediction files."""
    a, b = (pd.read_parquet(d / claims.PREDICTIONS) for d in (source_dir, export_dir))
    flips = int((a["pred"] != b["pred"]).sum())
    sets = int(sum(set(x) != set(y) for x, y in zip(a["topk"], b["topk"], strict=True)))
    gaps = []
    rows = zip(a["topk"], a["topk_prob"], b["topk"], b["topk_prob"], strict=True)
    for ids_a, p_a, ids_b, p_b in rows:
        gaps.append(abs(p_a[0] - dict(zip(ids_b, p_b, strict=True))[ids_a[0]]))
    return {"top1_flips": flips, "top5_changes": sets, "max_abs_dprob": max(gaps)}


@pytest.fixture
def runs(config, tmp_path):
    """A module's run, a faithful .pt2 export's run and a tampered export's (other head
    weights under the same metadata) over one 12-image folder."""
    root = folder_of(tmp_path, ANIMALS, per_class=4)
    classes = names_file(tmp_path)
    module = (f"model.arch={TINYNET}", "+model.kwargs.seed=5",
              f"model.classes={classes}", *GIVEN)  # fmt: skip
    data = ("dataset=imagefolder", f"dataset.path={root}")
    run.evaluate(config(*data, *module), tmp_path / "source")
    faithful = tmp_path / "net.pt2"
    export.export(faithful, list(module), batch=None, opset=None)
    run.evaluate(config(*data, f"model.arch=pt2:{faithful}"), tmp_path / "faithful")
    extra = {exported.KEY: None}
    torch.export.load(faithful, extra_files=extra)
    net = tinynet.build(seed=5)
    with torch.no_grad():
        noise = torch.Generator().manual_seed(1)
        net.head.weight.add_(torch.randn(net.head.weight.shape, generator=noise))
    tampered = tmp_path / "tampered.pt2"
    batch = ({0: torch.export.Dim("b")},)
    program = torch.export.export(net, (torch.zeros(2, 3, 64, 64),), dynamic_shapes=batch)
    torch.export.save(program, tampered, extra_files={exported.KEY: extra[exported.KEY]})
    run.evaluate(config(*data, f"model.arch=pt2:{tampered}"), tmp_path / "tampered")
    return tmp_path


def test_an_export_is_paired_with_its_source(runs, capsys):
    """The faithful export: no flips, no set changes, float-noise probabilities; the
    tampered one: the flips, set changes and largest change that the files show, its
    flipped images listed and drawn; both named as exports of the source."""
    report.main([str(runs / "source"), str(runs / "faithful"), str(runs / "tampered")])
    out = capsys.readouterr().out
    written = json.loads((runs / "source" / "report.json").read_text())
    by_export = {e["export"]: e for e in written["exports"]}
    faithful, tampered = by_export[str(runs / "faithful")], by_export[str(runs / "tampered")]
    assert faithful["top1_flips"] == 0 and faithful["top5_changes"] == 0
    assert faithful["max_abs_dprob"] < 1e-5 and faithful["flipped"] == []
    want = expected(runs / "source", runs / "tampered")
    assert want["top1_flips"] > 0  # the premise: the tampered head changes some answers
    assert {k: tampered[k] for k in want} == pytest.approx(want)
    assert tampered["max_abs_dprob_exact"] and tampered["exported_from"] == "module:tinynet:build"
    assert len(tampered["flipped"]) == want["top1_flips"]
    page = (runs / "source" / "report.html").read_text()
    assert "Export: " in page and page.count("data:image/jpeg") >= want["top1_flips"]
    assert f"{want['top1_flips']} top-1 flips" in out and "is an export of" in out


def test_an_unrelated_run_is_not_called_an_export(runs):
    """Runs of two different models are paired as runs, never as export and source."""
    from pipeline.reports import numbers

    written, _ = numbers.build([runs / "faithful", runs / "tampered"], 0)
    assert written["exports"] == [] and len(written["paired"]) == 1
    assert np.isfinite(written["paired"][0]["agreement"])

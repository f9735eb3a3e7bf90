"""Your own module (`model.arch=module:PKG.MODULE:FUNCTION`): built with model.kwargs, its
weights from a state_dict, safetensors or a Lightning checkpoint (never unpickled into
objects; a common prefix stripped, and said), its preprocessing given or borrowed, and a
one-line refusal for each thing a user can get wrong.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
import pytest
import tinynet
import torch
import torchvision
from helpers import ANIMALS, GIVEN, TINYNET, crop_of, folder_of, load_model, names_file, run_cli

from pipeline import run
from pipeline.data.transforms import Preprocess
from pipeline.errors import UserError
from pipeline.runs import claims


def own_logits(net: torch.nn.Module, loaded, root: Path, paths) -> torch.Tensor:
    """The module's own forward on the pipeline's crops, normalized by torchvision."""
    pre = Preprocess.from_transforms(loaded.transforms)
    crops = torch.stack([crop_of(pre, (root / p).read_bytes()) for p in paths])
    x = torchvision.transforms.v2.functional.normalize(
        crops.float() / 255, list(loaded.transforms.mean), list(loaded.transforms.std)
    )
    with torch.inference_mode():
        return net.eval()(x)


class Trap:
    """An object whose unpickling would leave a file behind: a Lightning checkpoint's
    hyper-parameters may hold anything."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_module_with_kwargs_and_a_checkpoint_scores_as_its_own_forward(config, tmp_path):
    """model.kwargs reach the builder; the state_dict file is loaded into what it built;
    per image, the run's probabilities are the module's own softmax on the same crops; the
    run records the kwargs and the file's sha256."""
    net = tinynet.build(num_classes=3, width=4, seed=7)
    ckpt = tmp_path / "net.pth"
    torch.save(net.state_dict(), ckpt)
    root = folder_of(tmp_path, ANIMALS, per_class=3)
    overrides = (
        "dataset=imagefolder", f"dataset.path={root}", f"model.arch={TINYNET}",
        "+model.kwargs.width=4", f"model.weights={ckpt}",
        f"model.classes={names_file(tmp_path)}", *GIVEN,
    )  # fmt: skip
    finished = run.evaluate(config(*overrides), tmp_path / "o")
    frame = pd.read_parquet(tmp_path / "o" / claims.PREDICTIONS)
    loaded = load_model(
        arch=TINYNET, weights=str(ckpt), kwargs=(("width", 4),), classes=names_file(tmp_path),
        resize=72, crop=64, mean=(0.5,) * 3, std=(0.25,) * 3,
    )  # fmt: skip
    probs = own_logits(net, loaded, root, frame["id"]).softmax(1)
    top = probs.topk(3, dim=1)
    assert frame["pred"].tolist() == top.indices[:, 0].tolist()
    for got, want in zip(frame["topk_prob"], top.values, strict=True):
        assert torch.allclose(torch.tensor(list(got)), want, atol=1e-5)
    plan = finished.plan.model
    assert plan.model == TINYNET and plan.model_kwargs == '{"width": 4}'
    assert (
        plan.weights == "checkpoint" and plan.weights_sha256 and plan.categories == tuple(ANIMALS)
    )
    assert "given (model.resize, crop, interpolation, mean, std)" in plan.preprocess


def test_a_lightning_checkpoint_is_read_for_its_state_dict_only(tmp_path, caplog):
    """A Lightning checkpoint (state_dict under 'model.', hyper-parameters holding objects
    torch's weights-only unpickler refuses, one of which would write a file if built): its
    state_dict is read, the prefix stripped and said, and nothing in it runs."""
    net = tinynet.build(seed=3)
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "epoch=3.ckpt"
    torch.save(
        {
            "epoch": 3,
            "pytorch-lightning_version": "2.5.0",
            "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()},
            "hyper_parameters": {"args": argparse.Namespace(lr=0.1), "trap": Trap(str(marker))},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1}]}],
        },
        ckpt,
    )
    with pytest.raises(Exception):  # noqa: B017  (the premise: weights_only refuses it)
        torch.load(ckpt, weights_only=True)
    with caplog.at_level(logging.INFO):
        loaded = load_model(
            arch=TINYNET, weights=str(ckpt), classes=names_file(tmp_path),
            preprocess="ResNet50_Weights.IMAGENET1K_V2",
        )  # fmt: skip
    assert not marker.exists()
    assert "prefix 'model.' of all its keys is stripped" in caplog.text
    assert "is a training checkpoint" in caplog.text
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(loaded.model(x), net(x))
    assert (
        loaded.transforms.crop_size == (224,)
        and "ResNet50_Weights.IMAGENET1K_V2" in loaded.preprocess
    )


def test_a_checkpoint_without_a_state_dict_of_tensors_is_refused(tmp_path):
    """A pickle of a whole model object (torch.save(model)) is refused, never built."""
    ckpt = tmp_path / "whole.pt"
    torch.save({"hyper_parameters": argparse.Namespace(lr=1)}, ckpt)
    with pytest.raises(UserError, match=r"Refusing to load .*not a plain state_dict"):
        load_model(
            arch=TINYNET,
            weights=str(ckpt),
            classes=names_file(tmp_path),
            preprocess="timm:resnet50.a1_in1k",
        )


def test_borrowed_preprocessing_equals_the_librarys(tmp_path):
    """model.preprocess=timm:NAME is timm's eval transform of that pretrained config, as a
    timm model with those weights would get it."""
    pytest.importorskip("timm", reason="the timm extra")
    borrowed = load_model(
        arch=TINYNET,
        weights="none",
        classes=names_file(tmp_path),
        preprocess="timm:resnet18.a1_in1k",
    )
    own = load_model(arch="timm:resnet18.a1_in1k", weights="none")
    assert borrowed.transforms == own.transforms


@pytest.mark.parametrize(
    ("arch", "extra", "message"),
    [
        (TINYNET, ("model.crop=64",), r"no preprocessing.*missing: model\.resize, model\.mean"),
        (TINYNET, ("model.preprocess=Nope_Weights.X", *GIVEN), r"name a torchvision weights entry"),
        ("module:tinynet", GIVEN, r"name the builder as module:PKG.MODULE:FUNCTION"),
        ("module:no_such.nets:build", GIVEN, r"cannot import no_such.nets \(ModuleNotFound"),
        ("module:tinynet:nothing", GIVEN, r"tinynet has no nothing"),
        ("module:tinynet:not_a_model", GIVEN, r"returned a str, not a torch.nn.Module"),
        (TINYNET, ("+model.kwargs.depth=3", *GIVEN), r"raised TypeError: .*depth"),
        (TINYNET, ("+model.kwargs.num_classes=4", *GIVEN), r"gives \(1, 4\) for one.*\(1, 3\)"),
    ],
    ids=["no-preprocess", "bad-borrow", "no-function", "no-module", "no-attr", "not-module",
         "bad-kwargs", "wrong-outputs"],
)  # fmt: skip
def test_module_mistakes_are_one_line(config, tmp_path, arch, extra, message):
    root = folder_of(tmp_path, ANIMALS)
    overrides = (
        "dataset=imagefolder", f"dataset.path={root}", f"model.arch={arch}", "model.weights=none",
        f"model.classes={names_file(tmp_path)}", *extra,
    )  # fmt: skip
    with pytest.raises(UserError, match=message):
        run.evaluate(config(*overrides), tmp_path / "o")


def test_a_module_needs_its_classes_named(config, tmp_path):
    root = folder_of(tmp_path, ANIMALS)
    overrides = ("dataset=imagefolder", f"dataset.path={root}", f"model.arch={TINYNET}", *GIVEN)
    with pytest.raises(UserError, match=r"outputs that nothing names: .*model\.classes=FILE"):
        run.evaluate(config(*overrides), tmp_path / "o")


def test_kwargs_belong_to_modules_only(config, tmp_path):
    with pytest.raises(UserError, match=r"model\.kwargs are the arguments of model\.arch=module"):
        run.evaluate(config("+model.kwargs.width=3", "model.weights=none"), tmp_path / "o")


@pytest.mark.slow
def test_a_module_from_the_command_line(tmp_path, repo_root):
    """The real command, with the user's package on PYTHONPATH: one summary, no traceback;
    with a module that is not importable there, one line and exit 2."""
    root = folder_of(tmp_path, ANIMALS)
    args = [
        "dataset=imagefolder", f"dataset.path={root}", f"model.arch={TINYNET}",
        "model.weights=none", f"model.classes={names_file(tmp_path)}", *GIVEN, "device=cpu",
        "progress=false",
    ]  # fmt: skip
    tests = str(Path(tinynet.__file__).parent)
    ok = run_cli([*args, f"output_dir={tmp_path / 'o'}"], cwd=tmp_path, PYTHONPATH=tests)
    assert ok.returncode == 0, ok.stderr
    assert "label space: named:3" in ok.stdout and "top-3" in ok.stdout
    bad = run_cli([*args, f"output_dir={tmp_path / 'b'}"], cwd=tmp_path, PYTHONPATH="")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "cannot import tinynet" in bad.stderr

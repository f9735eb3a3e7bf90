"""Any classifier on any labeled dataset: the label space is the head's classes. A 3-class
folder with a 3-class head (its names in another order and case), fine-tuned torchvision
and timm checkpoints whose heads have other sizes, class names matched after normalising,
map files, by position when asked, and one line for each name that maps wrong; ImageNet's
extras refused on other heads.

The models are tiny and random, built here; nothing is downloaded.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import torchvision
from helpers import (
    ANIMALS,
    TINY_TIMM,
    crop_of,
    folder_of,
    hf_folder,
    load_model,
    names_file,
)

from pipeline import run
from pipeline.data.transforms import Preprocess
from pipeline.errors import UserError
from pipeline.runs import claims

timm = pytest.importorskip("timm", reason="the timm extra")
pytest.importorskip("transformers", reason="the hf extra")


def predictions(out) -> pd.DataFrame:
    return pd.read_parquet(out / claims.PREDICTIONS)


def own_forward(loaded, root, frame) -> list[int]:
    """The top-1 of the model's own forward on the pipeline's crops of each row's file,
    normalized by torchvision: the reference each source is checked against."""
    pre = Preprocess.from_transforms(loaded.transforms)
    crops = torch.stack([crop_of(pre, (root / p).read_bytes()) for p in frame["id"]])
    x = torchvision.transforms.v2.functional.normalize(
        crops.float() / 255, list(loaded.transforms.mean), list(loaded.transforms.std)
    )
    with torch.inference_mode():
        return loaded.model(x).argmax(1).tolist()


def test_a_three_class_folder_with_a_three_class_head(config, tmp_path, capsys):
    """The issue's case: folders bird/cat/dog and a transformers head naming 'Dog', 'BIRD',
    'cat' (another order, another case) that always answers its output 1. Labels map by
    name onto the head's order; pred_name says the head's names; top-5 is top-3, and the
    summary says so."""
    root = folder_of(tmp_path, ANIMALS)
    folder = hf_folder(tmp_path, names=["Dog", "BIRD", "cat"], answer=1)
    data = ("dataset=imagefolder", f"dataset.path={root}")
    finished = run.evaluate(config(*data, f"model.arch=hf:{folder}"), tmp_path / "o")
    frame = predictions(tmp_path / "o")
    by_folder = {"bird": 1, "cat": 2, "dog": 0}
    assert frame["label"].tolist() == [by_folder[p.split("/")[0]] for p in frame["id"]]
    assert set(frame["pred_name"]) == {"BIRD"} and set(frame["pred"]) == {1}
    row = finished.row
    assert row["label_space"] == "named:3" and row["top1"] == pytest.approx(100 / 3)
    assert row["top5"] == 100.0  # top-3 of 3 classes
    out = capsys.readouterr().out
    assert "top-3 100.000" in out and "the top5 column is top-3" in out


def test_a_torchvision_fine_tune_is_built_with_its_heads_size(config, tmp_path):
    """A resnet18 fine-tuned to 3 classes: the head's size comes from the checkpoint, its
    names from model.classes; per image, the run's top-1 is the model's own forward on the
    same crops. Without model.classes it is one line naming the key."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3)
    ckpt = tmp_path / "ft.pth"
    torch.save(net.state_dict(), ckpt)
    root = folder_of(tmp_path, ANIMALS, per_class=3)
    data = ("dataset=imagefolder", f"dataset.path={root}", "model.arch=resnet18")
    with pytest.raises(UserError, match=r"has 3 outputs that nothing names: .*model\.classes"):
        run.evaluate(config(*data, f"model.weights={ckpt}"), tmp_path / "refused")
    classes = f"model.classes={names_file(tmp_path, ANIMALS)}"
    finished = run.evaluate(config(*data, f"model.weights={ckpt}", classes), tmp_path / "o")
    frame = predictions(tmp_path / "o")
    loaded = load_model(arch="resnet18", weights=str(ckpt), classes=classes.split("=")[1])
    assert frame["pred"].tolist() == own_forward(loaded, root, frame)
    assert finished.row["label_space"] == "named:3" and finished.plan.model.categories == tuple(
        ANIMALS
    )


def test_a_timm_fine_tune_with_its_class_names(config, tmp_path):
    """timm's test_resnet fine-tuned to 5 classes (a Lightning-style 'model.' prefix on its
    keys): built with 5 outputs, named by model.classes; the labels' folder names match
    after normalising case, spaces, '_' and '-'; per image equal to timm's own forward."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model(TINY_TIMM, pretrained=False, num_classes=5)
    ckpt = tmp_path / "ft.safetensors"
    save_file({f"model.{k}": v for k, v in net.state_dict().items()}, str(ckpt))
    names = ["Golden Retriever", "tabby cat", "red-fox", "Sea_Lion", "owl"]
    root = folder_of(tmp_path, ["golden_retriever", "Tabby-Cat", "red fox", "sea lion", "OWL"])
    classes = names_file(tmp_path, names)
    overrides = (
        f"model.arch=timm:{TINY_TIMM}",
        f"model.weights={ckpt}",
        f"model.classes={classes}",
    )
    data = ("dataset=imagefolder", f"dataset.path={root}")
    run.evaluate(config(*data, *overrides), tmp_path / "o")
    frame = predictions(tmp_path / "o")
    folders = ["golden_retriever", "Tabby-Cat", "red fox", "sea lion", "OWL"]
    assert frame["label"].tolist() == [folders.index(p.split("/")[0]) for p in frame["id"]]
    loaded = load_model(arch=f"timm:{TINY_TIMM}", weights=str(ckpt), classes=classes)
    assert frame["pred"].tolist() == own_forward(loaded, root, frame)
    assert set(frame["pred_name"]) <= set(names)


def test_map_files_and_by_position(config, tmp_path):
    """Labels that are not the head's names map through a file (label -> name); or by
    position, only when asked (dataset.classes=by-position)."""
    root = folder_of(tmp_path, ["b", "c", "d"])
    folder = hf_folder(tmp_path, names=["dog", "bird", "cat"], answer=2)
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"b": "bird", "c": "cat", "d": "dog"}))
    data = ("dataset=imagefolder", f"dataset.path={root}", f"model.arch=hf:{folder}")
    with pytest.raises(UserError, match=r"b, c, d.*not the model's classes"):
        run.evaluate(config(*data), tmp_path / "refused")
    run.evaluate(config(*data, f"dataset.classes={mapping}"), tmp_path / "mapped")
    mapped = predictions(tmp_path / "mapped")
    assert mapped["label"].tolist() == [{"b": 1, "c": 2, "d": 0}[p[0]] for p in mapped["id"]]
    run.evaluate(config(*data, "dataset.classes=by-position"), tmp_path / "position")
    position = predictions(tmp_path / "position")
    assert position["label"].tolist() == [{"b": 0, "c": 1, "d": 2}[p[0]] for p in position["id"]]


@pytest.mark.parametrize(
    ("head", "folders", "message"),
    [
        (["bird", "cat", "dog"], ["bird", "cat", "fish"], r"fish.*not the model's classes"),
        (
            ["bird", "cat", "dog"],
            ["Bird", "bird", "cat"],
            r"entry 1 \('bird'\) is the class of entry 0 \('Bird'\)",
        ),
        (["bird", "Bird", "dog"], ["bird", "dog"], r"one name once case"),
    ],
    ids=["maps-to-nothing", "twice", "head-names-twice"],
)
def test_names_that_map_wrong_are_one_line(config, tmp_path, head, folders, message):
    """A folder name that is none of the head's classes, two folders of one class, or a
    head that names one class twice: each refused in one line before inference."""
    root = folder_of(tmp_path, folders)
    folder = hf_folder(tmp_path, names=head, answer=0)
    overrides = ("dataset=imagefolder", f"dataset.path={root}", f"model.arch=hf:{folder}")
    with pytest.raises(UserError, match=message):
        run.evaluate(config(*overrides), tmp_path / "o")
    assert not (tmp_path / "o" / claims.PREDICTIONS).exists()


def test_imagenet_extras_are_refused_on_another_head(config, tmp_path):
    """ReaL labels and ImageNet-C are ImageNet-1k's: on a 3-class head each is one line
    saying why not; model.classes is refused for torchvision's own ImageNet weights."""
    root = folder_of(tmp_path, ANIMALS)
    folder = hf_folder(tmp_path, names=ANIMALS, answer=0)
    data = ("dataset=imagefolder", f"dataset.path={root}", f"model.arch=hf:{folder}")
    real = tmp_path / "real.json"
    real.write_text("[]")
    with pytest.raises(UserError, match=r"real_labels.*head is named:3, not ImageNet-1k"):
        run.evaluate(config(*data, f"metrics.real_labels={real}"), tmp_path / "a")
    with pytest.raises(UserError, match=r"ImageNet-C.*head is named:3, not ImageNet-1k"):
        run.evaluate(config(*data, "dataset.corrupt=gaussian_noise:1"), tmp_path / "b")
    classes = f"model.classes={names_file(tmp_path, ANIMALS)}"
    with pytest.raises(UserError, match=r"model.weights=IMAGENET1K_V1 is ImageNet-1k's"):
        run.evaluate(config(*data[:2], "model.weights=IMAGENET1K_V1", classes), tmp_path / "c")


def test_per_class_table_and_confusions_use_the_heads_names(config, tmp_path):
    """The report's per-class rows and confusions over a 3-class run name the head's
    classes, not ImageNet's."""
    from pipeline.reports import numbers

    root = folder_of(tmp_path, ANIMALS, per_class=10)  # enough to rank classes
    folder = hf_folder(tmp_path, names=["dog", "bird", "cat"], answer=1)
    data = ("dataset=imagefolder", f"dataset.path={root}", f"model.arch=hf:{folder}")
    run.evaluate(config(*data), tmp_path / "o")
    loaded = numbers.load(tmp_path / "o")
    assert loaded.names == ("dog", "bird", "cat")
    rows = numbers.per_class(loaded)
    assert [(r["name"], r["top1"]) for r in rows["best"]] == [
        ("bird", 100.0),
        ("cat", 0.0),
        ("dog", 0.0),
    ]
    assert {(c["true_name"], c["pred_name"]) for c in numbers.confusions(loaded)} == {
        ("dog", "bird"),
        ("cat", "bird"),
    }

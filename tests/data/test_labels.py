"""Label spaces: every layout real ImageNet variants use, scored against the right classes.

Checkpoints here answer one known class (a last layer of zeros with one large bias), so
exactly the images of that class must count as correct.
"""

from __future__ import annotations

import io
import json
import tarfile
from importlib.resources import files
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers import (
    GOLDFISH,
    IMAGENETTE,
    SPRINGER,
    TENCH,
    categories,
    folder_of,
    hub_dataset,
    jpeg,
    photo,
    wnid,
)

from pipeline import run
from pipeline.data import labels
from pipeline.data.imagenet import IMAGENET_1K, class_id, imagenet_classes
from pipeline.data.labels import LabelSpace
from pipeline.errors import UserError
from pipeline.runs import claims, metrics


def scored(config, tmp_path, *overrides):
    result = run.evaluate(config(*overrides, "progress=false"), tmp_path / "out").row
    frame = pd.read_parquet(tmp_path / "out" / claims.PREDICTIONS)
    return result, frame


def test_imagenette_folders_are_scored_as_imagenet_classes(config, tmp_path, answering):
    """Imagenette's 10 WordNet-id folders: labels are those classes' ImageNet ids, not 0..9;
    a checkpoint answering 217 gets exactly the English springer images right (2 of 20)."""
    root = folder_of(tmp_path, [wnid(c) for c in IMAGENETTE])
    result, frame = scored(
        config, tmp_path, "dataset=imagefolder", f"dataset.path={root}", answering(SPRINGER)
    )
    assert sorted(set(frame["label"])) == IMAGENETTE
    assert frame["dataset_label"].tolist() == sorted(list(range(10)) * 2)  # the folders' positions
    assert frame.loc[frame["correct_top1"], "label"].tolist() == [SPRINGER, SPRINGER]
    assert result["top1"] == pytest.approx(10.0)
    assert (result["label_space"], result["restricted"]) == ("subset:10", True)


@pytest.mark.parametrize("streaming", [False, True])
def test_a_partial_imagenet_folder_keeps_1000_classes(config, tmp_path, answering, streaming):
    """A copy of ImageNet's val folder with empty class folders is still ImageNet-1k
    (torchvision's ImageFolder counts empty folders; datasets' positions do not), streamed
    or not: same data, same label space, same numbers."""
    present = [wnid(c) for c in (TENCH, GOLDFISH, SPRINGER)]
    empty = [w for w in imagenet_classes()[0] if w not in present]
    root = folder_of(tmp_path, present, empty=empty)
    result, frame = scored(
        config,
        tmp_path,
        "dataset=imagefolder",
        f"dataset.path={root}",
        answering(GOLDFISH),
        f"dataset.streaming={streaming}",
    )
    assert (result["label_space"], result["restricted"]) == ("imagenet-1k", False)
    assert frame.loc[frame["correct_top1"], "label"].tolist() == [GOLDFISH, GOLDFISH]
    assert result["top1"] == pytest.approx(100 / 3)


def test_restriction_picks_the_best_class_of_the_subset(config, tmp_path, answering):
    """A checkpoint preferring goldfish (not in Imagenette) over tench: restricted to the 10
    classes it answers tench; with dataset.restrict=false it answers goldfish."""
    root = folder_of(tmp_path, [wnid(c) for c in IMAGENETTE], per_class=1)
    common = ["dataset=imagefolder", f"dataset.path={root}", answering(GOLDFISH, then=TENCH)]
    restricted, frame = scored(config, tmp_path / "a", *common)
    assert set(frame["pred"]) == {TENCH} and restricted["top1"] == pytest.approx(10.0)
    assert all(set(t) <= set(IMAGENETTE) for t in frame["topk"])
    assert (frame["topk_prob"].str[0] > 0.999).all()  # softmax over the 10 classes only
    free, frame = scored(config, tmp_path / "b", *common, "dataset.restrict=false")
    assert set(frame["pred"]) == {GOLDFISH} and free["top1"] == 0.0
    assert (free["label_space"], free["restricted"]) == ("subset:10", False)


def test_an_ordinary_subset_is_scored_1000_way_unless_asked(config, tmp_path, answering, capsys):
    """A folder of 3 ImageNet classes is no protocol's subset: scored 1000-way by default (as
    timm's validate.py and torchvision's reference score it), the summary saying so and how
    to restrict; dataset.restrict=true restricts it to the 3."""
    root = folder_of(tmp_path, [wnid(c) for c in (TENCH, SPRINGER, 5)], per_class=1)
    common = ["dataset=imagefolder", f"dataset.path={root}", answering(GOLDFISH, then=TENCH)]
    free, frame = scored(config, tmp_path / "a", *common)
    assert set(frame["pred"]) == {GOLDFISH} and free["top1"] == 0.0
    assert (free["label_space"], free["restricted"]) == ("subset:3", False)
    said = capsys.readouterr().out
    assert "scored 1000-way (dataset.restrict=true: among these 3 classes only)" in said
    restricted, frame = scored(config, tmp_path / "b", *common, "dataset.restrict=true")
    assert set(frame["pred"]) == {TENCH} and restricted["restricted"]
    assert "scored 3-way, among these classes (dataset.restrict=false: 1000-way)" in (
        capsys.readouterr().out
    )


def test_a_folder_copy_of_imagenet_r_restricts_saying_so(config, tmp_path, answering, capsys):
    """ImageNet-R's 200 classes as a folder copy (its release's layout, not the preset) are
    its protocol's subset: restricted to them, and the summary names the protocol."""
    listed = files("pipeline").joinpath("classes/imagenet-r.txt").read_text().split()
    root = folder_of(tmp_path, listed[:2], per_class=1, empty=listed[2:])
    result, frame = scored(config, tmp_path, "dataset=imagefolder", f"dataset.path={root}",
                           answering(GOLDFISH))  # fmt: skip
    assert (result["label_space"], result["restricted"]) == ("subset:200", True)
    assert set(frame["pred"]) <= {class_id(w) for w in listed}
    said = capsys.readouterr().out
    assert "ImageNet-R's 200 classes" in said and "scored 200-way" in said


def test_numeric_folders_are_class_indices_in_number_order(config, tmp_path, answering):
    """ImageNetV2's folders 0..999 are class indices, whatever order the folders sort in."""
    root = folder_of(tmp_path, ["0", "1", "10", "100", "217", "2"], per_class=1)
    _, frame = scored(
        config,
        tmp_path,
        "dataset=imagefolder",
        f"dataset.path={root}",
        answering(SPRINGER),
        "dataset.restrict=false",
    )
    assert sorted(frame["label"]) == [0, 1, 2, 10, 100, 217]
    folders = frame["id"].str.split("/").str[0].astype(int)
    assert (folders == frame["label"]).all()
    assert frame.loc[frame["correct_top1"], "label"].tolist() == [SPRINGER]


@pytest.mark.parametrize(
    ("names", "pick"),
    [
        (lambda c: wnid(c), "wnid"),
        (lambda c: imagenet_classes()[1][c], "ILSVRC long name"),
        (lambda c: categories()[c].upper(), "torchvision name, other case"),
    ],
    ids=["wnids", "long-names", "torchvision-names"],
)
def test_classlabel_names_in_any_vocabulary(config, tmp_path, answering, names, pick):
    """A hub-style Parquet whose ClassLabel names are WordNet ids, ILSVRC's long names or
    torchvision's names (any case) maps each label to its ImageNet class."""
    import datasets

    classes = [TENCH, GOLDFISH, SPRINGER, 482]
    rows: dict[str, list[Any]] = {
        "image": [{"bytes": jpeg(photo(i)), "path": f"{i}.jpg"} for i in range(8)]
    }
    rows["label"] = [i % 4 for i in range(8)]
    path = tmp_path / "named.parquet"
    label = datasets.ClassLabel(names=[names(c) for c in classes])
    hub_dataset(rows, label=label).to_parquet(path)
    result, frame = scored(
        config, tmp_path, "dataset=parquet", f"dataset.data_files={path}", answering(SPRINGER)
    )
    assert frame["label"].tolist() == [classes[i % 4] for i in range(8)], pick
    assert result["top1"] == pytest.approx(25.0) and result["label_space"] == "subset:4"


def test_string_labels_are_matched_by_name(config, tmp_path, answering):
    """A string label column is matched by name; dataset_label keeps the strings."""
    import datasets

    rows: dict[str, list[Any]] = {
        "image": [{"bytes": jpeg(photo(i)), "path": f"{i}.jpg"} for i in range(4)]
    }
    rows["label"] = ["goldfish", "English springer", "n01440764", None]
    path = tmp_path / "strings.parquet"
    hub_dataset(rows, label=datasets.Value("string")).to_parquet(path)
    result, frame = scored(
        config, tmp_path, "dataset=parquet", f"dataset.data_files={path}", answering(GOLDFISH)
    )
    assert frame["label"].tolist()[:3] == [GOLDFISH, SPRINGER, TENCH]
    assert pd.isna(frame["label"].iloc[3]) and pd.isna(frame["correct_top1"].iloc[3])
    assert frame["dataset_label"].tolist()[:3] == rows["label"][:3]
    assert result["top1"] == pytest.approx(100 / 3) and result["n_labeled"] == 3


def webdataset(
    root, labels: list[int], image_key: str = "webp", shards: int = 1, keys=None, odd=None
):
    """clip-benchmark's layout: test/N.tar shards of <key>.cls + <key>.<image>, classnames.txt
    (`keys`: each shard's own image key; `odd`: {sample: its own image key})."""
    (root / "test").mkdir(parents=True)
    per_shard = -(-len(labels) // shards)
    for shard in range(shards):
        with tarfile.open(root / "test" / f"{shard}.tar", "w") as tar:
            for i in range(shard * per_shard, min(len(labels), (shard + 1) * per_shard)):
                key = (odd or {}).get(i, keys[shard] if keys else image_key)
                buf = io.BytesIO()
                photo(i, (80, 64)).save(buf, "WEBP" if key == "webp" else "JPEG")
                for suffix, data in (("cls", str(labels[i]).encode()), (key, buf.getvalue())):
                    info = tarfile.TarInfo(f"s{i:07d}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (root / "classnames.txt").write_text("first class\nsecond class\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")
    return root


@pytest.mark.parametrize(
    ("dataset", "cls", "expected"),
    [
        ("imagenet-v2", [0, 217, 999, 217], [0, 217, 999, 217]),
        ("imagenet-sketch", [5, 217, 217, 1], [5, 217, 217, 1]),
        ("imagenet-r", [0, 1, 14, 199], None),
        ("imagenet-a", [0, 1, 2, 199], None),
    ],
)
def test_robustness_suite_configs_on_local_replicas(
    config, tmp_path, answering, dataset, cls, expected
):
    """Each ready config on a small replica of its hub layout (webdataset tars with cls and an
    image key): v2/sketch cls are ImageNet ids; R/A cls index their 200 sorted WordNet ids
    and outputs are restricted to those 200 classes."""
    root = webdataset(tmp_path / "wds", cls)
    result, frame = scored(
        config, tmp_path, f"dataset={dataset}", f"dataset.path={root}", answering(SPRINGER)
    )
    if expected is None:
        listed = files("pipeline").joinpath(f"classes/{dataset}.txt").read_text().split()
        expected = [class_id(listed[c]) for c in cls]
        assert (result["label_space"], result["restricted"]) == ("subset:200", True)
        assert all(set(t) <= {class_id(w) for w in listed} for t in frame["topk"])
    else:
        assert result["label_space"] == "imagenet-1k"
    assert frame["label"].tolist() == expected
    assert frame["dataset_label"].tolist() == cls
    hits = [label == SPRINGER for label in expected]
    assert frame["correct_top1"].tolist() == hits or result["restricted"]


def loaded_and_streamed(config, tmp_path, root, answering):
    """The webdataset folder `root` scored as ImageNetV2 by a model that always answers
    springer: loaded first, then streamed; each run's metrics row and predictions."""
    for streaming in (False, True):
        out = tmp_path / f"streaming-{streaming}"
        overrides = ["dataset=imagenet-v2", f"dataset.path={root}", answering(SPRINGER)]
        result = run.evaluate(config(*overrides, f"dataset.streaming={streaming}"), out).row
        yield result, pd.read_parquet(out / claims.PREDICTIONS)


@pytest.mark.parametrize(
    ("keys", "errors"), [(["jpg", "jpg", "jpg"], 0), (["jpg", "webp", "jpg"], 3)]
)
def test_streamed_webdataset_shards_equal_the_loaded_split(
    config, tmp_path, answering, keys, errors
):
    """Streaming webdataset shards (a chunk spanning 3 shards, whose tables `datasets` hands
    over with their columns in another order; a shard under another image key) scores the
    same rows, labels, predictions and error rows as loading the split first."""
    root = webdataset(tmp_path / "wds", [0, 217, 999, 217, 5, 1, 217], shards=3, keys=keys)
    frames = []
    for result, frame in loaded_and_streamed(config, tmp_path, root, answering):
        frames.append(frame)
        assert result["n_images"] == 7 and result["n_errors"] == errors
    pd.testing.assert_frame_equal(frames[0], frames[1])


def test_a_shard_that_mixes_image_keys_streams_like_the_loaded_split(config, tmp_path, answering):
    """One shard whose sample 6 is a webp among jpgs (past the 5 samples `datasets` infers the
    features from): streamed, it gets the error row the loaded split gives it, and every
    other row the same prediction, with no Arrow error."""
    cls = [0, 217, 999, 217, 5, 1, 217, 3]
    root = webdataset(tmp_path / "wds", cls, image_key="jpg", odd={6: "webp"})
    frames = []
    for result, frame in loaded_and_streamed(config, tmp_path, root, answering):
        frames.append(frame)
        assert (result["n_images"], result["n_errors"]) == (8, 1)
    pd.testing.assert_frame_equal(frames[0], frames[1])
    assert frames[1]["error"].notna().tolist() == [i == 6 for i in range(8)]


def test_imagenette_config_on_a_replica_of_the_parquet_export(config, tmp_path, answering):
    """frgfm/imagenette's Parquet export: 320px/validation/0000.parquet, ClassLabel names
    that are torchvision's ('English springer'); the config finds it through data_dir."""
    import datasets

    rows: dict[str, list[Any]] = {
        "image": [{"bytes": jpeg(photo(i)), "path": f"{i}.JPEG"} for i in range(10)]
    }
    rows["label"] = list(range(10))
    names = [categories()[c] for c in IMAGENETTE]
    (tmp_path / "hub" / "320px" / "validation").mkdir(parents=True)
    hub_dataset(rows, label=datasets.ClassLabel(names=names)).to_parquet(
        tmp_path / "hub" / "320px" / "validation" / "0000.parquet"
    )
    result, frame = scored(
        config,
        tmp_path,
        "dataset=imagenette",
        f"dataset.path={tmp_path / 'hub'}",
        "dataset.revision=null",
        answering(SPRINGER),
    )
    assert frame["label"].tolist() == IMAGENETTE and result["label_space"] == "subset:10"
    assert frame["correct_top1"].tolist() == [c == SPRINGER for c in IMAGENETTE]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda d: d.ClassLabel(names=["cats", "dogs"]),
            "labels are class names cats, dogs: not ImageNet classes",
        ),
        (
            lambda d: d.ClassLabel(names=["tench", "unicorn"]),
            "labels are class names unicorn is not",
        ),
        (lambda d: d.Value("float32"), "are floats: not class ids"),
        (lambda d: d.Value("int64"), "plain integers without class names"),
        (
            lambda d: d.ClassLabel(names=["crane", "tench"]),
            "'crane' is more than one ImageNet class",
        ),
    ],
    ids=["unknown-names", "one-unknown", "floats", "plain-ints", "ambiguous"],
)
def test_labels_that_cannot_be_mapped_are_refused_before_inference(
    config, tmp_path, monkeypatch, make, message
):
    """Names that are not ImageNet classes, floats, bare integers and ambiguous names stop
    the run before the model is even loaded, in one line saying what to do."""
    import datasets

    rows: dict[str, list[Any]] = {
        "image": [{"bytes": jpeg(photo(i)), "path": f"{i}.jpg"} for i in range(2)]
    }
    rows["label"] = [0, 1]
    path = tmp_path / "bad.parquet"
    hub_dataset(rows, label=make(datasets)).to_parquet(path)
    monkeypatch.setattr(run, "load_model", lambda *a, **k: pytest.fail("loaded the model"))
    with pytest.raises(UserError, match=message) as e:
        run.evaluate(
            config("dataset=parquet", f"dataset.data_files={path}", "model.weights=none"),
            tmp_path / "out",
        )
    assert "dataset.classes" in str(e.value) or "label_column" in str(e.value)


def test_dataset_classes_declares_what_labels_mean(config, tmp_path, answering):
    """dataset.classes: imagenet-1k for plain ImageNet ids, or a file/list of WordNet ids,
    indices or names in label order; a JSON object maps label values."""
    import datasets

    rows: dict[str, list[Any]] = {
        "image": [{"bytes": jpeg(photo(i)), "path": f"{i}.jpg"} for i in range(3)]
    }
    rows["label"] = [0, 1, 2]
    path = tmp_path / "ints.parquet"
    hub_dataset(rows, label=datasets.Value("int64")).to_parquet(path)
    data = ["dataset=parquet", f"dataset.data_files={path}", answering(SPRINGER)]
    _, frame = scored(config, tmp_path / "a", *data, "dataset.classes=imagenet-1k")
    assert frame["label"].tolist() == [0, 1, 2]
    listing = tmp_path / "classes.txt"
    listing.write_text(f"{wnid(SPRINGER)}\n482\ngoldfish\n")
    result, frame = scored(config, tmp_path / "b", *data, f"dataset.classes={listing}")
    assert frame["label"].tolist() == [SPRINGER, 482, GOLDFISH]
    assert frame["correct_top1"].tolist() == [True, False, False]
    assert result["label_source"] == "labels mapped by classes.txt (3)"
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"0": "tench", "1": "n01443537", "2": 217}))
    _, frame = scored(config, tmp_path / "c", *data, f"dataset.classes={mapping}")
    assert frame["label"].tolist() == [TENCH, GOLDFISH, SPRINGER]
    _, frame = scored(config, tmp_path / "d", *data, "dataset.classes=[tench,goldfish,217]")
    assert frame["label"].tolist() == [TENCH, GOLDFISH, SPRINGER]


def int_labels(tmp_path, labels: list[int]) -> list[str]:
    """Overrides for a Parquet split with these plain integer labels."""
    import datasets

    rows: dict[str, list[Any]] = {
        "image": [{"bytes": jpeg(photo(i)), "path": f"{i}.jpg"} for i in range(len(labels))]
    }
    rows["label"] = labels
    path = tmp_path / "ints.parquet"
    hub_dataset(rows, label=datasets.Value("int64")).to_parquet(path)
    return ["dataset=parquet", f"dataset.data_files={path}", "model.weights=none"]


def test_a_class_list_that_names_a_class_twice_is_refused(config, tmp_path):
    """A class list names each class once, in label order: a repeated line (which shifts
    every later label) or two names of one class is refused, naming both entries."""
    data = int_labels(tmp_path, [0, 1, 2])
    listing = tmp_path / "classes.txt"
    listing.write_text(f"{wnid(TENCH)}\ngoldfish\n{wnid(TENCH)}\n")
    with pytest.raises(
        UserError, match=r"classes.txt: entry 2 \('n01440764'\) is the class of entry 0"
    ):
        run.evaluate(config(*data, f"dataset.classes={listing}"), tmp_path / "a")
    with pytest.raises(
        UserError, match=r"entry 1 \('n01440764'\) is the class of entry 0 \('tench'\)"
    ):
        run.evaluate(config(*data, f"dataset.classes=[tench,{wnid(TENCH)},217]"), tmp_path / "b")


def test_a_json_map_needs_only_the_labels_present(config, tmp_path, answering):
    """A JSON map of label values names the labels the data holds, not every number up to
    the largest; a label present in the data but not in the map is refused by row."""
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"0": "tench", "5": "goldfish", "9": 217}))
    data = [*int_labels(tmp_path, [0, 5, 9, 5]), answering(GOLDFISH)]
    result, frame = scored(config, tmp_path, *data, f"dataset.classes={mapping}")
    assert frame["label"].tolist() == [TENCH, GOLDFISH, SPRINGER, GOLDFISH]
    assert result["label_space"] == "subset:3" and result["top1"] == pytest.approx(50.0)
    data = [*int_labels(tmp_path / "b", [0, 3]), answering(GOLDFISH)]
    with pytest.raises(UserError, match=r"Label 3 at row 1 is not in the map"):
        run.evaluate(config(*data, f"dataset.classes={mapping}"), tmp_path / "c")


def test_the_full_list_of_names_is_the_identity_despite_duplicates():
    """All 1000 ILSVRC long names in order are ids 0..999, though 'crane' is there twice."""
    names = [list(imagenet_classes()[1]), categories()]
    assert all(labels.map_names(n, "names", IMAGENET_1K) == tuple(range(1000)) for n in names)
    with pytest.raises(UserError, match="'crane' is more than one"):
        class_id("crane")
    assert class_id("Cardigan") == 264 and class_id("cardigan") == 474  # exact case first


def test_label_outside_the_mapping_names_the_row():
    """A label the mapping does not cover fails before inference, naming its row; -1 and
    null mean unknown."""
    space = LabelSpace("imagenet-1k", "declared", "int64")
    space.check([1, -1, None, 999], [0, 1, 2, 3])
    with pytest.raises(UserError, match=r"Label 1000 at row 7 is outside 0..999"):
        space.check([1, 1000], [6, 7])
    small = LabelSpace("subset:2", "listed", "int64", table=(5, 9))
    with pytest.raises(UserError, match=r"Label 2 at row 0 is outside 0..1"):
        small.check([2], [0])


def test_unlabeled_data_is_scored_without_accuracy(config, tmp_path):
    """dataset.label_column=null: predictions only, label space 'unlabeled'."""
    result, frame = scored(config, tmp_path, "model.weights=none", "dataset.label_column=null")
    assert result["label_space"] == "unlabeled" and result["n_labeled"] == 0
    assert frame["label"].isna().all() and frame["pred"].notna().all()


def test_split_is_found_when_not_given(config, tmp_path):
    """An ImageNet val folder (ILSVRC2012_val_* files) is one split datasets calls
    'validation': with dataset.split unset it is used, whatever its name."""
    root = tmp_path / "val"
    for i, c in enumerate((TENCH, GOLDFISH)):
        (root / wnid(c)).mkdir(parents=True)
        (root / wnid(c) / f"ILSVRC2012_val_{i + 1:08d}.JPEG").write_bytes(jpeg(photo(i)))
    result, _ = scored(
        config, tmp_path, "dataset=imagefolder", f"dataset.path={root}", "model.weights=none"
    )
    assert result["split"] == "validation"


def test_several_splits_are_named_when_none_is_chosen(tmp_path):
    """A folder with train/ and val/ and no dataset.split: one line listing them."""
    from helpers import load

    for split in ("train", "val"):
        (tmp_path / split / wnid(TENCH)).mkdir(parents=True)
        (tmp_path / split / wnid(TENCH) / "a.jpg").write_bytes(jpeg(photo(0)))
    with pytest.raises(
        UserError, match=r"has splits train, validation: choose one with dataset.split"
    ):
        load(str(tmp_path))


def test_symlinked_images_belong_to_the_folder_that_lists_them(config, tmp_path, answering):
    """A class subset built from links into a shared store (a linked class folder, a linked
    file) is read through its links; ids stay paths inside the subset."""
    store = tmp_path / "store"
    for c in (SPRINGER, TENCH):
        (store / wnid(c)).mkdir(parents=True)
        for i in range(2):
            (store / wnid(c) / f"{i}.jpg").write_bytes(jpeg(photo(c + i)))
    subset = tmp_path / "subset"
    subset.mkdir()
    (subset / wnid(SPRINGER)).symlink_to(store / wnid(SPRINGER), target_is_directory=True)
    (subset / wnid(TENCH)).mkdir()
    (subset / wnid(TENCH) / "0.jpg").symlink_to(store / wnid(TENCH) / "0.jpg")
    result, frame = scored(
        config, tmp_path, "dataset=imagefolder", f"dataset.path={subset}", answering(SPRINGER)
    )
    assert frame["error"].isna().all() and result["top1"] == pytest.approx(200 / 3)
    expected = [f"{wnid(TENCH)}/0.jpg", f"{wnid(SPRINGER)}/0.jpg", f"{wnid(SPRINGER)}/1.jpg"]
    assert sorted(frame["id"]) == sorted(expected)


def real_json(tmp_path, sets, size=50_000):
    """A real.json of `size` entries: `sets` first, empty sets after."""
    path = tmp_path / "real.json"
    path.write_text(json.dumps(sets + [[]] * (size - len(sets))))
    return path


def test_imagenet_real_labels_add_real_top1(config, tmp_path, answering):
    """metrics.real_labels adds real_top1 (top-1 in the image's ReaL set; empty sets left
    out) and a real_correct column, matched by the val number of every name form: the
    release's, the hub's with its wnid, and a webdataset key without an extension."""
    import datasets

    names = [
        "ILSVRC2012_val_00000003.JPEG",
        f"ILSVRC2012_val_00000001_{wnid(TENCH)}.JPEG",
        f"val/ILSVRC2012_val_00000002_{wnid(SPRINGER)}.JPEG",
        "ILSVRC2012_val_00000004",
    ]
    rows: dict[str, list[Any]] = {
        "image": [{"bytes": jpeg(photo(i)), "path": n} for i, n in enumerate(names)]
    }
    rows["label"] = [SPRINGER, TENCH, SPRINGER, SPRINGER]
    path = tmp_path / "val.parquet"
    hub_dataset(rows, label=datasets.ClassLabel(names=categories())).to_parquet(path)
    real = real_json(tmp_path, [[TENCH], [SPRINGER, 5], [], [7]])  # entries for val 1..4
    result, _frame = scored(
        config,
        tmp_path,
        "dataset=parquet",
        f"dataset.data_files={path}",
        answering(SPRINGER),
        f"metrics.real_labels={real}",
    )
    real_correct = pq.read_table(tmp_path / "out" / claims.PREDICTIONS).column("real_correct")
    assert real_correct.to_pylist() == [
        None,  # val 3: empty set, left out
        False,  # val 1: {tench}
        True,  # val 2: {springer, 5}
        False,  # val 4: {7}
    ]
    assert result["n_real"] == 3 and result["real_top1"] == pytest.approx(100 / 3)
    assert result["top1"] == pytest.approx(75.0)


def timm_wds(root, labels: dict[int, int], shards: int = 2):
    """timm/imagenet-1k-wds's layout: imagenet1k-validation-NNNN.tar shards at the top (val
    numbers shuffled across them) of <key>.jpg + .cls + .json, the key ILSVRC2012_val_%08d,
    and a train shard beside them."""
    root.mkdir(parents=True)
    numbers = list(labels)
    for shard in range(shards):
        with tarfile.open(root / f"imagenet1k-validation-{shard:04d}.tar", "w") as tar:
            for n in numbers[shard::shards]:
                key = f"ILSVRC2012_val_{n:08d}"
                meta = {"filename": f"{key}.JPEG", "label": labels[n], "width": 80, "height": 64}
                members = {
                    "jpg": jpeg(photo(n, (80, 64))),
                    "cls": str(labels[n]).encode(),
                    "json": json.dumps(meta).encode(),
                }
                for suffix, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    with tarfile.open(root / "imagenet1k-train-0000.tar", "w") as tar:
        info = tarfile.TarInfo("n01440764_1.cls")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"0"))
    return root


def test_timm_webdataset_preset_scores_val_and_real(config, tmp_path, answering):
    """dataset=imagenet-1k-wds on a replica of the hub's shards: the validation split (not
    the train shard), cls as ImageNet ids, the key as each row's id, and ReaL matched by the
    key's val number however the shards shuffle the rows."""
    labels = {7: SPRINGER, 2: TENCH, 5: SPRINGER, 1: GOLDFISH, 3: 999}
    root = timm_wds(tmp_path / "wds", labels)
    real = real_json(tmp_path, [[0], [SPRINGER], [TENCH], [], [SPRINGER], [], [5]])
    result, frame = scored(
        config,
        tmp_path,
        "dataset=imagenet-1k-wds",
        f"dataset.path={root}",
        answering(SPRINGER),
        f"metrics.real_labels={real}",
    )
    numbers = [int(i.removeprefix("ILSVRC2012_val_")) for i in frame["id"]]
    assert sorted(numbers) == sorted(labels) and result["n_images"] == 5
    assert frame["label"].tolist() == [labels[n] for n in numbers]
    real_sets = {1: {0}, 2: {SPRINGER}, 3: {TENCH}, 5: {SPRINGER}, 7: {5}}
    expected = [SPRINGER in real_sets[n] for n in numbers]
    assert frame["real_correct"].tolist() == expected
    assert result["n_real"] == 5 and result["real_top1"] == pytest.approx(40.0)
    assert result["top1"] == pytest.approx(40.0)  # val 5 and 7 are springers
    assert result["dataset_title"] == "imagenet-val"


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([[0]] * 49_999, "it has 49999 entries, not 50,000"),
        ([[0]] * 50_001, "it has 50001 entries, not 50,000"),
        ([[True]] + [[]] * 49_999, "entry 0 is \\[true\\]"),
        ([[]] * 7 + [[1000]] + [[]] * 49_992, "entry 7 is \\[1000\\]"),
        ([[]] * 9 + [3] + [[]] * 49_990, "entry 9 is 3"),
        ({"not": "a list"}, "it holds a JSON dict"),
    ],
)
def test_a_real_file_of_another_shape_is_refused(config, tmp_path, entries, message):
    """real.json must hold exactly 50,000 lists of class ids 0..999: one entry short or over
    would shift every image onto another's labels, and true is not class 1."""
    real = tmp_path / "real.json"
    real.write_text(json.dumps(entries))
    with pytest.raises(UserError, match=f"is not a ReaL file.*{message}"):
        run.evaluate(config("model.weights=none", f"metrics.real_labels={real}"), tmp_path / "o")


def test_real_labels_refuse_rows_that_are_not_val_images(config, tmp_path):
    """ReaL labels fit only ImageNet val: a row without a val file name, a name whose wnid
    is not its row's label, or a missing file is one clear line."""
    import datasets

    real = real_json(tmp_path, [[0]] * 3)
    base = ["model.weights=none"]
    with pytest.raises(UserError, match=r"row 0 is 'chelsea.jpg', not an ImageNet val file name"):
        run.evaluate(config(*base, f"metrics.real_labels={real}"), tmp_path / "a")
    with pytest.raises(UserError, match="cannot read it"):
        run.evaluate(config(*base, f"metrics.real_labels={tmp_path / 'nope.json'}"), tmp_path / "b")
    name = f"ILSVRC2012_val_00000001_{wnid(TENCH)}.JPEG"
    rows: dict[str, list[Any]] = {
        "image": [{"bytes": jpeg(photo(0)), "path": name}],
        "label": [SPRINGER],
    }
    path = tmp_path / "val.parquet"
    hub_dataset(rows, label=datasets.ClassLabel(names=categories())).to_parquet(path)
    data = ["dataset=parquet", f"dataset.data_files={path}", f"metrics.real_labels={real}"]
    with pytest.raises(UserError, match=f"named for class {wnid(TENCH)}, but its label is 217"):
        run.evaluate(config(*base, *data), tmp_path / "c")


def test_published_numbers_are_checked_only_on_the_full_val_split(config, tmp_path):
    """The summary compares with the published numbers the model brings (torchvision's
    for its weights) only on all 50,000 val images in ImageNet-1k's label space, flagging a
    gap > 0.1; a model with none (random weights, most hub models) is never compared, and
    on whole val the summary says there is nothing to compare with."""
    from dataclasses import replace

    run.evaluate(config("model.weights=none"), tmp_path / "sample")
    unpublished = claims.read_plan(tmp_path / "sample")
    assert unpublished.model.published_ref is None
    full = unpublished.changed(
        weights="IMAGENET1K_V1",
        published_ref=(56.522, 79.066),
        published_by="torchvision IMAGENET1K_V1",
        label_space="imagenet-1k",
        dataset_rows=50_000,
        limit=None,
        split="validation",
    )
    scores = metrics.Scores(50_000, 50_000, 0, 50_000, top1=56.522, top5=79.066)
    line = metrics.published_check(full, metrics.with_published(full, scores))
    expected = "published (torchvision IMAGENET1K_V1): top-1 56.522, top-5 79.066"
    assert line is not None and f"{expected}; this run +0.000 / +0.000" in line
    assert "WARNING" not in line
    off = metrics.with_published(full, replace(scores, top1=56.3))
    assert "WARNING" in str(metrics.published_check(full, off))
    for plan, counted in (
        (full, replace(scores, n_images=49_999)),
        (full.changed(dataset_rows=100_000), scores),
        (full.changed(label_space="subset:200"), scores),
        (full.changed(limit=10), scores),
    ):
        checked = metrics.with_published(plan, counted)
        assert checked.published_top1 is None and metrics.published_check(plan, checked) is None
    bare = full.changed(published_ref=None, model="hf:some/model")
    checked = metrics.with_published(bare, scores)
    assert checked.published_top1 is None
    assert str(metrics.published_check(bare, checked)).startswith("published: none for hf:")

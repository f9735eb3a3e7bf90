"""Label spaces: every layout real ImageNet variants use, scored against the right classes.

Checkpoints here answer one known class (a last layer of zeros with one large bias), so
exactly the images of that class must count as correct.
"""

from __future__ import annotations

import io
import json
import tarfile
from importlib.resources import files

import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers import categories, hub_dataset, jpeg, photo, wnid

from pipeline import labels, metrics, run, rundir
from pipeline.config import UserError
from pipeline.labels import LabelSpace, class_id, imagenet_classes

SPRINGER, GOLDFISH, TENCH = 217, 1, 0
IMAGENETTE = [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]  # tench, English springer, ...


def folder_of(tmp_path, names: list[str], per_class: int = 2, empty: list[str] = ()):
    """An image folder: per_class images in a folder per name (plus empty folders)."""
    root = tmp_path / "folder"
    for k, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            (root / name / f"{k}_{j}.jpg").write_bytes(jpeg(photo(k * per_class + j, (64, 48))))
    for name in empty:
        (root / name).mkdir(parents=True)
    return root


def scored(config, tmp_path, *overrides):
    result = run.evaluate(config(*overrides, "progress=false"), tmp_path / "out")
    frame = pd.read_parquet(tmp_path / "out" / rundir.PREDICTIONS)
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


def test_a_partial_imagenet_folder_keeps_1000_classes(config, tmp_path, answering):
    """A copy of ImageNet's val folder with empty class folders is still ImageNet-1k
    (torchvision's ImageFolder counts empty folders; datasets' positions do not)."""
    present = [wnid(c) for c in (TENCH, GOLDFISH, SPRINGER)]
    empty = [w for w in imagenet_classes()[0] if w not in present]
    root = folder_of(tmp_path, present, empty=empty)
    result, frame = scored(
        config, tmp_path, "dataset=imagefolder", f"dataset.path={root}", answering(GOLDFISH)
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
    rows = {"image": [{"bytes": jpeg(photo(i)), "path": f"{i}.jpg"} for i in range(8)]}
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

    rows = {"image": [{"bytes": jpeg(photo(i)), "path": f"{i}.jpg"} for i in range(4)]}
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


def webdataset(root, labels: list[int], image_key: str = "webp"):
    """clip-benchmark's layout: test/N.tar shards of <key>.cls + <key>.<image>, classnames.txt."""
    (root / "test").mkdir(parents=True)
    with tarfile.open(root / "test" / "0.tar", "w") as tar:
        for i, label in enumerate(labels):
            buf = io.BytesIO()
            photo(i, (80, 64)).save(buf, "WEBP" if image_key == "webp" else "JPEG")
            for suffix, data in (("cls", str(label).encode()), (image_key, buf.getvalue())):
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


def test_imagenette_config_on_a_replica_of_the_parquet_export(config, tmp_path, answering):
    """frgfm/imagenette's Parquet export: 320px/validation/0000.parquet, ClassLabel names
    that are torchvision's ('English springer'); the config finds it through data_dir."""
    import datasets

    rows = {"image": [{"bytes": jpeg(photo(i)), "path": f"{i}.JPEG"} for i in range(10)]}
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

    rows = {"image": [{"bytes": jpeg(photo(i)), "path": f"{i}.jpg"} for i in range(2)]}
    rows["label"] = [0, 1]
    path = tmp_path / "bad.parquet"
    hub_dataset(rows, label=make(datasets)).to_parquet(path)
    monkeypatch.setattr(run.model, "load_model", lambda **k: pytest.fail("loaded the model"))
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

    rows = {"image": [{"bytes": jpeg(photo(i)), "path": f"{i}.jpg"} for i in range(3)]}
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


def test_the_full_list_of_names_is_the_identity_despite_duplicates():
    """All 1000 ILSVRC long names in order are ids 0..999, though 'crane' is there twice."""
    assert labels.map_names(list(imagenet_classes()[1]), "names") == tuple(range(1000))
    assert labels.map_names(categories(), "names") == tuple(range(1000))
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


def real_json(tmp_path, sets):
    path = tmp_path / "real.json"
    path.write_text(json.dumps(sets))
    return path


def test_imagenet_real_labels_add_real_top1(config, tmp_path, answering):
    """metrics.real_labels adds real_top1 (top-1 in the image's ReaL set; empty sets left
    out) and a real_correct column, matched by val file name."""
    import datasets

    names = [f"ILSVRC2012_val_{k:08d}.JPEG" for k in (3, 1, 2, 4)]
    rows = {"image": [{"bytes": jpeg(photo(i)), "path": n} for i, n in enumerate(names)]}
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
    real_correct = pq.read_table(tmp_path / "out" / rundir.PREDICTIONS).column("real_correct")
    assert real_correct.to_pylist() == [
        None,  # val 3: empty set, left out
        False,  # val 1: {tench}
        True,  # val 2: {springer, 5}
        False,  # val 4: {7}
    ]
    assert result["n_real"] == 3 and result["real_top1"] == pytest.approx(100 / 3)
    assert result["top1"] == pytest.approx(75.0)


def test_real_labels_refuse_rows_that_are_not_val_images(config, tmp_path):
    """ReaL labels fit only ImageNet val: a row without a val file name, a missing file or a
    file of another shape is one clear line."""
    real = real_json(tmp_path, [[0]] * 3)
    base = ["model.weights=none"]
    with pytest.raises(UserError, match=r"row 0 is 'chelsea.jpg', not an ImageNet val file name"):
        run.evaluate(config(*base, f"metrics.real_labels={real}"), tmp_path / "a")
    with pytest.raises(UserError, match="cannot read it"):
        run.evaluate(config(*base, f"metrics.real_labels={tmp_path / 'nope.json'}"), tmp_path / "b")
    real.write_text('{"not": "a list"}')
    with pytest.raises(UserError, match="is not a ReaL file"):
        run.evaluate(config(*base, f"metrics.real_labels={real}"), tmp_path / "c")


def test_published_numbers_are_checked_only_on_the_full_val_split():
    """The summary compares with torchvision's published numbers only for torchvision's
    weights on all 50,000 val images in ImageNet-1k's label space, flagging a gap > 0.1."""
    row = {
        "model": "alexnet",
        "weights": "IMAGENET1K_V1",
        "label_space": "imagenet-1k",
        "n_images": 50_000,
        "n_scored": 50_000,
        "n_labeled": 50_000,
        "limit": None,
        "shard": "0/1",
        "split": "validation",
        "top1": 56.522,
        "top5": 79.066,
    }
    line = metrics.published_check(row)
    assert "top-1 56.522, top-5 79.066; this run +0.000 / +0.000" in line and "WARNING" not in line
    assert "WARNING" in metrics.published_check(row | {"top1": 56.3})
    for other in (
        {"n_images": 49_999},
        {"weights": "none"},
        {"label_space": "subset:200"},
        {"limit": 10},
    ):
        assert metrics.published_check(row | other) is None

"""The data stage: loading splits, decoding every image mode, the exact preprocessing."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import LABELS, hub_dataset, jpeg, load, photo
from PIL import Image
from torchvision.models import AlexNet_Weights

from pipeline import run
from pipeline.data import folders, images, loader, source, transforms
from pipeline.data.images import Roots
from pipeline.data.labels import LabelSpace
from pipeline.errors import UserError
from pipeline.runs import claims

IDENTITY = LabelSpace("imagenet-1k", "declared", "int64")

WEIGHTS = AlexNet_Weights.IMAGENET1K_V1


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def test_preprocess_matches_weights_transforms_exactly(images):
    """uint8 crop in the worker + normalize after the copy == weights.transforms(), bit for bit."""
    pre = transforms.Preprocess.from_transforms(WEIGHTS.transforms())
    for image in images[:4]:
        for memory_format in (torch.contiguous_format, torch.channels_last):
            ours = pre.normalize(pre.crop(image)[None], memory_format=memory_format)[0]
            assert torch.equal(ours, WEIGHTS.transforms()(image))


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("L", "PNG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("RGB", "WEBP")],
)
def test_every_mode_decodes_to_rgb_like_pil_convert(mode, fmt):
    """Grayscale, CMYK, alpha and palette images decode to RGB as PIL's convert('RGB') does."""
    source = photo(0).convert(mode)
    raw = encoded(source, fmt)
    got = images.to_rgb(images.open_image(raw))
    assert got.mode == "RGB"
    assert np.array_equal(np.asarray(got), np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")))


def test_16_bit_images_are_scaled_not_clipped():
    """A 16-bit grayscale PNG maps to 8 bits by its high byte instead of saturating at 255."""
    values = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    raw = encoded(Image.fromarray(values), "PNG")
    got = np.asarray(images.to_rgb(images.open_image(raw)))
    assert got[..., 0].max() == values.max() >> 8
    assert np.array_equal(got[..., 0], got[..., 2])


def test_imagefolder_loads_with_paths_as_ids(imagefolder):
    """A plain folder of class subfolders loads; ids are file paths relative to it."""
    split = load(str(imagefolder))
    assert split.num_rows == len(LABELS) and split.name == "train"
    pre = transforms.Preprocess.from_transforms(WEIGHTS.transforms())
    ds = loader.EvalDataset(
        split.table,
        positions=range(split.num_rows),
        offset=0,
        image_column="image",
        label_column="label",
        id_column=None,
        labels=IDENTITY,
        preprocess=pre,
        roots=split.roots,
    )
    item = ds[0]
    assert item["error"] is None and item["image"].shape == (3, 224, 224)
    assert item["id"] == "n01443537/img01.jpg" and item["dataset_label"] == 0  # goldfish


def test_parquet_slice_and_save_to_disk_agree(parquet_file, saved_dir):
    """`split[a:b]` slicing works for Parquet files and for save_to_disk folders alike."""
    a = load("parquet", data_files=str(parquet_file), split="train[2:5]")
    b = load(str(saved_dir), split="validation[2:5]")
    assert a.num_rows == b.num_rows == 3
    assert list(a.table["label"]) == list(b.table["label"]) == LABELS[2:5]


def test_missing_column_lists_the_columns(parquet_file):
    """A wrong column name fails with one line listing the columns present."""
    with pytest.raises(UserError, match=r"Column 'img'.*columns present: image, label"):
        load("parquet", data_files=str(parquet_file), image_column="img")


def test_unknown_split_in_saved_dataset_names_the_splits(saved_dir):
    """Asking a save_to_disk DatasetDict for a split it lacks names the splits it has."""
    with pytest.raises(UserError, match="splits: validation"):
        load(str(saved_dir), split="test")


def test_missing_dataset_is_one_clear_error(tmp_path):
    """A dataset that cannot be found is a UserError naming the path."""
    with pytest.raises(UserError, match="Could not load dataset"):
        load(str(tmp_path / "nope"))


def test_streaming_yields_the_same_batches_as_map_style(parquet_file):
    """A streamed split, read in chunks, gives the same rows in the same order as a loaded one."""
    pre = transforms.Preprocess.from_transforms(WEIGHTS.transforms())
    common: dict[str, Any] = dict(
        batch_size=5,
        num_workers=0,
        pin_memory=False,
        chunk_rows=4,
        labels=IDENTITY,
        preprocess=pre,
    )
    out = []
    for streaming in (False, True):
        split = load("parquet", data_files=str(parquet_file), streaming=streaming)
        batches = list(loader.iter_batches(split, todo=[(1, 11)], **common))
        out.append(
            (
                torch.cat([b.index for b in batches]).tolist(),
                torch.cat([b.image for b in batches]),
            )
        )
    assert out[0][0] == out[1][0] == list(range(1, 11))
    assert torch.equal(out[0][1], out[1][1])


def test_path_outside_the_dataset_is_not_opened(tmp_path):
    """An image whose stored path points outside the dataset's folders is an error, not a read."""
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(jpeg(photo(1)))
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "link.jpg").symlink_to(secret)
    confined = Roots(confined=(str(tmp_path / "ds"),))
    for path in (secret, tmp_path / "ds" / "link.jpg", tmp_path / "ds" / ".." / "secret.jpg"):
        with pytest.raises(ValueError, match="outside the dataset"):
            images.read_bytes({"bytes": None, "path": str(path)}, roots=confined)
    inside = images.open_image(
        images.read_bytes({"bytes": None, "path": str(secret)}, roots=Roots((str(tmp_path),)))
    )
    assert inside.size == (180, 140)


@pytest.mark.parametrize(
    "layout",
    [
        ["cat/a.jpg", "dog/b.jpg", ".cache/c.jpg", "__pycache__/d.jpg", "dog/.e.jpg"],
        ["train/cat/a.jpg", "val/cat/b.jpg", "test/dog/c.jpg", "README.txt"],
        ["data/train-00000-of-00001.parquet", "data/validation-00000-of-00001.parquet"],
        ["my_train_set.csv", "my-test.csv", "dataset_info.json"],
        ["x/training/a.png", "x/dev/b.png", ".hidden/train/c.png"],
        ["a.csv", "nested/deeper/b.csv"],
    ],
)
def test_folder_data_files_match_datasets_own_search(tmp_path, layout):
    """One walk finds the very files per split, in the same order and with the same
    modification times (its cache key), that `datasets` finds with its ~60 globs."""
    import datasets.data_files as df

    for name in layout:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    ours = folders.data_files(str(tmp_path))
    patterns = df.get_data_patterns(str(tmp_path))
    theirs = df.DataFilesDict.from_patterns(patterns, base_path=str(tmp_path))
    assert list(ours) == [str(split) for split in theirs]
    for split in theirs:
        assert ours[str(split)] == theirs[split]
        assert ours[str(split)].origin_metadata == theirs[split].origin_metadata


def test_folder_without_data_files_is_left_to_datasets(tmp_path):
    """A folder whose only files are hidden has no data files of its own: the split search
    is left to `datasets` (which then says what is wrong)."""
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "a.jpg").write_bytes(b"x")
    assert folders.data_files(str(tmp_path)) is None


def test_relative_image_paths_resolve_against_the_dataset_folder(config, tmp_path, monkeypatch):
    """A save_to_disk dataset whose image column holds relative paths is read relative to
    its own folder, wherever the run starts: every row is scored, ids are those paths."""
    import datasets

    saved = tmp_path / "saved"
    (saved / "imgs").mkdir(parents=True)
    for i in range(3):
        (saved / "imgs" / f"{i}.jpg").write_bytes(jpeg(photo(i)))
    rows: dict[str, list[Any]] = {
        "image": [f"imgs/{i}.jpg" for i in range(3)],
        "label": [0, 1, 2],
    }  # plain strings
    features = datasets.Features(
        {"image": datasets.Value("string"), "label": datasets.Value("int64")}
    )
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(saved)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    data = ["dataset=disk", f"dataset.path={saved}", "dataset.classes=imagenet-1k"]
    result = run.evaluate(config(*data, "model.weights=none"), tmp_path / "out")
    frame = pd.read_parquet(tmp_path / "out" / claims.PREDICTIONS)
    assert result.row["n_errors"] == 0 and frame["id"].tolist() == rows["image"]


def test_absolute_paths_outside_the_dataset_need_dataset_image_roots(config, tmp_path):
    """An absolute image path outside the dataset's folders is an error row by default;
    dataset.image_roots names the folders such paths may lead into."""
    import datasets

    shared = tmp_path / "shared"
    shared.mkdir()
    for i in range(2):
        (shared / f"{i}.jpg").write_bytes(jpeg(photo(i)))
    rows: dict[str, list[Any]] = {
        "image": [{"bytes": None, "path": str(shared / f"{i}.jpg")} for i in range(2)]
    }
    rows["label"] = [0, 1]
    path = tmp_path / "data" / "val.parquet"
    path.parent.mkdir()
    hub_dataset(rows, label=datasets.Value("int64")).to_parquet(path)
    data = ["dataset=parquet", f"dataset.data_files={path}", "dataset.classes=imagenet-1k"]
    with pytest.raises(UserError, match="none of its 2 images could be scored"):
        run.evaluate(config(*data, "model.weights=none"), tmp_path / "a")
    errors = pd.read_parquet(tmp_path / "a" / claims.PREDICTIONS)["error"].tolist()
    assert errors == ["path outside the dataset (dataset.image_roots allows a folder)"] * 2
    allowed = config(*data, "model.weights=none", f"dataset.image_roots=[{shared}]")
    assert run.evaluate(allowed, tmp_path / "b").row["n_errors"] == 0


@pytest.mark.parametrize("split", ["validation", "validation[:10]", "train+validation"])
def test_a_split_the_data_lacks_is_refused_naming_its_splits(imagefolder, split):
    """dataset.split naming a split the data lacks is one line naming the splits it has,
    and, when there is only one, that leaving dataset.split unset uses it."""
    with pytest.raises(
        UserError,
        match=r"has no split 'validation'; its splits: train; leaving dataset.split unset "
        r"uses its only split, 'train'",
    ):
        load(str(imagefolder), split=split)


def _tree(root, names: list[str]) -> None:
    from helpers import jpeg, photo

    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(jpeg(photo(i, (40, 30))))


@pytest.mark.parametrize(
    "names",
    [
        # EliSchwartz/imagenet-sample-images' names: one of 1000 carries a split word
        [
            "n02917067/n02917067_bullet_train.JPEG",
            "n01440764/n01440764_tench.JPEG",
            "n01443537/n01443537_goldfish.JPEG",
        ],
        ["bullet_train/1.jpg", "tench/2.jpg", "goldfish/3.jpg"],  # class-name folders
        ["train/1.jpg", "apple/2.jpg", "pear/3.jpg"],  # a class named train (CIFAR-100's)
        ["n01440764_tench.JPEG", "n02917067_bullet_train.JPEG", "x.JPEG"],  # flat
    ],
    ids=["file-name", "class-folder", "class-named-train", "flat-file-name"],
)
def test_a_split_word_in_a_class_folder_or_its_files_is_no_split(tmp_path, names):
    """A split word in an image's file name inside a class folder, or in a class folder's
    name, makes no split (`datasets` made one of it and dropped the rest): every image is
    in the folder's one split."""
    _tree(tmp_path, names)
    found = folders.data_files(str(tmp_path))
    assert {k: len(v) for k, v in found.items()} == {"train": 3}


def test_split_words_that_name_every_image_still_split(tmp_path):
    """Split folders above the class folders, split-named folders holding the images, and
    file names that all carry a split word (ImageNet's ILSVRC2012_val_*) still make
    splits, as `datasets` makes them."""
    _tree(tmp_path / "a", ["val/n01/1.jpg", "train/n01/2.jpg", "train/n02/3.jpg"])
    _tree(tmp_path / "b", ["train/1.jpg", "test/2.jpg"])
    _tree(tmp_path / "c", ["n01/ILSVRC2012_val_00000001.JPEG", "n02/ILSVRC2012_val_00000002.JPEG"])
    _tree(tmp_path / "d", ["train_1.jpg", "test_1.jpg"])
    for name, expected in (("a", {"train": 2, "validation": 1}), ("b", {"train": 1, "test": 1}),
                           ("c", {"validation": 2}), ("d", {"train": 1, "test": 1})):  # fmt: skip
        found = folders.data_files(str(tmp_path / name))
        assert {k: len(v) for k, v in found.items()} == expected


def test_images_outside_the_split_folders_are_refused_by_name(tmp_path):
    """Split folders beside a folder that names no split: the images in none of them are
    named in one line, instead of dropped."""
    _tree(tmp_path, ["val/n01/1.jpg", "val/n02/2.jpg", "extra/n03/3.jpg"])
    with pytest.raises(
        UserError,
        match=r"validation \(2 files\).* 1 image\(s\) are in none of them: extra/n03/3.jpg",
    ):
        folders.data_files(str(tmp_path))


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (
            ["top.jpg", "cat/1.jpg", "dog/2.jpg"],
            r"at different depths: 1 directly in it \(top.jpg, \.\.\.\); 2 in folders",
        ),
        (["a.jpg", "b.jpg"], r"holds its images directly, not in class folders"),
        (["cat/a.jpg", "cat/b.jpg"], r"every image is in one folder \(cat/\)"),
    ],
    ids=["mixed-depths", "flat", "one-folder"],
)
def test_an_image_folder_without_labels_says_what_its_layout_is(tmp_path, names, message):
    """An image folder whose images `datasets` gives no labels (mixed depths, no class
    folders, one class folder) is one line describing the layout, not 'Column label not in
    the dataset'."""
    _tree(tmp_path / "d", names)
    with pytest.raises(UserError, match=message):
        source.load_split(source.Source(str(tmp_path / "d")))

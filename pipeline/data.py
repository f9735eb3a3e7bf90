"""Hugging Face split -> DataLoader of uint8 crops, decoded in the workers.

The image column is cast to `Image(decode=False)`, so workers receive the
encoded bytes (or a file path) and decoding is ours (transforms.py): an
undecodable image becomes a row with an `error` instead of a crash. Each
item carries the dataset's own label and the ImageNet-1k id it means
(labels.py), decided before inference.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline import stop
from pipeline.config import UserError, plain
from pipeline.labels import LabelSpace
from pipeline.transforms import Encoded, Preprocess, Roots, error_reason

SAVED_DATASET_MARKERS = ("dataset_dict.json", "state.json")
FOLDER_BUILDERS = ("imagefolder",)  # builders whose rows are files found by walking a folder

log = logging.getLogger(__name__)

Todo = list[tuple[int, int | None]]  # row ranges [start, stop) to score; None: to the end


# ---------------------------------------------------------------- the split


@dataclass
class Split:
    """A loaded split: a map-style HF Dataset, or an IterableDataset when streaming."""

    table: Any  # datasets.Dataset | datasets.IterableDataset, image column not decoded
    name: str  # the split actually loaded (found when dataset.split was null)
    num_rows: int | None  # None when streaming
    roots: Roots  # where image paths inside the dataset may lead
    image_column: str  # the configured one, or the one found for "auto"
    builder: str | None  # datasets' builder: imagefolder, parquet, webdataset, ...
    fingerprint: str | None  # datasets' fingerprint (None when streaming)


def load_split(
    *,
    path: str,
    name: str | None,
    split: str | None,
    revision: str | None,
    data_dir: str | None,
    data_files: Any,
    streaming: bool,
    image_column: str,
    label_column: str | None,
    id_column: str | None,
) -> Split:
    """Load one split with `datasets`, from the hub, local files or a `save_to_disk` folder;
    with split=None, the data's only split."""
    import datasets

    try:
        if os.path.isdir(path) and any(
            os.path.exists(os.path.join(path, m)) for m in SAVED_DATASET_MARKERS
        ):
            table = _load_saved(path, split)
        else:
            builder = _builder(path, name, revision, data_dir, data_files)
            if split is None:
                available = list(builder.config.data_files or builder.info.splits or [])
                split = choose_split(available, path)
            if streaming:
                table = builder.as_streaming_dataset(split=split)
            else:
                builder.download_and_prepare()
                table = builder.as_dataset(split=split)
    except UserError:
        raise
    except Exception as e:  # datasets raises many types; all mean "could not load"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "reach" in reason:  # no network, or offline mode without a cached copy
            reason += "; offline, use a cached copy (HF_DATASETS_OFFLINE=1) or a local path"
        raise UserError(f"Could not load dataset '{path}' split '{split}': {reason}") from e
    features = table.features or {}
    image_column = _image_column(features, image_column)
    for role, column in (("label", label_column), ("id", id_column)):
        if column is not None and column not in features:
            raise UserError(
                f"Column '{column}' (dataset.{role}_column) not in the dataset; "
                f"columns present: {', '.join(features)}"
            )
    builder = getattr(table.info, "builder_name", None)
    fingerprint = None if streaming else getattr(table, "_fingerprint", None)
    table = table.cast_column(image_column, datasets.Image(decode=False))
    return Split(
        table=table,
        name=str(table.split) if getattr(table, "split", None) else (split or ""),
        num_rows=None if streaming else len(table),
        roots=_roots(path, data_dir, data_files, walked=builder in FOLDER_BUILDERS),
        image_column=image_column,
        builder=builder,
        fingerprint=fingerprint,
    )


def _builder(
    path: str, name: str | None, revision: str | None, data_dir: str | None, data_files: Any
) -> Any:
    """`load_dataset`'s first step (its second is in load_split): between the two, a split
    name that was not given can be found."""
    import datasets

    files = plain(data_files)
    if files is None and name is None and _plain_folder(path):
        files = _folder_files(os.path.join(path, data_dir or ""))
    return datasets.load_dataset_builder(
        path, name, revision=revision, data_dir=data_dir, data_files=files
    )


def choose_split(available: Sequence[str], where: str) -> str:
    """The only split there is; with several, one line naming them."""
    if len(available) == 1:
        return str(available[0])
    if not available:
        raise UserError(f"{where} has no splits; set dataset.split")
    raise UserError(
        f"{where} has splits {', '.join(map(str, available))}: choose one with dataset.split=..."
    )


def _load_saved(path: str, split: str | None) -> Any:
    """A `save_to_disk` folder: pick the split of a DatasetDict, then apply a slice."""
    import datasets

    loaded = datasets.load_from_disk(path)
    if split is None:
        if not isinstance(loaded, datasets.DatasetDict):
            return loaded
        split = choose_split(list(loaded), path)
    instruction = datasets.ReadInstruction.from_spec(split)
    names = [ins.splitname for ins in instruction._relative_instructions]
    if not isinstance(loaded, datasets.DatasetDict):
        # a single saved Dataset has no split names: only the slice applies
        loaded = datasets.DatasetDict({name: loaded for name in names})
    unknown = set(names) - set(loaded)
    if unknown:
        raise UserError(f"Unknown split '{split}' in {path}; splits: {', '.join(loaded)}")
    sizes = {name: len(ds) for name, ds in loaded.items()}
    parts = [
        loaded[a.splitname].select(range(a.from_, a.to)) for a in instruction.to_absolute(sizes)
    ]
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def _image_column(features: Any, configured: str) -> str:
    """The configured column, or for "auto" the dataset's only image column (webdataset
    shards name it after the file type: jpg, webp, png)."""
    import datasets

    if configured != "auto":
        if configured not in features:
            raise UserError(
                f"Column '{configured}' (dataset.image_column) not in the dataset; "
                f"columns present: {', '.join(features)}"
            )
        return configured
    images = [c for c, f in features.items() if isinstance(f, datasets.Image)]
    if len(images) == 1:
        return images[0]
    found = f"image columns {', '.join(images)}" if images else "no image column"
    raise UserError(
        f"dataset.image_column=auto found {found}; columns present: {', '.join(features)}; "
        f"set dataset.image_column"
    )


def _plain_folder(path: str) -> bool:
    """A local folder of data files, without a README whose YAML could name its own files."""
    return os.path.isdir(path) and not os.path.exists(os.path.join(path, "README.md"))


def _folder_files(folder: str) -> Any:
    """A local folder's data files by split, found with one directory walk, as the
    `DataFilesDict` that `datasets` would build itself (None: let it search).

    `load_dataset` finds a folder's splits by globbing some 60 candidate patterns,
    each a full walk of the tree, then resolves the chosen patterns twice and stats
    every file through a thread pool: 15 s at every start for ImageNet's 50,000 val
    files. This runs `datasets`' own split search over one walk, with its rules
    (hidden and `__special__` folders, hidden files and its ignored names left out),
    and hands over the files with the modification times `datasets` keys its cache on.
    The walk follows linked folders, which `datasets`' glob does not enter (a class
    subset linked into a shared ImageNet copy would silently lose those classes).
    None when this `datasets` lacks the helpers or the folder has no data files:
    `load_dataset` then searches (and reports) by itself.
    """
    import datasets.data_files as df
    from fsspec.utils import glob_translate

    search = getattr(df, "_get_data_files_patterns", None)
    if search is None or not hasattr(df, "DataFilesList"):
        return None
    files, mtimes = [], {}
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
        rel = os.path.relpath(root, folder).replace(os.sep, "/")
        for name in names:
            full = os.path.join(root, name)
            if name.startswith(".") or name in df.FILES_TO_IGNORE or not os.path.isfile(full):
                continue
            files.append(name if rel == "." else f"{rel}/{name}")
            mtimes[files[-1]] = str(os.stat(full).st_mtime)
    files.sort()

    def matches(pattern: str) -> list[str]:
        regex = re.compile(glob_translate(pattern))
        return [f for f in files if regex.match(f)]

    def resolve(pattern: str) -> list[str]:
        matched = matches(pattern)
        if not matched:
            raise FileNotFoundError(pattern)
        return matched

    try:
        splits = search(resolve)
    except Exception as e:  # no data files, or another `datasets`: let it search itself
        log.debug("split patterns of %s left to datasets: %s", folder, e)
        return None
    base = os.path.abspath(folder)
    out = df.DataFilesDict()
    for split, patterns in splits.items():
        chosen = list(dict.fromkeys(f for p in patterns for f in matches(p)))
        paths = [os.path.join(base, f).replace(os.sep, "/") for f in chosen]
        out[str(split)] = df.DataFilesList(paths, [(mtimes[f],) for f in chosen])
    return out


def _roots(path: str, data_dir: str | None, data_files: Any, *, walked: bool) -> Roots:
    """Where image paths stored in the dataset may lead: its own folders and the HF cache.
    For a folder of image files the paths come from walking it, so links found there are
    part of the dataset (a class subset linked into a shared ImageNet copy)."""
    import datasets

    own = [p for p in (path, data_dir) if p and os.path.isdir(p)]
    files = plain(data_files)
    if isinstance(files, dict):
        files = [f for v in files.values() for f in ([v] if isinstance(v, str) else v)]
    for f in [files] if isinstance(files, str) else files or []:
        own.append(os.path.dirname(os.path.abspath(f)))
    confined = [datasets.config.HF_DATASETS_CACHE, *own]
    return Roots(
        confined=tuple(os.path.realpath(r) for r in confined),
        walked=tuple(os.path.abspath(r) for r in own) if walked else (),
        own=tuple(os.path.realpath(r) for r in own),
    )


# ------------------------------------------------------- what the labels are


def folder_names(split: Split) -> list[str] | None:
    """All class folders of an image folder, empty ones included (datasets' ClassLabel
    leaves those out; torchvision's ImageFolder does not). None for other layouts."""
    if split.builder not in FOLDER_BUILDERS or split.num_rows is None:
        return None
    paths = split.table.with_format("arrow")[split.image_column].combine_chunks().field("path")
    parents = {os.path.dirname(os.path.dirname(p)) for p in paths.to_pylist() if p}
    if len(parents) != 1:
        return None
    (top,) = parents
    return sorted(
        e.name for e in os.scandir(top) if e.is_dir() and not e.name.startswith((".", "__"))
    )


def string_values(split: Split, column: str | None) -> list[str] | None:
    """The distinct values of a string label column (None when streaming or not strings)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column is None or split.num_rows is None:
        return None
    values = split.table.with_format("arrow")[column]
    if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
        return None
    return [v for v in pc.unique(values).to_pylist() if v is not None]


def row_ids(split: Split, positions: np.ndarray, id_column: str | None) -> list[str | None]:
    """The id (or image file path) of rows, read without decoding any image."""
    if id_column:
        return split.table.with_format("arrow")[id_column].take(positions).to_pylist()
    images = split.table.with_format("arrow")[split.image_column].take(positions)
    return images.combine_chunks().field("path").to_pylist()


def _check_labels(
    table: Any, labels: LabelSpace, column: str | None, positions: Sequence[int], offset: int
) -> None:
    """Refuse, before these rows are scored, a label the label space does not cover."""
    if column is None or not len(positions):
        return
    values = table.with_format("arrow")[column].take(np.asarray(positions)).to_pylist()
    labels.check(values, [offset + int(p) for p in positions])


# -------------------------------------------------------------- the dataset


class EvalDataset(torch.utils.data.Dataset):
    """Rows `positions` of an HF table as items
    {index, id, dataset_label, label, image (uint8) | None, error}; index = offset + position."""

    def __init__(
        self,
        table: Any,
        *,
        positions: Sequence[int],
        offset: int,
        image_column: str,
        label_column: str | None,
        id_column: str | None,
        labels: LabelSpace,
        preprocess: Preprocess,
        roots: Roots,
    ) -> None:
        self.table, self.positions, self.offset = table, positions, offset
        self.image_column, self.label_column, self.id_column = image_column, label_column, id_column
        self.labels, self.preprocess, self.roots = labels, preprocess, roots

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, items: list[int]) -> list[dict[str, Any]]:
        columns = [c for c in (self.image_column, self.label_column, self.id_column) if c]
        batch = self.table.select_columns(columns)[[int(self.positions[i]) for i in items]]
        return [self._item(self.positions[i], batch, j) for j, i in enumerate(items)]

    def _item(self, position: int, batch: dict[str, list], j: int) -> dict[str, Any]:
        image = batch[self.image_column][j]
        raw = batch[self.label_column][j] if self.label_column else None
        item: dict[str, Any] = {
            "index": self.offset + int(position),
            "id": self._id(batch, j, image),
            "dataset_label": raw,
            "label": self.labels.to_imagenet(raw),
            "image": None,
            "error": None,
        }
        try:
            item["image"] = self.preprocess(image, self.roots)
        except Exception as e:  # any decoder failure is a data fault, recorded per row
            item["error"] = error_reason(e)
        return item

    def _id(self, batch: dict[str, list], j: int, image: Any) -> str | None:
        if self.id_column:
            value = batch[self.id_column][j]
            return None if value is None else str(value)
        path = image.get("path") if isinstance(image, dict) else None
        return self.roots.relative(path) if path else path


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the crops of the decodable items; keep every item's metadata, in order. JPEGs
    left encoded (backend=device) go in `encoded`, their rows in `encoded_rows`."""
    ok = torch.tensor([it["image"] is not None for it in items], dtype=torch.bool)
    crops = [it["image"] for it in items if isinstance(it["image"], torch.Tensor)]
    encoded = [(j, it["image"]) for j, it in enumerate(items) if isinstance(it["image"], Encoded)]
    return {
        "index": torch.tensor([it["index"] for it in items], dtype=torch.int64),
        "id": [it["id"] for it in items],
        "dataset_label": [it["dataset_label"] for it in items],
        "label": [it["label"] for it in items],
        "error": [it["error"] for it in items],
        "ok": ok,
        "image": _stack_channels_last(crops),
        "encoded": [e for _, e in encoded],
        "encoded_rows": [j for j, _ in encoded],
    }


def _stack_channels_last(crops: list[torch.Tensor]) -> torch.Tensor:
    """(3, H, W) crops -> (N, 3, H, W) stored channels-last, the layout the model runs in: PIL's
    pixels are already HWC (a plain copy), and the float conversion needs no transpose."""
    if not crops:
        return torch.empty(0, dtype=torch.uint8)
    return torch.stack([c.permute(1, 2, 0) for c in crops]).permute(0, 3, 1, 2)


def make_loader(
    dataset: EvalDataset, *, batch_size: int, num_workers: int, pin_memory: bool
) -> DataLoader:
    """In-order, multi-worker DataLoader of collated batches."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers else None,
        worker_init_fn=_worker_init,
    )


def _worker_init(worker_id: int) -> None:
    stop.ignore_in_worker()


def positions_of(todo: Todo, num_rows: int) -> np.ndarray:
    """The row numbers of the ranges to score, in order, clipped to the split."""
    ranges = [np.arange(a, num_rows if b is None else min(b, num_rows)) for a, b in todo]
    return np.concatenate(ranges) if ranges else np.zeros(0, np.int64)


def iter_batches(
    split: Split,
    *,
    todo: Todo,
    batch_size: int,
    num_workers: int,
    pin_memory: bool,
    chunk_rows: int,
    labels: LabelSpace,
    **item_args: Any,
) -> Generator[dict[str, Any], None, None]:
    """Batches of the rows in `todo`, in split order.

    A map-style split feeds one DataLoader. A streamed split is read in chunks
    of `chunk_rows` raw (undecoded) rows, each decoded by its own DataLoader,
    so workers decode while memory stays at one chunk. Labels are checked
    before the rows they belong to are scored. The DataLoader's workers are
    shut down when the iteration ends, however it ends.
    """
    if split.num_rows is not None:
        chunks: Iterator[tuple[int, Any, Any]] = iter(
            [(0, split.table, positions_of(todo, split.num_rows))]
        )
    else:
        chunks = _stream_chunks(split.table, todo=todo, chunk_rows=chunk_rows)
    for offset, table, positions in chunks:
        _check_labels(table, labels, item_args["label_column"], positions, offset)
        dataset = EvalDataset(
            table,
            positions=positions,
            offset=offset,
            roots=split.roots,
            image_column=split.image_column,
            labels=labels,
            **item_args,
        )
        loader = iter(
            make_loader(
                dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory
            )
        )
        try:
            yield from loader
        finally:
            del loader  # stops its workers now, not at interpreter exit


def _stream_chunks(table: Any, *, todo: Todo, chunk_rows: int) -> Iterator[tuple[int, Any, Any]]:
    """(first index, in-memory Dataset, positions in it to score) for consecutive chunks of
    a streamed split, from the first row to score to the last."""
    import datasets

    if not todo:
        return
    start, stop_row = todo[0][0], todo[-1][1]
    stream = table.skip(start) if start else table
    if stop_row is not None:
        stream = stream.take(stop_row - start)
    info = datasets.DatasetInfo(features=table.features)
    first = start
    for raw in stream.with_format("arrow").iter(batch_size=chunk_rows):
        # from the Arrow table as it is: rows are not re-encoded, so a row with neither
        # image bytes nor path reaches the decoder and gets its error row
        chunk = datasets.Dataset(datasets.table.InMemoryTable(raw), info=info)
        wanted = [
            p
            for p in range(len(chunk))
            if any(a <= first + p and (b is None or first + p < b) for a, b in todo)
        ]
        yield first, chunk, wanted
        first += len(chunk)

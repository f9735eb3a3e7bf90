"""Hugging Face split -> DataLoader of uint8 crops, decoded in the workers.

The image column is cast to `Image(decode=False)`, so workers receive the
encoded bytes (or a file path) and decoding is ours (transforms.py): an
undecodable image becomes a row with an `error` instead of a crash.
"""

from __future__ import annotations

import logging
import os
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from pipeline.config import UserError
from pipeline.transforms import Preprocess, error_reason

SAVED_DATASET_MARKERS = ("dataset_dict.json", "state.json")

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- the split


@dataclass
class Split:
    """A loaded split: a map-style HF Dataset, or an IterableDataset when streaming."""

    table: Any  # datasets.Dataset | datasets.IterableDataset, image column not decoded
    num_rows: int | None  # None when streaming
    roots: tuple[str, ...]  # folders a path inside the dataset may point into


def load_split(
    *,
    path: str,
    name: str | None,
    split: str,
    revision: str | None,
    data_dir: str | None,
    data_files: Any,
    streaming: bool,
    image_column: str,
    label_column: str | None,
    id_column: str | None,
) -> Split:
    """Load one split with `datasets`, from the hub, local files or a `save_to_disk` folder."""
    import datasets

    try:
        if os.path.isdir(path) and any(
            os.path.exists(os.path.join(path, m)) for m in SAVED_DATASET_MARKERS
        ):
            table = _load_saved(path, split)
        else:
            files = _plain(data_files)
            if files is None and name is None and _plain_folder(path):
                files = _folder_patterns(os.path.join(path, data_dir or ""))
            table = datasets.load_dataset(
                path,
                name,
                split=split,
                revision=revision,
                data_dir=data_dir,
                data_files=files,
                streaming=streaming,
            )
    except UserError:
        raise
    except Exception as e:  # datasets raises many types; all mean "could not load"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "reach" in reason:  # no network, or offline mode without a cached copy
            reason += "; offline, use a cached copy (HF_DATASETS_OFFLINE=1) or a local path"
        raise UserError(f"Could not load dataset '{path}' split '{split}': {reason}") from e
    columns = list(table.features or {})
    for role, column in (("image", image_column), ("label", label_column), ("id", id_column)):
        if column is not None and column not in columns:
            raise UserError(
                f"Column '{column}' (dataset.{role}_column) not in the dataset; "
                f"columns present: {', '.join(columns)}"
            )
    table = table.cast_column(image_column, datasets.Image(decode=False))
    num_rows = None if streaming else len(table)
    return Split(table=table, num_rows=num_rows, roots=_roots(path, data_dir, data_files))


def _load_saved(path: str, split: str) -> Any:
    """A `save_to_disk` folder: pick the split of a DatasetDict, then apply a slice."""
    import datasets

    loaded = datasets.load_from_disk(path)
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


def _plain_folder(path: str) -> bool:
    """A local folder of data files, without a README whose YAML could name its own files."""
    return os.path.isdir(path) and not os.path.exists(os.path.join(path, "README.md"))


def _folder_patterns(folder: str) -> dict[str, list[str]] | None:
    """`datasets`' split patterns for a local folder, found with a single directory walk.

    `load_dataset` finds a folder's splits by globbing some 60 candidate
    patterns, each a full walk of the tree: 15 s at every start for 24,000
    images here. This runs `datasets`' own search over one walk, with its
    rules: hidden and `__special__` folders, hidden files and its ignored file
    names left out. None when this `datasets` lacks the helper or the folder
    has no data files: `load_dataset` then searches (and reports) by itself.
    """
    import datasets.data_files as df
    from fsspec.utils import glob_translate

    search = getattr(df, "_get_data_files_patterns", None)
    if search is None:
        return None
    files = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
        rel = os.path.relpath(root, folder).replace(os.sep, "/")
        files += [
            name if rel == "." else f"{rel}/{name}"
            for name in names
            if not name.startswith(".")
            and name not in df.FILES_TO_IGNORE
            and os.path.isfile(os.path.join(root, name))
        ]

    def resolve(pattern: str) -> list[str]:
        regex = re.compile(glob_translate(pattern))
        matched = [f for f in files if regex.match(f)]
        if not matched:
            raise FileNotFoundError(pattern)
        return matched

    try:
        return {str(split): patterns for split, patterns in search(resolve).items()}
    except Exception as e:  # no data files, or another `datasets`: let it search itself
        log.debug("split patterns of %s left to datasets: %s", folder, e)
        return None


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain lists/dicts, as `datasets` expects."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _roots(path: str, data_dir: str | None, data_files: Any) -> tuple[str, ...]:
    """Where image paths stored in the dataset may lead: its own folders and the HF cache."""
    import datasets

    roots = [datasets.config.HF_DATASETS_CACHE]
    roots += [p for p in (path, data_dir) if p and os.path.isdir(p)]
    files = _plain(data_files)
    if isinstance(files, dict):
        files = [f for v in files.values() for f in ([v] if isinstance(v, str) else v)]
    for f in [files] if isinstance(files, str) else files or []:
        roots.append(os.path.dirname(os.path.abspath(f)))
    return tuple(os.path.realpath(r) for r in roots)


def check_labels(
    table: Any, *, column: str | None, num_classes: int, rows: range, first_index: int
) -> None:
    """Fail before inference on a label outside 0..num_classes-1 (-1 and null mean unknown)."""
    import pyarrow.compute as pc

    if column is None or not rows:
        return
    labels = table.with_format("arrow")[column]
    labels = labels.slice(rows.start, len(rows))
    labels = labels.combine_chunks() if hasattr(labels, "combine_chunks") else labels
    bad = pc.and_(
        pc.not_equal(labels, -1),
        pc.or_(pc.less(labels, 0), pc.greater_equal(labels, num_classes)),
    )
    first = pc.index(pc.fill_null(bad, False), True).as_py()
    if first >= 0:
        raise UserError(
            f"Label {labels[first].as_py()} at row {first_index + first} is outside "
            f"0..{num_classes - 1} (-1 or null mean unknown); check dataset.label_column"
        )


# -------------------------------------------------------------- the dataset


class EvalDataset(torch.utils.data.Dataset):
    """Rows `rows` of an HF table as items {index, id, label, image (uint8) | None, error}."""

    def __init__(
        self,
        table: Any,
        *,
        rows: range,
        first_index: int,
        image_column: str,
        label_column: str | None,
        id_column: str | None,
        preprocess: Preprocess,
        roots: tuple[str, ...],
    ) -> None:
        self.table, self.rows, self.first_index = table, rows, first_index
        self.image_column, self.label_column, self.id_column = image_column, label_column, id_column
        self.preprocess, self.roots = preprocess, roots

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int) -> dict[str, Any]:
        return self.__getitems__([position])[0]

    def __getitems__(self, positions: list[int]) -> list[dict[str, Any]]:
        columns = [c for c in (self.image_column, self.label_column, self.id_column) if c]
        batch = self.table.select_columns(columns)[[self.rows[p] for p in positions]]
        return [self._item(p, batch, j) for j, p in enumerate(positions)]

    def _item(self, position: int, batch: dict[str, list], j: int) -> dict[str, Any]:
        image = batch[self.image_column][j]
        label = batch[self.label_column][j] if self.label_column else None
        item: dict[str, Any] = {
            "index": self.first_index + self.rows[position] - self.rows.start,
            "id": self._id(batch, j, image),
            "label": None if label is None or label == -1 else int(label),
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
        for root in self.roots[1:]:  # relative to the dataset's own folder when inside it
            if path and os.path.realpath(path).startswith(root + os.sep):
                return os.path.relpath(os.path.realpath(path), root)
        return path


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the crops of the decodable items; keep every item's metadata, in order."""
    ok = torch.tensor([it["image"] is not None for it in items], dtype=torch.bool)
    crops = [it["image"] for it in items if it["image"] is not None]
    return {
        "index": torch.tensor([it["index"] for it in items], dtype=torch.int64),
        "id": [it["id"] for it in items],
        "label": [it["label"] for it in items],
        "error": [it["error"] for it in items],
        "ok": ok,
        "image": _stack_channels_last(crops),
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
    """A worker leaves SIGTERM to the main process (Slurm signals every process of a job):
    the main process commits what is scored and stops; the worker exits quietly, status 0, so
    the DataLoader does not report it as a crash. (Ignoring SIGTERM instead hangs the exit of
    a run that failed: multiprocessing stops leftover workers with SIGTERM, then waits.)"""
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))


def iter_batches(
    split: Split,
    *,
    start: int,
    stop: int | None,
    batch_size: int,
    num_workers: int,
    pin_memory: bool,
    chunk_rows: int,
    num_classes: int,
    **item_args: Any,
) -> Iterator[dict[str, Any]]:
    """Batches of rows start..stop of the split, in split order.

    A map-style split feeds one DataLoader. A streamed split is read in chunks
    of `chunk_rows` raw (undecoded) rows, each decoded by its own DataLoader,
    so workers decode while memory stays at one chunk. Labels are checked
    before the rows they belong to are scored.
    """
    if split.num_rows is not None:
        end = split.num_rows if stop is None else min(stop, split.num_rows)
        chunks: Iterator[tuple[int, Any, range]] = iter([(start, split.table, range(start, end))])
    else:
        chunks = _stream_chunks(split.table, start=start, stop=stop, chunk_rows=chunk_rows)
    for first, table, rows in chunks:
        check_labels(
            table,
            column=item_args["label_column"],
            num_classes=num_classes,
            rows=rows,
            first_index=first,
        )
        dataset = EvalDataset(table, rows=rows, first_index=first, roots=split.roots, **item_args)
        yield from make_loader(
            dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory
        )


def _stream_chunks(
    table: Any, *, start: int, stop: int | None, chunk_rows: int
) -> Iterator[tuple[int, Any, range]]:
    """(first index, in-memory Dataset, its rows) for consecutive chunks of a streamed split."""
    import datasets

    stream = table.skip(start) if start else table
    if stop is not None:
        stream = stream.take(stop - start)
    first = start
    for raw in stream.iter(batch_size=chunk_rows):
        chunk = datasets.Dataset.from_dict(raw, features=table.features)
        yield first, chunk, range(len(chunk))
        first += len(chunk)

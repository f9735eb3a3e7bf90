"""A split's rows -> DataLoader of Batches of uint8 crops, decoded in the workers.

The image column is cast to `Image(decode=False)`, so workers receive the
encoded bytes (or a file path) and decoding is ours (transforms.py): an
undecodable image becomes a row with an `error` instead of a crash. Each
item carries the dataset's own label and the ImageNet-1k id it means
(labels.py), decided before inference.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline import stop
from pipeline.data.images import Roots, error_reason
from pipeline.data.labels import LabelSpace
from pipeline.data.source import Split
from pipeline.data.transforms import Encoded, Preprocess

Todo = list[tuple[int, int | None]]  # row ranges [start, stop) to score; None: to the end


def _check_labels(
    table: Any, labels: LabelSpace, column: str | None, positions: Sequence[int], offset: int
) -> None:
    """Refuse, before these rows are scored, a label the label space does not cover."""
    if column is None or not len(positions):
        return
    values = table.with_format("arrow")[column].take(np.asarray(positions)).to_pylist()
    labels.check(values, [offset + int(p) for p in positions])


def class_labels(split: Split, labels: LabelSpace, positions: np.ndarray) -> list[int | None]:
    """The class ids that rows of a loaded split are compared with (checked first)."""
    column = split.source.label_column
    if column is None:
        return [None] * len(positions)
    _check_labels(split.table, labels, column, positions.tolist(), 0)
    values = split.table.with_format("arrow")[column].take(positions).to_pylist()
    return [labels.to_class(v) for v in values]


@dataclass
class Batch:
    """One batch as the loop takes it: every row's metadata, in row order; the decodable
    rows' uint8 crops, stacked channels-last; (backend=device) the JPEGs left encoded, for
    the device to decode, and their rows. `ok` and `error` change where that fails."""

    index: torch.Tensor  # (N,) int64: the rows' indices in the split
    id: list[str | None]
    dataset_label: list[Any]
    label: list[int | None]  # the class id compared with; None: unknown
    error: list[str | None]
    ok: torch.Tensor  # (N,) bool: decoded (or still to be, on the device)
    image: torch.Tensor  # (n_ok, 3, H, W) uint8, channels-last
    encoded: list[Encoded]
    encoded_rows: list[int]

    def __len__(self) -> int:
        return len(self.id)

    def pin_memory(self) -> Batch:
        """The DataLoader's pin-memory thread calls this: the crops in page-locked memory."""
        return replace(self, image=self.image.pin_memory())


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
            "label": self.labels.to_class(raw),
            "image": None,
            "error": None,
        }
        try:
            item["image"] = self.preprocess(image, self.roots, item["index"])
        except Exception as e:  # any decoder failure is a data fault, recorded per row
            item["error"] = error_reason(e)
        return item

    def _id(self, batch: dict[str, list], j: int, image: Any) -> str | None:
        if self.id_column:
            value = batch[self.id_column][j]
            return None if value is None else str(value)
        path = image.get("path") if isinstance(image, dict) else None
        return self.roots.relative(path) if path else path


def collate(items: list[dict[str, Any]]) -> Batch:
    """Stack the crops of the decodable items; keep every item's metadata, in order. JPEGs
    left encoded (backend=device) go in `encoded`, their rows in `encoded_rows`."""
    ok = torch.tensor([it["image"] is not None for it in items], dtype=torch.bool)
    crops = [it["image"] for it in items if isinstance(it["image"], torch.Tensor)]
    encoded = [(j, it["image"]) for j, it in enumerate(items) if isinstance(it["image"], Encoded)]
    return Batch(
        index=torch.tensor([it["index"] for it in items], dtype=torch.int64),
        id=[it["id"] for it in items],
        dataset_label=[it["dataset_label"] for it in items],
        label=[it["label"] for it in items],
        error=[it["error"] for it in items],
        ok=ok,
        image=_stack_channels_last(crops),
        encoded=[e for _, e in encoded],
        encoded_rows=[j for j, _ in encoded],
    )


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
    preprocess: Preprocess,
) -> Generator[Batch, None, None]:
    """Batches of the rows in `todo`, in split order.

    A map-style split feeds one DataLoader. A streamed split is read in chunks
    of `chunk_rows` raw (undecoded) rows, each decoded by its own DataLoader,
    so workers decode while memory stays at one chunk. Labels are checked
    before the rows they belong to are scored. The DataLoader's workers are
    shut down when the iteration ends, however it ends.
    """
    columns = split.source
    for offset, table, positions in _chunks(split, todo, chunk_rows):
        _check_labels(table, labels, columns.label_column, positions, offset)
        dataset = EvalDataset(
            table,
            positions=positions,
            offset=offset,
            image_column=split.image_column,
            label_column=columns.label_column,
            id_column=columns.id_column,
            labels=labels,
            preprocess=preprocess,
            roots=split.roots,
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


def _chunks(split: Split, todo: Todo, chunk_rows: int) -> Iterator[tuple[int, Any, Any]]:
    """(first index, table, positions in it to score): the whole table of a loaded split,
    or consecutive in-memory chunks of a streamed one."""
    if split.num_rows is not None:
        return iter([(0, split.table, positions_of(todo, split.num_rows))])
    return _stream_chunks(split, todo=todo, chunk_rows=chunk_rows)


def _stream_chunks(split: Split, *, todo: Todo, chunk_rows: int) -> Iterator[tuple[int, Any, Any]]:
    """(first index, in-memory Dataset, positions in it to score) for consecutive chunks of
    a streamed split, from the first row to score to the last."""
    import datasets
    import pyarrow as pa

    if not todo:
        return
    info = datasets.DatasetInfo(features=split.table.features)
    buffer: list[pa.Table] = []
    first = todo[0][0]
    for table in _stream_tables(split.table, first, todo[-1][1]):
        buffer.append(table)
        if sum(t.num_rows for t in buffer) < chunk_rows:
            continue
        chunk = datasets.Dataset(datasets.table.InMemoryTable(pa.concat_tables(buffer)), info=info)
        yield first, chunk, _wanted(first, len(chunk), todo)
        first, buffer = first + len(chunk), []
    if buffer:
        chunk = datasets.Dataset(datasets.table.InMemoryTable(pa.concat_tables(buffer)), info=info)
        yield first, chunk, _wanted(first, len(chunk), todo)


def _wanted(first: int, size: int, todo: Todo) -> list[int]:
    """The positions in a chunk of rows first..first+size that are to be scored."""
    return [
        p
        for p in range(size)
        if any(a <= first + p and (b is None or first + p < b) for a, b in todo)
    ]


def _stream_tables(stream: Any, start: int, stop: int | None) -> Iterator[Any]:
    """Rows start..stop of a streamed split as Arrow tables in its features' schema, read
    shard by shard, as stored: a row with neither image bytes nor path reaches the decoder
    (its error row), where Python rows would fail the Image feature.

    `datasets` hands over a shard's tables with their columns (and the image struct's
    fields) in varying order, and a shard without the image key (webp where the others
    have jpg) with a null column: concatenating those across or within shards fails
    (ArrowInvalid: Schema at index N was different). Selected and cast per shard, they
    agree, and a row without the image gets its error row, as when the split is loaded.
    """
    schema = stream.features.arrow_schema
    position = 0
    for index in range(stream.n_shards):
        shard = stream.shard(num_shards=stream.n_shards, index=index, contiguous=True)
        for table in _shard_tables(shard.select_columns(schema.names).with_format("arrow")):
            lo, hi = position, position + table.num_rows
            position = hi
            if hi <= start:
                continue
            end = table.num_rows if stop is None else min(table.num_rows, stop - lo)
            yield table.slice(max(0, start - lo), end - max(0, start - lo)).cast(schema)
            if stop is not None and position >= stop:
                return


def _shard_tables(shard: Any) -> Iterator[Any]:
    """A shard's rows as Arrow tables of up to 1024 rows; from a sample under another image
    key on (a webp among a shard's jpgs: `datasets` cannot join its table with the others',
    ArrowInvalid), one row at a time, which `datasets` hands over unjoined (1.6x slower)."""
    import pyarrow as pa

    done = 0
    try:
        for table in shard.iter(batch_size=1024):
            done += table.num_rows
            yield table
        return
    except pa.ArrowInvalid:
        pass
    for row, table in enumerate(shard.iter(batch_size=1)):
        if row >= done:
            yield table

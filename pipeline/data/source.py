"""One split of a Hugging Face dataset, from the hub, local files or a `save_to_disk`
folder, with its image column left encoded, and what its labels are.

`load_split` is `load_dataset` in its two steps, so that a split that was not named can
be found (and a wrong name refused, naming the splits there are) between them, and so
that a local folder's files come from one directory walk (folders.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.data import folders
from pipeline.data.images import Roots
from pipeline.errors import UserError, first_line
from pipeline.request import Source

SAVED_DATASET_MARKERS = ("dataset_dict.json", "state.json")
FOLDER_BUILDERS = ("imagefolder",)  # builders whose rows are files found by walking a folder

log = logging.getLogger(__name__)


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
    source: Source  # what was asked for (image_column "auto" is resolved above)
    files: tuple[str, ...] = ()  # the split's data files, where `datasets` listed them


def load_split(source: Source) -> Split:
    """Load one split with `datasets`, from the hub, local files or a `save_to_disk` folder;
    with split=None, the data's only split."""
    import datasets

    table, split, files = _load_table(source)
    features = table.features or {}
    image_column = _image_column(features, source.image_column)
    builder = getattr(table.info, "builder_name", None)
    for role, column in (("label", source.label_column), ("id", source.id_column)):
        if column is not None and column not in features:
            layout = folders.unlabeled(source, files) if role == "label" else None
            raise UserError(
                layout
                or f"Column '{column}' (dataset.{role}_column) not in the dataset; "
                f"columns present: {', '.join(features)}"
            )
    fingerprint = None if source.streaming else getattr(table, "_fingerprint", None)
    return Split(
        table=table.cast_column(image_column, datasets.Image(decode=False)),
        name=str(table.split) if getattr(table, "split", None) else (split or ""),
        num_rows=None if source.streaming else len(table),
        roots=_roots(source, walked=builder in FOLDER_BUILDERS),
        image_column=image_column,
        builder=builder,
        fingerprint=fingerprint,
        source=source,
        files=files,
    )


def _load_table(source: Source) -> tuple[Any, str | None, tuple[str, ...]]:
    """(the split's table, the split's name, its data files); every failure of `datasets`
    is one line naming the dataset."""
    path, split = source.path, source.split
    try:
        if os.path.isdir(path) and any(
            os.path.exists(os.path.join(path, m)) for m in SAVED_DATASET_MARKERS
        ):
            return _load_saved(path, split), split, ()
        builder = _builder(source)
        available = [str(s) for s in builder.config.data_files or builder.info.splits or []]
        split = choose_split(available, path) if split is None else split
        check_split(split, available, path)
        data_files = builder.config.data_files or {}
        files = tuple(str(f) for n in split_names(split) for f in data_files.get(n, ()))
        if source.streaming:
            return builder.as_streaming_dataset(split=split), split, files
        builder.download_and_prepare()
        return builder.as_dataset(split=split), split, files
    except UserError:
        raise
    except Exception as e:  # datasets raises many types; all mean "could not load"
        reason = first_line(e)
        if "reach" in reason:  # no network, or offline mode without a cached copy
            reason += "; offline, use a cached copy (HF_DATASETS_OFFLINE=1) or a local path"
        which = f" split '{split}'" if split else ""
        raise UserError(f"Could not load dataset '{path}'{which}: {reason}") from e


def split_names(spec: str) -> list[str]:
    """The splits a spec reads: 'validation[:10%]+test' -> validation, test (none when
    `datasets` cannot parse it: its own error is then the clearest)."""
    import datasets

    try:
        instruction = datasets.ReadInstruction.from_spec(spec)
    except (ValueError, AssertionError):
        return []
    return [i.splitname for i in instruction._relative_instructions]


def check_split(split: str, available: Sequence[str], where: str) -> None:
    """A split named in dataset.split (slices and sums allowed) must be one the data has."""
    unknown = sorted(set(split_names(split)) - set(available)) if available else []
    if not unknown:
        return
    hint = (
        f"; leaving dataset.split unset uses its only split, '{available[0]}'"
        if len(available) == 1
        else ""
    )
    raise UserError(
        f"{where} has no split '{unknown[0]}'; its splits: {', '.join(available)}{hint}"
    )


def _builder(source: Source) -> Any:
    """`load_dataset`'s first step (its second is in load_split): between the two, a split
    name that was not given can be found."""
    import datasets

    files = source.data_files
    if files is None and source.name is None and folders.plain_folder(source.path):
        files = folders.data_files(os.path.join(source.path, source.data_dir or ""))
    return datasets.load_dataset_builder(
        source.path,
        source.name,
        revision=source.revision,
        data_dir=source.data_dir,
        data_files=files,
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
    names = split_names(split)
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


def _roots(source: Source, *, walked: bool) -> Roots:
    """Where image paths stored in the dataset may lead: its own folders, the HF cache and
    the folders the user allowed. For a folder of image files the paths come from walking
    it, so links found there are part of the dataset (a class subset linked into a shared
    ImageNet copy). Relative paths are relative to the dataset's folder: the `save_to_disk`
    or data folder, else the folder its data files share."""
    import datasets

    own = [p for p in (source.path, source.data_dir) if p and os.path.isdir(p)]
    files = source.data_files
    if isinstance(files, dict):
        files = [f for v in files.values() for f in ([v] if isinstance(v, str) else v)]
    file_dirs = [
        os.path.dirname(os.path.abspath(f))
        for f in ([files] if isinstance(files, str) else files or [])
    ]
    own += file_dirs
    base = own[0] if own and os.path.isdir(source.path) else None
    if base is None and file_dirs:
        base = os.path.commonpath(file_dirs)
    confined = [datasets.config.HF_DATASETS_CACHE, *own, *source.image_roots]
    return Roots(
        confined=tuple(os.path.realpath(r) for r in confined),
        walked=tuple(os.path.abspath(r) for r in own) if walked else (),
        own=tuple(os.path.realpath(r) for r in own),
        base=os.path.abspath(base) if base else None,
    )


# ------------------------------------------------------- what the labels are


def folder_names(split: Split) -> list[str] | None:
    """All class folders of an image folder, empty ones included (datasets' ClassLabel
    leaves those out; torchvision's ImageFolder does not), found from the split's files,
    so streamed or not, the same. None for other layouts."""
    if split.builder not in FOLDER_BUILDERS or not split.files:
        return None
    parents = {os.path.dirname(os.path.dirname(p)) for p in split.files}
    if len(parents) != 1 or not os.path.isdir(next(iter(parents))):
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
    """The ids of rows as a run records them (id_column, else the image's path inside the
    dataset), read without decoding any image."""
    if id_column:
        values = split.table.with_format("arrow")[id_column].take(positions).to_pylist()
        return [None if v is None else str(v) for v in values]
    images = split.table.with_format("arrow")[split.image_column].take(positions)
    paths = images.combine_chunks().field("path").to_pylist()
    return [split.roots.relative(p) if p else p for p in paths]

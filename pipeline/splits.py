"""Splits: one split of a Hugging Face dataset, from the hub, local files or a
`save_to_disk` folder, with its image column left encoded, and what its labels are.

`load_split` is `load_dataset` in its two steps, so that a split that was not named can
be found (and a wrong name refused, naming the splits there are) between them, and so
that a local folder's files come from one directory walk.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.config import plain
from pipeline.errors import UserError
from pipeline.images import Roots

SAVED_DATASET_MARKERS = ("dataset_dict.json", "state.json")
FOLDER_BUILDERS = ("imagefolder",)  # builders whose rows are files found by walking a folder

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- the split


@dataclass(frozen=True)
class Source:
    """Where a split comes from and what its columns are: the `dataset.*` settings that
    `datasets` and the decoder need."""

    path: str  # hub id, builder name (parquet, imagefolder) or a local folder
    name: str | None = None
    split: str | None = None  # None: the data's only split
    revision: str | None = None
    data_dir: str | None = None
    data_files: Any = None
    streaming: bool = False
    image_column: str = "image"  # auto: the only image column
    label_column: str | None = "label"
    id_column: str | None = None
    image_roots: tuple[str, ...] = ()  # more folders that stored image paths may lead into


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
            layout = unlabeled_folder(source, files) if role == "label" else None
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
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
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

    files = plain(source.data_files)
    if files is None and source.name is None and _plain_folder(source.path):
        files = _folder_files(os.path.join(source.path, source.data_dir or ""))
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

    One rule differs, for images (split_names): a split word in an image's own file name
    inside a folder, or in its class folder's name, does not make a split
    (`n02917067/n02917067_bullet_train.JPEG` made `datasets` score one image of 1000).
    None when this `datasets` lacks the helpers or the folder has no data files:
    `load_dataset` then searches (and reports) by itself.
    """
    import datasets.data_files as df

    search = getattr(df, "_get_data_files_patterns", None)
    if search is None or not hasattr(df, "DataFilesList"):
        return None
    mtimes = _walk(folder, ignored=df.FILES_TO_IGNORE)
    files = sorted(mtimes)
    found = _split_search(search, files, split_names_of(files, file_names=False))
    if found is None:
        return None
    if [v.patterns for v in found.values()] == [("**",)]:  # datasets' fallback: one split
        # no folder names a split: the images' file names may, but only all of them
        # (ILSVRC2012_val_00000001.JPEG in every class folder of ImageNet's val)
        by_name = _split_search(search, files, split_names_of(files, file_names=True))
        if by_name is not None and not _left_out(files, by_name):
            found = by_name
    left = _left_out(files, found)
    if left:
        shown = ", ".join(left[:3]) + (f" (and {len(left) - 3} more)" if len(left) > 3 else "")
        named = ", ".join(f"{k} ({len(v.files)} files)" for k, v in found.items())
        raise UserError(
            f"{folder}: its folders name splits ({named}), but {len(left)} image(s) are in "
            f"none of them: {shown}; move them into a split's folder, or point dataset.path "
            f"at the one split's folder"
        )
    base = os.path.abspath(folder)
    out = df.DataFilesDict()
    for split, chosen in found.items():
        paths = [os.path.join(base, f).replace(os.sep, "/") for f in chosen.files]
        out[split] = df.DataFilesList(paths, [(mtimes[f],) for f in chosen.files])
    return out


@dataclass(frozen=True)
class _Found:
    """A split's patterns (as `datasets` chose them) and the files they match."""

    patterns: tuple[str, ...]
    files: tuple[str, ...]


def _split_search(search: Any, files: list[str], named: dict[str, str]) -> dict[str, _Found] | None:
    """`datasets`' split search over the files, as `named` reads their paths: each split's
    patterns and the files they match, in `datasets`' order (None: no data files)."""
    from fsspec.utils import glob_translate

    def matches(pattern: str) -> list[str]:
        regex = re.compile(glob_translate(pattern))
        return [f for f in files if regex.match(named[f])]

    def resolve(pattern: str) -> list[str]:
        matched = matches(pattern)
        if not matched:
            raise FileNotFoundError(pattern)
        return matched

    try:
        splits = search(resolve)
    except Exception as e:  # no data files, or another `datasets`: let it search itself
        log.debug("split patterns left to datasets: %s", e)
        return None
    return {
        str(split): _Found(
            tuple(patterns), tuple(dict.fromkeys(f for p in patterns for f in matches(p)))
        )
        for split, patterns in splits.items()
    }


def _left_out(files: list[str], found: dict[str, _Found]) -> list[str]:
    """The images that no split holds."""
    placed = {f for split in found.values() for f in split.files}
    return [f for f in files if _is_image(f) and f not in placed]


def unlabeled_folder(source: Source, files: Sequence[str]) -> str | None:
    """Why a local image folder's split has no labels, in the words of its layout (None
    for other data): `datasets` labels images by their folder only when every image sits
    at one depth, in two or more folders."""
    folder = os.path.abspath(os.path.join(source.path, source.data_dir or ""))
    images = [os.path.relpath(f, folder) for f in files if _is_image(f)]
    if not os.path.isdir(folder) or not images:
        return None
    depths: dict[int, list[str]] = {}
    for f in images:
        depths.setdefault(f.count(os.sep), []).append(f)
    fix = "or set dataset.label_column=null to score without labels"
    if len(depths) > 1:
        where = "; ".join(f"{len(v)} {_depth(d)} ({v[0]}, ...)" for d, v in sorted(depths.items()))
        return (
            f"{folder} holds its images at different depths: {where}. Labels come from "
            f"class folders only when every image is in one, at one depth: move them, {fix}"
        )
    if 0 in depths:
        return (
            f"{folder} holds its images directly, not in class folders, so they have no "
            f"labels: put each class's images in a folder of its own, {fix}"
        )
    classes = sorted({os.path.basename(os.path.dirname(f)) for f in images})
    return (
        f"{folder}: every image is in one folder ({classes[0] if classes else '?'}/), and "
        f"labels need two or more class folders; {fix}"
    )


def _depth(d: int) -> str:
    return "directly in it" if d == 0 else "in folders" if d == 1 else f"{d} folders deep"


def _is_image(path: str) -> bool:
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    return os.path.splitext(path)[1].lower() in ImageFolder.EXTENSIONS


def split_names_of(files: Sequence[str], *, file_names: bool) -> dict[str, str]:
    """Each file's path as the split search reads it: for an image, only the parts of its
    path that can name a split. The folders above its own folder can; its own folder can
    only where every folder beside it is a split word too (`train/`, `test/`: a class
    named `train`, or `bullet_train`, is a class); its file name only with `file_names`
    (the second reading, kept only where it puts every image in a split). Everything
    else reads as `x`, which names no split."""
    import datasets.data_files as df

    words = {w for keywords in df.SPLIT_KEYWORDS.values() for w in keywords}
    folders: dict[str, set[str]] = {}  # a folder -> the own folders of images in it
    for f in files:
        if _is_image(f) and "/" in f:
            parent, own = os.path.split(os.path.dirname(f))
            folders.setdefault(parent, set()).add(own)
    split_levels = {parent for parent, own in folders.items() if own <= words}
    named = {}
    for f in files:
        parts = f.split("/")
        if _is_image(f):
            ext = os.path.splitext(parts[-1])[1]
            parts[-1] = parts[-1] if file_names else f"x{ext}"
            if len(parts) > 1 and "/".join(parts[:-2]) not in split_levels:
                parts[-2] = "x"
        named[f] = "/".join(parts)
    return named


def _walk(folder: str, *, ignored: Any) -> dict[str, str]:
    """Every data file under `folder` (relative, with '/') and its modification time, by
    `datasets`' rules: hidden and `__special__` folders, hidden files and its ignored names
    left out; linked folders followed."""
    mtimes = {}
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
        rel = os.path.relpath(root, folder).replace(os.sep, "/")
        for name in names:
            full = os.path.join(root, name)
            if name.startswith(".") or name in ignored or not os.path.isfile(full):
                continue
            mtimes[name if rel == "." else f"{rel}/{name}"] = str(os.stat(full).st_mtime)
    return mtimes


def _roots(source: Source, *, walked: bool) -> Roots:
    """Where image paths stored in the dataset may lead: its own folders, the HF cache and
    the folders the user allowed. For a folder of image files the paths come from walking
    it, so links found there are part of the dataset (a class subset linked into a shared
    ImageNet copy). Relative paths are relative to the dataset's folder: the `save_to_disk`
    or data folder, else the folder its data files share."""
    import datasets

    own = [p for p in (source.path, source.data_dir) if p and os.path.isdir(p)]
    files = plain(source.data_files)
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

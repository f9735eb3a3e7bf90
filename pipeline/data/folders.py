"""A local folder's data files, found as `datasets` finds them but with one directory
walk, and its layout in words where its images have no labels.

`load_dataset` finds a folder's splits by globbing some 60 candidate patterns, each a
full walk of the tree; here `datasets`' own split search runs over one walk. One rule
differs, for images: a split word inside the class folders is a name, not a split.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.errors import UserError
from pipeline.request import Source

log = logging.getLogger(__name__)


def plain_folder(path: str) -> bool:
    """A local folder of data files, without a README whose YAML could name its own files."""
    return os.path.isdir(path) and not os.path.exists(os.path.join(path, "README.md"))


def data_files(folder: str) -> Any:
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


def unlabeled(source: Source, files: Sequence[str]) -> str | None:
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

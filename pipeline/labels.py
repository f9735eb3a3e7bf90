"""Label spaces: what a dataset's labels mean, as ImageNet-1k class ids, decided before inference.

Accuracy is only computed in ImageNet-1k's label space. Resolution, first match wins:

1. `dataset.classes`: `imagenet-1k` (labels are ImageNet ids), or a list / file giving,
   in dataset-label order, a WordNet id, class index or class name per label, or a
   JSON object mapping each label value to one;
2. the label feature's class names (or an image folder's folder names): WordNet ids,
   torchvision's category names or `ILSVRC/imagenet-1k`'s long names, exact first,
   then case-insensitive; names that are all integers 0..999 are those ids (ImageNetV2);
3. string label values, matched the same way;
4. a 1000-class ClassLabel whose names are none of these: its ids as they are.

Anything else (plain integers without names, floats, names that are not
ImageNet classes, an ambiguous name) stops the run with one line saying what
was found and what to do. A strict subset of the classes is scored 1000-way, as timm's
validate.py and torchvision's reference score it, unless `dataset.restrict=true`; a
subset that is exactly a known protocol's (ImageNet-R's or -A's 200, Imagenette's 10)
restricts the model's outputs to it, saying so, unless `dataset.restrict=false`.
ImageNet-ReaL's reassessed labels are real.py's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from importlib.resources import files
from typing import Any

from pipeline.errors import UserError

N_CLASSES = 1000
UNMAPPED = -1  # in a label table: a label the dataset.classes map does not name
FIX = (
    "say what they mean with dataset.classes=..., "
    "or set dataset.label_column=null for predictions only"
)


@dataclass(frozen=True)
class LabelSpace:
    """How dataset labels become ImageNet-1k ids, and which outputs the model may give."""

    kind: str  # "imagenet-1k" | "subset:<n>" | "unlabeled"
    source: str  # how the labels were read, in words (for the metrics row and the summary)
    label_type: str  # the dataset's own label type: "int64" or "string"
    table: tuple[int, ...] | None = None  # int dataset label -> ImageNet id; None: the same id
    names: tuple[tuple[str, int], ...] | None = None  # string dataset label -> ImageNet id
    subset: tuple[int, ...] | None = None  # the ImageNet ids outputs are restricted to

    @property
    def restricted(self) -> bool:
        return self.subset is not None

    @cached_property
    def _by_name(self) -> dict[str, int]:
        return dict(self.names or ())

    def to_imagenet(self, value: Any) -> int | None:
        """A dataset label -> the ImageNet id it is compared with (None: unknown); called
        for every row, in the workers."""
        if value is None or value == -1 or self.kind == "unlabeled":
            return None
        if self.names is not None:
            return self._by_name[value]
        return int(value) if self.table is None else self.table[int(value)]

    def digest(self) -> str:
        """A short hash of the mapping: resume and merge refuse a folder scored under another."""
        text = json.dumps([self.kind, self.table, self.names, self.subset])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def check(self, values: Sequence[Any], rows: Sequence[int]) -> None:
        """Refuse, before inference, a label the mapping does not cover, naming its row."""
        if self.kind == "unlabeled":
            return
        known = self._by_name if self.names is not None else None
        size = N_CLASSES if self.table is None else len(self.table)
        for row, v in zip(rows, values, strict=True):
            if v is None or v == -1:
                continue
            if known is not None and v not in known:
                raise UserError(f"Label {v!r} at row {row} is not an ImageNet class name; {FIX}")
            if known is None and not 0 <= v < size:
                raise UserError(
                    f"Label {v} at row {row} is outside 0..{size - 1} "
                    f"({self.source}; -1 or null mean unknown); check dataset.label_column"
                )
            if known is None and self.table is not None and self.table[v] == UNMAPPED:
                raise UserError(f"Label {v} at row {row} is not in the map ({self.source})")


UNLABELED = LabelSpace("unlabeled", "no label column", "int64")


# ---------------------------------------------------------------- vocabulary


@cache
def imagenet_classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(WordNet ids, long names) of the 1000 classes, in order (classes/SOURCES.md)."""
    rows = files("pipeline").joinpath("classes/imagenet-1k.tsv").read_text().splitlines()
    wnids, long_names = zip(*(r.split("\t", 1) for r in rows), strict=True)
    return wnids, long_names


@cache
def _vocabularies() -> tuple[tuple[str, ...], ...]:
    from torchvision.models import AlexNet_Weights

    wnids, long_names = imagenet_classes()
    return wnids, tuple(AlexNet_Weights.IMAGENET1K_V1.meta["categories"]), long_names


def categories() -> list[str]:
    """torchvision's names of the 1000 classes, in class order."""
    return list(_vocabularies()[1])


@cache
def _lookup() -> tuple[dict[str, set[int]], dict[str, set[int]]]:
    """name -> ids, exact and lower-cased, over all three vocabularies."""
    exact: dict[str, set[int]] = {}
    folded: dict[str, set[int]] = {}
    for vocabulary in _vocabularies():
        for i, name in enumerate(vocabulary):
            exact.setdefault(name, set()).add(i)
            folded.setdefault(name.lower(), set()).add(i)
    return exact, folded


def class_id(entry: Any) -> int | None:
    """A WordNet id, class index or class name -> its ImageNet id; None if unknown.
    Raises on a name that is more than one class ("crane": the bird and the machine)."""
    if isinstance(entry, bool):
        return None
    if isinstance(entry, int) or (isinstance(entry, str) and entry.strip().isdigit()):
        index = int(entry)
        return index if 0 <= index < N_CLASSES else None
    if not isinstance(entry, str):
        return None
    exact, folded = _lookup()
    ids = exact.get(entry.strip()) or folded.get(entry.strip().lower())
    if not ids:
        return None
    if len(ids) > 1:
        raise UserError(
            f"Class name {entry!r} is more than one ImageNet class "
            f"({', '.join(str(i) for i in sorted(ids))}); name it by WordNet id or index "
            f"in dataset.classes"
        )
    return next(iter(ids))


def is_identity(names: Sequence[str]) -> bool:
    """All 1000 names of one vocabulary, in its order: the labels are the ids themselves
    (ambiguous names such as ILSVRC's two 'crane's are then no problem)."""
    lowered = [n.strip().lower() for n in names]
    return len(names) == N_CLASSES and any(
        lowered == [v.lower() for v in vocabulary] for vocabulary in _vocabularies()
    )


def map_names(names: Sequence[Any], what: str) -> tuple[int, ...]:
    """Each of `names` -> an ImageNet id, or one line saying which are not classes."""
    if is_identity([str(n) for n in names]):
        return tuple(range(N_CLASSES))
    ids = [class_id(n) for n in names]
    unknown = [str(n) for n, i in zip(names, ids, strict=True) if i is None]
    if unknown:
        shown = ", ".join(unknown[:5]) + (
            f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        )
        found = f"{what} {shown}"
        if len(unknown) == len(names):
            raise UserError(f"{found}: not ImageNet classes; {FIX}")
        raise UserError(
            f"{found} {'is' if len(unknown) == 1 else 'are'} not ImageNet classes; {FIX}"
        )
    return tuple(i for i in ids if i is not None)


# ---------------------------------------------------------------- resolution


def resolve(
    features: Any,
    *,
    label_column: str | None,
    classes: Any,
    restrict: bool | None,
    folder_names: Sequence[str] | None,
    string_values: Sequence[str] | None,
) -> LabelSpace:
    """Decide the label space from the label feature (and, for string labels, the values).

    folder_names: all class folders of an image folder, empty ones included, when the
    labels are folder names (datasets drops empty folders from its ClassLabel).
    string_values: the distinct values of a string label column (None when streaming).
    restrict: restrict the outputs to the classes, when they are a strict subset; None:
    only when they are exactly a known protocol's subset (PROTOCOLS), as timm's
    validate.py and torchvision's reference score any other subset 1000-way.
    """
    if label_column is None:
        return UNLABELED
    feature = features[label_column]
    kind = _feature_kind(feature, label_column)
    if classes is not None:
        table, names, source = _from_classes(classes, kind)
    elif kind == "classlabel":
        what = "labels are folder names" if folder_names is not None else "labels are class names"
        table, source = _from_classlabel(list(feature.names), what)
        names = None
    elif kind == "string":
        table, names, source = _from_strings(string_values)
    else:
        raise UserError(
            f"Labels in '{label_column}' are plain integers without class names: they may not "
            f"be ImageNet ids; if they are, set dataset.classes=imagenet-1k; else {FIX}"
        )
    covered = _classes_present(table, names, folder_names)
    label_type = "string" if kind == "string" else "int64"
    if covered is None or len(covered) == N_CLASSES:
        return LabelSpace("imagenet-1k", source, label_type, table, names)
    protocol = known_protocol(covered)
    if protocol is not None:
        source += f"; {PROTOCOLS[protocol]}"
    chosen = protocol is not None if restrict is None else restrict
    subset = tuple(sorted(covered)) if chosen else None
    return LabelSpace(f"subset:{len(covered)}", source, label_type, table, names, subset)


# the class subsets whose authors score among those classes only: a split whose classes are
# exactly one of these is restricted unless dataset.restrict=false (pipeline/classes/)
PROTOCOLS = {
    "imagenet-r": "ImageNet-R's 200 classes, scored among them (Hendrycks et al. 2021)",
    "imagenet-a": "ImageNet-A's 200 classes, scored among them (Hendrycks et al. 2021)",
    "imagenette": "Imagenette's 10 classes, scored among them (fast.ai)",
}


@cache
def _protocol_subsets() -> dict[str, frozenset[int]]:
    index = {w: i for i, w in enumerate(imagenet_classes()[0])}
    folder = files("pipeline").joinpath("classes")
    return {
        name: frozenset(index[w] for w in folder.joinpath(f"{name}.txt").read_text().split())
        for name in PROTOCOLS
    }


def known_protocol(covered: set[int]) -> str | None:
    """The protocol whose class subset these classes are exactly, if any."""
    return next((k for k, v in _protocol_subsets().items() if v == covered), None)


def _from_strings(
    string_values: Sequence[str] | None,
) -> tuple[None, tuple[tuple[str, int], ...], str]:
    """String labels, each matched by name (their distinct values, known unless streamed)."""
    if string_values is None:
        raise UserError(
            "String labels in a streamed split: they cannot be matched to classes before "
            "scoring; set dataset.streaming=false"
        )
    values = sorted(string_values)
    names = tuple(zip(values, map_names(values, "labels are strings"), strict=True))
    return None, names, f"string labels matched by name ({len(values)})"


def _feature_kind(feature: Any, column: str) -> str:
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return "classlabel"
    dtype = getattr(feature, "dtype", None)
    if isinstance(feature, datasets.Value) and dtype and re.fullmatch(r"u?int\d+", dtype):
        return "int"
    if isinstance(feature, datasets.Value) and dtype in ("string", "large_string"):
        return "string"
    if isinstance(feature, datasets.Value) and dtype and dtype.startswith("float"):
        raise UserError(
            f"Labels in '{column}' are floats: not class ids; point dataset.label_column at "
            f"an integer or string column, or set it to null for predictions only"
        )
    raise UserError(
        f"Labels in '{column}' are {dtype or type(feature).__name__}, which cannot be class "
        f"ids; point dataset.label_column at an integer or string column, or set it to null"
    )


def _from_classlabel(labels: list[str], what: str) -> tuple[tuple[int, ...] | None, str]:
    """ClassLabel names -> (table, source); None table: a 1000-class dataset whose names are
    none of ImageNet's keeps its ids as they are."""
    if labels and all(n.strip().isdigit() and int(n) < N_CLASSES for n in labels):
        return tuple(int(n) for n in labels), f"{what}, ImageNet class indices ({len(labels)})"
    if len(labels) == N_CLASSES and not any(_known(n) for n in labels):
        return None, "1000 class names that are not ImageNet's: their ids taken as they are"
    return map_names(labels, what), f"{what} ({len(labels)})"


def _known(name: str) -> bool:
    exact, folded = _lookup()
    return name.strip() in exact or name.strip().lower() in folded


def try_id(entry: Any) -> int | None:
    """class_id, with ambiguous names counted as unknown."""
    try:
        return class_id(entry)
    except UserError:
        return None


def _from_classes(
    classes: Any, kind: str
) -> tuple[tuple[int, ...] | None, tuple[tuple[str, int], ...] | None, str]:
    """dataset.classes: imagenet-1k, a list, a text file (one per line) or a JSON list/object."""
    where = "dataset.classes"
    if isinstance(classes, str) and classes.strip().lower() == "imagenet-1k":
        if kind == "string":
            raise UserError("dataset.classes=imagenet-1k needs integer labels; these are strings")
        return None, None, "labels declared ImageNet-1k ids (dataset.classes=imagenet-1k)"
    if isinstance(classes, str):
        where, classes = os.path.basename(classes), _read_classes(classes)
    if isinstance(classes, dict):
        keys = [str(k) for k in classes]
        ids = map_names(list(classes.values()), f"{where} names")
        if kind == "string":
            return None, tuple(zip(keys, ids, strict=True)), f"labels mapped by {where}"
        if not all(k.isdigit() for k in keys):
            raise UserError(f"{where} maps names, but the labels are integers; give a list")
        # only the labels it names: one the data holds but the map lacks is refused, by row,
        # when the labels are checked (LabelSpace.check)
        table = [UNMAPPED] * (max(int(k) for k in keys) + 1)
        for k, i in zip(keys, ids, strict=True):
            table[int(k)] = i
        return tuple(table), None, f"labels mapped by {where}"
    if kind == "string":
        raise UserError(f"{where} is a list, but the labels are strings; give a JSON object")
    entries = list(classes)
    ids = map_names(entries, f"{where} entries")
    _refuse_repeats(entries, ids, where)
    return ids, None, f"labels mapped by {where} ({len(entries)})"


def _refuse_repeats(entries: Sequence[Any], ids: Sequence[int], where: str) -> None:
    """A class list gives one class per label, in label order: a class named twice (a line
    repeated, two names of one class) shifts or merges every label after it."""
    first: dict[int, int] = {}
    for position, class_index in enumerate(ids):
        if class_index in first:
            k = first[class_index]
            raise UserError(
                f"{where}: entry {position} ({entries[position]!r}) is the class of entry {k} "
                f"({entries[k]!r}), ImageNet class {class_index}; a class list names each "
                f"class once, in label order"
            )
        first[class_index] = position


def _read_classes(path: str) -> Any:
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise UserError(f"dataset.classes={path}: cannot read it ({e.strerror or e})") from None
    if path.endswith(".json"):
        try:
            return json.loads(text)
        except ValueError as e:
            raise UserError(f"dataset.classes={path} is not valid JSON: {e}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _classes_present(
    table: tuple[int, ...] | None,
    names: tuple[tuple[str, int], ...] | None,
    folder_names: Sequence[str] | None,
) -> set[int] | None:
    """The ImageNet ids the dataset's classes cover (None: all, by declaration). An image
    folder's empty class folders count: a partial copy of ImageNet's 1000 folders is still
    ImageNet-1k, as torchvision's ImageFolder sees it."""
    if table is not None:
        present = set(table) - {UNMAPPED}
        with_empty = [try_id(n) for n in folder_names or []]
        if with_empty and None not in with_empty:
            present |= {i for i in with_empty if i is not None}
        return present
    if names is not None:
        return {i for _, i in names}
    return None

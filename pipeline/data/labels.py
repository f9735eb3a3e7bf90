"""Label spaces: what a dataset's labels mean as the classes of the model's head, decided
before inference.

A head's classes (`Classes`) say which classes it has and how a name finds one; ImageNet-1k
(imagenet.py) is one kind, and the default. A dataset's labels are mapped onto them, first
match wins:

1. `dataset.classes`: `by-position` (labels are the head's class ids; `imagenet-1k` says
   the same of an ImageNet-1k head), or a list / file giving, in dataset-label order, a
   class per label (an id, index or name), or a JSON object mapping each label value to
   one (a map file);
2. the label feature's class names (or an image folder's folder names), found by name
   (classes.py: case, spaces, `_` and `-` set aside); names that are all integers are
   class indices (ImageNetV2's folders);
3. string label values, matched the same way;
4. for ImageNet-1k, a ClassLabel of 1000 classes whose names are none of its: its ids as
   they are (another head maps by position only when asked).

Anything else (plain integers without names, floats, names that are not classes of the
head, a name of two classes, two labels of one class) stops the run with one line saying
what was found and what to do.
A strict subset of the classes is scored over all of them, as timm's validate.py and
torchvision's reference score it, unless `dataset.restrict=true`; a subset that is exactly a
known protocol's (ImageNet-R's or -A's 200, Imagenette's 10) restricts the model's outputs
to it, saying so, unless `dataset.restrict=false`. ImageNet-ReaL's labels are real.py's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from pipeline.data.classes import Classes
from pipeline.data.imagenet import IMAGENET_1K
from pipeline.errors import UserError
from pipeline.request import LabelRequest

UNMAPPED = -1  # in a label table: a label the dataset.classes map does not name
FIX = (
    "say what they mean with dataset.classes=..., "
    "or set dataset.label_column=null for predictions only"
)


@dataclass(frozen=True)
class LabelSpace:
    """How dataset labels become the head's class ids, and which outputs the model may give."""

    kind: str  # classes.kind (imagenet-1k) | "subset:<n>" | "unlabeled"
    source: str  # how the labels were read, in words (for the metrics row and the summary)
    label_type: str  # the dataset's own label type: "int64" or "string"
    table: tuple[int, ...] | None = None  # int dataset label -> class id; None: the same id
    names: tuple[tuple[str, int], ...] | None = None  # string dataset label -> class id
    subset: tuple[int, ...] | None = None  # the class ids outputs are restricted to
    size: int = IMAGENET_1K.size  # the head's number of classes

    @property
    def restricted(self) -> bool:
        return self.subset is not None

    @cached_property
    def _by_name(self) -> dict[str, int]:
        return dict(self.names or ())

    def to_class(self, value: Any) -> int | None:
        """A dataset label -> the class id it is compared with (None: unknown); called
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
        size = self.size if self.table is None else len(self.table)
        for row, v in zip(rows, values, strict=True):
            if v is None or v == -1:
                continue
            if known is not None and v not in known:
                raise UserError(f"Label {v!r} at row {row} is not a class name of the head; {FIX}")
            if known is None and not 0 <= v < size:
                raise UserError(
                    f"Label {v} at row {row} is outside 0..{size - 1} "
                    f"({self.source}; -1 or null mean unknown); check dataset.label_column"
                )
            if known is None and self.table is not None and self.table[v] == UNMAPPED:
                raise UserError(f"Label {v} at row {row} is not in the map ({self.source})")


UNLABELED = LabelSpace("unlabeled", "no label column", "int64")


def map_names(names: Sequence[Any], what: str, classes: Classes) -> tuple[int, ...]:
    """Each of `names` -> a class id, or one line saying which are not classes."""
    if classes.is_identity([str(n) for n in names]):
        return tuple(range(classes.size))
    ids = [classes.find(n) for n in names]
    unknown = [str(n) for n, i in zip(names, ids, strict=True) if i is None]
    shown_classes = ""
    if unknown and classes.what != "ImageNet":
        head = ", ".join(classes.names[:5]) + (", ..." if classes.size > 5 else "")
        shown_classes = f" (the head's {classes.size}: {head})"
    if unknown:
        shown = ", ".join(unknown[:5]) + (
            f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        )
        found = f"{what} {shown}"
        if len(unknown) == len(names):
            raise UserError(f"{found}: not {classes.what} classes{shown_classes}; {FIX}")
        raise UserError(
            f"{found} {'is' if len(unknown) == 1 else 'are'} not {classes.what} classes"
            f"{shown_classes}; {FIX}"
        )
    return tuple(i for i in ids if i is not None)


# ---------------------------------------------------------------- resolution


def resolve(
    features: Any,
    *,
    label_column: str | None,
    asked: LabelRequest,
    folder_names: Sequence[str] | None,
    string_values: Sequence[str] | None,
    classes: Classes = IMAGENET_1K,
) -> LabelSpace:
    """Decide the label space from the label feature (and, for string labels, the values).

    folder_names: all class folders of an image folder, empty ones included, when the
    labels are folder names (datasets drops empty folders from its ClassLabel).
    string_values: the distinct values of a string label column (None when streaming).
    asked.restrict: restrict the outputs to the classes, when they are a strict subset;
    None: only when they are exactly a known protocol's subset, as timm's validate.py and
    torchvision's reference score any other subset over all the classes.
    """
    if label_column is None:
        return UNLABELED
    feature = features[label_column]
    kind = _feature_kind(feature, label_column)
    if asked.classes is not None:
        label_names = list(feature.names) if kind == "classlabel" else None
        table, names, source = _from_classes(asked.classes, kind, classes, label_names)
    elif kind == "classlabel":
        what = "labels are folder names" if folder_names is not None else "labels are class names"
        table, source = _from_classlabel(list(feature.names), what, classes)
        names = None
    elif kind == "string":
        table, names, source = _from_strings(string_values, classes)
    else:
        raise UserError(
            f"Labels in '{label_column}' are plain integers without class names: they may not "
            f"be {classes.what} ids; if they are, set dataset.classes=imagenet-1k; else {FIX}"
        )
    covered = _classes_present(table, names, folder_names, classes)
    label_type = "string" if kind == "string" else "int64"
    if covered is None or len(covered) == classes.size:
        return LabelSpace(classes.kind, source, label_type, table, names, size=classes.size)
    protocol = classes.protocol(covered)
    if protocol is not None:
        source += f"; {protocol}"
    chosen = protocol is not None if asked.restrict is None else asked.restrict
    subset = tuple(sorted(covered)) if chosen else None
    kind_name = f"subset:{len(covered)}"
    return LabelSpace(kind_name, source, label_type, table, names, subset, classes.size)


def _from_strings(
    string_values: Sequence[str] | None, classes: Classes
) -> tuple[None, tuple[tuple[str, int], ...], str]:
    """String labels, each matched by name (their distinct values, known unless streamed)."""
    if string_values is None:
        raise UserError(
            "String labels in a streamed split: they cannot be matched to classes before "
            "scoring; set dataset.streaming=false"
        )
    values = sorted(string_values)
    ids = map_names(values, "labels are strings", classes)
    _refuse_repeats(values, ids, "labels are strings", classes)
    names = tuple(zip(values, ids, strict=True))
    return None, names, f"string labels matched by name ({len(values)})"


def own_names(
    features: Any,
    *,
    label_column: str | None,
    folder_names: Sequence[str] | None,
    string_values: Sequence[str] | None,
) -> list[str] | None:
    """A split's own class names, in label order (a zero-shot head is built from them):
    its folders', its ClassLabel's, or its distinct strings sorted; None when its labels
    have no names."""
    if label_column is None:
        return None
    feature = features[label_column]
    kind = _feature_kind(feature, label_column)
    if kind == "classlabel":
        return list(folder_names) if folder_names is not None else list(feature.names)
    if kind == "string":
        return None if string_values is None else sorted(string_values)
    return None


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


def _from_classlabel(
    labels: list[str], what: str, classes: Classes
) -> tuple[tuple[int, ...] | None, str]:
    """ClassLabel names -> (table, source). For ImageNet-1k only (its datasets' ways, never
    guessed for another head, which maps by position only when asked): names that are
    all integers are class indices (ImageNetV2's folders), and a None table is a dataset
    of 1000 classes whose names are none of its, keeping its ids as they are."""
    imagenet = classes.kind == IMAGENET_1K.kind
    if imagenet and labels and all(n.strip().isdigit() and int(n) < classes.size for n in labels):
        source = f"{what}, {classes.what} class indices ({len(labels)})"
        return tuple(int(n) for n in labels), source
    if imagenet and len(labels) == classes.size and not any(_found(n, classes) for n in labels):
        return None, (
            f"{classes.size} class names that are not {classes.what}'s: their ids taken as they are"
        )
    ids = map_names(labels, what, classes)
    _refuse_repeats(labels, ids, what, classes)
    return ids, f"{what} ({len(labels)})"


def _found(name: str, classes: Classes) -> bool:
    """Whether a name is one of the classes, or more than one of them."""
    try:
        return classes.find(name) is not None
    except UserError:
        return True


def _from_classes(
    given: Any, kind: str, classes: Classes, label_names: Sequence[str] | None
) -> tuple[tuple[int, ...] | None, tuple[tuple[str, int], ...] | None, str]:
    """dataset.classes: imagenet-1k, a list, a text file (one per line) or a JSON list/object."""
    where = "dataset.classes"
    declared = given.strip().lower() if isinstance(given, str) else None
    if declared in ("imagenet-1k", "by-position"):
        if declared == "imagenet-1k" and classes.kind != "imagenet-1k":
            raise UserError(
                f"dataset.classes=imagenet-1k says the labels are ImageNet-1k ids, but the "
                f"model's head is {classes.kind}; use dataset.classes=by-position for its ids"
            )
        if kind == "string":
            raise UserError(f"dataset.classes={given} needs integer labels; these are strings")
        return None, None, f"labels declared the head's class ids (dataset.classes={given})"
    if isinstance(given, str):
        where, given = os.path.basename(given), _read_classes(given)
    if isinstance(given, dict):
        keys = [str(k) for k in given]
        ids = map_names(list(given.values()), f"{where} names", classes)
        if kind == "string":
            return None, tuple(zip(keys, ids, strict=True)), f"labels mapped by {where}"
        if not all(k.isdigit() for k in keys):  # a class label's (folder's) names
            position = {str(n): i for i, n in enumerate(label_names or ())}
            strangers = [k for k in keys if k not in position]
            if strangers:
                shown = ", ".join(strangers[:3]) + (", ..." if len(strangers) > 3 else "")
                raise UserError(
                    f"{where} maps {shown}, which are not the dataset's label names "
                    f"({', '.join(map(str, (label_names or ['none'])[:5]))}, ...)"
                )
            keys = [str(position[k]) for k in keys]
        # only the labels it names: one the data holds but the map lacks is refused, by row,
        # when the labels are checked (LabelSpace.check)
        table = [UNMAPPED] * (max(int(k) for k in keys) + 1)
        for k, i in zip(keys, ids, strict=True):
            table[int(k)] = i
        return tuple(table), None, f"labels mapped by {where}"
    if kind == "string":
        raise UserError(f"{where} is a list, but the labels are strings; give a JSON object")
    entries = list(given)
    ids = map_names(entries, f"{where} entries", classes)
    _refuse_repeats(entries, ids, where, classes)
    return ids, None, f"labels mapped by {where} ({len(entries)})"


def _refuse_repeats(
    entries: Sequence[Any], ids: Sequence[int], where: str, classes: Classes
) -> None:
    """Each label is its own class: a class named twice (a line of a class list repeated,
    two names of one class, `cat` and `Cat`) shifts or merges every label after it."""
    first: dict[int, int] = {}
    for position, class_index in enumerate(ids):
        if class_index in first:
            k = first[class_index]
            raise UserError(
                f"{where}: entry {position} ({entries[position]!r}) is the class of entry {k} "
                f"({entries[k]!r}), class {class_index} ({classes.names[class_index]!r}); "
                f"each label must be its own class (a map file, dataset.classes={{...}}, may "
                f"merge labels)"
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
    classes: Classes,
) -> set[int] | None:
    """The class ids the dataset's classes cover (None: all, by declaration). An image
    folder's empty class folders count: a partial copy of ImageNet's 1000 folders is still
    ImageNet-1k, as torchvision's ImageFolder sees it."""
    if table is not None:
        present = set(table) - {UNMAPPED}
        with_empty = [_try(classes, n) for n in folder_names or []]
        if with_empty and None not in with_empty:
            present |= {i for i in with_empty if i is not None}
        return present
    if names is not None:
        return {i for _, i in names}
    return None


def _try(classes: Classes, entry: Any) -> int | None:
    """classes.find, with ambiguous names counted as unknown."""
    try:
        return classes.find(entry)
    except UserError:
        return None

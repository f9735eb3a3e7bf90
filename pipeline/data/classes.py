"""A model head's classes: which classes it has, in output order, and how a dataset's label
name finds one. ImageNet-1k (imagenet.py) is one kind; `Named` is any other head's: a
fine-tune's 3 or 37 classes, timm's 21843, whatever the head's names are.

A name finds a class when they are equal after normalising case, spaces, `_` and `-`
(`Golden_Retriever` is `golden retriever`); nothing else is guessed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.errors import UserError


class Classes(Protocol):
    """Which classes a model's head has, and how a dataset's label names find them."""

    @property
    def kind(self) -> str: ...  # the label space when every class is covered: named:3

    @property
    def what(self) -> str: ...  # their family, in words: "ImageNet" (not ImageNet classes)

    @property
    def size(self) -> int: ...

    @property
    def names(self) -> tuple[str, ...]: ...  # in output order: what pred_name says

    def find(self, entry: Any) -> int | None: ...  # raises UserError when ambiguous

    def is_identity(self, names: Sequence[str]) -> bool: ...  # all, in output order

    def protocol(self, covered: set[int]) -> str | None: ...  # a known subset, in words


def normal(name: str) -> str:
    """A class name as names are compared: lower case, spaces, `_` and `-` as one space."""
    return re.sub(r"[\s_\-]+", " ", str(name)).strip().lower()


@dataclass(frozen=True)
class Named:
    """A head of its own classes, named in output order (HF id2label, model.classes, ...)."""

    names: tuple[str, ...]
    what: str = "the model's"  # "not the model's classes"
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for i, name in enumerate(self.names):
            key = normal(name)
            if key in self._index:
                j = self._index[key]
                raise UserError(
                    f"The head's classes {j} ({self.names[j]!r}) and {i} ({name!r}) are one "
                    f"name once case, spaces, '_' and '-' are set aside; name each class once"
                )
            self._index[key] = i

    @property
    def kind(self) -> str:
        return f"named:{self.size}"

    @property
    def size(self) -> int:
        return len(self.names)

    def find(self, entry: Any) -> int | None:
        return None if entry is None else self._index.get(normal(entry))

    def is_identity(self, names: Sequence[str]) -> bool:
        return [normal(n) for n in names] == [normal(n) for n in self.names]

    def protocol(self, covered: set[int]) -> str | None:
        return None  # known protocol subsets are ImageNet's


def read_names(path: str, key: str = "model.classes") -> tuple[str, ...]:
    """A class list: one name per line, in output order (blank lines skipped)."""
    try:
        with open(path) as f:
            names = tuple(line.strip() for line in f if line.strip())
    except OSError as e:
        raise UserError(f"{key}={path}: cannot read it ({e.strerror or e})") from None
    if not names:
        raise UserError(f"{key}={path} names no class (one name per line)")
    return names

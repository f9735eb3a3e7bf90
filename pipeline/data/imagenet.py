"""ImageNet-1k's 1000 classes as one kind of head classes (labels.Classes): their WordNet
ids, torchvision's names and ILSVRC's long names (pipeline/classes/), a name or id in any
of them found, and the class subsets whose authors score among them only.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib.resources import files
from typing import Any

from pipeline.errors import UserError

N_CLASSES = 1000

# the class subsets whose authors score among those classes only: a split whose classes are
# exactly one of these is restricted unless dataset.restrict=false (pipeline/classes/)
PROTOCOLS = {
    "imagenet-r": "ImageNet-R's 200 classes, scored among them (Hendrycks et al. 2021)",
    "imagenet-a": "ImageNet-A's 200 classes, scored among them (Hendrycks et al. 2021)",
    "imagenette": "Imagenette's 10 classes, scored among them (fast.ai)",
}


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


def try_id(entry: Any) -> int | None:
    """class_id, with ambiguous names counted as unknown."""
    try:
        return class_id(entry)
    except UserError:
        return None


def is_identity(names: Sequence[str]) -> bool:
    """All 1000 names of one vocabulary, in its order: the labels are the ids themselves
    (ambiguous names such as ILSVRC's two 'crane's are then no problem)."""
    lowered = [n.strip().lower() for n in names]
    return len(names) == N_CLASSES and any(
        lowered == [v.lower() for v in vocabulary] for vocabulary in _vocabularies()
    )


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


class ImageNet1k:
    """ImageNet-1k as a head's classes (labels.Classes): the default label space."""

    kind = "imagenet-1k"
    what = "ImageNet"  # "not ImageNet classes"
    size = N_CLASSES

    @property
    def names(self) -> tuple[str, ...]:
        """What pred_name says: torchvision's names, in class order."""
        return _vocabularies()[1]

    def find(self, entry: Any) -> int | None:
        return class_id(entry)

    def is_identity(self, names: Sequence[str]) -> bool:
        return is_identity(names)

    def protocol(self, covered: set[int]) -> str | None:
        found = known_protocol(covered)
        return None if found is None else PROTOCOLS[found]


IMAGENET_1K = ImageNet1k()

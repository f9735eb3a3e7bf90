"""Model heads: which classes a classifier's outputs are, from the names its library gives
them (timm's synsets, a transformers config's id2label) or model.classes.

A head is ImageNet-1k's when it names each of the 1000 classes exactly once (its other
outputs are dropped before softmax and top-k); any other head has its own classes, named
as its library names them (a fine-tune's 3, ImageNet-22k's 21843), and its runs are scored
in that label space. Never is a head read as if its outputs were ImageNet ids when its
names do not say so.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.data import imagenet
from pipeline.data.classes import Classes, Named, read_names
from pipeline.errors import UserError


def read(
    names: Sequence[str] | None, what: str, declared: str | None, outputs: int | None
) -> tuple[Classes, tuple[int, ...] | None, str]:
    """(the head's classes, the output columns to pick for them or None, how the head was
    read): model.classes where given, else ImageNet-1k where the names are its 1000,
    else the names themselves; a head its library does not name needs model.classes."""
    if declared is not None:
        classes = declared_classes(declared, outputs, what)
        return classes, None, f"{what}: {classes.kind} (model.classes={declared})"
    if names is None:
        count = "" if outputs is None else f"{outputs} "
        raise UserError(
            f"{what} has {count}outputs that nothing names: name them with "
            f"model.classes=FILE (one name per line, in output order) or imagenet-1k"
        )
    try:
        columns, how = to_imagenet(names, what)
        return imagenet.IMAGENET_1K, columns, how
    except UserError:
        own = Named(tuple(str(n) for n in names))
        return own, None, f"{what}: its own {own.size} classes ({', '.join(own.names[:3])}, ...)"


def declared_classes(value: str, outputs: int | None, what: str) -> Classes:
    """model.classes: imagenet-1k, or a file of names (one per line, in output order); as
    many as the head has outputs, where that is known."""
    if value.strip().lower() == "imagenet-1k":
        classes: Classes = imagenet.IMAGENET_1K
    else:
        classes = Named(read_names(value))
    if outputs is not None and classes.size != outputs:
        raise UserError(
            f"model.classes={value} names {classes.size} classes, but {what} has {outputs} outputs"
        )
    return classes


def to_imagenet(names: Sequence[str], what: str) -> tuple[tuple[int, ...] | None, str]:
    """(the output column of each of the 1000 classes, in class order; None when the head
    is ImageNet-1k's own, in its order), and how the head was read, in words."""
    names = [str(n) for n in names]
    if imagenet.is_identity(names):
        return None, f"{what}: ImageNet-1k (1000 outputs)"
    extra = len(names) - imagenet.N_CLASSES
    if extra > 0 and imagenet.is_identity(names[extra:]):  # Google's: background, then the 1000
        dropped = ", ".join(repr(n) for n in names[:extra])
        picked = tuple(range(extra, len(names)))
        return picked, f"{what}: {len(names)} outputs, ImageNet-1k's 1000 after {dropped}"
    try:
        return _by_name(names, what)
    except UserError as e:
        fix = "evaluate a model with an ImageNet-1k head"
        if len(names) == imagenet.N_CLASSES:
            raise UserError(f"{what}: {e}; {fix}") from None
        raise UserError(
            f"{what} has {len(names)} outputs, not ImageNet-1k's 1000: it is not an "
            f"ImageNet-1k head ({e}); {fix}"
        ) from None


def _by_name(names: list[str], what: str) -> tuple[tuple[int, ...], str]:
    """The output of each of the 1000 classes, found by the outputs' names."""
    column: dict[int, int] = {}
    ambiguous: set[str] = set()  # ILSVRC's long names call two classes 'crane'
    for i, name in enumerate(names):
        try:
            k = imagenet.class_id(name)
        except UserError:
            ambiguous.add(name)
            continue
        if k is None:
            continue
        if k in column:
            raise UserError(
                f"its outputs {column[k]} ({names[column[k]]!r}) and {i} ({name!r}) are both "
                f"ImageNet class {k}; it cannot be scored as ImageNet-1k"
            )
        column[k] = i
    if len(column) < imagenet.N_CLASSES:
        wnids, long_names = imagenet.imagenet_classes()
        absent = [k for k in range(imagenet.N_CLASSES) if k not in column]
        shown = ", ".join(f"{wnids[k]} ({long_names[k].split(',')[0]})" for k in absent[:3])
        first = ", ".join(repr(n) for n in names[:3])
        unclear = f"; {', '.join(map(repr, sorted(ambiguous)))} names several" if ambiguous else ""
        raise UserError(
            f"its {len(names)} outputs ({first}, ...) name {len(column)} of ImageNet-1k's "
            f"1000 classes (missing {shown}{' and more' if len(absent) > 3 else ''}{unclear}), "
            f"so it cannot be scored as ImageNet-1k"
        )
    picked = tuple(column[k] for k in range(imagenet.N_CLASSES))
    return picked, f"{what}: {len(names)} outputs, ImageNet-1k's 1000 picked by name"


class Head(nn.Module):
    """A classifier whose output is ImageNet-1k's 1000 logits in class order: its logits
    (a transformers output's `.logits`), the named columns picked where a map is given."""

    def __init__(self, body: nn.Module, columns: tuple[int, ...] | None) -> None:
        super().__init__()
        self.body = body
        self.columns: torch.Tensor | None
        self.register_buffer(
            "columns", None if columns is None else torch.tensor(columns), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        logits = getattr(out, "logits", out)
        return logits if self.columns is None else logits.index_select(1, self.columns)

"""What an exported model (ONNX, torch.export) carries besides its graph: the metadata
`python -m pipeline.export` writes into it (its source, classes, eval transform, published
numbers), read back so that its run needs no further flags, and the way a model exported
for one batch size runs any batch.

Metadata is one JSON text under the key `alexnet-eval` (an ONNX file's metadata_props, a
.pt2 file's extra files). A file without it is described as your own module is: model.classes
and model.preprocess, or model.resize / crop / mean / std.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.transforms import InterpolationMode

from pipeline.data import imagenet
from pipeline.data.classes import Classes, Named
from pipeline.data.transforms import EvalTransform, Style
from pipeline.errors import UserError
from pipeline.models import heads, preprocessing
from pipeline.models.base import LoadedModel, Published
from pipeline.models.weights import file_digest
from pipeline.request import ModelRequest

log = logging.getLogger(__name__)
KEY = "alexnet-eval"  # the metadata's name in the file
FORMAT = 1


def metadata(loaded: LoadedModel) -> str:
    """The JSON text an export of `loaded` carries."""
    t = loaded.transforms
    published = loaded.published
    imagenet_head = loaded.classes.kind == imagenet.IMAGENET_1K.kind
    return json.dumps(
        {
            "format": FORMAT,
            "source": {"arch": loaded.arch, "weights": loaded.source, "sha256": loaded.sha256},
            "library": loaded.library,
            "head": loaded.head,
            "classes": "imagenet-1k" if imagenet_head else list(loaded.classes.names),
            "preprocess": loaded.preprocess,
            "transform": {
                "resize_size": list(t.resize_size),
                "crop_size": list(t.crop_size),
                "interpolation": t.interpolation.value,
                "mean": list(t.mean),
                "std": list(t.std),
                "style": t.style.value,
                "crop_pct": t.crop_pct,
            },
            "published": published and [published.top1, published.top5, published.by],
        }
    )


@dataclass(frozen=True)
class Described:
    """An export's classes, eval transform and origin: from its metadata, else as given."""

    classes: Classes
    head: str
    transforms: EvalTransform
    preprocess: str
    published: Published | None = None
    exported_from: str | None = None  # the source's model.arch
    exported_from_sha256: str | None = None  # and its weights' sha256


def described(text: str | None, asked: ModelRequest, what: str, outputs: int | None) -> Described:
    """The metadata `text` (None: the file has none), with model.classes and
    model.preprocess taking precedence where given."""
    meta = _parse(text, what) if text else None
    classes: Classes
    if meta is None:
        classes, _, head = heads.read(None, what, asked.classes, outputs)
        transforms, how = preprocessing.given(asked, what)
        return Described(classes, head, transforms, how)
    if asked.classes is not None:
        classes, _, head = heads.read(None, what, asked.classes, outputs)
    else:
        named = meta["classes"]
        classes = imagenet.IMAGENET_1K if named == "imagenet-1k" else Named(tuple(named))
        head = f"{what}: {classes.kind} (its metadata: {meta['head']})"
    if asked.preprocess is not None:
        transforms, how = preprocessing.borrowed(asked.preprocess, what)
    else:
        t = meta["transform"]
        transforms = EvalTransform(
            resize_size=tuple(t["resize_size"]),
            crop_size=tuple(t["crop_size"]),
            interpolation=InterpolationMode(t["interpolation"]),
            mean=tuple(t["mean"]),
            std=tuple(t["std"]),
            style=Style(t["style"]),
            crop_pct=t["crop_pct"],
        )
        how = f"its metadata: {meta['preprocess']}"
    source, published = meta["source"], meta["published"]
    return Described(
        classes=classes,
        head=head,
        transforms=transforms,
        preprocess=how,
        published=Published(*published) if published and asked.preprocess is None else None,
        exported_from=source["arch"],
        exported_from_sha256=source["sha256"],
    )


def _parse(text: str, what: str) -> dict[str, Any]:
    try:
        meta = json.loads(text)
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, this version reads {FORMAT}")
        for key in ("source", "classes", "transform", "head", "preprocess", "published"):
            meta[key]
        return meta
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(
            f"{what}: its {KEY} metadata is damaged or from another version ({e}); "
            f"export it again, or give model.classes and model.preprocess"
        ) from None


def opened(asked: ModelRequest) -> tuple[str, str, Future[str] | str]:
    """An exported file's (path, model.arch in words, its sha256): the weights are the
    file, so model.weights stays unset."""
    path, what = asked.name, f"model.arch={asked.arch}"
    if asked.weights != "pretrained":
        raise UserError(f"model.weights={asked.weights}: {what} holds its weights; leave it unset")
    if not os.path.isfile(path):
        raise UserError(f"{what}: no such file")
    return path, what, file_digest(path, asked.sha256)


def loaded(
    body: nn.Module,
    told: Described,
    asked: ModelRequest,
    *,
    batch: int | None,
    digest: Future[str] | str,
    library: str,
    params: int = 0,
) -> LoadedModel:
    """The LoadedModel of an exported file's module (run in pieces where its batch is fixed)."""
    what = f"model.arch={asked.arch}"
    model = body if batch is None else FixedBatch(body, batch, what)
    return LoadedModel(
        model=model,  # as exported: no train mode (a .pt2's module refuses .eval())
        arch=asked.arch,
        weights=asked.weights,
        digest=digest,
        classes=told.classes,
        transforms=told.transforms,
        preprocess=told.preprocess,
        file=asked.name,
        source="checkpoint",
        library=library,
        head=told.head,
        published=told.published,
        params=params,
        exported_from=told.exported_from,
        exported_from_sha256=told.exported_from_sha256,
    )


class FixedBatch(nn.Module):
    """A model exported for one batch size, run on any batch: in pieces of that size, the
    last one padded with zeros and the padding's outputs dropped."""

    def __init__(self, body: nn.Module, size: int, what: str) -> None:
        super().__init__()
        self.body, self.size = body, size
        log.info(
            "%s takes batches of exactly %d images: batches run in pieces of %d, the last "
            "padded with blank images whose outputs are dropped",
            what,
            size,
            size,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for piece in torch.split(x, self.size):
            short = self.size - piece.shape[0]
            if short:
                piece = torch.cat([piece, piece.new_zeros((short, *piece.shape[1:]))])
            outputs.append(self.body(piece)[: self.size - short])
        return torch.cat(outputs)


# an exported file's answers to base.ModelSource's questions (from_onnx.py, from_pt2.py)
def head_classes(asked: ModelRequest) -> Classes | None:
    """Known once the file's metadata is read."""
    return None


def published_at(loaded: LoadedModel, transforms: EvalTransform) -> Published | None:
    """An export's published numbers hold at its own transform only."""
    return None


def cached_file(asked: ModelRequest) -> str | None:
    """The file itself: hashed while the dataset loads."""
    return asked.name if os.path.isfile(asked.name) else None

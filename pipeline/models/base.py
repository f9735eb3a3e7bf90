"""The model sources' one interface: what a source gives for a model (LoadedModel), and the
functions each source module has (ModelSource). torchvision, timm and transformers are one
module each (from_*.py), found by their prefix in models/registry.py.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from torch import nn

from pipeline.data.classes import Classes
from pipeline.data.transforms import EvalTransform
from pipeline.errors import UserError
from pipeline.request import ModelRequest

if TYPE_CHECKING:
    from pipeline.models.zeroshot import Prompts


@dataclass(frozen=True)
class Published:
    """The ImageNet-1k val accuracy a library publishes for these weights at this eval
    transform: what a whole val run is checked against."""

    top1: float
    top5: float | None  # None: not published (open_clip's table has top-1 only)
    by: str  # whose numbers, in words: "torchvision IMAGENET1K_V1", "timm results (...)"


@dataclass
class LoadedModel:
    model: nn.Module  # outputs one logit per class of `classes`, in their order
    arch: str  # as given: alexnet, timm:resnet50.a1_in1k, hf:microsoft/resnet-50
    weights: str  # a torchvision weights name, pretrained, the checkpoint path, or "none"
    digest: Future[str] | str | None  # sha256 of the weights file, hashed in the background
    classes: Classes  # the head's classes: ImageNet-1k's, or its own
    transforms: EvalTransform  # the eval transform, as numbers
    preprocess: str  # where those numbers come from
    expected_prefix: str | None = None  # the hash prefix torchvision puts in a file's name
    file: str | None = None  # the weights file read: torchvision's cached one, or a checkpoint
    # what the predictions depend on, not where the file lay: a torchvision weights name,
    # "pretrained" (timm, hf), "checkpoint" (its sha256 says which one) or "none"
    source: str = "none"
    library: str = ""  # the library and its version: "torchvision 0.29.1"
    head: str = "ImageNet-1k (1000 outputs)"  # how the outputs were read
    published: Published | None = None
    params: int = 0  # counted from the model's parameters where the source gives 0
    gmacs: float = 0.0  # multiply-adds of one image at the crop size, in billions
    kwargs: str | None = None  # a module's builder's arguments, as JSON
    exported_from: str | None = None  # an export: its source's model.arch ...
    exported_from_sha256: str | None = None  # ... and that model's weights' sha256
    prompts: Prompts | None = None  # a zero-shot head's text (names, templates)

    @property
    def categories(self) -> tuple[str, ...]:
        """The head's class names, in output order: what pred_name says."""
        return self.classes.names

    @property
    def sha256(self) -> str | None:
        """The weights file's sha256; a cached torchvision file whose hash does not start
        with the prefix in its name is refused (a wrong file staged under that name)."""
        digest = self.digest.result() if isinstance(self.digest, Future) else self.digest
        if digest and self.expected_prefix and not digest.startswith(self.expected_prefix):
            raise UserError(
                f"{self.file} has sha256 {digest[:16]}..., but its name says it starts with "
                f"{self.expected_prefix}: it is not {self.weights}. Delete it and stage the "
                f"right file (or let torchvision download it)"
            )
        return digest


class ModelSource(Protocol):
    """A way of getting a classifier (lm-evaluation-harness's model backends have this
    shape): a module of models/ with these functions, one line of registry.SOURCES."""

    def load(self, asked: ModelRequest) -> LoadedModel:
        """The model with its weights (offline, with their sha256), its eval transform, its
        head's class names and its published numbers, on the CPU."""
        ...

    def published_at(self, loaded: LoadedModel, transforms: EvalTransform) -> Published | None:
        """The library's published numbers for its own weights at another eval transform."""
        ...

    def cached_file(self, asked: ModelRequest) -> str | None:
        """The weights file this request will read, where it is on disk already (hashed
        while the dataset loads)."""
        ...

    def head_classes(self, asked: ModelRequest) -> Classes | None:
        """The head's classes where they are known before the weights are read (the labels
        are then checked first); None: known once the model is loaded."""
        ...

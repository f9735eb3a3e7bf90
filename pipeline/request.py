"""What a run is asked to do, as typed values: the command line's config, read once
(resolve.py), cut into the part each stage receives: the split's source, what its labels
mean, ImageNet-C's corruption, the model, the rows, the runtime.

A leaf of plain dataclasses: the stages import their part from here, never the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.choices import Amp, Backend, Interpolation, Library, OnError, Protocol

if TYPE_CHECKING:
    from pipeline.models.zeroshot import Prompts


@dataclass(frozen=True)
class Source:
    """Where a split comes from and what its columns are: what `datasets` and the decoder
    need."""

    path: str  # hub id, builder name (parquet, imagefolder) or a local folder
    name: str | None = None
    split: str | None = None  # None: the data's only split
    revision: str | None = None
    data_dir: str | None = None
    data_files: Any = None  # str, list or {split: files}, plain
    streaming: bool = False
    image_column: str = "image"  # auto: the only image column
    label_column: str | None = "label"
    id_column: str | None = None
    image_roots: tuple[str, ...] = ()  # more folders that stored image paths may lead into


@dataclass(frozen=True)
class LabelRequest:
    """How the split's labels are to be read (data/labels.py)."""

    classes: Any = None  # dataset.classes: imagenet-1k, a list, a file, a {label: name} map
    restrict: bool | None = None  # None: only a known protocol's subset restricts


@dataclass(frozen=True)
class Corruption:
    """What a run's images are, as ImageNet-C goes: a cell of the release, its clean val
    split, a corruption made on the fly, or none of it (name None)."""

    name: str | None = None  # one of ImageNet-C's corruptions, "clean", or None
    severity: int | None = None
    source: str | None = None  # "ImageNet-C release", "clean", or the on-the-fly library
    protocol: Protocol = Protocol.standard

    @property
    def on_the_fly(self) -> tuple[str, int] | None:
        """(name, severity) for the workers to corrupt each crop with, or None."""
        made = self.source is not None and self.source not in (RELEASE, CLEAN)
        return (self.name, self.severity) if made and self.name and self.severity else None


RELEASE, CLEAN = "ImageNet-C release", "clean"


@dataclass(frozen=True)
class ModelRequest:
    """The model: its library, its name there, its weights and its eval transform's
    overrides (models/)."""

    library: Library
    name: str  # torchvision's arch, timm's NAME.TAG, a hub id or folder
    weights: str = "pretrained"  # pretrained | a torchvision weights name | a file | none
    sha256: str | None = None
    preprocess: str | None = None  # a checkpoint's transforms: a torchvision weights name
    resize: int | None = None
    crop: int | None = None
    interpolation: Interpolation | None = None
    mean: tuple[float, ...] | None = None  # a module's or an export's normalization, given
    std: tuple[float, ...] | None = None
    classes: str | None = None  # the head's classes: imagenet-1k, or a file of names
    kwargs: tuple[tuple[str, Any], ...] = ()  # a module's builder's keyword arguments
    classnames: str | None = None  # a zero-shot model's class names, a file
    templates: str | None = None  # and its templates, a file
    prompts: Prompts | None = None  # a zero-shot head's text, decided from the dataset

    @property
    def arch(self) -> str:
        """As model.arch writes it: alexnet, timm:NAME, hf:ID."""
        return (
            self.name
            if self.library is Library.torchvision
            else f"{self.library.value}:{self.name}"
        )


@dataclass(frozen=True)
class Rows:
    """Which rows of the split: the first `limit`, and of those slice `index` of `count`."""

    limit: int | None = None
    shard_index: int = 0
    shard_count: int = 1


@dataclass(frozen=True)
class Runtime:
    """How to run: what may differ between attempts without changing a prediction beyond
    float noise (resolved for this process by settings.py)."""

    device: str = "auto"
    amp: Amp = Amp.auto
    num_workers: str = "auto"
    streams: str = "auto"
    backend: Backend = Backend.pil
    channels_last: bool = True
    compile: bool = False
    batch_size: int = 256
    commit_rows: int = 4096
    on_error: OnError = OnError["record"]  # type: ignore[valid-type]
    oom_retry: bool = True
    progress: bool = True


@dataclass(frozen=True)
class Request:
    """One run, asked for."""

    source: Source
    model: ModelRequest
    title: str | None = None  # the dataset's name in tables and plots
    labels: LabelRequest = LabelRequest()
    corruption: Corruption = Corruption()
    rows: Rows = Rows()
    runtime: Runtime = Runtime()
    real_labels: str | None = None  # ImageNet-ReaL's real.json

"""The run, resolved into one frozen, typed plan: what the stages read, what run.json
stores, what the metrics row reports and what a resume or a merge compares.

The plan is made of parts, one per stage that fills and reads it: the split (`data`), the
model (`model`), how pixels are made (`pixels`), the labels (`labels`), the runtime
(`runtime`, which settings.py resolves and inference reads) and the versions. `auto`
becomes what is actually used. Each field is a `results` setting, what the predictions
depend on (a resume or a merge under another value is refused, naming it), or a `runtime`
one, what may differ between attempts without changing a prediction beyond float noise
(batch size, workers, where a file lay, ...). run.json and the metrics row hold the fields
flat, under their own names. No torch here: the commands over finished runs read plans.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.choices import Backend, OnError, Protocol
from pipeline.errors import UserError
from pipeline.request import Source

if TYPE_CHECKING:
    import pyarrow as pa
    import torch

VERSION = 4  # of run.json's layout; a folder of another version is refused, not guessed at
RESULTS, RUNTIME = "results", "runtime"
IN_RESULTS, AT_RUNTIME = {"part": RESULTS}, {"part": RUNTIME}  # a field's metadata


def dataset_title(title: str | None, path: str, data_files: Any) -> str:
    """A dataset's name in tables and plots: dataset.title, else its path (and for a builder
    such as parquet, its data files)."""
    if title:
        return title
    return path if data_files is None else f"{path}:{data_files}"


@dataclass(frozen=True)
class DataPlan:
    """The split: where it comes from, which rows of it this folder covers."""

    dataset_path: str = field(metadata=IN_RESULTS)
    dataset_name: str | None = field(metadata=IN_RESULTS)
    split: str = field(metadata=IN_RESULTS)
    dataset_revision: str | None = field(metadata=IN_RESULTS)
    data_dir: str | None = field(metadata=IN_RESULTS)
    data_files: Any = field(metadata=IN_RESULTS)  # str, list or {split: files}, as given
    image_column: str = field(metadata=IN_RESULTS)
    label_column: str | None = field(metadata=IN_RESULTS)
    id_column: str | None = field(metadata=IN_RESULTS)
    image_roots: tuple[str, ...] = field(metadata=IN_RESULTS)
    dataset_rows: int | None = field(metadata=IN_RESULTS)  # None: streamed, unknown until its end
    dataset_fingerprint: str | None = field(metadata=IN_RESULTS)
    limit: int | None = field(metadata=IN_RESULTS)
    shard: str = field(metadata=IN_RESULTS)  # "index/count"
    rows: tuple[int, int | None] = field(metadata=IN_RESULTS)  # [start, stop) of the split
    dataset_title: str | None = field(metadata=AT_RUNTIME)  # the dataset's name in tables
    streaming: bool = field(metadata=AT_RUNTIME)

    @property
    def title(self) -> str:
        return dataset_title(self.dataset_title, self.dataset_path, self.data_files)

    @property
    def source(self) -> Source:
        """Where the split comes from, to load it again (the report's thumbnails)."""
        return Source(
            path=self.dataset_path,
            name=self.dataset_name,
            split=self.split,
            revision=self.dataset_revision,
            data_dir=self.data_dir,
            data_files=self.data_files,
            streaming=self.streaming,
            image_column=self.image_column,
            label_column=self.label_column,
            id_column=self.id_column,
            image_roots=self.image_roots,
        )


@dataclass(frozen=True)
class ModelPlan:
    """The model, its weights and its eval transform."""

    model: str = field(metadata=IN_RESULTS)  # model.arch as resolved: alexnet, timm:NAME.TAG
    # a torchvision weights name, "pretrained" (timm, hf), "checkpoint" or "none"
    weights: str = field(metadata=IN_RESULTS)
    model_library: str = field(metadata=IN_RESULTS)  # the library and its version
    head: str = field(metadata=IN_RESULTS)  # how the model's outputs were read
    weights_sha256: str | None = field(metadata=IN_RESULTS)
    preprocess: str = field(metadata=IN_RESULTS)
    classes: str = field(metadata=IN_RESULTS)  # the head's label space: imagenet-1k, named:N
    categories: tuple[str, ...] = field(metadata=IN_RESULTS)  # the head's class names
    model_kwargs: str | None = field(metadata=IN_RESULTS)  # model.arch=module:...'s, as JSON
    # a zero-shot head: the sha256 of its class names' and its templates' texts
    zero_shot_names_sha256: str | None = field(metadata=IN_RESULTS)
    zero_shot_templates_sha256: str | None = field(metadata=IN_RESULTS)
    weights_path: str | None = field(metadata=AT_RUNTIME)
    params: int = field(metadata=AT_RUNTIME)
    gmacs: float = field(metadata=AT_RUNTIME)  # multiply-adds of one image, billions
    # what the model's library publishes for it on ImageNet-1k val: (top-1, top-5), whose
    published_ref: tuple[float, float | None] | None = field(metadata=AT_RUNTIME)
    published_by: str | None = field(metadata=AT_RUNTIME)
    # an export (python -m pipeline.export): its source's model.arch and weights' sha256
    exported_from: str | None = field(metadata=AT_RUNTIME)
    exported_from_sha256: str | None = field(metadata=AT_RUNTIME)


@dataclass(frozen=True)
class PixelPlan:
    """How an image's pixels are made: the decoder, the protocol, ImageNet-C's corruption."""

    backend: Backend = field(metadata=IN_RESULTS)
    protocol: Protocol = field(metadata=IN_RESULTS)  # standard, or crop only (ImageNet-C's)
    corruption: str | None = field(metadata=IN_RESULTS)  # ImageNet-C: a corruption, or clean
    severity: int | None = field(metadata=IN_RESULTS)
    corruption_source: str | None = field(metadata=IN_RESULTS)  # the release, or on the fly


@dataclass(frozen=True)
class LabelPlan:
    """What the labels mean: the label space, and ImageNet-ReaL's where given."""

    # the head's (imagenet-1k, named:N) | subset:<n> of it | unlabeled
    label_space: str = field(metadata=IN_RESULTS)
    dataset_label_type: str = field(metadata=IN_RESULTS)  # the dataset_label column's type
    restricted: bool = field(metadata=IN_RESULTS)
    label_map: str = field(metadata=IN_RESULTS)  # digest of the resolved mapping
    real_labels_sha256: str | None = field(metadata=IN_RESULTS)
    label_source: str = field(metadata=AT_RUNTIME)  # how the labels were read, in words
    real_labels: str | None = field(metadata=AT_RUNTIME)


@dataclass(frozen=True)
class RuntimePlan:
    """What the scoring loop runs with (settings.py resolves it; inference reads it)."""

    device_type: str = field(metadata=IN_RESULTS)
    amp: str = field(metadata=IN_RESULTS)  # the autocast dtype used: float16, bfloat16 or off
    device: str = field(metadata=AT_RUNTIME)
    batch_size: int = field(metadata=AT_RUNTIME)
    num_workers: int = field(metadata=AT_RUNTIME)
    streams: int = field(metadata=AT_RUNTIME)
    threads: int = field(metadata=AT_RUNTIME)
    world_size: int = field(metadata=AT_RUNTIME)
    commit_rows: int = field(metadata=AT_RUNTIME)
    channels_last: bool = field(metadata=AT_RUNTIME)
    compile: bool = field(metadata=AT_RUNTIME)
    on_error: OnError = field(metadata=AT_RUNTIME)  # type: ignore[valid-type]
    progress: bool = field(metadata=AT_RUNTIME)

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype (None: fp32)."""
        import torch

        return None if self.amp == "off" else getattr(torch, self.amp)


@dataclass(frozen=True)
class Versions:
    """Which code ran, where and when."""

    torch_version: str = field(metadata=IN_RESULTS)
    torchvision_version: str = field(metadata=IN_RESULTS)
    pillow_version: str = field(metadata=IN_RESULTS)
    datasets_version: str = field(metadata=AT_RUNTIME)
    git_commit: str | None = field(metadata=AT_RUNTIME)
    host: str = field(metadata=AT_RUNTIME)
    start_time: str = field(metadata=AT_RUNTIME)
    merged_shards: int = field(default=0, metadata=AT_RUNTIME)  # a merge: the shards it joins


PARTS = {
    "data": DataPlan,
    "model": ModelPlan,
    "pixels": PixelPlan,
    "labels": LabelPlan,
    "runtime": RuntimePlan,
    "versions": Versions,
}


@dataclass(frozen=True)
class RunPlan:
    """Every setting of one run, resolved (see the module docstring for its parts)."""

    data: DataPlan
    model: ModelPlan
    pixels: PixelPlan
    labels: LabelPlan
    runtime: RuntimePlan
    versions: Versions

    @property
    def schema(self) -> pa.Schema:
        """The predictions' columns under this plan."""
        from pipeline.runs import predictions

        labels = self.labels
        return predictions.schema(
            labels.dataset_label_type, real=labels.real_labels_sha256 is not None
        )

    def changed(self, **flat: Any) -> RunPlan:
        """The plan with fields changed, named as run.json names them (batch_size=...)."""
        unknown = set(flat) - {f.name for kind in PARTS.values() for f in fields(kind)}
        if unknown:
            raise TypeError(f"not fields of a run plan: {', '.join(sorted(unknown))}")
        parts = {}
        for key, kind in PARTS.items():
            mine = {f.name: flat[f.name] for f in fields(kind) if f.name in flat}
            if mine:
                parts[key] = replace(getattr(self, key), **mine)
        return replace(self, **parts)

    def part(self, name: str) -> dict[str, Any]:
        """One part (results or runtime), as JSON holds it: enums as values, tuples as lists."""
        return {
            f.name: _json(getattr(getattr(self, key), f.name))
            for key, kind in PARTS.items()
            for f in fields(kind)
            if f.metadata["part"] == name
        }

    def record(self) -> dict[str, Any]:
        """What run.json holds."""
        return {"version": VERSION, RESULTS: self.part(RESULTS), RUNTIME: self.part(RUNTIME)}

    def columns(self) -> dict[str, Any]:
        """The plan as flat columns of the metrics row (lists and dicts as text; the class
        names stay in run.json)."""
        flat = self.part(RESULTS) | self.part(RUNTIME)
        return {
            k: v if isinstance(v, str | int | float | bool | None) else str(v)
            for k, v in flat.items()
            if k != "categories"
        }

    @classmethod
    def from_record(cls, record: Any, where: Path) -> RunPlan:
        """run.json's content back into a plan; one line when it is not this version's."""
        if not isinstance(record, dict) or not isinstance(record.get(RESULTS), dict):
            raise UserError(f"{where} is not this pipeline's run record; use a new output folder")
        if record.get("version") != VERSION:
            raise UserError(
                f"{where} was written by another version of this pipeline (format "
                f"{record.get('version')!r}, this one reads {VERSION}); finish that folder "
                f"with the version that made it, or use a new one"
            )
        values = {**record.get(RESULTS, {}), **record.get(RUNTIME, {})}
        try:
            return cls(**{key: _part(kind, values) for key, kind in PARTS.items()})
        except (TypeError, ValueError) as e:
            raise UserError(f"{where} is damaged or not this pipeline's: {e}") from None


def _part(kind: type, values: dict[str, Any]) -> Any:
    return kind(
        **{f.name: _typed(str(f.type), values[f.name]) for f in fields(kind) if f.name in values}
    )


def _json(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return [_json(v) for v in value]
    return value


def _typed(annotation: str, value: Any) -> Any:
    """A JSON value as the field declares it (enums from values, tuples from lists)."""
    if annotation == "Backend":
        return Backend(value)
    if annotation == "Protocol":
        return Protocol(value)
    if annotation == "OnError":
        return OnError(value)
    if annotation.startswith("tuple") and isinstance(value, list):
        return tuple(value)
    return value


def covered_rows(dataset_rows: int, limit: int | None) -> int:
    """How many rows of the split a run covers: all of them, or the first `limit`."""
    return dataset_rows if limit is None else min(limit, dataset_rows)

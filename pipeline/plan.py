"""The run, resolved into one frozen, typed plan: what the stages read, what run.json
stores, what the metrics row reports and what a resume or a merge compares.

`auto` becomes what is actually used (device, amp dtype, workers, streams, split, label
space). Each field is a `results` setting, what the predictions depend on (a resume or a
merge under another value is refused, naming it), or a `runtime` one, what may differ
between attempts without changing a prediction beyond float noise (batch size, workers,
streams, commit_rows, world size, where a file lay, ...). No torch here: the commands over
finished runs read plans too.
"""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import Backend, Config, OnError, Protocol, plain
from pipeline.errors import UserError
from pipeline.splits import Source

if TYPE_CHECKING:
    import pyarrow as pa
    import torch

    from pipeline.imagenet_c import Corruption
    from pipeline.labels import LabelSpace
    from pipeline.model import LoadedModel
    from pipeline.real import RealLabels
    from pipeline.settings import Settings
    from pipeline.splits import Split

VERSION = 3  # of run.json's layout; a folder of another version is refused, not guessed at
RESULTS, RUNTIME = "results", "runtime"


IN_RESULTS, AT_RUNTIME = {"part": RESULTS}, {"part": RUNTIME}  # a field's metadata


def dataset_title(title: str | None, path: str, data_files: Any) -> str:
    """A dataset's name in tables and plots: dataset.title, else its path (and for a builder
    such as parquet, its data files)."""
    if title:
        return title
    return path if data_files is None else f"{path}:{plain(data_files)}"


@dataclass(frozen=True)
class RunPlan:
    """Every setting of one run, resolved (see the module docstring for its two parts)."""

    # the split: where it comes from, which rows of it this folder covers
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
    # the model and its preprocessing
    model: str = field(metadata=IN_RESULTS)  # model.arch: alexnet, timm:NAME, hf:ID
    # a torchvision weights name, "pretrained" (timm, hf), "checkpoint" or "none"
    weights: str = field(metadata=IN_RESULTS)
    model_library: str = field(metadata=IN_RESULTS)  # the library and its version
    head: str = field(metadata=IN_RESULTS)  # how the model's outputs were read as ImageNet-1k
    weights_sha256: str | None = field(metadata=IN_RESULTS)
    preprocess: str = field(metadata=IN_RESULTS)
    categories: tuple[str, ...] = field(
        metadata=IN_RESULTS
    )  # the model's class names: what pred_name says
    device_type: str = field(metadata=IN_RESULTS)
    amp: str = field(metadata=IN_RESULTS)  # the autocast dtype used: float16, bfloat16 or off
    backend: Backend = field(metadata=IN_RESULTS)
    protocol: Protocol = field(metadata=IN_RESULTS)  # standard, or crop only (ImageNet-C's)
    corruption: str | None = field(metadata=IN_RESULTS)  # ImageNet-C: a corruption, or clean
    severity: int | None = field(metadata=IN_RESULTS)
    corruption_source: str | None = field(metadata=IN_RESULTS)  # the release, or on the fly
    # the labels
    label_space: str = field(metadata=IN_RESULTS)  # imagenet-1k | subset:<n> | unlabeled
    dataset_label_type: str = field(
        metadata=IN_RESULTS
    )  # int64 | string: the dataset_label column's type
    restricted: bool = field(metadata=IN_RESULTS)
    label_map: str = field(
        metadata=IN_RESULTS
    )  # digest of the resolved mapping, however it was given
    real_labels_sha256: str | None = field(metadata=IN_RESULTS)
    torch_version: str = field(metadata=IN_RESULTS)
    torchvision_version: str = field(metadata=IN_RESULTS)
    pillow_version: str = field(metadata=IN_RESULTS)
    # runtime
    dataset_title: str | None = field(metadata=AT_RUNTIME)  # the dataset's name in tables
    weights_path: str | None = field(metadata=AT_RUNTIME)
    params: int = field(metadata=AT_RUNTIME)
    gmacs: float = field(metadata=AT_RUNTIME)  # multiply-adds of one image, billions
    # what the model's library publishes for it on ImageNet-1k val: (top-1, top-5), whose
    published_ref: tuple[float, float] | None = field(metadata=AT_RUNTIME)
    published_by: str | None = field(metadata=AT_RUNTIME)
    label_source: str = field(metadata=AT_RUNTIME)  # how the labels were read, in words
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
    streaming: bool = field(metadata=AT_RUNTIME)
    progress: bool = field(metadata=AT_RUNTIME)
    real_labels: str | None = field(metadata=AT_RUNTIME)
    datasets_version: str = field(metadata=AT_RUNTIME)
    git_commit: str | None = field(metadata=AT_RUNTIME)
    host: str = field(metadata=AT_RUNTIME)
    start_time: str = field(metadata=AT_RUNTIME)
    merged_shards: int = field(
        default=0, metadata=AT_RUNTIME
    )  # a merge's target: how many shards it joins

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

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype (None: fp32)."""
        import torch

        return None if self.amp == "off" else getattr(torch, self.amp)

    @property
    def schema(self) -> pa.Schema:
        """The predictions' columns under this plan."""
        from pipeline import predictions

        return predictions.schema(self.dataset_label_type, real=self.real_labels_sha256 is not None)

    def part(self, name: str) -> dict[str, Any]:
        """One part (results or runtime), as JSON holds it: enums as values, tuples as lists."""
        return {
            f.name: _json(getattr(self, f.name)) for f in fields(self) if f.metadata["part"] == name
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
            return cls(
                **{
                    f.name: _typed(str(f.type), values[f.name])
                    for f in fields(cls)
                    if f.name in values
                }
            )
        except (TypeError, ValueError) as e:
            raise UserError(f"{where} is damaged or not this pipeline's: {e}") from None


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


def build(
    cfg: Config,
    settings: Settings,
    *,
    split: Split,
    rows: tuple[int, int | None],
    model: LoadedModel,
    labels: LabelSpace,
    real: RealLabels | None,
    corruption: Corruption,
    started: dt.datetime,
) -> RunPlan:
    """The plan of a run: the config, the settings resolved for this process, and what
    loading the split, its labels and the model found. One keyword per field of the plan,
    in its order (so mypy checks every one): long, and read at a glance."""
    import datasets
    import PIL
    import torch
    import torchvision

    d, pre = split.source, model.transforms  # what was loaded (ImageNet-C: a cell's folder)
    return RunPlan(
        dataset_path=d.path,
        dataset_name=d.name,
        split=split.name,
        dataset_revision=d.revision,
        data_dir=d.data_dir,
        data_files=plain(d.data_files),
        image_column=split.image_column,
        label_column=d.label_column,
        id_column=d.id_column,
        image_roots=tuple(d.image_roots),
        dataset_rows=split.num_rows,
        dataset_fingerprint=split.fingerprint,
        limit=cfg.limit,
        shard=f"{cfg.shard.index}/{cfg.shard.count}",
        rows=rows,
        model=model.arch,
        weights=model.source,
        model_library=model.library,
        head=model.head,
        weights_sha256=model.sha256,
        preprocess=f"{model.preprocess}: {pre.describe()}"
        + (" (crop only: no resize)" if corruption.protocol is Protocol.crop else ""),
        categories=tuple(model.categories),
        device_type=settings.device.type,
        amp=settings.amp_name,
        backend=cfg.backend,
        protocol=corruption.protocol,
        corruption=corruption.name,
        severity=corruption.severity,
        corruption_source=corruption.source,
        label_space=labels.kind,
        dataset_label_type=labels.label_type,
        restricted=labels.restricted,
        label_map=labels.digest(),
        real_labels_sha256=real.sha256 if real else None,
        torch_version=torch.__version__,
        torchvision_version=torchvision.__version__,
        pillow_version=PIL.__version__,
        dataset_title=cfg.dataset.title,
        weights_path=model.file,
        params=model.params,
        gmacs=model.gmacs,
        published_ref=(model.published.top1, model.published.top5) if model.published else None,
        published_by=model.published.by if model.published else None,
        label_source=labels.source,
        device=str(settings.device),
        batch_size=cfg.batch_size,
        num_workers=settings.workers,
        streams=settings.streams,
        threads=settings.threads,
        world_size=settings.world_size,
        commit_rows=cfg.commit_rows,
        channels_last=cfg.channels_last,
        compile=cfg.compile,
        on_error=cfg.on_error,
        streaming=d.streaming,
        progress=cfg.progress,
        real_labels=real.path if real else None,
        datasets_version=datasets.__version__,
        git_commit=git_commit(),
        host=socket.gethostname(),
        start_time=started.isoformat(timespec="seconds"),
    )


def covered_rows(dataset_rows: int, limit: int | None) -> int:
    """How many rows of the split a run covers: all of them, or the first `limit`."""
    return dataset_rows if limit is None else min(limit, dataset_rows)


def git_commit() -> str | None:
    """The commit of the code that ran, when it runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None

"""What loading found, as the run plan's parts: one small builder per part, from the
request and the stage that filled it (the runtime part is settings.py's).
"""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
from pathlib import Path

from pipeline.choices import Protocol
from pipeline.data.labels import LabelSpace
from pipeline.data.real import RealLabels
from pipeline.data.source import Split
from pipeline.models.base import LoadedModel
from pipeline.request import Corruption, Request
from pipeline.runs.plan import (
    DataPlan,
    LabelPlan,
    ModelPlan,
    PixelPlan,
    RunPlan,
    RuntimePlan,
    Versions,
)


def build(
    asked: Request,
    runtime: RuntimePlan,
    *,
    split: Split,
    rows: tuple[int, int | None],
    model: LoadedModel,
    labels: LabelSpace,
    real: RealLabels | None,
    corruption: Corruption,
    started: dt.datetime,
) -> RunPlan:
    """The plan of a run: the request, this process's runtime, and what loading the split,
    its labels and the model found."""
    return RunPlan(
        data=data(asked, split, rows),
        model=model_plan(model, corruption),
        pixels=pixels(asked, corruption),
        labels=label_plan(labels, real),
        runtime=runtime,
        versions=versions(started),
    )


def data(asked: Request, split: Split, rows: tuple[int, int | None]) -> DataPlan:
    d = split.source  # what was loaded (ImageNet-C: a cell's folder)
    return DataPlan(
        dataset_path=d.path,
        dataset_name=d.name,
        split=split.name,
        dataset_revision=d.revision,
        data_dir=d.data_dir,
        data_files=d.data_files,
        image_column=split.image_column,
        label_column=d.label_column,
        id_column=d.id_column,
        image_roots=tuple(d.image_roots),
        dataset_rows=split.num_rows,
        dataset_fingerprint=split.fingerprint,
        limit=asked.rows.limit,
        shard=f"{asked.rows.shard_index}/{asked.rows.shard_count}",
        rows=rows,
        dataset_title=asked.title,
        streaming=d.streaming,
    )


def model_plan(model: LoadedModel, corruption: Corruption) -> ModelPlan:
    crop_only = " (crop only: no resize)" if corruption.protocol is Protocol.crop else ""
    published = model.published
    return ModelPlan(
        model=model.arch,
        weights=model.source,
        model_library=model.library,
        head=model.head,
        weights_sha256=model.sha256,
        preprocess=f"{model.preprocess}: {model.transforms.describe()}{crop_only}",
        classes=model.classes.kind,
        categories=tuple(model.categories),
        model_kwargs=model.kwargs,
        zero_shot_names_sha256=model.prompts.names_sha256 if model.prompts else None,
        zero_shot_templates_sha256=model.prompts.templates_sha256 if model.prompts else None,
        weights_path=model.file,
        params=model.params,
        gmacs=model.gmacs,
        published_ref=(published.top1, published.top5) if published else None,
        published_by=published.by if published else None,
        exported_from=model.exported_from,
        exported_from_sha256=model.exported_from_sha256,
    )


def pixels(asked: Request, corruption: Corruption) -> PixelPlan:
    return PixelPlan(
        backend=asked.runtime.backend,
        protocol=corruption.protocol,
        corruption=corruption.name,
        severity=corruption.severity,
        corruption_source=corruption.source,
    )


def label_plan(labels: LabelSpace, real: RealLabels | None) -> LabelPlan:
    return LabelPlan(
        label_space=labels.kind,
        dataset_label_type=labels.label_type,
        restricted=labels.restricted,
        label_map=labels.digest(),
        real_labels_sha256=real.sha256 if real else None,
        label_source=labels.source,
        real_labels=real.path if real else None,
    )


def versions(started: dt.datetime) -> Versions:
    import datasets
    import PIL
    import torch
    import torchvision

    return Versions(
        torch_version=torch.__version__,
        torchvision_version=torchvision.__version__,
        pillow_version=PIL.__version__,
        datasets_version=datasets.__version__,
        git_commit=git_commit(),
        host=socket.gethostname(),
        start_time=started.isoformat(timespec="seconds"),
    )


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

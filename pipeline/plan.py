"""Every setting resolved once, into a frozen plan: what the stages receive, what run.json
stores, what the metrics row reports and what a resume compares.

`auto` becomes what is actually used (device, amp dtype, workers, streams, split, label
space). The plan has two halves: `results`, what the predictions depend on (a resume or
a merge under another value is refused, naming it), and `runtime`, what may differ
between attempts without changing a prediction beyond float noise (batch size, workers,
streams, commit_rows, world size, progress, ...).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.config import Config, plain
from pipeline.errors import UserError
from pipeline.labels import LabelSpace, RealLabels


@dataclass(frozen=True)
class Settings:
    """What is resolved before anything is loaded."""

    device: torch.device
    amp: torch.dtype | None
    workers: int
    streams: int
    threads: int  # torch's intra-op threads of this process
    world_size: int

    @property
    def amp_name(self) -> str:
        return str(self.amp).removeprefix("torch.") if self.amp else "off"


def resolve_settings(cfg: Config, device: torch.device, world_size: int) -> Settings:
    from pipeline import inference, model

    amp = model.resolve_amp(cfg.amp.value, device)
    if cfg.backend.value == "device":
        require_torchcodec()
    threads = _threads(device)
    torch.set_num_threads(threads)
    return Settings(
        device=device,
        amp=amp,
        workers=resolve_workers(cfg.num_workers, device),
        streams=inference.resolve_streams(cfg.streams, device, compile=cfg.compile),
        threads=threads,
        world_size=world_size,
    )


def require_torchcodec() -> None:
    """backend=device decodes with TorchCodec's batched JPEG decoder: it must import."""
    try:
        from torchcodec.decoders import decode_jpeg  # noqa: F401
    except (ImportError, OSError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"backend=device needs TorchCodec ({reason}); pip install torchcodec, or use "
            f"backend=tensor"
        ) from None


def _cores() -> int:
    """The cores this process may use, shared by the ranks torchrun started on this node."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def _threads(device: torch.device) -> int:
    """On CPU each rank's model gets its share of the cores (one rank: torch's default)."""
    if device.type == "cpu" and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        return _cores()
    return torch.get_num_threads()


def resolve_workers(value: str, device: torch.device) -> int:
    """num_workers: a count, or auto = this rank's cores (on CPU half: the model runs there)."""
    if value != "auto":
        if not value.isdigit():
            raise UserError(
                f"num_workers={value!r}; valid: auto or a count (0 = decode in-process)"
            )
        return int(value)
    return _cores() if device.type != "cpu" else max(1, _cores() // 2)


@dataclass(frozen=True)
class RunPlan:
    """The whole run, resolved: see the module docstring for its two halves."""

    results: dict[str, Any]
    runtime: dict[str, Any]

    def record(self) -> dict[str, Any]:
        """What run.json holds."""
        return {"results": self.results, "runtime": self.runtime}

    def columns(self) -> dict[str, Any]:
        """The plan as flat columns of the metrics row (lists and dicts as text; the class
        names stay in run.json)."""
        flat = {**self.results, **self.runtime}
        return {
            k: v if isinstance(v, str | int | float | bool | None) else str(v)
            for k, v in flat.items()
            if k != "categories"
        }


def build(
    cfg: Config,
    settings: Settings,
    *,
    split_name: str,
    num_rows: int | None,
    fingerprint: str | None,
    image_column: str,
    rows: tuple[int, int | None],
    loaded: Any,  # model.LoadedModel
    labels: LabelSpace,
    real: RealLabels | None,
    started: dt.datetime,
) -> RunPlan:
    import datasets
    import PIL
    import torchvision

    d = cfg.dataset
    pre = loaded.transforms
    results = {
        "dataset_path": d.path,
        "dataset_name": d.name,
        "split": split_name,
        "dataset_revision": d.revision,
        "data_dir": d.data_dir,
        "data_files": plain(d.data_files),
        "image_column": image_column,
        "label_column": d.label_column,
        "id_column": d.id_column,
        "dataset_rows": num_rows,
        "dataset_fingerprint": fingerprint,
        "limit": cfg.limit,
        "shard": f"{cfg.shard.index}/{cfg.shard.count}",
        "rows": list(rows),
        "model": loaded.arch,
        "weights": loaded.source,  # a checkpoint is its sha256, wherever the file lies
        "weights_sha256": loaded.sha256,
        "categories": loaded.categories,  # what pred_name says, for the commands over runs
        "preprocess": (
            f"{loaded.preprocess}: resize {list(pre.resize_size)} {pre.interpolation.value}, "
            f"crop {list(pre.crop_size)}, mean {list(pre.mean)}, std {list(pre.std)}"
        ),
        "device_type": settings.device.type,
        "amp": settings.amp_name,
        "backend": cfg.backend.value,
        "label_space": labels.kind,
        "restricted": labels.restricted,
        "label_map": labels.digest(),  # the resolved mapping, however it was given
        "image_roots": list(d.image_roots),
        "real_labels_sha256": real.sha256 if real else None,
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "pillow_version": PIL.__version__,
    }
    runtime = {
        "weights_path": loaded.file,
        "label_source": labels.source,
        "device": str(settings.device),
        "batch_size": cfg.batch_size,
        "num_workers": settings.workers,
        "streams": settings.streams,
        "threads": settings.threads,
        "world_size": settings.world_size,
        "commit_rows": cfg.commit_rows,
        "channels_last": cfg.channels_last,
        "compile": cfg.compile,
        "on_error": cfg.on_error.value,
        "streaming": d.streaming,
        "real_labels": real.path if real else None,
        "datasets_version": datasets.__version__,
        "git_commit": git_commit(),
        "host": socket.gethostname(),
        "start_time": started.isoformat(timespec="seconds"),
    }
    return RunPlan(results, runtime)


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

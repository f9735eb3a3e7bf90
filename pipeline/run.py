"""Batched inference: config -> split -> model -> predictions parts -> Parquet.

`evaluate` is the whole run and reads top to bottom like the data flow. It
takes the typed `Config`, so it runs without Hydra too (the benchmark does);
`python -m pipeline` (__main__.py) composes that Config with Hydra.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from pipeline import data, distributed, inference, metrics, model, transforms, write
from pipeline.config import Config, UserError, check_values

log = logging.getLogger("pipeline")


class Stopped(BaseException):
    """SIGTERM (Slurm's warning before a timeout or preemption): commit and leave.

    A BaseException, like KeyboardInterrupt, so that no `except Exception`
    (a decoder's, say) can mistake it for a fault of the data.
    """

    exit_code = 128 + signal.SIGTERM


def evaluate(cfg: Config, out_dir: Path) -> dict[str, Any] | None:
    """Score the configured split; write predictions.parquet + metrics.parquet to out_dir.

    Returns the metrics row (None on ranks other than 0 under torchrun).
    """
    started = dt.datetime.now(dt.timezone.utc)
    check_values(cfg)
    group, device = distributed.setup(cfg.device)
    out_dir = Path(group.broadcast(str(out_dir)))  # every rank writes into rank 0's folder
    amp = model.resolve_amp(cfg.amp.value, device)
    workers = resolve_workers(cfg.num_workers, device)
    streams = inference.resolve_streams(cfg.streams, device, compile=cfg.compile)
    write.check_writable(out_dir)

    loaded = model.load_model(
        arch=cfg.model.arch, weights=cfg.model.weights, sha256=cfg.model.sha256
    )
    split = data.load_split(**asdict(cfg.dataset))
    whole, mine = distributed.plan_rows(split.num_rows, cfg, group)
    if group.rank == 0:
        write.check_resume(out_dir, write.run_settings(cfg, loaded.sha256, whole, split.num_rows))
    group.barrier()
    if (out_dir / "metrics.parquet").exists():
        print(f"{out_dir} is already complete; nothing to do")
        return pd.read_parquet(out_dir / "metrics.parquet").iloc[0].to_dict()

    net = model.place(loaded.model, device, channels_last=cfg.channels_last, compile=cfg.compile)
    scored, wall = score_rows(
        cfg,
        split,
        loaded,
        net,
        device=device,
        amp=amp,
        workers=workers,
        streams=streams,
        out_dir=out_dir,
        rows=mine,
        show=group.rank == 0,
    )
    total, wall = group.reduce(scored, "sum"), group.reduce(wall, "max")
    group.barrier()
    if group.rank != 0:
        return None
    extra = metrics.provenance(
        cfg, loaded, device=device, amp=amp, workers=workers, streams=streams, started=started
    )
    extra |= {
        "world_size": group.world,
        "shard": f"{cfg.shard.index}/{cfg.shard.count}",
        "images_per_sec": total / wall if wall > 0 else 0.0,
        "wall_seconds": wall,
    }
    result = finish(out_dir, whole, extra)
    print_summary(result, out_dir, reference=metrics.reference_accuracy(loaded, cfg))
    return result


def score_rows(
    cfg: Config,
    split: data.Split,
    loaded: model.LoadedModel,
    net: torch.nn.Module,
    *,
    device: torch.device,
    amp: torch.dtype | None,
    workers: int,
    streams: int,
    out_dir: Path,
    rows: tuple[int, int | None],
    show: bool,
) -> tuple[int, float]:
    """Score rows [start, stop) not yet committed under out_dir/parts; (images scored, seconds)."""
    parts = out_dir / "parts"
    start, stop = rows
    resume_at = write.committed(parts, start)
    if resume_at > start:
        log.info(
            "resuming at row %d: rows %d..%d are already committed", resume_at, start, resume_at
        )
    preprocess = transforms.Preprocess.from_transforms(loaded.transforms, cfg.backend.value)
    batches = data.iter_batches(
        split,
        start=resume_at,
        stop=stop,
        batch_size=cfg.batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        chunk_rows=max(cfg.batch_size * max(workers, 1) * 8, 1024),
        num_classes=len(loaded.categories),
        image_column=cfg.dataset.image_column,
        label_column=cfg.dataset.label_column,
        id_column=cfg.dataset.id_column,
        preprocess=preprocess,
    )
    writer = write.PredictionWriter(parts, loaded.categories, commit_rows=cfg.commit_rows)
    total = None if stop is None else stop - resume_at
    bar = tqdm(total=total, unit="img", disable=not (cfg.progress and show), dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        with stop_on_sigterm(), inference.threads_per_stream(streams, device):
            scored = inference.score(
                batches,
                writer,
                net,
                preprocess,
                device=device,
                amp=amp,
                streams=streams,
                on_error=cfg.on_error.value,
                channels_last=cfg.channels_last,
                progress=bar,
            )
    except Stopped:
        raise Stopped(f"Stopped by SIGTERM. {resume_hint(out_dir)}") from None
    except RuntimeError as e:
        if "DataLoader worker" not in str(e):
            raise
        raise UserError(
            f"A data worker died ({str(e).splitlines()[0]}). {resume_hint(out_dir)}"
        ) from e
    finally:
        writer.commit()  # what was scored before a failure is kept for the resume
    return scored, time.perf_counter() - t0


def finish(out_dir: Path, rows: tuple[int, int | None], extra: dict[str, Any]) -> dict[str, Any]:
    """Merge the parts into predictions.parquet, then write metrics.parquet, then drop the parts."""
    parts = out_dir / "parts"
    start, stop = rows[0], rows[1] if rows[1] is not None else write.committed(parts, rows[0])
    predictions = out_dir / "predictions.parquet"
    write.merge(write.part_spans(parts), predictions, start=start, stop=stop)
    result = metrics.accuracy(str(predictions)) | extra
    write.write_metrics(out_dir / "metrics.parquet", result)
    shutil.rmtree(parts, ignore_errors=True)
    (out_dir / write.ERROR_FILE).unlink(missing_ok=True)  # left by an earlier, failed attempt
    return result


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into `Stopped` in the main process, so the loop commits and leaves."""

    def handler(signum: int, frame: Any) -> None:
        raise Stopped("SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def resume_hint(out_dir: Path) -> str:
    return f"Rows scored so far are kept: run again with output_dir={out_dir} to finish the rest."


def resolve_workers(value: str, device: torch.device) -> int:
    """num_workers: a count, or auto = the cores this process may use (on CPU, half)."""
    if value != "auto":
        if not value.isdigit():
            raise UserError(
                f"num_workers={value!r}; valid: auto or a count (0 = decode in-process)"
            )
        return int(value)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (cores or 1) if device.type != "cpu" else max(1, (cores or 1) // 2)


def print_summary(r: dict[str, Any], out_dir: Path, *, reference: dict[str, float] | None) -> None:
    line = (
        f"top-1 {r['top1']:.3f}  top-5 {r['top5']:.3f}  ({r['n_labeled']} labeled)  "
        f"images {r['n_images']}  errors {r['n_errors']}  {r['images_per_sec']:.1f} img/s"
    )
    if reference:
        line += f"  [torchvision: top-1 {reference['acc@1']}, top-5 {reference['acc@5']}]"
    print(line)
    if r["n_errors"]:
        print(
            f"{r['n_errors']} image(s) could not be scored: see the `error` column; "
            "they are left out of top-1/top-5"
        )
    print(f"wrote {out_dir / 'predictions.parquet'} and {out_dir / 'metrics.parquet'}")

"""Batched inference: config -> split -> model -> predictions parts -> Parquet.

`evaluate` is the whole run and reads top to bottom like the data flow;
`main` is the Hydra entry point, the only code that sees a DictConfig.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline import data, metrics, model, write
from pipeline.config import Config, UserError

log = logging.getLogger("pipeline")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def evaluate(cfg: Config, out_dir: Path) -> dict[str, Any]:
    """Score the configured split and write predictions.parquet + metrics.parquet to out_dir."""
    started = dt.datetime.now(dt.timezone.utc)
    device = model.resolve_device(cfg.device)
    amp = model.resolve_amp(cfg.amp.value, device)
    workers = resolve_workers(cfg.num_workers, device)
    write.check_writable(out_dir)

    loaded = model.load_model(
        arch=cfg.model.arch, weights=cfg.model.weights, sha256=cfg.model.sha256
    )
    net = model.place(loaded.model, device, channels_last=cfg.channels_last)
    preprocess = data.Preprocess.from_transforms(loaded.transforms)
    split = data.load_split(**asdict(cfg.dataset))
    start, stop = (
        0,
        cfg.limit if split.num_rows is None else min(cfg.limit or split.num_rows, split.num_rows),
    )

    parts = out_dir / "parts"
    write.check_resume(parts, resume_settings(cfg, loaded))
    resume_at = write.committed(parts, start)
    if resume_at > start:
        log.info(
            "resuming at row %d: rows %d..%d are already committed", resume_at, start, resume_at
        )
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
    t0 = time.perf_counter()
    try:
        scored = score(
            batches,
            writer,
            net,
            preprocess,
            device=device,
            amp=amp,
            on_error=cfg.on_error.value,
            progress=tqdm(total=total, unit="img", disable=not cfg.progress, dynamic_ncols=True),
        )
    except RuntimeError as e:
        if "DataLoader worker" not in str(e):
            raise
        raise UserError(
            f"A data worker died ({str(e).splitlines()[0]}). {resume_hint(out_dir)}"
        ) from e
    finally:
        writer.commit()  # what was scored before a failure is kept for the resume
    wall = time.perf_counter() - t0

    stop = write.committed(parts, start)
    predictions = out_dir / "predictions.parquet"
    write.merge_parts([parts], predictions, start=start, stop=stop)
    result = metrics.accuracy(str(predictions))
    result |= provenance(cfg, loaded, device=device, amp=amp, workers=workers, started=started)
    result |= {"images_per_sec": scored / wall if wall > 0 else 0.0, "wall_seconds": wall}
    write.write_metrics(out_dir / "metrics.parquet", result)
    shutil.rmtree(parts)
    print_summary(result, out_dir, reference=reference_accuracy(loaded, cfg))
    return result


def score(
    batches: Any,
    writer: write.PredictionWriter,
    net: torch.nn.Module,
    preprocess: data.Preprocess,
    *,
    device: torch.device,
    amp: torch.dtype | None,
    on_error: str,
    progress: tqdm,
) -> int:
    """The inference loop; returns how many images it scored."""
    autocast = torch.autocast(device.type, dtype=amp) if amp else nullcontext()
    n = 0
    with torch.inference_mode(), progress:
        for batch in batches:
            if on_error == "raise" and not batch["ok"].all():
                j = int((~batch["ok"]).nonzero()[0])
                raise UserError(
                    f"Image at row {int(batch['index'][j])} (id {batch['id'][j]}) "
                    f"could not be decoded: {batch['error'][j]}"
                )
            try:
                ids, probs, top1, top5 = infer(
                    batch, net, preprocess, device=device, autocast=autocast
                )
            except torch.OutOfMemoryError:
                size = len(batch["index"])
                raise UserError(
                    f"Out of {device.type} memory at batch_size={size}; "
                    f"try batch_size={max(size // 2, 1)}"
                ) from None
            writer.add(
                write.Scored(
                    index=batch["index"].numpy(),
                    id=batch["id"],
                    label=batch["label"],
                    error=batch["error"],
                    ok=batch["ok"].numpy(),
                    topk=ids,
                    topk_prob=probs,
                    top1=top1,
                    top5=top5,
                )
            )
            n += len(ids)
            progress.update(len(batch["index"]))
    return n


def infer(
    batch: dict[str, Any],
    net: torch.nn.Module,
    preprocess: data.Preprocess,
    *,
    device: torch.device,
    autocast: Any,
) -> tuple[np.ndarray, ...]:
    """One batch of uint8 crops -> top-k ids, probs and hits, back on the CPU."""
    images = batch["image"].to(device, non_blocking=True)
    if not len(images):
        empty = np.zeros((0, metrics.TOPK))
        return (
            empty.astype(np.int64),
            empty.astype(np.float32),
            np.zeros(0, bool),
            np.zeros(0, bool),
        )
    x = preprocess.normalize(images).contiguous(memory_format=torch.channels_last)
    with autocast:
        logits = net(x)
    ids, probs = metrics.topk(logits)
    labels = [batch["label"][j] for j in batch["ok"].nonzero().flatten().tolist()]
    labels_t = torch.tensor([-1 if x is None else x for x in labels], device=device)
    top1, top5 = metrics.hits(ids, labels_t)
    return ids.cpu().numpy(), probs.cpu().numpy(), top1.cpu().numpy(), top5.cpu().numpy()


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
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    return cores if device.type != "cpu" else max(1, cores // 2)


def resume_settings(cfg: Config, loaded: model.LoadedModel) -> dict[str, Any]:
    """What determines the predictions: resuming under other values would mix results."""
    return {
        "dataset": {
            k: v if isinstance(v, str | int | bool | None) else str(v)
            for k, v in asdict(cfg.dataset).items()
        },
        "model": cfg.model.arch,
        "weights": cfg.model.weights,
        "weights_sha256": loaded.sha256,
        "amp": cfg.amp.value,
        "backend": cfg.backend.value,
        "limit": cfg.limit,
    }


def provenance(
    cfg: Config,
    loaded: model.LoadedModel,
    *,
    device: torch.device,
    amp: torch.dtype | None,
    workers: int,
    started: dt.datetime,
) -> dict[str, Any]:
    """The settings and versions that produced the numbers: one metrics row says it all."""
    import datasets
    import torchvision

    return {
        "dataset_path": cfg.dataset.path,
        "dataset_name": cfg.dataset.name,
        "split": cfg.dataset.split,
        "model": loaded.arch,
        "weights": loaded.weights,
        "weights_sha256": loaded.sha256,
        "batch_size": cfg.batch_size,
        "device": str(device),
        "amp": str(amp).removeprefix("torch.") if amp else "off",
        "backend": cfg.backend.value,
        "num_workers": workers,
        "limit": cfg.limit,
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "datasets_version": datasets.__version__,
        "git_commit": git_commit(),
        "start_time": started.isoformat(timespec="seconds"),
    }


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


def reference_accuracy(loaded: model.LoadedModel, cfg: Config) -> dict[str, float] | None:
    """torchvision's published ImageNet-1K numbers for these weights, when they apply."""
    import torchvision

    enum = torchvision.models.get_model_weights(loaded.arch)
    if loaded.weights not in enum.__members__ or "imagenet-1k" not in cfg.dataset.path.lower():
        return None
    return enum[loaded.weights].meta["_metrics"].get("ImageNet-1K")


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


def main() -> None:
    """`python -m pipeline`: compose the config with Hydra, run, one line per user error."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    from pipeline.config import check_override_keys, register

    register()
    try:
        check_override_keys(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def run(dcfg: DictConfig) -> None:
        cfg: Config = OmegaConf.to_object(dcfg)  # type: ignore[assignment]
        out_dir = Path(cfg.output_dir or HydraConfig.get().runtime.output_dir)
        try:
            evaluate(cfg, out_dir)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    run()

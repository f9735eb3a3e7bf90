"""Builders shared by the tests: photo-like images, hub-style rows, the CLI."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

LABELS = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]  # ImageNet class ids of the fixture images


def photo(seed: int, size: tuple[int, int] = (180, 140)) -> Image.Image:
    """A smooth, photo-like RGB image (gradients plus blobs), different per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        a, b, p = rng.uniform(-1, 1, 3)
        img[..., c] = 128 + 60 * np.sin(a * xx / 17 + b * yy / 23 + p * 6)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, 40)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, **kwargs)
    return out.getvalue()


def hub_rows(n: int = len(LABELS)) -> dict[str, list]:
    return {
        "image": [{"bytes": jpeg(photo(i)), "path": f"img{i:02d}.jpg"} for i in range(n)],
        "label": LABELS[:n],
    }


def load(path: str, **kwargs):
    """data.load_split with the defaults of a plain labeled split."""
    from pipeline import data

    args = dict(
        name=None,
        split="train",
        revision=None,
        data_dir=None,
        data_files=None,
        streaming=False,
        image_column="image",
        label_column="label",
        id_column=None,
    )
    return data.load_split(path=path, **{**args, **kwargs})


def hub_dataset(rows: dict[str, list]):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    extra = {k: datasets.Value("string") for k in rows if k not in features}
    return datasets.Dataset.from_dict(rows, features=datasets.Features({**features, **extra}))


def run_cli(args: list[str], cwd: Path, **env: str):
    """`python -m pipeline ARGS` in a subprocess, offline."""
    environ = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


def on_call(n: int, real, action):
    """`real`, wrapped so that its n-th call runs `action()` first (to inject a fault)."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            action()
        return real(*args, **kwargs)

    return wrapper

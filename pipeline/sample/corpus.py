"""ImageNet-like JPEGs made from the bundled sample's photographs, for benchmarks and tests.

Random crops (55-100% of a photo), resized to 500x375 or 375x500 like most ImageNet
images, mirrored half the time, colour-shifted, saved at JPEG quality 90. Image i
depends only on (seed, i), so a corpus is the same however it is built, in one process
or in a pool.
"""

from __future__ import annotations

import io
from functools import cache
from importlib.resources import files

import numpy as np
from PIL import Image


@cache
def photographs() -> tuple[Image.Image, ...]:
    """The sample's photographs (one of each), decoded once per process."""
    import pyarrow.parquet as pq

    sample = files("pipeline").joinpath("sample/sample.parquet")
    rows = pq.read_table(str(sample), columns=["image", "id"]).to_pylist()
    return tuple(
        Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB")
        for r in rows
        if r["id"] in ("chelsea.jpg", "coffee.jpg", "rocket.jpg", "grace_hopper.jpg", "camera.png")
    )


def jpeg(i: int, seed: int = 0) -> bytes:
    """Image i of the corpus with this seed, as JPEG bytes."""
    rng = np.random.default_rng([seed, i])
    src = photographs()[i % len(photographs())]
    w, h = src.size
    scale = rng.uniform(0.55, 1.0)
    cw, ch = int(w * scale), int(h * scale)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    size = (500, 375) if rng.random() < 0.75 else (375, 500)
    img = src.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    # float32, not float64: half the cost of the whole image at this size
    shifted = np.asarray(img, np.float32) * rng.uniform(0.8, 1.2, 3).astype(np.float32)
    out = io.BytesIO()
    Image.fromarray(np.clip(shifted, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()

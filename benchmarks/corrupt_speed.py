"""How fast `dataset.corrupt` makes ImageNet-C images on the fly: crops per second of one
worker (one process, one thread) for each corruption at one severity, the JPEG round
trip included, on 224x224 crops of a natural-looking synthetic image (no network). The
first call of each corruption is timed apart: glass_blur compiles with numba on it.
Side by side, the crop alone (decode + resize + crop, what a clean run's worker does),
so the cost reads as a ratio to clean decoding on the same CPU; each corruption's rate
includes that decoding, as a worker's does.

    python benchmarks/corrupt_speed.py [--severity 3] [--crops 20]
"""

from __future__ import annotations

import argparse
import io
import os
import time

import numpy as np
from PIL import Image

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one worker's share, before torch is imported


def photo(seed: int) -> bytes:
    """A 500x375 JPEG with edges and smooth areas, ImageNet val's typical size."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:375, 0:500]
    base = np.stack([np.sin(x / (20 + 10 * c) + seed) * np.cos(y / 30) for c in range(3)], -1)
    noise = rng.normal(0, 0.1, (375, 500, 3))
    pixels = np.clip((base + noise + 1) * 127, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--severity", type=int, default=3)
    parser.add_argument("--crops", type=int, default=20, help="timed crops per corruption")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from pipeline.data import corrupt, imagenet_c

    _, library = corrupt.library()
    files = [photo(i) for i in range(args.crops)]

    def crop(data: bytes) -> torch.Tensor:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        image = image.resize(
            (298, 224), Image.Resampling.BILINEAR
        )  # the short side to 224, as crop
        return torch.from_numpy(np.asarray(image)[:, 37:261].copy()).permute(2, 0, 1)

    start = time.perf_counter()
    crops = [crop(data) for data in files]
    clean = args.crops / (time.perf_counter() - start)
    print(f"{library}, severity {args.severity}, {args.crops} crops each, one thread")
    print(f"{'clean decode + crop':<24}{clean:>9.1f} crops/s   1.00x  (first call -)")
    rows = []
    for name in imagenet_c.ALL:
        start = time.perf_counter()
        corrupt.corrupted(crops[0], name, args.severity, 0)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for row, image in enumerate(crops):
            corrupt.corrupted(image, name, args.severity, row)
        rate = args.crops / (time.perf_counter() - start + args.crops / clean)
        rows.append((name, rate))
        print(f"{name:<24}{rate:>9.1f} crops/s  {rate / clean:>6.3f}x  (first call {first:.2f} s)")
    benchmark = [rate for name, rate in rows if name in imagenet_c.BENCHMARK]
    per_image = sum(1 / rate for rate in benchmark) / len(benchmark)
    print(
        f"15 benchmark corruptions: {1 / per_image:.1f} crops/s per worker on average; "
        f"all 75 cells x 50,000 images = {75 * 50_000 * per_image / 3600:.0f} worker-hours"
    )


if __name__ == "__main__":
    main()

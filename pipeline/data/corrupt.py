"""ImageNet-C's corruptions made on the fly, for users without the 70 GB release: each
uint8 crop corrupted in the worker by imagecorruptions (the `corrupt` extra: the
maintained imagecorruptions-imaug, Apache-2.0, the authors' functions ported), then
stored and read back as a JPEG at quality 85, as the release's images were
(hendrycks/robustness ImageNet-C/create_c/make_imagenet_c.py). Its random draws are
seeded by the row, so a resumed run, torchrun ranks and any worker give the same pixels;
they are not the release's draws, so results are approximate (labelled so).
"""

from __future__ import annotations

import io
import zlib
from functools import cache
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.errors import optional

JPEG_QUALITY = 85  # make_imagenet_c.py: Image.fromarray(np.uint8(img)).save(path, quality=85)
SEEDED = ("impulse_noise", "glass_blur")  # draw from their own generators: seeded by argument


@cache
def library() -> tuple[Any, str]:
    """(imagecorruptions.corrupt, "<distribution> <version>"), or one line to install it."""
    from importlib.metadata import PackageNotFoundError, version

    corrupt = optional("imagecorruptions", "corrupt", "dataset.corrupt").corrupt
    for dist in ("imagecorruptions-imaug", "imagecorruptions"):
        try:
            return corrupt, f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return corrupt, "imagecorruptions"


def corrupted(crop: torch.Tensor, name: str, severity: int, row: int) -> torch.Tensor:
    """A uint8 (3, H, W) crop, corrupted with the draws of this row, through a JPEG."""
    corrupt, _ = library()
    seed = zlib.crc32(f"{name}/{severity}/{row}".encode())
    np.random.seed(seed)  # the draws of the functions that use NumPy's global generator
    extra = {"seed": seed} if name in SEEDED else {}
    pixels = corrupt(
        crop.permute(1, 2, 0).numpy(), severity=severity, corruption_name=name, **extra
    )
    buffer = io.BytesIO()
    Image.fromarray(np.uint8(pixels)).save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True)
    buffer.seek(0)
    decoded = np.asarray(Image.open(buffer).convert("RGB"))
    return torch.from_numpy(decoded.copy()).permute(2, 0, 1).contiguous()

"""Decoding and the model's eval transform, split between the workers and the device.

Workers decode (every mode to RGB) and crop to uint8; the float conversion
and normalization run after the copy to the device (`Preprocess.normalize`),
which keeps the copy 4x smaller and is, op for op, what `weights.transforms()`
does.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F


@dataclass(frozen=True)
class Preprocess:
    """The model's eval transform, split in two: uint8 crop in the worker, normalize on device."""

    resize_size: list[int]
    crop_size: list[int]
    interpolation: InterpolationMode
    mean: list[float]
    std: list[float]

    @classmethod
    def from_transforms(cls, transforms: Any) -> Preprocess:
        """Take the numbers from a torchvision `weights.transforms()`; never hand-typed."""
        return cls(
            resize_size=list(transforms.resize_size),
            crop_size=list(transforms.crop_size),
            interpolation=transforms.interpolation,
            mean=list(transforms.mean),
            std=list(transforms.std),
        )

    def crop(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> uint8 (3, crop, crop), with the very calls of `ImageClassification`."""
        image = F.resize(image, self.resize_size, interpolation=self.interpolation, antialias=True)
        return F.pil_to_tensor(F.center_crop(image, self.crop_size))

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) on any device -> normalized float32, as the reference computes it."""
        return F.normalize(F.convert_image_dtype(batch, torch.float), mean=self.mean, std=self.std)


def open_rgb(image: Any, roots: tuple[str, ...]) -> Image.Image:
    """Decode an `Image(decode=False)` value ({bytes, path}) to an RGB PIL image.

    Like torchvision's ImageFolder loader (which the published accuracies come
    from): `convert("RGB")`, no EXIF rotation.
    """
    data, path = (
        (image.get("bytes"), image.get("path")) if isinstance(image, dict) else (image, None)
    )
    if data is None:
        if not path:
            raise ValueError("no image bytes and no path")
        real = os.path.realpath(path)
        if not any(real == r or real.startswith(r + os.sep) for r in roots):
            raise ValueError("path outside the dataset")
        with open(real, "rb") as f:
            data = f.read()
    if len(data) == 0:
        raise ValueError("empty file")
    with warnings.catch_warnings():
        # Pillow only warns between its limit and twice it; a bomb is a bomb
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", message="Palette images with Transparency")
        img = Image.open(io.BytesIO(data))
        img.load()
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # convert("RGB") would clip 16-bit values at 255; scale them instead
        img = img.point(lambda v: v / 256).convert("L")
    return img.convert("RGB")


def error_reason(e: Exception) -> str:
    """A short, stable reason for the `error` column."""
    if isinstance(e, UnidentifiedImageError):
        return "not an image, or a format Pillow cannot read"
    if isinstance(e, Image.DecompressionBombError | Image.DecompressionBombWarning):
        pixels = re.search(r"(\d+) pixels", str(e))
        size = f"{pixels[1]} pixels" if pixels else "too many pixels"
        return f"decompression bomb: {size}, over Pillow's limit of {Image.MAX_IMAGE_PIXELS}"
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    known = isinstance(e, ValueError | OSError)  # Pillow's own messages say enough
    return (message if known else f"{type(e).__name__}: {message}")[:200]

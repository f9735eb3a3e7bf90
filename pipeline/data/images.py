"""Image bytes -> Pillow images: where a path stored in a dataset may lead, reading the
bytes, opening them with the decompression-bomb check, RGB as torchvision's ImageFolder
loader makes it, and a short reason when that fails. Pillow only (no torch): the
report's thumbnails read images through here too."""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from pipeline.errors import first_line


def _inside(path: str, roots: tuple[str, ...]) -> str | None:
    """The root that `path` lies in, if any."""
    return next((r for r in roots if path == r or path.startswith(r + os.sep)), None)


@dataclass(frozen=True)
class Roots:
    """Where an image path stored in a dataset may lead.

    confined: real paths (links resolved) must lie inside one of these: the dataset's own
    folders, the HF cache and the folders the user allowed (dataset.image_roots). walked:
    folders whose listing produced the paths (an image folder); a link found there belongs
    to the dataset and is followed. own: the dataset's folders, that ids are relative to.
    base: the dataset's folder, that relative paths stored in it are relative to (never
    the working directory: the result must not depend on where a run starts).
    """

    confined: tuple[str, ...] = ()
    walked: tuple[str, ...] = ()
    own: tuple[str, ...] = ()
    base: str | None = None

    def resolve(self, path: str) -> str:
        """A path stored in the dataset, made absolute against the dataset's folder."""
        if os.path.isabs(path) or self.base is None:
            return path
        return os.path.join(self.base, path)

    def allows(self, path: str) -> bool:
        if _inside(os.path.abspath(path), self.walked):
            return True
        return _inside(os.path.realpath(path), self.confined) is not None

    def relative(self, path: str) -> str:
        """An id for the image: its path inside the dataset's folder when it is there."""
        path = self.resolve(path)
        for roots, where in (
            (self.walked, os.path.abspath(path)),
            (self.own, os.path.realpath(path)),
        ):
            root = _inside(where, roots)
            if root:
                return os.path.relpath(where, root)
        return path


def read_bytes(image: Any, roots: Roots) -> bytes:
    """The encoded bytes of an `Image(decode=False)` value ({bytes, path}).

    A path is opened only where `roots` allows: paths stored in a dataset are data.
    """
    if image is None:
        raise ValueError("no image in this row (its image column is empty)")
    data, path = (
        (image.get("bytes"), image.get("path")) if isinstance(image, dict) else (image, None)
    )
    if data is None:
        if not path:
            raise ValueError("no image bytes and no path")
        path = roots.resolve(path)
        if not roots.allows(path):
            raise ValueError("path outside the dataset (dataset.image_roots allows a folder)")
        with open(path, "rb") as f:
            data = f.read()
    if len(data) == 0:
        raise ValueError("empty file")
    return data


@contextmanager
def _pillow_checks() -> Iterator[None]:
    with warnings.catch_warnings():
        # Pillow only warns between its limit and twice it; a bomb is a bomb
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", message="Palette images with Transparency")
        yield


def open_image(data: bytes) -> Image.Image:
    """Pillow's lazy open: the format and size, checked against the decompression-bomb limit."""
    with _pillow_checks():
        return Image.open(io.BytesIO(data))


def to_rgb(image: Image.Image) -> Image.Image:
    """Decode and convert to RGB like torchvision's ImageFolder loader (no EXIF rotation)."""
    with _pillow_checks():
        image.load()
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # convert("RGB") would clip 16-bit values at 255; scale them instead
        image = image.point(lambda v: v / 256).convert("L")
    return image.convert("RGB")


def orientation(header: Image.Image) -> int:
    """The EXIF orientation tag (1..8; 1 = as stored) of an opened image."""
    try:
        value = header.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block: the pixels are still there, as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def error_reason(e: Exception) -> str:
    """A short, stable reason for the `error` column."""
    if isinstance(e, UnidentifiedImageError):
        return "not an image, or a format Pillow cannot read"
    if isinstance(e, Image.DecompressionBombError | Image.DecompressionBombWarning):
        pixels = re.search(r"(\d+) pixels", str(e))
        size = f"{pixels[1]} pixels" if pixels else "too many pixels"
        return f"decompression bomb: {size}, over Pillow's limit of {Image.MAX_IMAGE_PIXELS}"
    message = first_line(e)
    known = isinstance(e, ValueError | OSError)  # Pillow's own messages say enough
    return (message if known else f"{type(e).__name__}: {message}")[:200]

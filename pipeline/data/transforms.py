"""Decoding and the model's eval transform, split between the workers and the device.

Workers decode (every mode to RGB) and crop to uint8; the float conversion
and normalization run after the copy to the device (`Preprocess.normalize`),
which keeps the copy 4x smaller and is, op for op, what `weights.transforms()`
does.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from functools import cache
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F
from torchvision.transforms.v2 import functional as F2

from pipeline.choices import Backend, Protocol
from pipeline.data.images import Roots, error_reason, open_image, orientation, read_bytes, to_rgb

FAST_FORMATS = {"JPEG", "PNG", "WEBP", "GIF"}  # what the tensor decoders read
FAST_MODES = {"RGB", "RGBA", "L", "LA", "P"}  # CMYK and 16-bit go through Pillow


@dataclass(frozen=True)
class Encoded:
    """A JPEG left for the model's device to decode (backend=device): its encoded bytes."""

    data: torch.Tensor  # 1-D uint8


class Style(str, Enum):
    """Whose resize and center crop a model's eval transform is made with (its library's)."""

    torchvision = "torchvision"  # PIL resize; crop offset rounded (torchvision, timm)
    hf = "hf"  # uint8-tensor resize; crop offset floored (transformers' image processors)


@dataclass(frozen=True)
class EvalTransform:
    """A model's eval preprocessing as numbers, taken from its library: the resize, the
    center crop, the interpolation, the normalization, and whose way of doing them."""

    resize_size: tuple[int, ...]  # (s,): the shorter side to s; (h, w): both sides (squash)
    crop_size: tuple[int, ...]  # (c,) or (h, w)
    interpolation: InterpolationMode
    mean: tuple[float, ...]
    std: tuple[float, ...]
    style: Style = Style.torchvision
    crop_pct: float | None = None  # timm's crop / resize, where the library states it

    @classmethod
    def of(cls, transforms: Any, style: Style = Style.torchvision) -> EvalTransform:
        """From torchvision's `weights.transforms()` (or anything with its attributes)."""
        return cls(
            resize_size=tuple(transforms.resize_size),
            crop_size=tuple(transforms.crop_size),
            interpolation=transforms.interpolation,
            mean=tuple(transforms.mean),
            std=tuple(transforms.std),
            style=style,
        )

    def overridden(
        self,
        *,
        resize: int | None = None,
        crop: int | None = None,
        interpolation: str | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> EvalTransform:
        """With model.resize / crop / interpolation / mean / std: a crop alone keeps the
        resize-to-crop ratio (timm's crop_pct), a resize keeps the squash or shorter-side
        form."""
        crop_size = self.crop_size if crop is None else (crop,) * len(self.crop_size)
        if resize is not None:
            resize_size = (resize,) * len(self.resize_size)
        elif crop is not None:
            pct = self.crop_pct or self.crop_size[0] / self.resize_size[0]
            resize_size = (math.floor(crop / pct + 1e-6),) * len(self.resize_size)
        else:
            resize_size = self.resize_size
        mode = self.interpolation if interpolation is None else InterpolationMode(interpolation)
        return replace(
            self,
            resize_size=resize_size,
            crop_size=crop_size,
            interpolation=mode,
            mean=self.mean if mean is None else tuple(mean),
            std=self.std if std is None else tuple(std),
        )

    def describe(self) -> str:
        how = "squash" if len(self.resize_size) == 2 else "shorter side"
        text = (
            f"resize {list(self.resize_size)} ({how}) {self.interpolation.value}, crop "
            f"{list(self.crop_size)}, mean {list(self.mean)}, std {list(self.std)}"
        )
        hf = self.style is Style.hf
        return text + (", resized and cropped as transformers does" if hf else "")


@dataclass(frozen=True)
class Preprocess:
    """The model's eval transform, split in two: uint8 crop in the worker, normalize on device.

    backend "pil" makes the very calls of `ImageClassification` (identical
    pixels); "tensor" decodes and resizes uint8 tensors (TorchCodec, else
    torchvision.io), within one level of it and about twice as fast; "device"
    leaves JPEGs encoded for the main process to decode on the model's device
    in one batched call (nvJPEG on CUDA), resized like "tensor".
    """

    resize_size: list[int]
    crop_size: list[int]
    interpolation: InterpolationMode
    mean: list[float]
    std: list[float]
    backend: Backend = Backend.pil
    resize: bool = True  # False: the crop-only protocol (images stored at the crop size)
    corrupt: tuple[str, int] | None = None  # ImageNet-C's corruption, made on each crop
    style: Style = Style.torchvision

    @classmethod
    def from_transforms(
        cls,
        transforms: Any,
        backend: Backend = Backend.pil,
        *,
        protocol: Protocol = Protocol.standard,
        corrupt: tuple[str, int] | None = None,
    ) -> Preprocess:
        """Take the numbers from a model's EvalTransform (or torchvision's
        `weights.transforms()`); never hand-typed."""
        own = transforms if isinstance(transforms, EvalTransform) else EvalTransform.of(transforms)
        numbers = {k: list(getattr(own, k)) for k in ("resize_size", "crop_size", "mean", "std")}
        return cls(
            **numbers,
            interpolation=own.interpolation,
            backend=backend,
            resize=protocol is Protocol.standard,
            corrupt=corrupt,
            style=own.style,
        )

    def __call__(self, image: Any, roots: Roots, row: int = 0) -> torch.Tensor | Encoded:
        """An `Image(decode=False)` value -> uint8 (3, crop, crop) (or, for backend=device, a
        plain JPEG still encoded); raises on undecodable data. `row` seeds an on-the-fly
        corruption's draws."""
        data = read_bytes(image, roots)
        header = open_image(data)  # reads the header only: format, mode, bomb check
        plain_jpeg = header.format == "JPEG" and header.mode in ("RGB", "L")
        if self.backend is Backend.device and plain_jpeg and orientation(header) == 1:
            # others (and rotated JPEGs) are decoded here, where orientation is handled
            return Encoded(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        fast = header.format in FAST_FORMATS and header.mode in FAST_MODES
        if self.backend is not Backend.pil and fast:
            crop = self.resize_crop(decode_tensor(data, orientation(header))[None])[0]
        else:
            crop = self.crop(to_rgb(header))
        if self.corrupt is None:
            return crop
        from pipeline.data.corrupt import corrupted

        return corrupted(crop, *self.corrupt, row)

    def resize_crop(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) images of one size -> (N, 3, crop, crop): antialiased resize of
        the shorter side (not in the crop-only protocol), then the center crop, on whatever
        device they are."""
        if self.resize:
            pixels = F2.resize(pixels, self.resize_size, self.interpolation, antialias=True)
        if self.style is Style.hf:
            return _floor_center_crop(pixels, self.crop_size)
        return F2.center_crop(pixels, self.crop_size)

    def decode_on(self, encoded: list[Encoded], device: torch.device) -> list[torch.Tensor | str]:
        """backend=device: decode JPEGs on `device` in one batched call (nvJPEG on CUDA; the
        same call on CPU), then resize and crop, grouped by size. Each item is its uint8
        (3, crop, crop) crop or, when it cannot be decoded even by Pillow, the reason."""
        from torchcodec.decoders import decode_jpeg

        datas = [e.data for e in encoded]
        try:
            images: list[torch.Tensor | None] = list(decode_jpeg(datas, mode="RGB", device=device))
        except RuntimeError:  # one bad image fails the batch: decode them one by one
            images = [_decode_one(d, device) for d in datas]
        out: list[torch.Tensor | str] = [""] * len(images)
        sizes: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            if image is None:  # the per-image path: Pillow's decoder, or its reason
                out[i] = self._pillow_or_reason(datas[i], device)
            else:
                sizes.setdefault(tuple(image.shape), []).append(i)
        for idx in sizes.values():
            crops = self.resize_crop(torch.stack([images[i] for i in idx]))  # type: ignore[misc]
            for i, crop in zip(idx, crops, strict=True):
                out[i] = crop
        return out

    def _pillow_or_reason(self, data: torch.Tensor, device: torch.device) -> torch.Tensor | str:
        try:
            return self.crop(to_rgb(open_image(data.numpy().tobytes()))).to(device)
        except Exception as e:  # any decoder failure is a data fault, recorded per row
            return error_reason(e)

    def crop(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> uint8 (3, crop, crop), with the very calls of `ImageClassification`
        (in the crop-only protocol, its center crop alone, as ImageNet-C's evaluation); for
        transformers' models, theirs: the uint8 tensor resized."""
        if self.style is Style.hf:
            return self.resize_crop(F.pil_to_tensor(image)[None])[0]
        if self.resize:
            image = F.resize(
                image, self.resize_size, interpolation=self.interpolation, antialias=True
            )
        return F.pil_to_tensor(F.center_crop(image, self.crop_size))

    def normalize(
        self,
        batch: torch.Tensor,
        dtype: torch.dtype = torch.float32,
        memory_format: torch.memory_format = torch.contiguous_format,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> normalized, on whatever device it is.

        The arithmetic of `convert_image_dtype` + `normalize` (x / 255, - mean,
        / std), so in fp32 it is bit for bit the reference; done in place, in
        the final memory format, into `out` when given (a buffer reused batch
        after batch: less allocation churn, a flatter heap).
        """
        if out is None or out.shape != batch.shape or out.dtype != dtype:
            out = torch.empty(
                batch.shape, dtype=dtype, device=batch.device, memory_format=memory_format
            )
        out.copy_(batch)
        mean, std = _stats(tuple(self.mean), tuple(self.std), out.device, dtype)
        return out.div_(255.0).sub_(mean).div_(std)


def height_width(size: Sequence[int]) -> tuple[int, int]:
    """A crop size as torchvision gives it, (s,) for a square or (h, w), as (h, w)."""
    h, w = (size[0], size[0]) if len(size) == 1 else size
    return h, w


def _floor_center_crop(pixels: torch.Tensor, size: list[int]) -> torch.Tensor:
    """transformers' center crop: padded as torchvision's where the image is smaller, but
    the offset rounded down (torchvision rounds it: one pixel apart for odd margins)."""
    h, w = height_width(size)
    height, width = pixels.shape[-2:]
    if h > height or w > width:
        pad_w, pad_h = max(w - width, 0), max(h - height, 0)
        pixels = F2.pad(pixels, [pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2])
        height, width = pixels.shape[-2:]
    top, left = int((height - h) / 2.0), int((width - w) / 2.0)
    return pixels[..., top : top + h, left : left + w]


@cache
def _stats(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """mean and std as (3, 1, 1) tensors, made once per device and dtype: uploading them
    every batch would be a blocking copy that waits for the previous forward on a GPU."""
    return (
        torch.tensor(mean, dtype=dtype, device=device).view(-1, 1, 1),
        torch.tensor(std, dtype=dtype, device=device).view(-1, 1, 1),
    )


@cache
def _tensor_decoder() -> tuple[Callable[[bytes], torch.Tensor], bool]:
    """(decode, turns images upright): TorchCodec's decoder where installed, which applies
    EXIF orientation; torchvision.io's (deprecated in 0.29), which does not, otherwise."""
    try:
        from torchcodec.decoders import decode_image

        return (lambda data: decode_image(data, mode="RGB")), True
    except (ImportError, OSError, RuntimeError):  # absent, or built for another torch
        from torchvision.io import ImageReadMode
        from torchvision.io import decode_image as tv_decode

        def decode(data: bytes) -> torch.Tensor:
            with warnings.catch_warnings():  # we know: this is the fallback
                warnings.simplefilter("ignore", DeprecationWarning)
                buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                return tv_decode(buffer, mode=ImageReadMode.RGB)

        return decode, False


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    from torchcodec.decoders import decode_jpeg

    try:
        image = decode_jpeg(data, mode="RGB", device=device)
    except RuntimeError:
        return None
    return image if isinstance(image, torch.Tensor) else None


# The inverse of the transpose that EXIF orientation 2..8 asks a viewer to apply (PIL's
# ImageOps.exif_transpose table), on (..., H, W) tensors.
_UNDO: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    2: lambda t: t.flip(-1),
    3: lambda t: t.flip(-2, -1),
    4: lambda t: t.flip(-2),
    5: lambda t: t.transpose(-2, -1),
    6: lambda t: torch.rot90(t, 1, dims=(-2, -1)),
    7: lambda t: t.transpose(-2, -1).flip(-2, -1),
    8: lambda t: torch.rot90(t, -1, dims=(-2, -1)),
}


def undo_orientation(pixels: torch.Tensor, value: int) -> torch.Tensor:
    """The stored geometry of an image a decoder turned upright."""
    return pixels if value == 1 else _UNDO[value](pixels).contiguous()


def decode_tensor(data: bytes, orientation: int = 1) -> torch.Tensor:
    """JPEG/PNG/WebP/GIF bytes -> uint8 (3, H, W) in the stored geometry (no EXIF rotation:
    torchvision's ImageFolder loader, the published numbers and the Pillow path apply none);
    an animated GIF gives its first frame."""
    decode, upright = _tensor_decoder()
    try:
        pixels = decode(data)
    except RuntimeError as e:  # the decoders' C++ errors end with the useful part
        raise ValueError(str(e).strip().splitlines()[-1].split(", ")[-1][:150]) from None
    pixels = pixels[0] if pixels.ndim == 4 else pixels
    return undo_orientation(pixels, orientation) if upright else pixels

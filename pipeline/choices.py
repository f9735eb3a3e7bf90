"""The closed choices of a run, as Enums down to the stage that branches on them.

A leaf: the schema (config.py) types its keys with these, and the stages branch on them,
so neither imports the other for them.
"""

from __future__ import annotations

from enum import Enum


class Amp(str, Enum):
    auto = "auto"
    off = "off"
    fp16 = "fp16"
    bf16 = "bf16"


class Backend(str, Enum):
    pil = "pil"  # decode + resize with PIL: the reference pixels, bit for bit
    tensor = "tensor"  # decode + resize on uint8 tensors: faster, within 1 level
    device = "device"  # JPEGs decoded on the model's device in batches (nvJPEG on CUDA)


class Protocol(str, Enum):
    standard = "standard"  # the model's eval transform: resize, then center crop
    crop = "crop"  # center crop only: images stored at the crop size (ImageNet-C)


class Interpolation(str, Enum):  # model.interpolation: torchvision's InterpolationMode values
    bilinear = "bilinear"
    bicubic = "bicubic"
    nearest = "nearest"


# record: an undecodable image gets a row with `error` set; raise: stop at the first.
# Functional form because `raise` is a keyword, and OmegaConf matches member names.
OnError = Enum("OnError", {"record": "record", "raise": "raise"}, type=str)


class Library(str, Enum):
    """Where model.arch's model comes from: its prefix (models/registry.py loads it)."""

    torchvision = "torchvision"
    timm = "timm"
    hf = "hf"
    module = "module"  # your own: module:PKG.MODULE:FUNCTION
    onnx = "onnx"  # an ONNX file, under onnxruntime
    pt2 = "pt2"  # a torch.export program
    openclip = "openclip"  # open_clip's CLIP-like models, zero-shot

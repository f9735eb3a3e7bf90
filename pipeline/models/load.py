"""The model of a run: loaded by its source (registry.py), its eval transform overridden
where model.resize / crop / interpolation say, measured, and placed on the device.
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch
from torch import nn

from pipeline.data.transforms import EvalTransform, height_width
from pipeline.errors import UserError
from pipeline.models import registry
from pipeline.models.base import LoadedModel
from pipeline.models.weights import hash_in_background
from pipeline.request import ModelRequest


def load_model(asked: ModelRequest) -> LoadedModel:
    """The requested model, by its source, on the CPU: its eval transform overridden where
    model.resize / crop / interpolation say (and the source's published numbers for that
    transform, if it has any), its size measured."""
    source = registry.source(asked.library)
    loaded = source.load(asked)
    own = loaded.transforms
    mode = None if asked.interpolation is None else asked.interpolation.value
    transforms = own.overridden(resize=asked.resize, crop=asked.crop, interpolation=mode)
    if transforms != own:
        given = {"resize": asked.resize, "crop": asked.crop, "interpolation": mode}
        changed = ", ".join(f"model.{k}={v}" for k, v in given.items() if v is not None)
        loaded = replace(
            loaded,
            transforms=transforms,
            preprocess=f"{loaded.preprocess}, with {changed}",
            published=source.published_at(loaded, transforms),
        )
    params, gmacs = measure(loaded.model, transforms)
    return replace(loaded, params=params, gmacs=gmacs)


def measure(model: nn.Module, transforms: EvalTransform) -> tuple[int, float]:
    """(parameters, GMACs of one image at the crop size): torch's FLOP counter over one
    forward, halved (a multiply-add is two FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    h, w = height_width(transforms.crop_size)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, 3, h, w))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() / 2e9


def start_hashing(asked: ModelRequest) -> None:
    """Start hashing the weights file, if it is already on disk, while the dataset loads:
    a run must know the sha256 before it scores (0.2 s for AlexNet's 233 MB)."""
    file = asked.weights if os.path.isfile(asked.weights) else None
    file = file or registry.source(asked.library).cached_file(asked)
    if file is not None:
        hash_in_background(file)


def place(
    model: nn.Module, device: torch.device, *, channels_last: bool, compile: bool
) -> nn.Module:
    """Move to the device; channels_last suits convolutions on CPU and GPU alike."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one input shape: pick the fastest kernels once
    try:
        model = model.to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
    except torch.OutOfMemoryError:
        raise UserError(
            f"Out of {device} memory moving the model there; free it or use another device"
        ) from None
    return torch.compile(model) if compile else model  # type: ignore[return-value]

"""The model of a run: loaded by its source (registry.py), its eval transform overridden
where model.resize / crop / interpolation / mean / std say, measured, and placed on the device.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from pipeline.data.transforms import EvalTransform, height_width
from pipeline.errors import UserError, first_line
from pipeline.models import registry
from pipeline.models.base import LoadedModel
from pipeline.models.weights import hash_in_background
from pipeline.request import ModelRequest


def load_model(asked: ModelRequest) -> LoadedModel:
    """The requested model, by its source, on the CPU: its eval transform overridden where
    model.resize / crop / interpolation / mean / std say (and the source's published
    numbers for that transform, if it has any), its size measured and its output checked."""
    source = registry.source(asked.library)
    loaded = source.load(asked)
    own = loaded.transforms
    mode = None if asked.interpolation is None else asked.interpolation.value
    given: dict[str, Any] = {
        "resize": asked.resize,
        "crop": asked.crop,
        "interpolation": mode,
        "mean": asked.mean,
        "std": asked.std,
    }
    transforms = own.overridden(**given)
    if transforms != own:
        changed = ", ".join(f"model.{k}={v}" for k, v in given.items() if v is not None)
        loaded = replace(
            loaded,
            transforms=transforms,
            preprocess=f"{loaded.preprocess}, with {changed}",
            published=source.published_at(loaded, transforms),
        )
    params, gmacs = measure(loaded, transforms)
    return replace(loaded, params=params, gmacs=gmacs)


def measure(loaded: LoadedModel, transforms: EvalTransform) -> tuple[int, float]:
    """(parameters, GMACs of one image at the crop size): torch's FLOP counter over one
    forward, halved (a multiply-add is two FLOPs). That forward also checks the model:
    one logit per class of its head, or one line saying what it gives."""
    from torch.utils.flop_counter import FlopCounterMode

    h, w = height_width(transforms.crop_size)
    counter = FlopCounterMode(display=False)
    try:
        with torch.inference_mode(), counter:
            out = loaded.model(torch.zeros(1, 3, h, w))
    except UserError:
        raise
    except Exception as e:  # the user's module or export: what it raised, in one line
        raise UserError(
            f"{loaded.arch} fails on one {h}x{w} image ({type(e).__name__}: {first_line(e)}); "
            f"is the crop size the one it was made for? (model.crop)"
        ) from None
    size = loaded.classes.size
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, size):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(
            f"{loaded.arch} gives {got} for one image; a classifier of {loaded.head} gives "
            f"(1, {size}): one logit per class"
        )
    params = sum(p.numel() for p in loaded.model.parameters()) or loaded.params
    return params, counter.get_total_flops() / 2e9


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

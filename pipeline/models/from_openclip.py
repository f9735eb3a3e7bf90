"""open_clip's CLIP-like models, zero-shot (`model=openclip model.name=ViT-B-32
model.weights=laion2b_s34b_b79k`, the `clip` extra): a built-in architecture with a
pretrained tag or a weights file, `local-dir:FOLDER` (open_clip's own layout:
open_clip_config.json and the weights) or `hf-hub:ID`, offline from the Hugging Face cache.
Its eval transform is the model's own (`preprocess_val` of its `preprocess_cfg`); its head
is built from class names and templates (zeroshot.py), and the weights' sha256 is recorded.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.transforms import InterpolationMode

from pipeline.data.classes import Classes
from pipeline.data.transforms import EvalTransform
from pipeline.errors import UserError, first_line, optional
from pipeline.models import zeroshot
from pipeline.models.base import LoadedModel, Published
from pipeline.models.weights import file_sha256, random_weights
from pipeline.request import ModelRequest

SCHEMAS = ("local-dir:", "hf-hub:")
RESULTS = "published/openclip-results.csv"  # open_clip's docs/openclip_results.csv, top-1


def load(asked: ModelRequest) -> LoadedModel:
    """The model with its weights, its image tower under a zero-shot head of the run's
    prompts (asked.prompts, decided from the dataset before the model is loaded)."""
    open_clip = optional("open_clip", "clip", "model=openclip")
    name, what = asked.name, f"model.arch=openclip:{asked.name}"
    if asked.prompts is None:
        raise UserError(f"{what} is zero-shot: its classes come from the dataset")
    with _quiet():
        file = _weights_file(open_clip, asked, what)
    if asked.weights == "none":
        random_weights(asked.sha256)
    pretrained = (
        None
        if name.startswith(SCHEMAS) or asked.weights in ("none", "pretrained")
        else asked.weights
    )
    try:
        with _quiet():
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, load_weights=asked.weights != "none"
            )
            tokenizer = open_clip.get_tokenizer(name)
    except Exception as e:  # not cached offline, a damaged folder, an unknown name
        raise UserError(f"{what}: open_clip cannot load it ({first_line(e)})") from None
    model.eval()
    digest = file_sha256(file) if file else None
    if asked.sha256 and digest != asked.sha256.lower():
        raise UserError(f"sha256 of {file} is {digest}, expected {asked.sha256} (model.sha256)")
    device = torch.device(asked.prompts.device)

    def encode(texts: list[str]) -> torch.Tensor:
        return model.encode_text(tokenizer(texts).to(device), normalize=True)

    model_key = f"open_clip {name} {asked.weights} {digest or 'random, seed 0'}"
    classifier, how = zeroshot.classifier(
        model, _ImageTower(model), asked.prompts, model_key, encode
    )
    return LoadedModel(
        model=classifier,
        arch=f"openclip:{name}",
        weights=asked.weights,
        digest=digest,
        classes=asked.prompts.classes,
        transforms=eval_transform(preprocess, what),
        preprocess=f"open_clip preprocess_val of {name}",
        file=file,
        source="none"
        if asked.weights == "none"
        else "pretrained"
        if file is None
        else "checkpoint",
        library=f"open_clip {open_clip.__version__}",
        head=f"zero-shot over {asked.prompts.classes.kind}: {asked.prompts.source} ({how})",
        published=published(name, asked.weights),
        prompts=asked.prompts,
    )


@contextmanager
def _quiet() -> Iterator[None]:
    """open_clip logs its every step at INFO on the root logger: not the run's lines."""
    level = logging.root.level
    logging.root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logging.root.setLevel(level)


class _ImageTower(nn.Module):
    """open_clip's encode_image, unnormalised (the zero-shot head normalises)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)  # type: ignore[operator]


def _weights_file(open_clip: Any, asked: ModelRequest, what: str) -> str | None:
    """The file the weights come from (to record its sha256): a local-dir's, a hub
    repo's in the cache, a pretrained tag's, or model.weights itself."""
    name = asked.name
    if asked.weights == "none":
        return None
    if name.startswith(SCHEMAS) and asked.weights != "pretrained":
        raise UserError(
            f"model.weights={asked.weights}: {what} brings its own weights; leave "
            f"model.weights=pretrained (or none)"
        )
    try:
        if name.startswith("local-dir:"):
            folder = Path(name.removeprefix("local-dir:"))
            found = open_clip.factory._find_checkpoint_in_dir(folder) if folder.is_dir() else None
            return str(found) if found else None
        if name.startswith("hf-hub:"):
            return str(
                open_clip.pretrained.download_pretrained_from_hf(name.removeprefix("hf-hub:"))
            )
        if os.path.isfile(asked.weights):
            return asked.weights
        if asked.weights == "pretrained":
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise UserError(
                f"{what}: name its weights with model.weights=TAG ({', '.join(tags) or 'none'}) "
                f"or a file"
            )
        config = open_clip.get_pretrained_cfg(name, asked.weights)
        if not config:
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise UserError(
                f"model.weights={asked.weights}: open_clip has no such tag for {name} "
                f"({', '.join(tags) or 'none'}) and no such file"
            )
        return str(open_clip.pretrained.download_pretrained(config))
    except UserError:
        raise
    except Exception as e:  # not cached and not reachable
        raise UserError(
            f"{what}: its weights are not in the Hugging Face cache and could not be "
            f"downloaded ({first_line(e)}); copy the cache (HF_HUB_CACHE) from a connected "
            f"machine, or give a local-dir: folder"
        ) from None


def eval_transform(preprocess: Any, what: str) -> EvalTransform:
    """open_clip's preprocess_val as numbers: Resize (shorter side) + CenterCrop, or a squash
    Resize; the normalization's mean and std."""
    from torchvision import transforms as T

    steps = list(preprocess.transforms)
    resize = next((s for s in steps if isinstance(s, T.Resize)), None)
    crop = next((s for s in steps if isinstance(s, T.CenterCrop)), None)
    normalize = next((s for s in steps if isinstance(s, T.Normalize)), None)
    if resize is None or normalize is None:
        raise UserError(
            f"{what}: its preprocessing ({', '.join(type(s).__name__ for s in steps)}) is not "
            f"a resize and center crop (resize_mode longest is not supported)"
        )
    size = (resize.size,) if isinstance(resize.size, int) else tuple(resize.size)
    cropped = tuple(crop.size) if crop is not None else size
    return EvalTransform(
        resize_size=size,
        crop_size=cropped[:1] if len(set(cropped)) == 1 else cropped,
        interpolation=InterpolationMode(resize.interpolation.value),
        mean=tuple(float(m) for m in normalize.mean),
        std=tuple(float(s) for s in normalize.std),
    )


def published(name: str, weights: str) -> Published | None:
    """open_clip's own zero-shot ImageNet-1k top-1 for this model and tag, where its results
    table has it (it publishes no top-5)."""
    top1 = _results().get((name, weights))
    by = f"open_clip results table, {name} {weights}, zero-shot"
    return None if top1 is None else Published(top1, None, by)


@cache
def _results() -> dict[tuple[str, str], float]:
    with (files("pipeline") / RESULTS).open() as f:
        return {
            (r["name"], r["pretrained"]): float(r["imagenet1k_top1"]) for r in csv.DictReader(f)
        }


def published_at(loaded: LoadedModel, transforms: EvalTransform) -> Published | None:
    """open_clip publishes its numbers at the model's own transform only."""
    return None


def cached_file(asked: ModelRequest) -> str | None:
    """A weights file given by path, hashed while the dataset loads."""
    return asked.weights if os.path.isfile(asked.weights) else None


def head_classes(asked: ModelRequest) -> Classes | None:
    """The prompts' classes: decided from the dataset before the model is loaded."""
    return None if asked.prompts is None else asked.prompts.classes


def zero_shot(asked: ModelRequest) -> bool:
    """Every open_clip model is zero-shot."""
    return True

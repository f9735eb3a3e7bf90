"""timm's classifiers (`model.arch=timm:NAME`, the `timm` extra): the model with its
weights (the hub's, through timm and the Hugging Face cache, so a cached copy works
offline; a checkpoint file; or none), the eval transform of its pretrained config as
timm's validate.py resolves it (the test-time size where the config has one), its head
read as ImageNet-1k by the synsets timm names, and the accuracy timm publishes for it.
"""

from __future__ import annotations

import csv
import difflib
import logging
import math
from functools import cache
from importlib.resources import files
from typing import Any

import torch
from torchvision.transforms import InterpolationMode

from pipeline.choices import Interpolation
from pipeline.data.classes import Classes
from pipeline.data.transforms import EvalTransform
from pipeline.errors import UserError, first_line, optional
from pipeline.models import heads
from pipeline.models.base import LoadedModel, Published
from pipeline.models.weights import (
    file_digest,
    fitted,
    from_file,
    load_state,
    random_weights,
)
from pipeline.request import ModelRequest

log = logging.getLogger(__name__)
RESULTS = "published/timm-results-imagenet.csv"  # timm's results/results-imagenet.csv
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm reads from a hub repo


def load(asked: ModelRequest) -> LoadedModel:
    """timm's model.name (architecture.tag) with its weights: pretrained | a checkpoint |
    none."""
    name, weights, sha256 = asked.name, asked.weights, asked.sha256
    timm = optional("timm", "timm", "model.arch=timm:...")
    logging.getLogger("timm").setLevel(logging.WARNING)  # its per-load INFO lines: ours say it
    base = name.split(".")[0]
    if not timm.is_model(base):
        near = difflib.get_close_matches(base, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise UserError(f"model.arch=timm:{name}: timm has no model {base}{hint}")
    tags = timm.list_pretrained(f"{base}.*")
    if "." in name and name not in tags:
        raise UserError(
            f"model.arch=timm:{name}: timm has no such pretrained tag of {base}; it has "
            f"{', '.join(tags) or 'none'}"
        )
    file, digest = None, None
    if weights == "pretrained":
        net = _pretrained(timm, name)
        file = _hub_file(net.pretrained_cfg)
        digest = _digest(file, sha256)
    elif weights.lower() == "none":
        random_weights(sha256)
        size = (
            None
            if asked.classes is None
            else heads.declared_classes(asked.classes, None, name).size
        )
        net = timm.create_model(name, pretrained=False, **({"num_classes": size} if size else {}))
    else:
        state_dict, digest = from_file(weights, sha256, valid=["pretrained", "none"])
        net = timm.create_model(name, pretrained=False)
        state_dict = fitted(state_dict, net.state_dict(), weights)
        outputs = _head_size(net, state_dict)
        if outputs != net.num_classes:  # a fine-tune: its head's size, from the checkpoint
            net = timm.create_model(name, pretrained=False, num_classes=outputs)
        load_state(net, state_dict, weights)
        file = weights
    tag = net.pretrained_cfg.get("tag")
    if "." not in name and tag:  # timm's default tag: say which, it decides the preprocessing
        log.info("timm:%s is timm:%s.%s (timm's default tag for it)", name, name, tag)
        name = f"{name}.{tag}"
    config = timm.data.resolve_data_config({}, model=net, use_test_size=True)
    transforms = eval_transform(config, name)
    classes, columns, head = _head(timm, net, name, asked.classes)
    return LoadedModel(
        model=heads.Head(net, columns).eval() if columns else net.eval(),
        arch=f"timm:{name}",
        weights=weights,
        digest=digest,
        classes=classes,
        transforms=transforms,
        preprocess=f"timm {name} pretrained_cfg (as validate.py resolves it)",
        file=file,
        source="checkpoint" if file == weights else weights,
        library=f"timm {timm.__version__}",
        head=head,
        published=published(name, transforms) if weights == "pretrained" else None,
    )


def _pretrained(timm: Any, name: str) -> Any:
    """timm.create_model(pretrained=True): from the Hugging Face cache, else the hub."""
    try:
        return timm.create_model(name, pretrained=True)
    except RuntimeError as e:  # timm: no pretrained weights for this name
        raise UserError(f"model.arch=timm:{name}: {first_line(e)}") from None
    except OSError as e:  # huggingface_hub: not cached and not reachable
        raise UserError(
            f"timm's weights for {name} are not in the Hugging Face cache and could not be "
            f"downloaded ({type(e).__name__}). Run once where the hub is reachable and copy "
            f"the cache (HF_HUB_CACHE), or pass model.weights=PATH"
        ) from None


def _hub_file(pretrained_cfg: Any) -> str | None:
    """The cached file timm read the weights from (to record its sha256)."""
    from huggingface_hub import try_to_load_from_cache

    repo = pretrained_cfg.get("hf_hub_id")
    for filename in HUB_FILES if isinstance(repo, str) else ():
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return found
    return None


def _digest(file: str | None, sha256: str | None) -> Any:
    if file is None:
        if sha256:
            raise UserError("model.sha256 is set but timm read no file this run could check")
        return None
    return file_digest(file, sha256)


def eval_transform(config: dict[str, Any], name: str) -> EvalTransform:
    """timm's `transforms_imagenet_eval` as numbers: resize to floor(size / crop_pct)
    (the shorter side, or both sides for crop_mode squash), center crop the size."""
    _, h, w = config["input_size"]
    mode = config.get("crop_mode") or "center"
    if h != w or mode not in ("center", "squash"):
        raise UserError(
            f"timm:{name} evaluates at {h}x{w} with crop_mode {mode}: only square crops with "
            f"crop_mode center or squash are supported (set model.crop to evaluate it square)"
        )
    interpolation = config["interpolation"]
    if interpolation not in {mode.value for mode in Interpolation}:
        raise UserError(f"timm:{name} asks for {interpolation} interpolation: not supported")
    scale = math.floor(h / config["crop_pct"])
    return EvalTransform(
        resize_size=(scale, scale) if mode == "squash" else (scale,),
        crop_size=(h,),
        interpolation=InterpolationMode(interpolation),
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        crop_pct=config["crop_pct"],
    )


def _head(
    timm: Any, net: Any, name: str, declared: str | None
) -> tuple[Classes, tuple[int, ...] | None, str]:
    """The head's classes: model.classes where given, else the synsets timm names for a
    head of this size (timm's own guess, from the number of classes: its inference.py
    labels them so), read as ImageNet-1k where they are its 1000."""
    what = f"timm:{name}'s head"
    subset = None if declared else timm.data.infer_imagenet_subset(net)
    names = None if subset is None else timm.data.ImageNetInfo(subset).label_names()
    classes, columns, how = heads.read(names, what, declared, int(net.num_classes))
    synsets = f" (timm's {subset} synsets)" if subset else ""
    return classes, columns, f"{how}{synsets}"


def _head_size(net: Any, state_dict: dict) -> int:
    """How many classes a checkpoint's head has: its classifier's rows (timm's
    pretrained_cfg names the classifier)."""
    key = f"{net.pretrained_cfg.get('classifier', 'head')}.weight"
    weight = state_dict.get(key)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) else int(net.num_classes)


def head_classes(asked: ModelRequest) -> Classes | None:
    """model.classes where given; else known once timm has built the model."""
    if asked.classes is not None:
        return heads.declared_classes(asked.classes, None, f"timm:{asked.name}'s head")
    return None


@cache
def _results() -> dict[str, list[dict[str, str]]]:
    rows = csv.DictReader(files("pipeline").joinpath(RESULTS).read_text().splitlines())
    table: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        table.setdefault(row["model"], []).append(row)
    return table


def published_at(loaded: LoadedModel, transforms: EvalTransform) -> Published | None:
    """timm's published numbers for its own pretrained weights at another eval transform,
    by the tag it resolved (loaded.arch); none for other weights."""
    if loaded.source != "pretrained":
        return None
    return published(loaded.arch.removeprefix("timm:"), transforms)


def cached_file(asked: ModelRequest) -> str | None:
    """timm's hub file is found as it loads (its pretrained_cfg names it): nothing before."""
    return None


def published(name: str, transforms: EvalTransform) -> Published | None:
    """timm's published ImageNet-1k val accuracy for `name` at this eval transform (its
    results table holds each model at one or two sizes, each with its crop_pct)."""
    if len(transforms.resize_size) != 1:
        return None  # the table's runs are center crops
    for row in _results().get(name, []):
        size, crop_pct = int(row["img_size"]), float(row["crop_pct"])
        same = (
            transforms.crop_size == (size,)
            and transforms.resize_size == (math.floor(size / crop_pct),)
            and transforms.interpolation.value == row["interpolation"]
        )
        if same:
            by = f"timm results, {size} px, crop_pct {row['crop_pct']}, {row['interpolation']}"
            return Published(float(row["top1"]), float(row["top5"]), by)
    return None

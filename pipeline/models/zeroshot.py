"""Zero-shot heads (CLIP-like models): a class's weights are the normalised text embeddings
of its name in every template, averaged and renormalised (open_clip's
build_zero_shot_classifier), and the logits are the model's logit scale times the cosine
of the image's embedding with each class's.

The names and templates: for a dataset read as ImageNet-1k, the curated names open_clip
ships (OpenAI's) and OpenAI's 80 templates; for any other, the dataset's own class names
(an underscore read as a space: folder names have none) and "a photo of a {}.";
model.classnames / model.templates files override either. A head is
built once per (model, weights, names, templates) on the run's device and cached by that
content's hash, so a sweep over datasets or a resumed run does not build it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import torch
from torch import nn

from pipeline.data.classes import Classes, Named, read_names
from pipeline.data.imagenet import IMAGENET_1K
from pipeline.errors import UserError

log = logging.getLogger(__name__)
OWN_TEMPLATE = "a photo of a {}."  # CLIP's prompt for a dataset without templates of its own
RECIPE = "mean of normalised text embeddings, renormalised (open_clip build_zero_shot_classifier)"


@dataclass(frozen=True)
class Prompts:
    """What a zero-shot head is built from: its classes, the text of each class's name, the
    templates, and where they come from."""

    classes: Classes  # ImageNet-1k, or the dataset's own classes
    names: tuple[str, ...]  # the text of each class, in class order
    templates: tuple[str, ...]  # format strings with one {} for the name
    source: str  # in words: "ImageNet-1k: open_clip's curated names, OpenAI's 80 templates"
    device: str = "cpu"  # where the head is built: the run's device

    @property
    def names_sha256(self) -> str:
        return _digest(self.names)

    @property
    def templates_sha256(self) -> str:
        return _digest(self.templates)


def _digest(texts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()


def prompts(
    own_names: Sequence[str] | None,
    *,
    classnames: str | None,
    templates: str | None,
    device: str,
) -> Prompts:
    """The prompts for a dataset: ImageNet-1k's where `own_names` is None (its labels read
    as ImageNet-1k, or it has none), else its own class names; model.classnames and
    model.templates (files, one per line) override the defaults."""
    if own_names is None:
        classes: Classes = IMAGENET_1K
        names = _shipped("clip-imagenet-names.txt")
        default = _shipped("clip-imagenet-templates.txt")
        said = "ImageNet-1k: open_clip's curated names (OpenAI's)"
        said_templates = "OpenAI's 80 templates"
    else:
        classes, names = Named(tuple(own_names)), tuple(n.replace("_", " ") for n in own_names)
        default, said = (OWN_TEMPLATE,), f"the dataset's {len(names)} class names ('_' as ' ')"
        said_templates = f"'{OWN_TEMPLATE}'"
    if classnames is not None:
        names = read_names(classnames, "model.classnames")
        if len(names) != classes.size:
            raise UserError(
                f"model.classnames={classnames} names {len(names)} classes; the head has "
                f"{classes.size} ({classes.kind}): one name per class, in class order"
            )
        said = f"{classes.kind}: names from model.classnames={classnames}"
    chosen = default
    if templates is not None:
        chosen = read_names(templates, "model.templates")
        bad = [t for t in chosen if t.count("{}") != 1]
        if bad:
            raise UserError(
                f"model.templates={templates}: each line needs one {{}} where the class name "
                f"goes; {bad[0]!r} has {bad[0].count('{}')}"
            )
        said_templates = f"{len(chosen)} templates from model.templates={templates}"
    return Prompts(classes, names, chosen, f"{said}, {said_templates}", device)


def _shipped(name: str) -> tuple[str, ...]:
    """open_clip's curated ImageNet names and OpenAI's templates, as shipped in classes/
    (scripts/build_clip_text.py), so a transformers CLIP needs no open_clip."""
    return tuple(files("pipeline").joinpath("classes", name).read_text().splitlines())


def cache_dir() -> Path:
    """Where built heads are kept: $ALEXNET_EVAL_CACHE, else $XDG_CACHE_HOME/alexnet-eval,
    else ~/.cache/alexnet-eval; in zero-shot-heads/."""
    root = os.environ.get("ALEXNET_EVAL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "alexnet-eval"
    )
    return Path(root) / "zero-shot-heads"


def head(
    p: Prompts,
    model_key: str,
    encode: Callable[[list[str]], torch.Tensor],
    *,
    batch: int = 256,
) -> tuple[torch.Tensor, str]:
    """The head's weights (embedding size x classes, on the CPU) and how it was had, in
    words: from the cache, or built here with `encode` (texts -> normalised embeddings) on
    the run's device and cached. `model_key` says which model and weights (its sha256)."""
    key = hashlib.sha256(
        json.dumps([model_key, RECIPE, p.names_sha256, p.templates_sha256]).encode()
    ).hexdigest()
    path = cache_dir() / f"{key}.pt"
    cached = _read_cached(path, p.classes.size)
    if cached is not None:
        return cached, f"from the cache ({path})"
    started = time.perf_counter()
    texts = [template.format(name) for name in p.names for template in p.templates]
    with torch.inference_mode():
        embeddings = torch.cat([encode(texts[i : i + batch]) for i in range(0, len(texts), batch)])
        weights = embeddings.reshape(len(p.names), len(p.templates), -1).mean(dim=1)
        weights = (weights / weights.norm(dim=1, keepdim=True)).T.contiguous().float().cpu()
    seconds = time.perf_counter() - started
    how = (
        f"built in {seconds:.1f} s on {p.device} ({len(p.names)} classes x {len(p.templates)} "
        f"templates)"
    )
    if _write_cached(path, weights):
        how += f", cached at {path}"
    return weights, how


def classifier(
    net: nn.Module,
    tower: nn.Module,
    p: Prompts,
    model_key: str,
    encode: Callable[[list[str]], torch.Tensor],
) -> tuple[ZeroShot, str]:
    """A CLIP-like `net` as a classifier over the prompts' classes: its head (`head`), with
    `net` on the run's device while its text tower encodes and back on the CPU after (the
    run places the model itself), under `tower`'s image features; and how the head was had,
    which the log says."""
    net.to(p.device)
    try:
        weights, how = head(p, model_key, encode)
    finally:
        net.to("cpu")
    log.info("zero-shot head: %s; %s", p.source, how)
    return ZeroShot(tower, weights, *logit_scale(net)), how


def _read_cached(path: Path, classes: int) -> torch.Tensor | None:
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as e:  # damaged: built again, and the damaged file replaced
        log.warning("zero-shot head cache %s is unreadable (%s): building it again", path, e)
        return None
    if not isinstance(weights, torch.Tensor) or weights.ndim != 2 or weights.shape[1] != classes:
        log.warning(
            "zero-shot head cache %s is not a head of %d classes: building it again", path, classes
        )
        return None
    return weights


def _write_cached(path: Path, weights: torch.Tensor) -> bool:
    """Write a head into the cache (whole or not at all); a cache that cannot be written is
    said and the run goes on."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}.{os.getpid()}")
        torch.save(weights, staged)
        os.replace(staged, path)
        return True
    except OSError as e:
        log.warning(
            "the zero-shot head could not be cached in %s (%s)", path.parent, e.strerror or e
        )
        return False


def logit_scale(model: nn.Module) -> tuple[float, float]:
    """A CLIP-like model's (logit scale, logit bias): exp of its learned temperature, and
    SigLIP's bias (0 without one)."""
    with torch.no_grad():
        scale = float(model.logit_scale.exp())  # type: ignore[operator]
        bias = getattr(model, "logit_bias", None)
        return scale, 0.0 if bias is None else float(bias)


class ZeroShot(nn.Module):
    """An image tower with a zero-shot head: logit scale x cosine(image, class) (+ bias)."""

    def __init__(
        self, tower: nn.Module, weights: torch.Tensor, scale: float, bias: float = 0.0
    ) -> None:
        super().__init__()
        self.tower, self.scale, self.bias = tower, scale, bias
        self.head: torch.Tensor
        self.register_buffer("head", weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.tower(x).float()
        features = features / features.norm(dim=-1, keepdim=True)
        return self.scale * features @ self.head + self.bias

"""torchvision's classifiers (`model.arch=NAME`): weights from its weights API (cached under
`$TORCH_HOME`, so a pre-staged file works offline), from a local checkpoint, or none; the
eval transform and class names always from the architecture's weights enum, never from
hand-typed numbers.
"""

from __future__ import annotations

import itertools
import os
import re
import urllib.error
from concurrent.futures import Future
from typing import Any

import torch
import torchvision
from torch import nn

from pipeline.data import imagenet
from pipeline.data.classes import Classes
from pipeline.data.transforms import EvalTransform
from pipeline.errors import UserError
from pipeline.models import heads
from pipeline.models.base import LoadedModel, Published
from pipeline.models.weights import (
    check_sha256,
    fitted,
    from_file,
    hash_in_background,
    load_state,
    random_weights,
)
from pipeline.request import ModelRequest


def load(asked: ModelRequest) -> LoadedModel:
    """Build the architecture and load its weights (pretrained | a weights name | a
    checkpoint | none).

    The eval transform and class names come from torchvision's weights entry: the one
    loaded, or for a checkpoint file model.preprocess (default: the architecture's DEFAULT).
    """
    arch, weights, sha256, preprocess = asked.name, asked.weights, asked.sha256, asked.preprocess
    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        raise UserError(
            f"Unknown model.arch '{arch}'; torchvision classifiers: {', '.join(available)} "
            f"(or timm:NAME, hf:HUB_ID_OR_FOLDER)"
        )
    enum = torchvision.models.get_model_weights(arch)
    entry = _preprocess_entry(enum, preprocess)
    file_sha, prefix, file, published = None, None, None, None
    what = f"{arch}'s head"
    classes: Classes = imagenet.IMAGENET_1K
    how = f"{what}: ImageNet-1k (1000 outputs)"
    if asked.classes is not None:
        classes = heads.declared_classes(asked.classes, None, what)
        how = f"{what}: {classes.kind} (model.classes={asked.classes})"
    if weights == "pretrained" or weights in enum.__members__:  # DEFAULT too: its real name
        weights = enum["DEFAULT" if weights == "pretrained" else weights].name
    if weights.lower() == "none":
        random_weights(sha256)
        model = torchvision.models.get_model(arch, weights=None, num_classes=classes.size)
    else:
        if weights in enum.__members__:
            if preprocess and enum[weights] != entry:
                raise UserError(
                    f"model.preprocess={preprocess} differs from model.weights={weights}, whose "
                    f"own transforms apply; model.preprocess is for checkpoint files"
                )
            entry = enum[weights]
            if asked.classes is not None:
                raise UserError(
                    f"model.classes names the classes of a checkpoint's head; "
                    f"model.weights={weights} is ImageNet-1k's"
                )
            state_dict, file_sha, file = _from_torchvision(entry, sha256)
            prefix = None if sha256 else _name_prefix(file)
            ref = entry.meta["_metrics"].get("ImageNet-1K")
            published = ref and Published(ref["acc@1"], ref["acc@5"], f"torchvision {weights}")
        else:
            valid = ["pretrained", *enum.__members__, "none"]
            state_dict, file_sha = from_file(weights, sha256, valid=valid)
            file = weights
            with torch.device("meta"):
                own = torchvision.models.get_model(arch, weights=None).state_dict()
            state_dict = fitted(state_dict, own, weights)
            outputs = _head_size(own, state_dict)
            if outputs != imagenet.N_CLASSES or asked.classes is not None:
                classes, _, how = heads.read(None, what, asked.classes, outputs)
        model = _with_weights(arch, state_dict, weights, classes.size)
    return LoadedModel(
        model=model.eval(),
        arch=arch,
        weights=weights,
        digest=file_sha,
        classes=classes,
        transforms=EvalTransform.of(entry.transforms()),
        preprocess=f"{type(entry).__name__}.{entry.name}",
        expected_prefix=prefix,
        file=file,
        source="checkpoint" if file == weights else weights,
        library=f"torchvision {torchvision.__version__}",
        head=how,
        published=published,
    )


def head_classes(asked: ModelRequest) -> Classes | None:
    """ImageNet-1k for torchvision's weights (or none), model.classes where given; a
    checkpoint's head is known once it is read."""
    if asked.classes is not None:
        return heads.declared_classes(asked.classes, None, f"{asked.name}'s head")
    if os.path.isfile(asked.weights):
        return None
    return imagenet.IMAGENET_1K


def published_at(loaded: LoadedModel, transforms: EvalTransform) -> Published | None:
    """torchvision publishes its weights' numbers at their own transform only."""
    return None


def cached_file(asked: ModelRequest) -> str | None:
    """The weights API's file for a weights name, where it is cached already."""
    weights = "DEFAULT" if asked.weights == "pretrained" else asked.weights
    try:
        enum = torchvision.models.get_model_weights(asked.name)
    except ValueError:
        return None
    if weights not in enum.__members__:
        return None
    cached = _cached_file(enum[weights])
    return cached if os.path.isfile(cached) else None


def _with_weights(arch: str, state_dict: dict, source: str, outputs: int) -> nn.Module:
    """`arch` with `outputs` classes holding `state_dict`, built without a random init of
    the tensors it replaces."""
    with torch.device("meta"):
        model = torchvision.models.get_model(arch, weights=None, num_classes=outputs)
    load_state(model, state_dict, source)
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        model = torchvision.models.get_model(arch, weights=None, num_classes=outputs)
        model.load_state_dict(state_dict)  # a buffer not saved: built for real
    return model


def _head_size(own: dict, state_dict: dict) -> int:
    """How many classes a checkpoint's head has: the first dimension its tensors give where
    the architecture's ImageNet-1k head (`own`) has 1000 (1000 when they all agree)."""
    sizes = {
        int(v.shape[0])
        for k, v in state_dict.items()
        if k in own and hasattr(v, "shape") and v.shape != own[k].shape
        and own[k].shape[:1] == (imagenet.N_CLASSES,) and len(v.shape) == len(own[k].shape)
    }  # fmt: skip
    return sizes.pop() if len(sizes) == 1 else imagenet.N_CLASSES


def _preprocess_entry(enum: Any, preprocess: str | None) -> Any:
    """model.preprocess: a weights name of this architecture, or a full `Enum.NAME`."""
    if preprocess is None:
        return enum.DEFAULT
    try:
        if "." in preprocess:
            return torchvision.models.get_weight(preprocess)
        return enum[preprocess]
    except (KeyError, ValueError, AttributeError):
        raise UserError(
            f"model.preprocess={preprocess} is not a torchvision weights name; valid for this "
            f"model: {', '.join(enum.__members__)} (or a full name: ResNet50_Weights.IMAGENET1K_V2)"
        ) from None


def _name_prefix(file: str) -> str | None:
    """The sha256 prefix torchvision writes into its file names (alexnet-owt-7be5be79.pth)."""
    match = re.search(r"-([a-f0-9]{6,})\.", os.path.basename(file))
    return match[1] if match else None


def _from_torchvision(entry: Any, sha256: str | None) -> tuple[dict, Future[str] | str, str]:
    """The torchvision weights API: `$TORCH_HOME/hub/checkpoints/<file>`, downloaded if missing."""
    cached = _cached_file(entry)
    existed = os.path.exists(cached)
    if sha256 and existed:
        check_sha256(cached, sha256)
    try:
        state_dict = entry.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        if os.path.exists(cached):
            raise UserError(f"Could not read cached weights {cached}: {e}") from e
        raise UserError(
            f"Weights {entry} are not cached and could not be downloaded ({type(e).__name__}). "
            f"Pre-stage them: copy {os.path.basename(entry.url)} to {os.path.dirname(cached)}/ "
            f"(set TORCH_HOME to choose the folder), or pass model.weights=PATH"
        ) from e
    if sha256 and not existed:  # just downloaded: torchvision checked only a hash prefix
        check_sha256(cached, sha256)
    return state_dict, sha256.lower() if sha256 else hash_in_background(cached), cached


def _cached_file(entry: Any) -> str:
    """Where torchvision's weights API keeps this entry's file."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(entry.url))

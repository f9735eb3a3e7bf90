"""Your own model (`model.arch=module:PKG.MODULE:FUNCTION`): a function or class importable
from the run's environment, called with model.kwargs, whose model gives one logit per class
of model.classes. Its weights: a state_dict, safetensors or a training checkpoint's
state_dict (weights.py; never unpickled into objects), none, or pretrained (what the builder
itself loads). Its eval transform: borrowed or given (preprocessing.py).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
from typing import Any

from torch import nn

from pipeline.data.classes import Classes
from pipeline.data.transforms import EvalTransform
from pipeline.errors import UserError, first_line
from pipeline.models import heads, preprocessing
from pipeline.models.base import LoadedModel, Published
from pipeline.models.weights import fitted, from_file, load_state, random_weights
from pipeline.request import ModelRequest

log = logging.getLogger(__name__)


def load(asked: ModelRequest) -> LoadedModel:
    """Build the model with model.kwargs, then load model.weights into it."""
    what = f"model.arch=module:{asked.name}"
    classes = head_classes(asked)
    transforms, how = preprocessing.given(asked, what)
    builder = _builder(asked.name)
    kwargs = dict(asked.kwargs)
    if asked.weights.lower() == "none":
        random_weights(asked.sha256)
    model = _call(builder, kwargs, what)
    digest, file, source = None, None, asked.weights
    if asked.weights == "pretrained":
        if asked.sha256:
            raise UserError(
                f"model.sha256 is set but {what} loads its own weights: no file to check"
            )
        log.info(
            "%s: the weights are what the builder itself loads (model.weights=pretrained)", what
        )
    elif asked.weights.lower() != "none":
        state_dict, digest = from_file(asked.weights, asked.sha256, valid=["pretrained", "none"])
        load_state(model, fitted(state_dict, model.state_dict(), asked.weights), asked.weights)
        file, source = asked.weights, "checkpoint"
    return LoadedModel(
        model=heads.Head(model, None).eval(),
        arch=f"module:{asked.name}",
        weights=asked.weights,
        digest=digest,
        classes=classes,
        transforms=transforms,
        preprocess=how,
        file=file,
        source=source,
        library=_library(asked.name),
        head=f"{what}: {classes.kind} (model.classes={asked.classes})",
        kwargs=json.dumps(kwargs, sort_keys=True, default=str) if kwargs else None,
    )


def head_classes(asked: ModelRequest) -> Classes:
    """model.classes: a module's outputs are named by nothing else."""
    classes, _, _ = heads.read(None, f"model.arch=module:{asked.name}", asked.classes, None)
    return classes


def _builder(name: str) -> Any:
    """PKG.MODULE:FUNCTION, imported."""
    module_name, colon, attr = name.partition(":")
    if not colon or not module_name or not attr:
        raise UserError(
            f"model.arch=module:{name}: name the builder as module:PKG.MODULE:FUNCTION "
            f"(e.g. module:my_pkg.nets:build)"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # the user's code: its import error, in one line
        raise UserError(
            f"model.arch=module:{name}: cannot import {module_name} ({type(e).__name__}: "
            f"{first_line(e)}); it must be importable where the run starts (pip install -e "
            f"its project, or PYTHONPATH)"
        ) from None
    builder: Any = module
    for part in attr.split("."):
        builder = getattr(builder, part, None)
        if builder is None:
            raise UserError(f"model.arch=module:{name}: {module_name} has no {attr}")
    if not callable(builder):
        raise UserError(f"model.arch=module:{name}: {attr} is not a function or class")
    return builder


def _call(builder: Any, kwargs: dict[str, Any], what: str) -> nn.Module:
    try:
        model = builder(**kwargs)
    except Exception as e:  # the user's code: what it raised, in one line
        given = f" with model.kwargs {kwargs}" if kwargs else ""
        raise UserError(f"{what}{given} raised {type(e).__name__}: {first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{what} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _library(name: str) -> str:
    """The builder's distribution and its version, where it is installed as one."""
    top = name.split(".")[0].split(":")[0]
    try:
        return f"module {top} {importlib.metadata.version(top)}"
    except importlib.metadata.PackageNotFoundError:
        return f"module {top}"


def published_at(loaded: LoadedModel, transforms: EvalTransform) -> Published | None:
    """Nothing is published for your own model."""
    return None


def cached_file(asked: ModelRequest) -> str | None:
    """model.weights is a file or nothing: hashed by load.start_hashing."""
    return None

"""torch.export programs (`model.arch=pt2:FILE`, written by `torch.export.save`): loaded with
nothing in them unpickled into objects (torch.export.load would fall back to full pickle
for some entries: here such a file is refused), run as the program's module on the run's
device. Classes and eval transform from the file's metadata where `python -m
pipeline.export` wrote it, else given as for your own module.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, NoReturn

import torch

from pipeline.errors import UserError, first_line
from pipeline.models import exported
from pipeline.models.base import LoadedModel
from pipeline.models.exported import cached_file as cached_file  # the ModelSource functions
from pipeline.models.exported import head_classes as head_classes
from pipeline.models.exported import published_at as published_at
from pipeline.request import ModelRequest


def load(asked: ModelRequest) -> LoadedModel:
    """The program's module, on the CPU."""
    path, what, digest = exported.opened(asked)
    extra: dict[str, Any] = {exported.KEY: None}  # filled where the file has it
    try:
        with _without_pickle():
            program = torch.export.load(path, extra_files=extra)
    except Exception as e:  # not a .pt2, from another torch, or holding pickled objects
        pickled = isinstance(e, pickle.UnpicklingError)
        reason = (
            "it holds pickled Python objects, never unpickled here" if pickled else first_line(e)
        )
        raise UserError(
            f"Refusing to load {path} as a torch.export program ({reason}); save it with "
            f"torch.export.save, or export it with python -m pipeline.export"
        ) from None
    batch, outputs = _shapes(program, path)
    told = exported.described(extra.get(exported.KEY), asked, what, outputs)
    library = f"torch.export (torch {torch.__version__})"
    return exported.loaded(
        program.module(), told, asked, batch=batch, digest=digest, library=library
    )


def _shapes(program: Any, path: str) -> tuple[int | None, int | None]:
    """(the batch size the program was exported for, None where it is dynamic; its number
    of outputs)."""
    nodes = {n.name: n for n in program.graph.nodes}
    inputs = [nodes[name].meta.get("val") for name in program.graph_signature.user_inputs]
    if len(inputs) != 1 or getattr(inputs[0], "ndim", 0) != 4:
        raise UserError(
            f"{path} takes {len(inputs)} inputs: a classifier takes one tensor of images "
            f"(batch, 3, height, width)"
        )
    output = next(n for n in program.graph.nodes if n.op == "output").args[0][0]
    logits = output.meta.get("val") if isinstance(output, torch.fx.Node) else None
    batch, width = inputs[0].shape[0], None if logits is None else logits.shape[-1]
    return (
        batch if isinstance(batch, int) else None,
        width if isinstance(width, int) else None,
    )


@contextmanager
def _without_pickle() -> Iterator[None]:
    """While torch.export.load runs: torch.load only with weights_only=True, pickled Python
    objects and TorchScript objects refused, its logged tracebacks kept quiet."""
    from torch.export.pt2_archive import _package

    real_load, real_pickle, real_script = torch.load, _package.pickle, torch._C._pickle_load_obj

    def weights_only(*args: Any, **kwargs: Any) -> Any:
        return real_load(*args, **{**kwargs, "weights_only": True})

    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        raise pickle.UnpicklingError("it holds pickled Python objects")

    quiet = [logging.getLogger(name) for name in ("torch.export", "torch._export")]
    levels = [logger.level for logger in quiet]
    torch.load = weights_only  # type: ignore[assignment]
    _package.pickle = SimpleNamespace(**{**vars(pickle), "loads": refuse})  # type: ignore[assignment]
    torch._C._pickle_load_obj = refuse
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        torch.load, _package.pickle = real_load, real_pickle  # type: ignore[assignment]
        torch._C._pickle_load_obj = real_script
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)

"""Model sources by the prefix of model.arch (`timm:NAME`, `hf:ID`, `module:PKG.MOD:FN`,
`onnx:FILE`, `pt2:FILE`; none for torchvision),
each one module of models/ imported only when a run uses it, so that start-up imports no
library it does not need. A new source is one module (base.ModelSource) and one line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from pipeline.choices import Library
from pipeline.errors import UserError

if TYPE_CHECKING:
    from pipeline.models.base import ModelSource


@dataclass(frozen=True)
class Entry:
    module: str  # the source's module
    needs: tuple[str, str] | None  # (a module it imports, the optional extra that brings it)
    example: str  # a model.name, for the messages


SOURCES: dict[Library, Entry] = {
    Library.torchvision: Entry("pipeline.models.from_torchvision", None, "alexnet"),
    Library.timm: Entry("pipeline.models.from_timm", ("timm", "timm"), "resnet50.a1_in1k"),
    Library.hf: Entry("pipeline.models.from_hf", ("transformers", "hf"), "microsoft/resnet-50"),
    Library.module: Entry("pipeline.models.from_module", None, "my_pkg.nets:build"),
    Library.onnx: Entry("pipeline.models.from_onnx", ("onnxruntime", "onnx"), "model.onnx"),
    Library.pt2: Entry("pipeline.models.from_pt2", None, "model.pt2"),
    Library.openclip: Entry("pipeline.models.from_openclip", ("open_clip", "clip"), "ViT-B-32"),
}


def parse(arch: str) -> tuple[Library, str]:
    """model.arch -> (its source, the name there): `timm:NAME`, `hf:HUB_ID_OR_FOLDER`,
    `module:PKG.MODULE:FUNCTION`, `onnx:FILE`, `pt2:FILE`, or a torchvision classifier's
    NAME (also `torchvision:NAME`)."""
    prefix, colon, name = arch.partition(":")
    if not colon:
        return Library.torchvision, arch
    if prefix not in Library.__members__ or not name:
        prefixes = ", ".join(
            f"{k.value}:{e.example}" for k, e in SOURCES.items() if k is not Library.torchvision
        )
        raise UserError(
            f"model.arch={arch}: name a torchvision classifier (alexnet), or prefix its "
            f"source: {prefixes}"
        )
    return Library(prefix), name


def source(library: Library) -> ModelSource:
    """The source's module, imported now."""
    return cast("ModelSource", importlib.import_module(SOURCES[library].module))

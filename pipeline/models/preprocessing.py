"""The eval transform of a model whose library does not give one (your own module, an
export without our metadata): borrowed from a library's weights (`model.preprocess=
ResNet50_Weights.IMAGENET1K_V2` or `timm:NAME`), or given in full (model.resize, crop,
mean, std; interpolation bilinear unless given). Never guessed: with neither, one line.
"""

from __future__ import annotations

import torchvision
from torchvision.transforms import InterpolationMode

from pipeline.data.transforms import EvalTransform
from pipeline.errors import UserError, optional
from pipeline.request import ModelRequest

NEEDED = ("resize", "crop", "mean", "std")


def given(asked: ModelRequest, what: str) -> tuple[EvalTransform, str]:
    """(the eval transform, where it comes from, in words) for `what` (the model)."""
    if asked.preprocess is not None:
        return borrowed(asked.preprocess, what)
    missing = [key for key in NEEDED if getattr(asked, key) is None]
    if missing:
        raise UserError(
            f"{what} brings no preprocessing of its own: borrow one "
            f"(model.preprocess=ResNet50_Weights.IMAGENET1K_V2 or timm:NAME) or give "
            f"model.resize, model.crop, model.mean and model.std (missing: "
            f"{', '.join('model.' + k for k in missing)})"
        )
    assert asked.resize and asked.crop and asked.mean and asked.std  # for mypy: checked above
    mode = InterpolationMode(asked.interpolation.value if asked.interpolation else "bilinear")
    transform = EvalTransform(
        resize_size=(asked.resize,),
        crop_size=(asked.crop,),
        interpolation=mode,
        mean=asked.mean,
        std=asked.std,
    )
    return transform, "given (model.resize, crop, interpolation, mean, std)"


def borrowed(name: str, what: str) -> tuple[EvalTransform, str]:
    """model.preprocess: a torchvision weights entry (`Enum.NAME`) or `timm:NAME`'s
    pretrained config, as that library evaluates its own weights."""
    if name.startswith("timm:"):
        from pipeline.models.from_timm import eval_transform

        timm = optional("timm", "timm", f"model.preprocess={name}")
        cfg = timm.models.get_pretrained_cfg(name.removeprefix("timm:"))
        if cfg is None:
            raise UserError(f"model.preprocess={name}: timm has no pretrained config of that name")
        config = timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict(), use_test_size=True)
        return eval_transform(config, name), f"borrowed from {name}'s pretrained_cfg"
    try:
        entry = torchvision.models.get_weight(name)
    except (KeyError, ValueError, AttributeError):
        raise UserError(
            f"model.preprocess={name} for {what}: name a torchvision weights entry "
            f"(ResNet50_Weights.IMAGENET1K_V2) or timm:NAME (timm:resnet50.a1_in1k)"
        ) from None
    return EvalTransform.of(entry.transforms()), f"borrowed from {name}"

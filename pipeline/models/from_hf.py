"""Hugging Face transformers' image classifiers (`model.arch=hf:HUB_ID_OR_FOLDER`, the `hf`
extra): `AutoModelForImageClassification` with its weights (a folder, or the hub's through
the Hugging Face cache, so a cached copy works offline; or none), the eval transform of its
`AutoImageProcessor` as numbers (resized and cropped as that processor does it: uint8
tensors, offsets rounded down), and its head read as ImageNet-1k by its id2label names.
"""

from __future__ import annotations

import glob
import hashlib
import os
from concurrent.futures import Future
from typing import Any

import torch
from torchvision.transforms import InterpolationMode

from pipeline.data.classes import Classes
from pipeline.data.transforms import EvalTransform, Style
from pipeline.errors import UserError, first_line, optional
from pipeline.models import heads, zeroshot
from pipeline.models.base import LoadedModel, Published
from pipeline.models.weights import file_digest, file_sha256, random_weights
from pipeline.request import ModelRequest

WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")  # what from_pretrained reads
ZERO_SHOT = ("clip", "siglip", "siglip2")  # model types whose head is built from text


def load(asked: ModelRequest) -> LoadedModel:
    """The classifier of a hub id or a local folder (config.json, weights, the image
    processor's preprocessor_config.json), with its pretrained weights or none."""
    name, weights, sha256 = asked.name, asked.weights, asked.sha256
    transformers = optional("transformers", "hf", "model.arch=hf:...")
    transformers.utils.logging.disable_progress_bar()  # its per-load bars: ours is the run's
    if weights not in ("pretrained", "none"):
        raise UserError(
            f"model.weights={weights}: a transformers model's weights are those of "
            f"model.arch=hf:{name} (a hub id or a folder): pretrained, or none"
        )
    what = f"model.arch=hf:{name}"
    config = _config(transformers, name)
    processor = _read(what, lambda: transformers.AutoImageProcessor.from_pretrained(name))
    if config.model_type in ZERO_SHOT:
        return _zero_shot(asked, transformers, config, processor)
    auto = transformers.AutoModelForImageClassification
    digest = None
    if weights == "none":
        random_weights(sha256)
        net = _read(what, lambda: auto.from_config(config))
    else:
        net = _read(what, lambda: auto.from_pretrained(name))
        digest = _digest(name, sha256)
    names = [config.id2label[i] for i in range(config.num_labels)]
    what = f"hf:{name}'s head (id2label)"
    classes, columns, head = heads.read(names, what, asked.classes, config.num_labels)
    return LoadedModel(
        model=heads.Head(net.eval(), columns).eval(),
        arch=f"hf:{name}",
        weights=weights,
        digest=digest,
        classes=classes,
        transforms=eval_transform(processor, name),
        preprocess=f"transformers {type(processor).__name__} of {name}",
        file=name,
        source=weights,
        library=f"transformers {transformers.__version__}",
        head=head,
    )


def _zero_shot(asked: ModelRequest, transformers: Any, config: Any, processor: Any) -> LoadedModel:
    """A CLIP or SigLIP model (AutoModel) with its tokenizer, from the folder or the local
    cache: its image features under a zero-shot head of the run's prompts."""
    name, what = asked.name, f"model.arch=hf:{asked.name}"
    if asked.prompts is None or asked.classes is not None:
        raise UserError(
            f"{what} is zero-shot: its classes come from the dataset, not model.classes"
        )
    tokenizer = _read(what, lambda: transformers.AutoTokenizer.from_pretrained(name))
    digest = None
    if asked.weights == "none":
        random_weights(asked.sha256)
        net = _read(what, lambda: transformers.AutoModel.from_config(config))
    else:
        net = _read(what, lambda: transformers.AutoModel.from_pretrained(name))
        digest = _digest(name, asked.sha256)
    net.eval()
    device = torch.device(asked.prompts.device)
    siglip = config.model_type != "clip"  # SigLIP: trained on max_length padding

    def encode(texts: list[str]) -> torch.Tensor:
        padding = "max_length" if siglip else True
        tokens = tokenizer(texts, padding=padding, truncation=True, return_tensors="pt")
        return _normalized(net.get_text_features(**tokens.to(device)))

    sha = digest.result() if isinstance(digest, Future) else digest
    key = f"transformers {name} {asked.weights} {sha or 'random, seed 0'}"
    model, how = zeroshot.classifier(net, _ImageFeatures(net), asked.prompts, key, encode)
    return LoadedModel(
        model=model,
        arch=f"hf:{name}",
        weights=asked.weights,
        digest=digest,
        classes=asked.prompts.classes,
        transforms=eval_transform(processor, name),
        preprocess=f"transformers {type(processor).__name__} of {name}",
        file=name,
        source=asked.weights,
        library=f"transformers {transformers.__version__}",
        head=f"zero-shot over {asked.prompts.classes.kind}: {asked.prompts.source} ({how})",
        prompts=asked.prompts,
    )


def _normalized(output: Any) -> torch.Tensor:
    """Features (transformers 5 returns them as an output's pooler_output), normalised."""
    features = getattr(output, "pooler_output", output)
    return features / features.norm(dim=-1, keepdim=True)


class _ImageFeatures(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.net.get_image_features(pixel_values=x)  # type: ignore[operator]
        return getattr(output, "pooler_output", output)


def zero_shot(asked: ModelRequest) -> bool:
    """Whether the model is CLIP-like (its config's model type), read before the dataset's
    labels are: its classes then come from them."""
    transformers = optional("transformers", "hf", "model.arch=hf:...")
    return _config(transformers, asked.name).model_type in ZERO_SHOT


def head_classes(asked: ModelRequest) -> Classes | None:
    """The prompts' classes for a zero-shot model; model.classes where given; else the
    config's id2label, read with the model."""
    if asked.prompts is not None:
        return asked.prompts.classes
    if asked.classes is not None:
        return heads.declared_classes(asked.classes, None, f"hf:{asked.name}'s head")
    return None


def published_at(loaded: LoadedModel, transforms: EvalTransform) -> Published | None:
    """transformers publishes no numbers that can be read offline."""
    return None


def cached_file(asked: ModelRequest) -> str | None:
    """A folder's or the cache's weights are found as they load: nothing before."""
    return None


def _config(transformers: Any, name: str) -> Any:
    """The model's config.json, read from the folder or the cache: a path that is not a
    folder is refused as that, not as a malformed hub id."""
    what = f"model.arch=hf:{name}"
    if name.startswith(("/", "./", "../", "~")) and not os.path.isdir(os.path.expanduser(name)):
        raise UserError(f"{what}: no such folder (a hub id has the form ORG/NAME)")
    return _read(what, lambda: transformers.AutoConfig.from_pretrained(name))


def _read(what: str, make: Any) -> Any:
    """A transformers loader's result, or its error as one line (offline and not cached,
    not a classifier, a folder without its files)."""
    try:
        return make()
    except (OSError, ValueError, KeyError) as e:
        first = first_line(e)
        raise UserError(f"{what}: {first}") from None


def _digest(name: str, sha256: str | None) -> Any:
    """The sha256 of the weights read: the one file's, or over the shards' sha256s."""
    found = sorted(
        f for pattern in WEIGHT_FILES for f in glob.glob(os.path.join(_folder(name), pattern))
    )
    if not found:
        if sha256:
            raise UserError(f"model.sha256 is set but no weights file of hf:{name} was found")
        return None
    if len(found) == 1:
        return file_digest(found[0], sha256)
    digest = hashlib.sha256("".join(file_sha256(f) for f in found).encode()).hexdigest()
    if sha256 and digest != sha256.lower():
        raise UserError(f"sha256 of hf:{name}'s weights is {digest}, expected {sha256}")
    return digest


def _folder(name: str) -> str:
    """Where from_pretrained read the files: the folder, or the hub cache's snapshot."""
    if os.path.isdir(name):
        return name
    from huggingface_hub import snapshot_download

    return snapshot_download(name, local_files_only=True)


def eval_transform(processor: Any, name: str) -> EvalTransform:
    """The processor's resize, crop and normalization as numbers (its settings read as
    transformers' generic steps do them, or ConvNeXT's crop_pct resize), accepted only when
    our transform makes its pixels, bit for bit, on odd-sized probe images (probe), and its
    normalized ones to float rounding: a processor's class says nothing of its pixels
    (MobileNetV2's overrides `preprocess` for segmentation maps alone)."""
    from transformers.image_utils import pil_torch_interpolation_mapping

    kind = type(processor).__name__
    if processor.do_rescale and abs(processor.rescale_factor * 255 - 1) > 1e-9:
        raise UserError(
            f"hf:{name} rescales by {processor.rescale_factor}, not 1/255: not supported"
        )
    if getattr(processor, "do_pad", None):
        raise UserError(f"hf:{name}'s image processor pads its images: not supported")
    size, crop_pct = processor.size, getattr(processor, "crop_pct", None)
    if crop_pct is not None and getattr(size, "shortest_edge", None):  # ConvNeXT's resize
        if processor.do_center_crop:
            raise UserError(f"hf:{name}'s image processor {kind} crops twice: not supported")
        resize, crop = _convnext_sizes(size.shortest_edge, crop_pct)
    else:
        resize, crop = _sizes(processor, name)
    mode = pil_torch_interpolation_mapping[processor.resample]
    normalize = processor.do_normalize
    transform = EvalTransform(
        resize_size=resize,
        crop_size=crop,
        interpolation=InterpolationMode(mode.value),
        mean=tuple(processor.image_mean) if normalize else (0.0, 0.0, 0.0),
        std=tuple(processor.image_std) if normalize else (1.0, 1.0, 1.0),
        style=Style.hf,
    )
    probe(processor, transform, f"hf:{name}'s image processor {kind}")
    return transform


PROBES = ((500, 375), (301, 457), (1000, 17), (256, 259))  # (w, h): odd shapes and margins


def probe(processor: Any, transform: EvalTransform, what: str) -> None:
    """Refuse the processor unless our transform gives its uint8 pixels bit for bit and its
    normalized ones to float rounding (1e-5), on random-noise probe images."""
    import numpy as np
    import torch
    from PIL import Image

    from pipeline.data.transforms import Preprocess

    ours = Preprocess.from_transforms(transform)
    rng = np.random.default_rng(0)
    for w, h in PROBES:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        crop = ours.crop(image)
        try:
            raw = processor(image, do_rescale=False, do_normalize=False, return_tensors="pt")
            full = processor(image, return_tensors="pt")
        except Exception as e:  # its own steps fail on a plain RGB image: not a classifier's
            raise UserError(f"{what} cannot process a {w}x{h} image: {e}") from None
        pixels, normalized = raw["pixel_values"][0], full["pixel_values"][0]
        same = pixels.shape == crop.shape and torch.equal(pixels, crop.float())
        if not same or not torch.allclose(ours.normalize(crop[None])[0], normalized, atol=1e-5):
            raise UserError(
                f"{what} makes other pixels than its settings read as {transform.describe()} "
                f"(on a {w}x{h} probe image): not supported"
            )


def _convnext_sizes(edge: int, crop_pct: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """ConvNeXT's: below 384, the shorter side to int(edge / crop_pct), then crop edge;
    from 384 on, both sides to edge."""
    if edge < 384:
        return (int(edge / crop_pct),), (edge, edge)
    return (edge, edge), (edge, edge)


def _sizes(processor: Any, name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The generic steps: resize to height x width or the shorter side to shortest_edge,
    then the center crop when do_center_crop (images of one shape, either way)."""
    size = processor.size
    if size.height and size.width and not size.shortest_edge:
        resize: tuple[int, ...] = (size.height, size.width)
    elif size.shortest_edge and not size.longest_edge:
        resize = (size.shortest_edge,)
    else:
        raise UserError(f"hf:{name}'s image processor resizes to {size}: not supported")
    if processor.do_center_crop:
        return resize, (processor.crop_size.height, processor.crop_size.width)
    if len(resize) == 1:
        raise UserError(
            f"hf:{name}'s image processor resizes the shorter side without cropping: images "
            f"of varying shapes cannot be batched"
        )
    return resize, resize

"""The model: a classifier from torchvision, timm or transformers, with its weights, its
eval transform and its head read as ImageNet-1k, on a device.

torchvision's weights come from its weights API (cached under `$TORCH_HOME`, so a
pre-staged file works offline), from a local checkpoint (`.pth` state_dict read with
`weights_only=True`, or `.safetensors`), or nowhere (random init); the preprocessing and
class names always come from the architecture's weights enum, never from hand-typed
numbers. timm's and transformers' models are model_timm's and model_hf's.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import os
import re
import urllib.error
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import torch
import torchvision
from torch import nn

from pipeline.config import split_arch
from pipeline.errors import UserError
from pipeline.transforms import EvalTransform, height_width

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    """The ImageNet-1k val accuracy a library publishes for these weights at this eval
    transform: what a whole val run is checked against."""

    top1: float
    top5: float
    by: str  # whose numbers, in words: "torchvision IMAGENET1K_V1", "timm results (...)"


@dataclass
class LoadedModel:
    model: nn.Module  # outputs ImageNet-1k's 1000 logits, in class order
    arch: str  # as given: alexnet, timm:resnet50.a1_in1k, hf:microsoft/resnet-50
    weights: str  # a torchvision weights name, pretrained, the checkpoint path, or "none"
    digest: Future[str] | str | None  # sha256 of the weights file, hashed in the background
    categories: list[str]
    transforms: EvalTransform  # the eval transform, as numbers
    preprocess: str  # where those numbers come from
    expected_prefix: str | None = None  # the hash prefix torchvision puts in a file's name
    file: str | None = None  # the weights file read: torchvision's cached one, or a checkpoint
    # what the predictions depend on, not where the file lay: a torchvision weights name,
    # "pretrained" (timm, hf), "checkpoint" (its sha256 says which one) or "none"
    source: str = "none"
    library: str = f"torchvision {torchvision.__version__}"
    head: str = "ImageNet-1k (1000 outputs)"  # how the outputs were read as ImageNet-1k
    published: Published | None = None
    params: int = 0
    gmacs: float = 0.0  # multiply-adds of one image at the crop size, in billions

    @property
    def sha256(self) -> str | None:
        """The weights file's sha256; a cached torchvision file whose hash does not start
        with the prefix in its name is refused (a wrong file staged under that name)."""
        digest = self.digest.result() if isinstance(self.digest, Future) else self.digest
        if digest and self.expected_prefix and not digest.startswith(self.expected_prefix):
            raise UserError(
                f"{self.file} has sha256 {digest[:16]}..., but its name says it starts with "
                f"{self.expected_prefix}: it is not {self.weights}. Delete it and stage the "
                f"right file (or let torchvision download it)"
            )
        return digest


def load_model(
    *,
    arch: str,
    weights: str,
    sha256: str | None,
    preprocess: str | None = None,
    resize: int | None = None,
    crop: int | None = None,
    interpolation: str | None = None,
) -> LoadedModel:
    """The model of model.arch with `weights`, on the CPU, its eval transform overridden
    where model.resize / crop / interpolation say, its size measured."""
    library, name = split_arch(arch)
    if library == "timm":
        from pipeline import model_timm

        loaded = model_timm.load(name, weights, sha256)
    elif library == "hf":
        from pipeline import model_hf

        loaded = model_hf.load(name, weights, sha256)
    else:
        loaded = load_torchvision(name, weights, sha256, preprocess)
    own = loaded.transforms
    mode = getattr(interpolation, "value", interpolation)
    transforms = own.overridden(resize=resize, crop=crop, interpolation=mode)
    if transforms != own:
        given = {"resize": resize, "crop": crop, "interpolation": mode}
        changed = ", ".join(f"model.{k}={v}" for k, v in given.items() if v is not None)
        loaded = replace(
            loaded,
            transforms=transforms,
            preprocess=f"{loaded.preprocess}, with {changed}",
            published=_published_at(loaded, transforms),
        )
    params, gmacs = measure(loaded.model, transforms)
    return replace(loaded, params=params, gmacs=gmacs)


def _published_at(loaded: LoadedModel, transforms: EvalTransform) -> Published | None:
    """A library's published numbers for its own weights at another eval transform: timm
    publishes several (by the tag it resolved: loaded.arch)."""
    library, name = split_arch(loaded.arch)
    if library != "timm" or loaded.source != "pretrained":
        return None
    from pipeline import model_timm

    return model_timm.published(name, transforms)


def measure(model: nn.Module, transforms: EvalTransform) -> tuple[int, float]:
    """(parameters, GMACs of one image at the crop size): torch's FLOP counter over one
    forward, halved (a multiply-add is two FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    h, w = height_width(transforms.crop_size)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, 3, h, w))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() / 2e9


def load_torchvision(
    arch: str, weights: str, sha256: str | None, preprocess: str | None = None
) -> LoadedModel:
    """Build `arch` and load `weights` (pretrained | enum name | checkpoint path | none).

    The eval transform and class names come from torchvision's weights entry: the one
    loaded, or for a checkpoint file `preprocess` (default: the architecture's DEFAULT).
    """
    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        raise UserError(
            f"Unknown model.arch '{arch}'; torchvision classifiers: {', '.join(available)} "
            f"(or timm:NAME, hf:HUB_ID_OR_FOLDER)"
        )
    enum = torchvision.models.get_model_weights(arch)
    entry = _preprocess_entry(enum, preprocess)
    file_sha, prefix, file, published = None, None, None, None
    if weights == "pretrained" or weights in enum.__members__:  # DEFAULT too: its real name
        weights = enum["DEFAULT" if weights == "pretrained" else weights].name
    if weights.lower() == "none":
        random_weights(sha256)
        model = torchvision.models.get_model(arch, weights=None)
    else:
        if weights in enum.__members__:
            if preprocess and enum[weights] != entry:
                raise UserError(
                    f"model.preprocess={preprocess} differs from model.weights={weights}, whose "
                    f"own transforms apply; model.preprocess is for checkpoint files"
                )
            entry = enum[weights]
            state_dict, file_sha, file = _from_torchvision(entry, sha256)
            prefix = None if sha256 else _name_prefix(file)
            ref = entry.meta["_metrics"].get("ImageNet-1K")
            published = ref and Published(ref["acc@1"], ref["acc@5"], f"torchvision {weights}")
        else:
            valid = ["pretrained", *enum.__members__, "none"]
            state_dict, file_sha = from_file(weights, sha256, valid=valid)
            file = weights
        model = _with_weights(arch, state_dict, weights)
    return LoadedModel(
        model=model.eval(),
        arch=arch,
        weights=weights,
        digest=file_sha,
        categories=list(entry.meta["categories"]),
        transforms=EvalTransform.of(entry.transforms()),
        preprocess=f"{type(entry).__name__}.{entry.name}",
        expected_prefix=prefix,
        file=file,
        source="checkpoint" if file == weights else weights,
        published=published,
    )


def random_weights(sha256: str | None) -> None:
    """Before a random init: no sha256 to check, the warning, and the same random model in
    every process and run."""
    if sha256:
        raise UserError("model.sha256 is set but model.weights=none loads no file; drop one")
    log.warning("model.weights=none: random weights, accuracy is meaningless (smoke run)")
    torch.manual_seed(0)


def _with_weights(arch: str, state_dict: dict, source: str) -> nn.Module:
    """`arch` holding `state_dict`, built without a random init of the tensors it replaces."""
    with torch.device("meta"):
        model = torchvision.models.get_model(arch, weights=None)
    load_state(model, state_dict, source)
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        model = torchvision.models.get_model(arch, weights=None)  # a buffer not saved
        model.load_state_dict(state_dict)
    return model


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


def from_file(path: str, sha256: str | None, *, valid: list[str]) -> tuple[dict, Future[str] | str]:
    """A local checkpoint: safetensors, or a state_dict read with `weights_only=True`."""
    if not os.path.isfile(path):
        raise UserError(
            f"model.weights='{path}' is neither a weights name ({', '.join(valid)}) "
            f"nor an existing file"
        )
    digest = file_digest(path, sha256)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path), digest
        except Exception as e:  # a truncated or foreign file: safetensors' own errors
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"Cannot read {path} as safetensors: {reason}") from None
    try:
        # mmap needs torch.save's zip format; legacy (pre-1.6) files are read whole
        mmap = zipfile.is_zipfile(path)
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # pickle.UnpicklingError and friends: refuse, never run it
        raise UserError(
            f"Refusing to load {path}: not a plain state_dict ({str(e).splitlines()[0]}). "
            f"Save it with torch.save(model.state_dict()) or as .safetensors"
        ) from None
    for key in ("state_dict", "model"):  # common training-checkpoint wrappers
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict):
        raise UserError(f"{path} holds a {type(loaded).__name__}, not a state_dict")
    return {k.removeprefix("module."): v for k, v in loaded.items()}, digest


def load_state(model: nn.Module, state_dict: dict, source: str) -> None:
    """load_state_dict, with one line saying what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and hasattr(v, "shape") and v.shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        first = (shapes or missing or unexpected)[0]
        raise UserError(
            f"Weights {source} do not fit the model: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(shapes)} wrong shape(s) (e.g. {first})"
        )
    model.load_state_dict(state_dict, assign=True)


def start_hashing(arch: str, weights: str) -> None:
    """Start hashing the weights file, if it is already on disk, while the dataset loads:
    a run must know the sha256 before it scores (0.2 s for AlexNet's 233 MB)."""
    if os.path.isfile(weights):
        hash_in_background(weights)
        return
    if split_arch(arch)[0] != "torchvision":
        return
    if weights == "pretrained":
        weights = "DEFAULT"
    try:
        enum = torchvision.models.get_model_weights(arch)
    except ValueError:
        return
    if weights in enum.__members__:
        cached = _cached_file(enum[weights])
        if os.path.isfile(cached):
            hash_in_background(cached)


def _cached_file(entry: Any) -> str:
    """Where torchvision's weights API keeps this entry's file."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(entry.url))


@functools.cache
def _hash_job(path: str, size: int, mtime: float) -> Future[str]:
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(file_sha256, path)
    pool.shutdown(wait=False)
    return future


def hash_in_background(path: str) -> Future[str]:
    """sha256 of a file, computed while the run starts (hashlib releases the GIL); the same
    job for the same file, however often it is asked for."""
    stat = os.stat(path)
    return _hash_job(os.path.abspath(path), stat.st_size, stat.st_mtime)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: str, sha256: str | None) -> Future[str] | str:
    """A weights file's sha256: checked now against model.sha256 where it is given (before
    the file is loaded), else hashed in the background."""
    return check_sha256(path, sha256) if sha256 else hash_in_background(path)


def check_sha256(path: str, expected: str) -> str:
    actual = file_sha256(path)
    if actual != expected.lower():
        raise UserError(f"sha256 of {path} is {actual}, expected {expected} (model.sha256)")
    return actual


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

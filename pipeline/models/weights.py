"""Weights files: checkpoints read without running anything in them (a state_dict with
`weights_only=True`, a training checkpoint's `state_dict` entry, or safetensors), fitted to a
model in one line or refused, and their sha256 (checked against model.sha256, or hashed in
the background while the run starts).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import zipfile
from collections.abc import Collection
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

from pipeline.errors import UserError, first_line

log = logging.getLogger(__name__)


def random_weights(sha256: str | None) -> None:
    """Before a random init: no sha256 to check, the warning, and the same random model in
    every process and run."""
    if sha256:
        raise UserError("model.sha256 is set but model.weights=none loads no file; drop one")
    log.warning("model.weights=none: random weights, accuracy is meaningless (smoke run)")
    torch.manual_seed(0)


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
            reason = first_line(e)
            raise UserError(f"Cannot read {path} as safetensors: {reason}") from None
    loaded = _torch_load(path)
    for key in ("state_dict", "model"):  # common training-checkpoint wrappers
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict):
        raise UserError(f"{path} holds a {type(loaded).__name__}, not a state_dict")
    return {k.removeprefix("module."): v for k, v in loaded.items()}, digest


def _torch_load(path: str) -> Any:
    """torch.load with `weights_only=True`. A training checkpoint (Lightning's) also holds
    objects of classes the weights-only unpickler refuses (hyper-parameters, callbacks'
    state): they are read as inert placeholders, never built, and only its `state_dict`
    entry is kept."""
    mmap = zipfile.is_zipfile(path)  # mmap needs torch.save's zip format; legacy files: whole
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        foreign = torch.serialization.get_unsafe_globals_in_checkpoint(path) if mmap else []
        first = first_line(e)
    except Exception as e:  # truncated, not a torch file: refuse, never run it
        foreign, first = [], first_line(e)
    refusal = (
        f"Refusing to load {path}: not a plain state_dict ({first}). Save it with "
        f"torch.save(model.state_dict()) or as .safetensors"
    )
    if not foreign:
        raise UserError(refusal) from None
    inert: list[Any] = [(type(name, (_Inert,), {}), name) for name in foreign]
    try:
        with torch.serialization.safe_globals(inert):
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception:
        raise UserError(refusal) from None
    state = loaded.get("state_dict") if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(refusal) from None
    log.info(
        "%s is a training checkpoint (it holds %s): its state_dict is read, nothing else",
        path,
        ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else ""),
    )
    return state


class _Inert:
    """What a class the weights-only unpickler would refuse is read as: nothing runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def fitted(state_dict: dict, own: Collection[str], source: str) -> dict:
    """The state_dict with a prefix every key has stripped (a Lightning module's `model.`
    or `net.`), where that makes its keys the model's; said, since the file is read so."""
    keys = set(own)
    if not state_dict or keys & set(state_dict):
        return state_dict
    first = next(iter(state_dict)).split(".")
    for depth in range(1, len(first)):
        prefix = ".".join(first[:depth]) + "."
        if not all(k.startswith(prefix) for k in state_dict):
            break
        stripped = {k.removeprefix(prefix): v for k, v in state_dict.items()}
        if keys & set(stripped):
            log.warning("%s: the prefix %r of all its keys is stripped to fit", source, prefix)
            return stripped
    return state_dict


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

"""Weights files: checkpoints read without unpickling anything (a state_dict with
`weights_only=True`, or safetensors), fitted to a model in one line or refused, and their
sha256 (checked against model.sha256, or hashed in the background while the run starts).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch import nn

from pipeline.errors import UserError

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

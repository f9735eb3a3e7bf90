"""Durable writes: a file is the old one, the new one, or absent after a crash at any
moment (a unique temporary name, fsync, rename, fsync of the folder); strict JSON; and
whether a folder can be written, before anything else is done.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

TMP_RE = re.compile(r"\..+\.\d+-[0-9a-f]{6}\.tmp")  # durable_write's temporary names
PROBE_RE = re.compile(r"\.write-test-.+-\d+")  # check_writable's probe


def durable_write(path: Path, write: Callable[[Path], Any]) -> None:
    """write(tmp) under a unique temporary name, fsync, rename over `path`, fsync the folder:
    after a crash at any moment `path` is the old file, the new one, or absent; never partial."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(3)}.tmp")
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except OSError as e:  # a full or vanished disk: leave nothing that looks written
        tmp.unlink(missing_ok=True)
        raise UserError(f"Cannot write {path}: {e.strerror or e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, value: Any) -> None:
    """Strict JSON (a number that is not finite is null: NaN is not JSON), written durably."""
    text = json.dumps(finite(value), indent=1, sort_keys=True, default=str, allow_nan=False)
    durable_write(path, lambda tmp: tmp.write_text(text))


def finite(value: Any) -> Any:
    """value with every NaN or infinity, however deep, replaced by None."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def check_writable(path: Path) -> None:
    """Fail before any model or data work when the folder cannot be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        # one per process (ranks probe at once), and not named like a temporary file: the
        # owner's clean-up removes those, maybe while another rank is probing
        probe = path / f".write-test-{socket.gethostname()}-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink(missing_ok=True)
    except OSError as e:
        raise UserError(f"Cannot write to output folder {path}: {e.strerror or e}") from None


def check_can_write(path: Path) -> None:
    """Fail when the folder could not be made or written, without making it (a refused run
    leaves no folder behind): its nearest existing ancestor must be a writable folder."""
    there = path.absolute()
    while not there.exists() and there != there.parent:
        there = there.parent
    if not there.is_dir():
        raise UserError(f"Cannot write to output folder {path}: {there} is a file")
    if not os.access(there, os.W_OK | os.X_OK):  # EROFS too, even for root
        raise UserError(f"Cannot write to output folder {path}: {there} is not writable")

"""User mistakes: one exception type, and the one way every command reports it."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType


class UserError(Exception):
    """A mistake the user can fix; the CLI prints it as one line and exits non-zero."""

    exit_code = 2


def first_line(e: BaseException) -> str:
    """An exception's message as one line (its type's name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def optional(module: str, extra: str, needed_by: str) -> ModuleType:
    """An optional dependency, imported, or one line naming the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(
            f"{needed_by} needs {module} ({e}): pip install 'alexnet-eval[{extra}]'"
        ) from None


def installed(module: str) -> bool:
    """Whether a module can be imported, without importing it (find_spec of a submodule
    raises, rather than answering None, when its parent package is missing)."""
    from importlib.util import find_spec

    try:
        return find_spec(module) is not None
    except ImportError:
        return False


def require(module: str, extra: str, needed_by: str) -> None:
    """optional()'s one line, before anything is imported or written, where it is missing."""
    if not installed(module):
        raise UserError(
            f"{needed_by} needs {module}, which is not installed: pip install "
            f"'alexnet-eval[{extra}]'"
        )


@contextmanager
def one_line() -> Iterator[None]:
    """For a command's main: a UserError is printed as `error: ...` and exits with its code,
    without a traceback."""
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)

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


def optional(module: str, extra: str, needed_by: str) -> ModuleType:
    """An optional dependency, imported, or one line naming the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(
            f"{needed_by} needs {module} ({e}): pip install 'alexnet-eval[{extra}]'"
        ) from None


@contextmanager
def one_line() -> Iterator[None]:
    """For a command's main: a UserError is printed as `error: ...` and exits with its code,
    without a traceback."""
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)

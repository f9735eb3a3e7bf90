"""User mistakes: one exception type, and the one way every command reports it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """A mistake the user can fix; the CLI prints it as one line and exits non-zero."""

    exit_code = 2


@contextmanager
def one_line() -> Iterator[None]:
    """For a command's main: a UserError is printed as `error: ...` and exits with its code,
    without a traceback."""
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)

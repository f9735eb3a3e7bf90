"""Cooperative stop: a signal only sets a flag; the loop stops between batches.

SIGINT (Ctrl-C), SIGTERM (scancel, preemption, torchrun), SIGUSR1 and SIGUSR2
(Slurm's warning before the time limit; submitit's requeue signal) all ask the
run to stop. No exception is raised inside a handler, so no signal can tear
the landing or the commit of a batch: the loop notices the flag between
batches, lands what is in flight, commits, and only then raises `Stopped`.
A second SIGINT or SIGTERM exits at once (committed parts are whole either
way: every write is a rename). Whoever handled the signal before us (Slurm's
submitit requeues the job on SIGUSR2) is called after the commit:
`Stopped.hand_over`.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
AT_ONCE = (signal.SIGINT, signal.SIGTERM)  # a second one of these exits at once


class Stopped(BaseException):
    """The run stopped on a signal after committing what it scored.

    A BaseException, like KeyboardInterrupt, so that no `except Exception`
    (a decoder's, say) can mistake it for a fault of the data.
    """

    def __init__(self, signum: int, message: str, previous: Any = None) -> None:
        super().__init__(message)
        self.signum, self.previous = signum, previous
        self.exit_code = 128 + signum

    def hand_over(self) -> None:
        """Call the handler that was installed before ours for this signal (submitit's,
        which requeues the job on Slurm and exits); a default or ignore does nothing here."""
        if callable(self.previous) and self.previous is not leave_at_once:
            self.previous(self.signum, None)


class Stop:
    """The flag the handlers set, and the handlers that were there before ours."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self, hint: str = "", signum: int | None = None) -> None:
        """Raise Stopped if a signal came (here, or on another rank: `signum`); call it only
        where nothing is in flight."""
        signum = signum or self.signum
        if signum:
            name = signal.Signals(signum).name
            message = f"Stopped by {name}; rows scored so far are committed. {hint}".strip()
            raise Stopped(signum, message, self.previous.get(signum))

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum in AT_ONCE:
            # the second one: leave now; os.write is safe here, print is not
            os.write(2, b"\nInterrupted twice: exiting at once. Committed rows are kept.\n")
            os._exit(128 + signum)
        if self.signum is None:
            self.signum = signum


def leave_at_once(signum: int, frame: Any) -> None:
    """Outside the scoring loop (start-up, shut-down) SIGINT or SIGTERM ends the process at
    once, in one line: nothing is in flight, and every committed part stays whole."""
    os.write(2, b"\nInterrupted: exiting. Committed rows are kept.\n")
    os._exit(128 + signum)


def leave_at_once_outside_runs() -> None:
    """For `python -m pipeline`, before its heavy imports: no traceback for a Ctrl-C there."""
    for signum in AT_ONCE:
        signal.signal(signum, leave_at_once)


@contextmanager
def cooperative(signals: tuple[int, ...] = SIGNALS) -> Iterator[Stop]:
    """Install the flag-setting handlers for the block (main thread only: elsewhere
    Python cannot install handlers, and the flag simply never goes up)."""
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    for signum in signals:
        stop.previous[signum] = signal.signal(signum, stop._handle)
    try:
        yield stop
    finally:
        for signum, handler in stop.previous.items():
            signal.signal(signum, handler)


def ignore_in_worker() -> None:
    """For DataLoader workers: only the main process handles stop signals.

    Slurm signals every process of a job; a worker that inherited submitit's
    handler would try to requeue the job itself, and one that inherited ours or
    Python's would die and be reported as a crash. The main process shuts its
    workers down through the DataLoader (never by leaving them to
    multiprocessing's exit-time SIGTERM, which they now ignore).
    """
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)

"""Which folders and files are this pipeline's to write: a run folder is claimed by its
run.json (anything else in a folder without one is the user's, and refused); a sweep
folder by its multirun.yaml; a summary or report file by a mark of ours. Only what is
provably ours is ever written into, replaced or removed. And the lock: one writer a folder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import UserError
from pipeline.runs.durable import PROBE_RE, TMP_RE, durable_write
from pipeline.runs.plan import RunPlan

log = logging.getLogger(__name__)

LOCK, RUN_FILE, ERROR_FILE = ".lock", "run.json", "error.txt"
PREDICTIONS, METRICS, PARTS, DAMAGED = "predictions.parquet", "metrics.parquet", "parts", "damaged"
HYDRA_FILES = (".hydra", "pipeline.log")  # what Hydra writes into a job's folder first
JOB_NAME = "pipeline"  # hydra.job.name in conf/config.yaml


class FolderBusy(UserError):
    """Another run holds the folder's lock: never record this in the folder."""


def take_lock(path: Path) -> int:
    """An exclusive flock held for the whole run; the kernel drops it when the holder dies,
    so a SIGKILL leaves no stale lock."""
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "holder unknown"
        os.close(fd)
        raise FolderBusy(
            f"{path} is in use by another run ({holder}); wait for it to end, "
            f"or choose another output_dir"
        ) from None
    except OSError as e:  # a file system without flock (some network mounts)
        log.warning("cannot lock %s (%s): make sure one run at a time writes there", path, e)
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}".encode(), 0)
    return fd


def check_claim(path: Path) -> None:
    """Refuse a folder this pipeline may not write into: one that exists, is not empty and is
    not one of its run folders. Beside a run.json, anything goes (the user's notes in a run
    folder are left alone); without one, only what a run writes before its plan is known
    (the lock, an error, Hydra's .hydra/ and log, temporary files) is allowed."""
    if not path.exists():
        return
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a folder; choose another output_dir")
    if (path / RUN_FILE).exists():
        read_plan(path)  # refuses a run.json that is not this pipeline's
        return
    foreign = [e for e in sorted(os.listdir(path)) if not _written_before_plan(path, e)]
    if foreign:  # outputs without a run.json too: never taken for a finished run
        raise UserError(
            f"{path} is not empty and not a run folder of this pipeline (no {RUN_FILE}): it "
            f"holds {_listing(foreign)}; use a new or empty output_dir"
        )


def _written_before_plan(path: Path, name: str) -> bool:
    if name == HYDRA_FILES[0]:  # another Hydra app's .hydra/ is not ours to overwrite
        return names_our_job(path / name / "hydra.yaml")
    return (
        name in (LOCK, ERROR_FILE, *HYDRA_FILES)
        or TMP_RE.fullmatch(name) is not None
        or PROBE_RE.fullmatch(name) is not None
    )


def names_our_job(hydra_file: Path) -> bool:
    """Whether a Hydra file (a job's .hydra/hydra.yaml, a sweep's multirun.yaml) was
    written for this pipeline: its job is ours (conf/config.yaml names it)."""
    import yaml

    try:
        content = yaml.safe_load(hydra_file.read_text())
        return content["hydra"]["job"]["name"] == JOB_NAME
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
        return False


SWEEP_FILE = "multirun.yaml"  # what Hydra writes first into a sweep folder


def check_sweep_claim(path: Path) -> None:
    """Refuse a sweep folder (hydra.sweep.dir) this pipeline may not write into: one that
    exists, is not empty and holds no sweep of this pipeline's (its multirun.yaml)."""
    if not path.exists():
        return
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a folder; choose another hydra.sweep.dir")
    if (path / SWEEP_FILE).exists():
        if not names_our_job(path / SWEEP_FILE):
            raise UserError(
                f"{path} holds another Hydra app's sweep ({SWEEP_FILE}); choose another "
                f"hydra.sweep.dir"
            )
        return
    foreign = sorted(e for e in os.listdir(path) if not _our_job_folder(path / e))
    if foreign:
        raise UserError(
            f"{path} is not empty and not a sweep folder of this pipeline (no {SWEEP_FILE}): "
            f"it holds {_listing(foreign)}; use a new or empty hydra.sweep.dir"
        )


def _our_job_folder(path: Path) -> bool:
    """A job's folder of a sweep whose multirun.yaml is gone: numbered, and ours to write."""
    if not (path.name.isdigit() and path.is_dir()):
        return False
    try:
        check_claim(path)
    except UserError:
        return False
    return True


def check_ours(path: Path, proof: Callable[[Path], bool]) -> None:
    """Before a file is replaced: it is absent, or `proof` shows this pipeline wrote it."""
    if path.exists() and not (path.is_file() and proof(path)):
        raise UserError(
            f"{path} exists and was not written by this pipeline; move it away and run "
            f"again (nothing was written)"
        )


def _listing(names: list[str], shown: int = 5) -> str:
    more = f" (and {len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def record_error(path: Path, message: str) -> None:
    """Write why a run failed, unless the folder is not ours, another run holds it, or it is
    finished."""
    if not path.is_dir() or (path / METRICS).exists():
        return
    try:
        check_claim(path)
        fd = take_lock(path)
    except (UserError, OSError):
        return
    try:
        with contextlib.suppress(UserError):
            durable_write(path / ERROR_FILE, lambda tmp: tmp.write_text(message.strip() + "\n"))
    finally:
        os.close(fd)


def read_plan(path: Path) -> RunPlan:
    """A run folder's plan, from its run.json; one line when there is none, or it is not a
    plan of this version of the pipeline."""
    file = path / RUN_FILE
    if not file.exists():
        raise UserError(f"{path} is not a run folder of this pipeline (no {RUN_FILE})")
    try:
        record = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{file} cannot be read: {e}") from None
    return RunPlan.from_record(record, file)

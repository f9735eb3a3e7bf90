"""`python -m pipeline`: the entry point, the only code that sees Hydra's DictConfig.

Every way a run can end is decided here: finished (exit 0), a user mistake
(one line, exit 2), a stop on a signal (one line with the resume hint, then the
previous handler, e.g. submitit's requeue; exit 128+signal), or a bug (recorded
in the run folder; the traceback is ours to read). In a sweep, a failed job is
recorded and the next job runs; the sweep exits non-zero at the end.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from pipeline import stop

log = logging.getLogger("pipeline")


def main() -> None:
    """`python -m pipeline`: compose the config with Hydra, run, one line per user error."""
    try:
        _main()
        code: int | str | None = 0
    except SystemExit as e:
        code = e.code
    leave(code)


def leave(code: int | str | None) -> NoReturn:
    """Exit without tearing the interpreter down: every file is durable and every worker
    stopped by now, and freeing torch's millions of objects one by one took 0.3 s of a
    9 s run here."""
    if isinstance(code, str):  # sys.exit("message") prints it, as Python would
        print(code, file=sys.stderr)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


def _main() -> None:
    stop.leave_at_once_outside_runs()  # first: the imports below take seconds
    from pipeline import cli
    from pipeline.errors import one_line

    with one_line():  # before the heavy imports: a mistake is one line within a second
        cli.check_command_line(sys.argv[1:])
    _import_frozen()
    import hydra

    from pipeline import summarize
    from pipeline.config import CONF_DIR, register

    register()
    hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(_job)()
    if summarize.LAST_SWEEP.get("failed"):
        failed, jobs = summarize.LAST_SWEEP["failed"], summarize.LAST_SWEEP["jobs"]
        print(f"error: {failed} of {jobs} sweep jobs did not finish (table above)", file=sys.stderr)
        sys.exit(1)


def _import_frozen() -> None:
    """Import what every run needs, then freeze it for the garbage collector.

    The imports create millions of objects that live as long as the process: the full
    garbage collections they trigger scan them all, 0.7 s of a 9 s run here. Collect
    nothing while importing, then freeze what exists (later collections skip it, and
    forked DataLoader workers share it without copying).
    """
    gc.disable()
    import datasets  # noqa: F401  (every run loads a split)
    import hydra  # noqa: F401

    import pipeline.run  # noqa: F401  (torch, torchvision and every stage)

    gc.freeze()
    gc.enable()


def _job(dcfg: Any) -> None:
    """One job of Hydra's (the only run, or one of a sweep), ended as the module says."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    from pipeline import distributed
    from pipeline.config import typed
    from pipeline.errors import UserError
    from pipeline.run import evaluate
    from pipeline.runs.claims import FolderBusy

    hydra_cfg = HydraConfig.get()
    out_dir = Path(dcfg.get("output_dir") or hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        try:
            cfg = typed(dcfg)
        except OmegaConfBaseException as e:  # checked before; a Slurm job reads it again
            raise UserError(str(e).strip().splitlines()[0]) from None
        evaluate(cfg, out_dir)
    except stop.Stopped as e:
        print(str(e), file=sys.stderr)
        if distributed.launch().rank == 0:  # one rank hands over: all have committed by now
            e.hand_over()  # on Slurm, submitit requeues the job here (and exits)
        sys.exit(e.exit_code)  # a stop ends a sweep too
    except UserError as e:
        fail(out_dir, str(e), busy=isinstance(e, FolderBusy))
        if not in_sweep:
            sys.exit(e.exit_code)
    except Exception as e:  # a bug: recorded, and its traceback kept for us
        fail(out_dir, f"{type(e).__name__}: {e}")
        if not in_sweep:
            raise
        log.exception("job failed")  # into the job's log file
    finally:
        distributed.teardown()


def fail(out_dir: Path, message: str, *, busy: bool = False) -> None:
    """One line for the user; the reason in the run folder for pipeline.summarize (only by
    rank 0, and never into a folder another run holds)."""
    from pipeline import distributed
    from pipeline.runs.claims import record_error

    first = message.strip().splitlines()[0] if message.strip() else message
    print(f"error: {first}", file=sys.stderr)
    if not busy and distributed.launch().rank == 0:
        record_error(out_dir, first)


if __name__ == "__main__":
    main()

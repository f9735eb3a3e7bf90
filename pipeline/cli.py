"""The command line of `python -m pipeline`, checked before anything heavy is imported.

Every override is checked against the schema and the config groups, then every job's
config is composed, so that a mistyped key, an unknown option, a value of the wrong type
or a missing required value is one line naming what is valid (exit 2) within a second,
not a traceback after the imports. The output folder is checked before Hydra writes its
`.hydra/` and log into it. `compose` gives the same config without Hydra's entry point.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pipeline.config import CONF_DIR, GROUPS, Config, check_values, register, schema_keys
from pipeline.errors import UserError

LAUNCHER_EXTRAS = {"slurm": "slurm", "submitit_slurm": "slurm", "submitit_local": "slurm"}


def compose(*overrides: str) -> Config:
    """The Config that `python -m pipeline OVERRIDES` would run, without Hydra's entry point
    (for notebooks, the benchmark and the tests)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=list(overrides))
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def check_command_line(argv: Sequence[str]) -> None:
    """Refuse, in one line naming what is valid, any override the run cannot use: keys and
    group options first, then every job's composed values; then the output folder."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(list(argv))
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return
    overrides = _parse(args.overrides)
    if args.multirun and any(o.key_or_group == "output_dir" for o in overrides):
        raise UserError(
            "output_dir names one folder, but a sweep writes one per job: "
            "set hydra.sweep.dir=DIR instead (jobs go to DIR/0, DIR/1, ...)"
        )
    _check_keys(overrides)
    if args.config_name or args.config_path or args.config_dir:
        return  # another primary config: Hydra composes and checks it itself
    for job in _jobs(overrides, multirun=args.multirun):
        check_values(_compose_checked(job))
    if not args.multirun and args.cfg is None:
        _check_output_folder(overrides)


def check_override_keys(argv: Sequence[str]) -> None:
    """Only the keys and group options of a command line (no composing)."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(list(argv))
    _check_keys(_parse(args.overrides))


def _parse(overrides: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:
        raise UserError(f"Cannot parse the command line: {_first_line(e)}") from None


def _search_dirs(overrides: list[Any]) -> list[Path]:
    """The config folders Hydra reads: ours, then those hydra.searchpath adds (the user's
    own presets: hydra.searchpath=[file:///path/to/conf])."""
    dirs = [CONF_DIR]
    for o in (o for o in overrides if o.key_or_group == "hydra.searchpath"):
        value = o.value()
        for entry in map(str, value if isinstance(value, list) else [value]):
            if entry.startswith("file://") or "://" not in entry:
                dirs.append(Path(entry.removeprefix("file://")))
    return dirs


def _check_keys(overrides: list[Any]) -> None:
    search_dirs = _search_dirs(overrides)
    for override in overrides:
        _check_key(override, search_dirs)


def _check_key(override: Any, search_dirs: list[Path]) -> None:
    """A schema key, a group with one of its options, or Hydra's own (left to Hydra)."""
    key = override.key_or_group.lstrip("+~")
    if key.startswith("hydra"):
        if key == "hydra/launcher":
            _check_launcher(override)
        return
    if key in GROUPS:
        options = sorted({p.stem for d in search_dirs for p in (d / key).glob("*.yaml")})
        for value in _values(override):
            if value not in options:
                raise UserError(
                    f"{key}={value} is not a config of {key}/{_did_you_mean(value, options)}; "
                    f"valid: {', '.join(options)}"
                )
        return
    valid = schema_keys()
    if key not in valid:
        hint = _did_you_mean(key, valid)
        raise UserError(f"Unknown config key '{key}'.{hint} Valid keys: {', '.join(valid)}")


def _check_launcher(override: Any) -> None:
    """hydra/launcher=slurm needs the optional extra that brings the launcher."""
    for value in _values(override):
        if value in LAUNCHER_EXTRAS and not _installed("hydra_plugins.hydra_submitit_launcher"):
            raise UserError(
                f"hydra/launcher={value} needs hydra-submitit-launcher: "
                f"pip install 'alexnet-eval[{LAUNCHER_EXTRAS[value]}]'"
            )


def _installed(module: str) -> bool:
    """Whether a module can be imported (find_spec of a submodule raises, rather than
    answering None, when its parent package is missing)."""
    from importlib.util import find_spec

    try:
        return find_spec(module) is not None
    except ImportError:
        return False


def _values(override: Any) -> list[str]:
    return (
        [str(v) for v in override.sweep_string_iterator()]
        if override.is_sweep_override()
        else [str(override.value())]
    )


def _did_you_mean(word: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(word, valid, n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _jobs(overrides: list[Any], *, multirun: bool) -> list[list[str]]:
    """Each job's overrides, without Hydra's own (what compose checks)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    ours = [
        o
        for o in overrides
        if o.key_or_group == "hydra.searchpath"  # compose finds the user's presets through it
        or not o.key_or_group.lstrip("+~").startswith("hydra")
    ]
    if not multirun:
        return [[o.input_line for o in ours]]
    return [job for batch in BasicSweeper.split_arguments(ours, None) for job in batch]


def _compose_checked(job: list[str]) -> Config:
    """compose(), with each of its failures as one line naming the key and what is valid."""
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    try:
        return compose(*job)
    except MissingMandatoryValue as e:
        key = getattr(e, "full_key", "") or "a value"
        raise UserError(f"{key} is required here: add {key}=... to the command line") from None
    except ConfigCompositionException as e:
        cause = e.__cause__
        if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
            raise UserError(_value_error(cause, job)) from None
        raise UserError(_first_line(e)) from None
    except OmegaConfBaseException as e:
        raise UserError(_first_line(e)) from None


def _value_error(cause: Any, job: list[str]) -> str:
    """`batch_size=abc; it must be an integer` / `backend=cuda; valid: pil, tensor, device`."""
    key = cause.full_key
    given = next((o.split("=", 1)[1] for o in reversed(job) if o.split("=", 1)[0] == key), "")
    message = _first_line(cause)
    if "expected one of [" in message:
        valid = message.split("expected one of [", 1)[1].rstrip("]")
        return f"{key}={given}; valid: {valid}"
    if "is not a valid bool" in message:
        null = " (or null, for auto)" if key == "dataset.restrict" else ""
        return f"{key}={given}; it must be true or false{null}"
    if "could not be converted to" in message:
        kind = message.rsplit("converted to ", 1)[1].lower()
        return f"{key}={given}; it must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}"
    return f"{key}={given}: {message}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check_output_folder(overrides: list[Any]) -> None:
    """The run folder named on the command line (output_dir, or hydra.run.dir) must be new,
    empty or one of this pipeline's, and writable, before Hydra writes into it; without
    one, Hydra's outputs/ folder here must be writable."""
    from pipeline import rundir

    named = {o.key_or_group: str(o.value()) for o in overrides}
    folder = named.get("output_dir", named.get("hydra.run.dir"))
    if folder == "":
        return  # refused with the other values (check_values)
    if folder is not None:
        rundir.check_claim(Path(folder))
    rundir.check_writable(Path("outputs" if folder is None else folder))

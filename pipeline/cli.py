"""The command line of `python -m pipeline`, checked before anything heavy is imported.

Every override is checked against the schema and the config groups, then every job's
config is composed as Hydra composes it (with Hydra's own --config-path, --config-name and
--config-dir, a user's own configs), so that a mistyped key, an unknown option, a value of
the wrong type, a missing required value or a missing optional extra is one line naming
what is valid (exit 2) within a second, not a traceback after the imports. The run or
sweep folder is checked before Hydra writes its `.hydra/`, log or multirun.yaml into it.
`compose` gives the same config without Hydra's entry point.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pipeline import resolve
from pipeline.config import CONF_DIR, GROUPS, OPEN_KEYS, Config, register, schema_keys, typed
from pipeline.errors import UserError, first_line, installed

LAUNCHER_EXTRAS = {"slurm": "slurm", "submitit_slurm": "slurm", "submitit_local": "slurm"}
MAIN = Path(__file__).with_name("__main__.py")  # where Hydra reads a relative --config-path from


def compose(*overrides: str) -> Config:
    """The Config that `python -m pipeline OVERRIDES` would run, without Hydra's entry point
    (for notebooks, the benchmark and the tests)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=list(overrides))
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


@dataclass(frozen=True)
class Primary:
    """Where Hydra finds the configs: the primary config's folder and name, and the folder
    --config-dir adds (Hydra's flags; ours by default)."""

    path: str = str(CONF_DIR)
    name: str = "config"
    extra: str | None = None

    @classmethod
    def of(cls, args: Any) -> Primary:
        return cls(
            path=args.config_path or str(CONF_DIR),
            name=args.config_name or "config",
            extra=os.path.abspath(args.config_dir) if args.config_dir else None,
        )

    def folders(self) -> list[Path]:
        """The local folders among them, where group options are files."""
        from hydra._internal.utils import compute_search_path_dir

        primary = compute_search_path_dir(str(MAIN), None, self.path) or ""
        found = [Path(primary)] if "://" not in primary else []
        return found + ([Path(self.extra)] if self.extra else [])

    @contextlib.contextmanager
    def hydra(self) -> Iterator[Any]:
        """Hydra as `python -m pipeline` starts it, with these configs (then cleared, so that
        the real entry point can start it again)."""
        from hydra._internal.hydra import Hydra
        from hydra._internal.utils import create_automatic_config_search_path
        from hydra.core.config_search_path import SearchPathQuery
        from hydra.core.global_hydra import GlobalHydra

        register()
        if self.extra is not None and not os.path.isdir(self.extra):
            raise UserError(f"--config-dir {self.extra}: no such folder")
        search = create_automatic_config_search_path(str(MAIN), None, self.path)
        if self.extra is not None:
            anchor = SearchPathQuery(provider="schema")
            search.prepend(provider="command-line", path=f"file://{self.extra}", anchor=anchor)
        GlobalHydra.instance().clear()
        try:
            yield Hydra.create_main_hydra2(task_name="pipeline", config_search_path=search)
        finally:
            GlobalHydra.instance().clear()


def check_command_line(argv: Sequence[str]) -> None:
    """Refuse, in one line naming what is valid, any override the run cannot use: keys and
    group options first, then every job's composed values; then the run or sweep folder."""
    from hydra._internal.utils import get_args_parser
    from hydra.types import RunMode

    args, unknown = get_args_parser().parse_known_args(list(argv))
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return
    if unknown:
        raise UserError(
            f"Unrecognized arguments: {' '.join(unknown)} (Hydra's flags, such as -m, -cd, "
            f"-cn, go before the key=value overrides)"
        )
    overrides = _parse(args.overrides)
    if args.multirun and any(o.key_or_group == "output_dir" for o in overrides):
        raise UserError(
            "output_dir names one folder, but a sweep writes one per job: "
            "set hydra.sweep.dir=DIR instead (jobs go to DIR/0, DIR/1, ...)"
        )
    primary = Primary.of(args)
    _check_keys(overrides, primary)
    with primary.hydra() as hydra:
        for job in _jobs(overrides, multirun=args.multirun):
            resolve.request(_compose_checked(hydra, primary.name, job)[0])
        if args.cfg is not None:
            return
        mode = RunMode.MULTIRUN if args.multirun else RunMode.RUN
        whole = [o.input_line for o in overrides]
        _check_folder(_compose_checked(hydra, primary.name, whole, mode)[1], mode)


def check_override_keys(argv: Sequence[str]) -> None:
    """Only the keys and group options of a command line (no composing)."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(list(argv))
    _check_keys(_parse(args.overrides), Primary.of(args))


def _parse(overrides: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:
        raise UserError(f"Cannot parse the command line: {first_line(e)}") from None


def _search_dirs(overrides: list[Any], primary: Primary) -> list[Path]:
    """The config folders Hydra reads: the primary one (ours) and --config-dir's, then
    those hydra.searchpath adds (the user's own presets: hydra.searchpath=[file:///path])."""
    dirs = primary.folders()
    for o in (o for o in overrides if o.key_or_group == "hydra.searchpath"):
        value = o.value()
        for entry in map(str, value if isinstance(value, list) else [value]):
            if entry.startswith("file://") or "://" not in entry:
                dirs.append(Path(entry.removeprefix("file://")))
    return dirs


def _check_keys(overrides: list[Any], primary: Primary) -> None:
    search_dirs = _search_dirs(overrides, primary)
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
                    f"{key}={value} is not a config of {key}/.{_did_you_mean(value, options)} "
                    f"Valid: {', '.join(options)}"
                )
        return
    if key.startswith(tuple(f"{k}." for k in OPEN_KEYS)):  # a builder's own: Hydra checks
        return
    valid = schema_keys()
    if key not in valid:
        raise UserError(f"Unknown config key '{key}'.{_did_you_mean(key, valid)} {_group(key)}")


def _group(key: str) -> str:
    """The keys of the group a mistyped key belongs to (by its own prefix, else its near
    miss's), or the top level's keys and groups: a few to read, not all 45."""
    valid = schema_keys()
    close = difflib.get_close_matches(key, valid, n=1)
    prefix = key.split(".")[0] if "." in key else ""
    if prefix not in {k.split(".")[0] for k in valid if "." in k}:
        near = close[0] if close else ""
        prefix = near.split(".")[0] if "." in near else ""
    if prefix:
        keys = [k.split(".", 1)[1] for k in valid if k.startswith(f"{prefix}.")]
        return f"Keys of {prefix}: {', '.join(keys)}"
    top = [k for k in valid if "." not in k]
    groups = sorted({f"{k.split('.')[0]}.*" for k in valid if "." in k})
    return f"Keys: {', '.join(top)}; and {', '.join(groups)}"


def _check_launcher(override: Any) -> None:
    """hydra/launcher=slurm needs the optional extra that brings the launcher."""
    for value in _values(override):
        if value in LAUNCHER_EXTRAS and not installed("hydra_plugins.hydra_submitit_launcher"):
            raise UserError(
                f"hydra/launcher={value} needs hydra-submitit-launcher: "
                f"pip install 'alexnet-eval[{LAUNCHER_EXTRAS[value]}]'"
            )


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


def _compose_checked(hydra: Any, name: str, job: list[str], mode: Any = None) -> tuple[Config, Any]:
    """The job's typed Config and Hydra's own part of it (its folders), composed as Hydra
    composes it; each failure as one line naming the key and what is valid."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import ConfigCompositionException, MissingConfigException
    from hydra.types import RunMode
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    try:
        cfg = hydra.compose_config(name, job, run_mode=mode or RunMode.RUN)
        HydraConfig.instance().set_config(cfg)  # for ${hydra:...} in a user's config
        return typed(cfg), cfg.hydra
    except MissingMandatoryValue as e:
        key = getattr(e, "full_key", "") or "a value"
        raise UserError(f"{key} is required here: add {key}=... to the command line") from None
    except MissingConfigException as e:
        raise UserError(first_line(e)) from None
    except ConfigCompositionException as e:
        cause = e.__cause__ or e.__context__  # a config file's value: raised without `from`
        if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
            raise UserError(_value_error(cause, job)) from None
        raise UserError(first_line(e)) from None
    except OmegaConfBaseException as e:
        if getattr(e, "full_key", None):
            raise UserError(_value_error(e, job)) from None
        raise UserError(first_line(e)) from None


def _value_error(cause: Any, job: list[str]) -> str:
    """`batch_size=abc; it must be an integer` / `backend=cuda; valid: pil, tensor, device`."""
    key = cause.full_key
    message = first_line(cause)
    given = next((o.split("=", 1)[1] for o in reversed(job) if o.split("=", 1)[0] == key), None)
    if given is None:  # set in a config file, not on the command line
        found = re.match(r"Value '(.*)' of type", message)
        given = found[1] if found else ""
    if "expected one of [" in message:
        valid = message.split("expected one of [", 1)[1].rstrip("]")
        return f"{key}={given}; valid: {valid}"
    if "is not a valid bool" in message:
        null = " (or null, for auto)" if key == "dataset.restrict" else ""
        return f"{key}={given}; it must be true or false{null}"
    if "could not be converted to" in message:
        kind = message.rsplit("converted to ", 1)[1].lower()
        return f"{key}={given}; it must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}"
    if "is not in struct" in message and key.startswith(tuple(f"{k}." for k in OPEN_KEYS)):
        return f"{key}={given}: a new key; add it with +{key}={given}"
    return f"{key}={given}: {message}"


def _check_folder(hydra_node: Any, mode: Any) -> None:
    """The run folder (output_dir, hydra.run.dir) must be new, empty or one of this
    pipeline's, and writable; a sweep folder (hydra.sweep.dir) new, empty or one of its
    sweeps: checked before Hydra writes into either."""
    from hydra.types import RunMode

    from pipeline.runs import claims, durable

    if mode == RunMode.MULTIRUN:
        folder = Path(str(hydra_node.sweep.dir))
        claims.check_sweep_claim(folder)
    else:
        folder = Path(str(hydra_node.run.dir))
        claims.check_claim(folder)
    durable.check_can_write(folder)

"""Typed config schema, registered in Hydra's ConfigStore.

The YAML files under conf/ fill these dataclasses; because the schema is
structured, a mistyped key or a value of the wrong type fails when Hydra
composes the config. Stages never see this module's objects: the entry point
turns them into keyword arguments.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from enum import Enum
from importlib.resources import files
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # Hydra's config folder


class UserError(Exception):
    """A mistake the user can fix; the CLI prints it as one line and exits non-zero."""

    exit_code = 2


class Amp(str, Enum):
    auto = "auto"
    off = "off"
    fp16 = "fp16"
    bf16 = "bf16"


class Backend(str, Enum):
    pil = "pil"  # decode + resize with PIL: the reference pixels, bit for bit
    tensor = "tensor"  # decode + resize on uint8 tensors: faster, within 1 level
    device = "device"  # JPEGs decoded on the model's device in batches (nvJPEG on CUDA)


# record: an undecodable image gets a row with `error` set; raise: stop at the first.
# Functional form because `raise` is a keyword, and OmegaConf matches member names.
OnError = Enum("OnError", {"record": "record", "raise": "raise"}, type=str)


@dataclass
class DatasetConfig:
    path: str = MISSING  # hub id, builder name (parquet, imagefolder) or a local folder
    name: str | None = None  # the dataset's config name
    split: str | None = None  # null: the data's only split; slices work: validation[:1000]
    revision: str | None = None
    data_dir: str | None = None
    data_files: Any = None  # str, list or {split: files}
    image_column: str = "image"  # auto: the dataset's only image column
    label_column: str | None = "label"  # null: unlabeled
    id_column: str | None = None  # null: the image's file name when it has one
    streaming: bool = False
    classes: Any = None  # what labels mean: imagenet-1k, a list, a file (labels.py)
    restrict: str = "auto"  # auto: a strict subset of classes restricts outputs | false


@dataclass
class ModelConfig:
    arch: str = "alexnet"
    weights: str = "IMAGENET1K_V1"  # a torchvision weights name, a checkpoint path, or none
    sha256: str | None = None  # checked before a checkpoint file is loaded
    preprocess: str | None = None  # a checkpoint's transforms: a weights name; null: DEFAULT


@dataclass
class MetricsConfig:
    real_labels: str | None = None  # ImageNet-ReaL's real.json: adds real_top1


@dataclass
class ShardConfig:
    index: int = 0  # score slice `index` of `count` equal slices (Slurm job arrays)
    count: int = 1


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    batch_size: int = 256
    num_workers: str = "auto"  # auto or a count
    streams: str = "auto"  # batches run at once; auto: CPU one per core (<= 4), GPU 1
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    amp: Amp = Amp.auto  # auto: fp16 on CUDA, off elsewhere
    backend: Backend = Backend.pil
    channels_last: bool = True
    compile: bool = False  # torch.compile the model (pays off on long GPU runs)
    limit: int | None = None  # first N images of the split
    on_error: OnError = OnError["record"]  # type: ignore[valid-type]
    commit_rows: int = 4096  # predictions are committed (survive a kill) every this many rows
    output_dir: str | None = None  # null: Hydra's run directory
    progress: bool = True


def _package_file(name: str) -> str:
    """Absolute path of a file shipped inside the pipeline package (for conf/)."""
    return str(files("pipeline") / name)


def _first_set(value: Any, default: Any) -> Any:
    """`${pipeline_or:${output_dir},default}`: output_dir when it is set, else the default."""
    return default if value is None else value


def register() -> None:
    """Register the schema and our resolvers (`${pipeline_file:...}`, `${pipeline_or:...}`)."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for name, resolver in (("pipeline_file", _package_file), ("pipeline_or", _first_set)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def compose(*overrides: str) -> Config:
    """The Config that `python -m pipeline OVERRIDES` would run, without Hydra's entry point
    (for notebooks, the benchmark and the tests)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=list(overrides))
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


NESTED = {
    "dataset": DatasetConfig,
    "model": ModelConfig,
    "shard": ShardConfig,
    "metrics": MetricsConfig,
}


def schema_keys() -> list[str]:
    """Every dotted key the schema accepts, e.g. `dataset.split`."""
    keys: list[str] = []
    for f in fields(Config):
        sub = NESTED.get(f.name)
        keys += [f"{f.name}.{g.name}" for g in fields(sub)] if sub else [f.name]
    return keys


def check_override_keys(argv: list[str]) -> None:
    """Fail on a command-line key the schema lacks, naming the valid keys.

    Hydra's own message for this ("Key 'x' is not in struct") names none.
    Hydra's flags (`-m`, `--config-dir X`, `-cn y`, ...) are separated out by
    Hydra's own argument parser; group choices (`dataset=imagenet-val`),
    Hydra's keys and `+`/`~` forms are left to Hydra.
    """
    from hydra._internal.utils import get_args_parser

    valid = schema_keys()
    args, _ = get_args_parser().parse_known_args(argv)
    if args.multirun and any(o.startswith("output_dir=") for o in args.overrides):
        raise UserError(
            "output_dir names one folder, but a sweep writes one per job: "
            "set hydra.sweep.dir=DIR instead (jobs go to DIR/0, DIR/1, ...)"
        )
    for override in args.overrides:
        if "=" not in override or override[0] in "+~" or override.startswith("hydra"):
            continue
        key = override.split("=", 1)[0].split("@", 1)[0]
        if key in valid or key in ("dataset", "model") or key.startswith("hydra/"):
            continue
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UserError(f"Unknown config key '{key}'.{hint} Valid keys: {', '.join(valid)}")


def plain(value: Any) -> Any:
    """OmegaConf containers -> plain lists/dicts, as `datasets` and JSON expect."""
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def check_values(cfg: Config) -> None:
    """Values the types allow but the run cannot use."""
    for key, value in (
        ("batch_size", cfg.batch_size),
        ("commit_rows", cfg.commit_rows),
        ("shard.count", cfg.shard.count),
    ):
        if value < 1:
            raise UserError(f"{key}={value}; it must be 1 or more")
    if cfg.limit is not None and cfg.limit < 0:
        raise UserError(f"limit={cfg.limit}; use a count of images, or null for all")
    if str(cfg.dataset.restrict).lower() not in ("auto", "false"):
        raise UserError(f"dataset.restrict={cfg.dataset.restrict}; valid: auto or false")

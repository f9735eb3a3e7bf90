"""Typed config schema, registered in Hydra's ConfigStore.

The YAML files under conf/ fill these dataclasses; because the schema is
structured, a mistyped key or a value of the wrong type fails when Hydra
composes the config. Only the entry points and resolve.py read it: the stages receive
the typed Request (request.py) that resolve.py makes of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from importlib.resources import files
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from pipeline.choices import Amp, Backend, Interpolation, OnError, Protocol

# Hydra's config folder: the top-level conf/ of a source checkout (the one source of truth),
# which the wheel ships inside the package (pyproject.toml's package-dir)
_HERE = Path(__file__).resolve().parent
CONF_DIR = _HERE / "conf" if (_HERE / "conf").is_dir() else _HERE.parent / "conf"


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
    # restrict the outputs to the split's classes when they are a strict subset; null: only
    # when they are exactly a known protocol's (ImageNet-R/-A's 200, Imagenette's 10)
    restrict: bool | None = None
    image_roots: list[str] = field(default_factory=list)  # more folders image paths may reach
    protocol: Protocol = Protocol.standard  # crop: center crop only (ImageNet-C's release)
    # ImageNet-C's release (conf/dataset/imagenet-c.yaml): name, name/severity, or clean
    corruption: str | None = None
    severity: int | None = None
    clean: str | None = None  # for corruption=clean: the clean val split's dataset ...
    clean_split: str | None = None  # ... and its split
    corrupt: str | None = None  # on the fly (imagecorruptions): name:severity, or none
    title: str | None = None  # its name in tables and plots (a preset's: its file name)


@dataclass
class ModelConfig:
    # a torchvision classifier, timm:NAME, hf:HUB_ID_OR_FOLDER, module:PKG.MODULE:FUNCTION,
    # onnx:FILE, pt2:FILE or openclip:NAME
    arch: str = "alexnet"
    name: str | None = None  # model=timm / model=hf: the library's model (arch: timm:NAME)
    # pretrained: the library's weights for it (torchvision: the architecture's DEFAULT) |
    # a torchvision weights name | a checkpoint path (torchvision, timm) | none
    weights: str = "pretrained"
    sha256: str | None = None  # checked before a checkpoint file is loaded
    preprocess: str | None = None  # a checkpoint's transforms: a weights name; null: DEFAULT
    # the eval transform's numbers, overridden (test-time resolution studies); null: the
    # model's own. A crop alone keeps the model's resize-to-crop ratio.
    resize: int | None = None
    crop: int | None = None
    interpolation: Interpolation | None = None
    mean: list[float] | None = None  # normalization, for a module or an export without its own
    std: list[float] | None = None
    # the head's classes: imagenet-1k, or a file with one name per line in output order
    # (a checkpoint whose head has other classes, a module, an export without metadata)
    classes: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)  # model.arch=module:...'s arguments
    # a zero-shot model's text: the class names (one per line, in class order) and the
    # templates (one per line, {} where the name goes); null: the defaults (zeroshot.py)
    classnames: str | None = None
    templates: str | None = None


@dataclass
class MetricsConfig:
    real_labels: str | None = None  # ImageNet-ReaL's real.json: adds real_top1


@dataclass
class ShardConfig:
    index: int = 0  # score slice `index` of `count` equal slices (Slurm job arrays)
    count: int = 1


@dataclass
class Config:
    """Every key and its default (conf/config.yaml chooses the groups and sets up Hydra)."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    batch_size: int = 256
    # decoding processes; auto: this rank's cores (on CPU half: the model runs on them too)
    num_workers: str = "auto"
    streams: str = "auto"  # batches run at once; auto: CPU one per core (<= 4), GPU 1
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    amp: Amp = Amp.auto  # auto: fp16 on CUDA, off elsewhere
    # pil: the reference pixels exactly | tensor: faster uint8 decode and resize in the
    # workers | device: JPEGs decoded on the model's device in batches
    backend: Backend = Backend.pil
    channels_last: bool = True
    compile: bool = False  # torch.compile the model: minutes of warm-up, pays off on long runs
    limit: int | None = None  # score only the first N images of the split
    # record: an undecodable image gets an `error` row | raise: stop at the first
    on_error: OnError = OnError["record"]  # type: ignore[valid-type]
    commit_rows: int = 4096  # predictions survive a kill in parts of this many rows
    # out of device memory: the rows left at half the batch size (said, and recorded)
    oom_retry: bool = True
    output_dir: str | None = None  # null: Hydra's run directory; .hydra/ and the log go there
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


# config groups: conf/<group>/*.yaml; benchmark (a whole sweep) is added: +benchmark=NAME
GROUPS = ("dataset", "model", "benchmark")
NESTED = {
    "dataset": DatasetConfig,
    "model": ModelConfig,
    "shard": ShardConfig,
    "metrics": MetricsConfig,
}


OPEN_KEYS = ("model.kwargs",)  # dicts whose keys are the user's: +model.kwargs.NAME=VALUE


def schema_keys() -> list[str]:
    """Every dotted key the schema accepts, e.g. `dataset.split`."""
    keys: list[str] = []
    for f in fields(Config):
        sub = NESTED.get(f.name)
        keys += [f"{f.name}.{g.name}" for g in fields(sub)] if sub else [f.name]
    return keys


def typed(cfg: Any) -> Config:
    """A composed config (Hydra's part dropped) as the typed Config, whatever primary config
    it came from: a user's own (--config-name) is checked against the schema too."""
    body = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), body))  # type: ignore[return-value]


def plain(value: Any) -> Any:
    """OmegaConf containers -> plain lists/dicts, as `datasets` and JSON expect."""
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value

"""The command line's config, read once, into the typed Request the stages receive: the one
module below the entry points that reads `config.Config`.

Every value the types allow but the run cannot use is refused here, in one line, before
anything heavy is imported (the command-line check runs this too); ImageNet-C's cell is
turned into the folder of the release it reads.
"""

from __future__ import annotations

from pipeline.choices import Backend, Library
from pipeline.config import Config, DatasetConfig, ModelConfig, plain
from pipeline.data import imagenet_c
from pipeline.errors import UserError, require
from pipeline.models import registry
from pipeline.request import (
    CLEAN,
    RELEASE,
    Corruption,
    LabelRequest,
    ModelRequest,
    Request,
    Rows,
    Runtime,
    Source,
)


def request(cfg: Config) -> Request:
    """The run `cfg` asks for, checked."""
    for key, value in (
        ("batch_size", cfg.batch_size),
        ("commit_rows", cfg.commit_rows),
        ("shard.count", cfg.shard.count),
    ):
        if value < 1:
            raise UserError(f"{key}={value}; it must be 1 or more")
    if cfg.limit is not None and cfg.limit < 1:
        raise UserError(
            f"limit={cfg.limit} scores nothing; use a count of 1 or more, or null for all"
        )
    if cfg.output_dir == "":
        raise UserError("output_dir= is empty: name the run folder, or leave it unset")
    d = cfg.dataset
    return Request(
        source=source(d),
        title=d.title,
        labels=LabelRequest(classes=plain(d.classes), restrict=d.restrict),
        corruption=corruption(d, cfg.backend),
        model=model(cfg.model),
        rows=Rows(limit=cfg.limit, shard_index=cfg.shard.index, shard_count=cfg.shard.count),
        runtime=Runtime(
            device=cfg.device,
            amp=cfg.amp,
            num_workers=cfg.num_workers,
            streams=cfg.streams,
            backend=cfg.backend,
            channels_last=cfg.channels_last,
            compile=cfg.compile,
            batch_size=cfg.batch_size,
            commit_rows=cfg.commit_rows,
            on_error=cfg.on_error,
            oom_retry=cfg.oom_retry,
            progress=cfg.progress,
        ),
        real_labels=cfg.metrics.real_labels,
    )


def source(d: DatasetConfig) -> Source:
    """The split's source (for ImageNet-C, its cell's folder of the release, or the clean
    val split)."""
    given = Source(
        path=d.path,
        name=d.name,
        split=d.split,
        revision=d.revision,
        data_dir=d.data_dir,
        data_files=plain(d.data_files),
        streaming=d.streaming,
        image_column=d.image_column,
        label_column=d.label_column,
        id_column=d.id_column,
        image_roots=tuple(d.image_roots),
    )
    if d.corruption is None:
        return given
    name, severity = imagenet_c.cell(d.corruption, d.severity)
    if name != CLEAN:
        imagenet_c.check_cell(d.path, name, severity)
        return Source(**{**given.__dict__, "data_dir": f"{name}/{severity}", "split": None})
    if d.clean is None:
        raise UserError("dataset.corruption=clean needs dataset.clean: the clean val split's path")
    fields = {"path": d.clean, "split": d.clean_split, "data_dir": None, "data_files": None}
    return Source(**{**given.__dict__, **fields})


def corruption(d: DatasetConfig, backend: Backend) -> Corruption:
    """ImageNet-C's cell (from the release) or an on-the-fly corruption, not both; names and
    severities that exist; on-the-fly corruption happens in the workers' crops."""
    if d.corruption is not None and d.corrupt is not None:
        raise UserError(
            "dataset.corruption reads ImageNet-C's release, dataset.corrupt makes the "
            "corruption on the fly: give one of them"
        )
    if d.corruption is not None:
        name, severity = imagenet_c.cell(d.corruption, d.severity)
        if name == CLEAN:
            return Corruption(CLEAN, None, CLEAN)  # as the authors' clean val: standard
        return Corruption(name, severity, RELEASE, d.protocol)
    if d.corrupt is None:
        return Corruption(protocol=d.protocol)
    chosen = imagenet_c.on_the_fly(d.corrupt)
    if chosen is None:
        return Corruption(CLEAN, None, CLEAN, d.protocol)
    if backend is Backend.device:
        raise UserError(
            "dataset.corrupt corrupts the crops in the workers; backend=device decodes on "
            "the device: use backend=pil or backend=tensor"
        )
    require("imagecorruptions", "corrupt", "dataset.corrupt")
    return Corruption(*chosen, "on the fly", d.protocol)


def model(m: ModelConfig) -> ModelRequest:
    """What the model's source can take (before anything heavy is imported), and that its
    optional extra is installed."""
    library, name = registry.parse(m.arch)
    entry = registry.SOURCES[library]
    if library is not Library.torchvision and m.name is None and name in ("", "None"):
        raise UserError(
            f"model={library.value} needs the model's name: model.name=NAME (e.g. {entry.example})"
        )
    if m.name is not None and m.name != name:
        raise UserError(
            f"model.name={m.name} is read by model=timm and model=hf (their arch is "
            f"LIBRARY:NAME), but model.arch={m.arch}: set one of them"
        )
    if m.preprocess is not None and library in (Library.timm, Library.hf):
        raise UserError(
            f"model.preprocess is for checkpoints, modules and exports; {library.value} models "
            f"bring their own (override it with model.resize, crop, interpolation, mean, std)"
        )
    if (m.classnames or m.templates) and library not in (Library.openclip, Library.hf):
        raise UserError(
            f"model.classnames and model.templates are a zero-shot model's text "
            f"(model=openclip, or model=hf with a CLIP or SigLIP); model.arch={m.arch} has a head"
        )
    if m.kwargs and library is not Library.module:
        raise UserError(
            f"model.kwargs are the arguments of model.arch=module:PKG.MODULE:FUNCTION; "
            f"model.arch={m.arch} takes none"
        )
    for key, value in (("model.resize", m.resize), ("model.crop", m.crop)):
        if value is not None and value < 1:
            raise UserError(f"{key}={value}; it must be 1 or more, or null for the model's own")
    if entry.needs is not None:
        require(*entry.needs, f"model.arch={m.arch}")
    for key, values in (("model.mean", m.mean), ("model.std", m.std)):
        if values is not None and len(values) != 3:
            raise UserError(f"{key}={list(values)}; give one number per channel: [r, g, b]")
    if m.std is not None and 0 in m.std:
        raise UserError(f"model.std={list(m.std)}: a channel's std cannot be 0")
    return ModelRequest(
        library=library,
        name=name,
        weights=m.weights,
        sha256=m.sha256,
        preprocess=m.preprocess,
        resize=m.resize,
        crop=m.crop,
        interpolation=m.interpolation,
        mean=None if m.mean is None else tuple(m.mean),
        std=None if m.std is None else tuple(m.std),
        classes=m.classes,
        kwargs=tuple(sorted(plain(m.kwargs).items())),
        classnames=m.classnames,
        templates=m.templates,
    )

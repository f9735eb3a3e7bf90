"""Export a configured model to ONNX or torch.export, with its classes, eval transform and
source in the file's metadata, so that its run needs no further flags.

    python -m pipeline.export OUT.onnx [--batch N] [model.key=value ...]
    python -m pipeline.export OUT.pt2 [--batch N] [model.key=value ...]

The model is the one `python -m pipeline` would load with the same model.* overrides.
The batch size is dynamic unless --batch fixes it (for runtimes that need one; a run then
pads its last batch). The export is checked against its source on a few random images
before it is kept; OUT is never overwritten.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

FORMATS = (".onnx", ".pt2")
CHECK_IMAGES = 4  # random images the export is checked on against its source


def main(argv: list[str] | None = None) -> None:
    from pipeline.errors import one_line

    parser = argparse.ArgumentParser(
        prog="python -m pipeline.export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("out", type=Path, help="the file to write: NAME.onnx or NAME.pt2")
    parser.add_argument("--batch", type=int, help="a fixed batch size (default: dynamic)")
    parser.add_argument("--opset", type=int, help="the ONNX opset (default: torch's)")
    parser.add_argument("overrides", nargs="*", help="model.key=value, as for python -m pipeline")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("pipeline").setLevel(logging.INFO)  # ours; the exporters' chatter not
    with one_line():
        export(args.out, args.overrides, batch=args.batch, opset=args.opset)


def export(out: Path, overrides: list[str], *, batch: int | None, opset: int | None) -> None:
    """Load the model as a run would, export it to `out`, check it, keep it."""
    from pipeline import cli, resolve
    from pipeline.errors import UserError
    from pipeline.models.load import load_model

    if out.suffix not in FORMATS:
        raise UserError(f"{out}: name an .onnx or a .pt2 file")
    if out.exists():
        raise UserError(f"{out} exists; it is never overwritten: name a new file")
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise UserError(f"{out.parent} is not a folder this process can write to")
    if batch is not None and batch < 1:
        raise UserError(f"--batch {batch}: a fixed batch is 1 image or more")
    other = [o for o in overrides if not o.lstrip("+~").startswith(("model.", "model="))]
    if other:
        raise UserError(f"{' '.join(other)}: only model.* keys choose what is exported")
    cli.check_override_keys(overrides)
    loaded = load_model(resolve.model(cli.compose(*overrides).model))
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        staged = Path(tmp) / out.name
        write = _onnx if out.suffix == ".onnx" else _pt2
        write(loaded, staged, batch, opset)
        gap = _check(loaded, staged)
        try:
            os.link(staged, out)  # no-clobber: fails if OUT appeared meanwhile
        except FileExistsError:
            raise UserError(f"{out} appeared while exporting; it is left as it is") from None
    batching = "dynamic batch" if batch is None else f"fixed batch of {batch}"
    print(
        f"Wrote {out} ({out.stat().st_size / 1e6:.3g} MB, {batching}; {loaded.head}; "
        f"{loaded.transforms.describe()}). On {CHECK_IMAGES} random images its logits are "
        f"within {gap:.2g} of the source's.\nRun it: python -m pipeline model.arch="
        f"{out.suffix[1:]}:{out} dataset=..."
    )


def _example(loaded: Any, batch: int | None) -> tuple[Any, Any]:
    """(an input of the crop's size, the dynamic shapes to export it with)."""
    import torch

    from pipeline.data.transforms import height_width

    h, w = height_width(loaded.transforms.crop_size)
    if batch is not None:
        return torch.zeros(batch, 3, h, w), None
    return torch.zeros(2, 3, h, w), ({0: torch.export.Dim("batch", min=1)},)


def _onnx(loaded: Any, staged: Path, batch: int | None, opset: int | None) -> None:
    """torch.onnx's exporter (the dynamo one), with our metadata in metadata_props."""
    from pipeline.errors import UserError, first_line, optional
    from pipeline.models import exported

    optional("onnxscript", "onnx", "python -m pipeline.export OUT.onnx")
    onnx = optional("onnx", "onnx", "python -m pipeline.export OUT.onnx")
    import torch

    example, dynamic = _example(loaded, batch)
    try:
        program = torch.onnx.export(
            loaded.model,
            (example,),
            dynamo=True,
            dynamic_shapes=dynamic,
            opset_version=opset,
            verbose=False,
        )
    except Exception as e:  # an op the exporter cannot write, or the like
        raise UserError(f"torch.onnx cannot export {loaded.arch}: {first_line(e)}") from None
    assert program is not None  # dynamo=True always returns the program
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = exported.KEY, exported.metadata(loaded)
    onnx.save(proto, str(staged))


def _pt2(loaded: Any, staged: Path, batch: int | None, opset: int | None) -> None:
    """torch.export.save, with our metadata as an extra file."""
    import torch

    from pipeline.errors import UserError, first_line
    from pipeline.models import exported

    if opset is not None:
        raise UserError("--opset is ONNX's; a .pt2 file has none")
    example, dynamic = _example(loaded, batch)
    try:
        program = torch.export.export(loaded.model, (example,), dynamic_shapes=dynamic)
    except Exception as e:  # graph breaks torch.export cannot take
        raise UserError(f"torch.export cannot export {loaded.arch}: {first_line(e)}") from None
    torch.export.save(program, str(staged), extra_files={exported.KEY: exported.metadata(loaded)})


def _check(loaded: Any, staged: Path) -> float:
    """The largest |logit difference| between the export, loaded as a run loads it, and
    its source on a few random images; an export further off than float noise is refused."""
    import torch

    from pipeline.data.transforms import height_width
    from pipeline.errors import UserError
    from pipeline.models.load import load_model
    from pipeline.models.registry import parse
    from pipeline.request import ModelRequest

    library, name = parse(f"{staged.suffix[1:]}:{staged}")
    again = load_model(ModelRequest(library=library, name=name))
    h, w = height_width(loaded.transforms.crop_size)
    images = torch.randn(CHECK_IMAGES, 3, h, w, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        source, export = loaded.model(images), again.model(images)
    gap = float((source - export).abs().max())
    if gap > 1e-3 * (1 + float(source.abs().max())):
        raise UserError(
            f"The export of {loaded.arch} is {gap:.3g} off its logits on random images, "
            f"more than float noise: not kept"
        )
    return gap


if __name__ == "__main__":
    main(sys.argv[1:])

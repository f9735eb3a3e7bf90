"""ONNX files (`model.arch=onnx:FILE`, the `onnx` extra): run under onnxruntime, on its CUDA
provider where the run's device is a GPU and onnxruntime has one, on the CPU otherwise.
Classes and eval transform from the file's metadata where `python -m pipeline.export` wrote
it, else given as for your own module. The weights are the file: its sha256 is recorded.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import UserError, first_line, optional
from pipeline.models import exported
from pipeline.models.base import LoadedModel
from pipeline.models.exported import cached_file as cached_file  # the ModelSource functions
from pipeline.models.exported import head_classes as head_classes
from pipeline.models.exported import published_at as published_at
from pipeline.request import ModelRequest

log = logging.getLogger(__name__)
CUDA = "CUDAExecutionProvider"
DTYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16}


def load(asked: ModelRequest) -> LoadedModel:
    """The file, opened by onnxruntime on the CPU (the session for a GPU is made when the
    first batch arrives there)."""
    ort = optional("onnxruntime", "onnx", f"model.arch=onnx:{asked.name}")
    path, what, digest = exported.opened(asked)
    body = OnnxModel(path, ort)
    batch, outputs = body.shapes()
    meta = body.session(torch.device("cpu")).get_modelmeta().custom_metadata_map.get(exported.KEY)
    told = exported.described(meta, asked, what, outputs)
    library = f"onnxruntime {ort.__version__}"
    params = _parameters(path)
    return exported.loaded(
        body, told, asked, batch=batch, digest=digest, library=library, params=params
    )


class OnnxModel(nn.Module):
    """An onnxruntime session as a torch module: a batch of images in, the logits out, on
    the batch's device (one session per device, made when first needed)."""

    def __init__(self, path: str, ort: Any) -> None:
        super().__init__()
        self.path, self.ort = path, ort
        self.sessions: dict[torch.device, Any] = {}

    def session(self, device: torch.device) -> Any:
        if device not in self.sessions:
            options = self.ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.log_severity_level = 3  # errors only: its warnings are not the user's
            providers: list[Any] = ["CPUExecutionProvider"]
            if device.type == "cuda" and CUDA in self.ort.get_available_providers():
                providers.insert(0, (CUDA, {"device_id": device.index or 0}))
            elif device.type == "cuda":
                log.warning(
                    "onnxruntime has no CUDA provider here (pip install onnxruntime-gpu): "
                    "the ONNX model runs on the CPU"
                )
            try:
                self.sessions[device] = self.ort.InferenceSession(
                    self.path, options, providers=providers
                )
            except Exception as e:  # not an ONNX file, or one onnxruntime cannot run
                raise UserError(f"onnxruntime cannot open {self.path}: {first_line(e)}") from None
        return self.sessions[device]

    def shapes(self) -> tuple[int | None, int | None]:
        """(the fixed batch size, or None; the number of outputs, where the file says)."""
        session = self.session(torch.device("cpu"))
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].type not in DTYPES:
            shown = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
            raise UserError(
                f"{self.path} takes {shown}: a classifier takes one float tensor of images "
                f"(batch, 3, height, width)"
            )
        batch, width = inputs[0].shape[0], outputs[0].shape[-1] if outputs[0].shape else None
        return (
            batch if isinstance(batch, int) and batch > 0 else None,
            width if isinstance(width, int) and width > 0 else None,
        )

    @torch.compiler.disable  # onnxruntime's graph is its own: torch.compile leaves it be
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        session = self.session(x.device)
        feed = session.get_inputs()[0]
        images = x.to(DTYPES[feed.type]).contiguous().cpu().numpy()
        try:
            (logits, *_) = session.run(None, {feed.name: images})
        except Exception as e:  # a crop size the file was not exported for, and the like
            raise UserError(f"onnxruntime cannot run {self.path}: {first_line(e)}") from None
        return torch.from_numpy(np.asarray(logits)).to(x.device)


def _parameters(path: str) -> int:
    """The numbers in the file's initializers (where the onnx package is installed)."""
    try:
        import onnx
    except ImportError:
        return 0
    graph = onnx.load(path, load_external_data=False).graph
    return sum(int(np.prod(t.dims)) for t in graph.initializer)

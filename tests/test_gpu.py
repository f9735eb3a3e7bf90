"""The CUDA paths (copies on a side stream, fp16 autocast, nvJPEG decoding) against the
CPU reference on the same images; they run where CUDA exists (benchmarks/gpu.sh runs
them first on a GPU box) and skip, saying why, elsewhere."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import photo_split, split_args

from pipeline import run, settings
from pipeline.runs import claims

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="no CUDA device here: these run on a GPU box (bash benchmarks/gpu.sh runs them)",
    ),
]


@pytest.fixture(scope="module")
def forty(tmp_path_factory):
    return photo_split(tmp_path_factory.mktemp("gpu") / "forty.parquet", 40, (96, 80))


def predictions(config, out, forty, peaked, *overrides):
    args = [*split_args(forty), f"model.weights={peaked}", "batch_size=8", *overrides]
    run.evaluate(config(*args), out)
    return pd.read_parquet(out / claims.PREDICTIONS)


def test_exact_mode_on_cuda_gives_the_cpu_top5(config, tmp_path, forty, peaked_checkpoint):
    """fp32 on CUDA (copies on the side stream, reused input buffers, 5 batches in flight)
    gives the CPU's top-5, image for image."""
    cpu = predictions(config, tmp_path / "cpu", forty, peaked_checkpoint, "device=cpu")
    cuda = predictions(
        config, tmp_path / "cuda", forty, peaked_checkpoint, "device=cuda", "amp=off"
    )
    assert np.stack(cuda["topk"]).tolist() == np.stack(cpu["topk"]).tolist()
    np.testing.assert_allclose(np.stack(cuda["topk_prob"]), np.stack(cpu["topk_prob"]), atol=1e-4)


def test_fp16_autocast_keeps_the_fp32_top1(config, tmp_path, forty, peaked_checkpoint):
    """The default amp on CUDA (fp16) keeps fp32's top-1 on a checkpoint with clear gaps,
    and the plan records the dtype used."""
    fp32 = predictions(
        config, tmp_path / "fp32", forty, peaked_checkpoint, "device=cuda", "amp=off"
    )
    fp16 = predictions(config, tmp_path / "fp16", forty, peaked_checkpoint, "device=cuda")
    assert (fp16["pred"] == fp32["pred"]).mean() >= 0.95
    assert claims.read_plan(tmp_path / "fp16").runtime.amp == "float16"


def test_device_decoding_on_cuda_gives_the_tensor_backend(
    config, tmp_path, forty, peaked_checkpoint
):
    """backend=device (nvJPEG in batches) predicts what the tensor backend's workers do."""
    pytest.importorskip("torchcodec.decoders", reason="backend=device needs TorchCodec")
    tensor = predictions(
        config, tmp_path / "t", forty, peaked_checkpoint, "device=cuda", "amp=off", "backend=tensor"
    )
    device = predictions(
        config, tmp_path / "d", forty, peaked_checkpoint, "device=cuda", "amp=off", "backend=device"
    )
    assert device["error"].isna().all()
    assert (device["pred"] == tensor["pred"]).mean() >= 0.95


def test_cuda_settings_resolve_to_one_stream_and_every_core():
    """On a GPU: one stream, fp16 by default, and decoding workers on every core."""
    from pipeline.choices import Amp

    cuda = torch.device("cuda")
    assert settings.resolve_amp(Amp.auto, cuda) is torch.float16
    assert settings.resolve_streams("auto", cuda, compile=False, threads=8) == 1
    assert settings.resolve_workers("auto", cuda) >= 1


@pytest.mark.parametrize("kind", ["pt2", "onnx", "zero-shot"])
def test_other_sources_on_cuda_give_the_cpu_top5(config, tmp_path, kind, monkeypatch):
    """A .pt2 program and an ONNX file (onnxruntime's CUDA provider where onnxruntime-gpu
    is installed, else its CPU, said) and a zero-shot CLIP whose head is built on the GPU
    give, on CUDA in fp32, the CPU's top-5 image for image."""
    from helpers import ANIMALS, GIVEN, TINYNET, folder_of, names_file, tiny_clip

    from pipeline import export

    root = folder_of(tmp_path, ANIMALS, per_class=4)
    if kind == "zero-shot":
        pytest.importorskip("open_clip", reason="the clip extra")
        model = ["model=openclip", f"model.name=local-dir:{tiny_clip(tmp_path / 'clip')}"]
    else:
        if kind == "onnx":
            pytest.importorskip("onnxruntime", reason="the onnx extra")
        out = tmp_path / f"net.{kind}"
        source = [f"model.arch={TINYNET}", f"model.classes={names_file(tmp_path)}", *GIVEN]
        export.export(out, source, batch=None, opset=None)
        model = [f"model.arch={kind}:{out}"]
    data = ["dataset=imagefolder", f"dataset.path={root}", "amp=off", "batch_size=4", *model]
    run.evaluate(config(*data, "device=cpu"), tmp_path / "cpu")
    monkeypatch.setenv("ALEXNET_EVAL_CACHE", str(tmp_path / "gpu-cache"))  # built on the GPU
    run.evaluate(config(*data, "device=cuda"), tmp_path / "cuda")
    cpu, cuda = (pd.read_parquet(tmp_path / d / claims.PREDICTIONS) for d in ("cpu", "cuda"))
    assert np.stack(cuda["topk"]).tolist() == np.stack(cpu["topk"]).tolist()
    np.testing.assert_allclose(np.stack(cuda["topk_prob"]), np.stack(cpu["topk_prob"]), atol=1e-4)

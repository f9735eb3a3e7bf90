"""The fast paths, each checked against the straightforward reference."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import crop_of, jpeg, photo, realistic_split
from PIL import Image
from torchvision.models import AlexNet_Weights

from pipeline import run, settings
from pipeline.choices import Backend
from pipeline.data import transforms
from pipeline.data.images import Roots
from pipeline.errors import UserError

TRANSFORMS = AlexNet_Weights.IMAGENET1K_V1.transforms()
PIL_PRE = transforms.Preprocess.from_transforms(TRANSFORMS, Backend.pil)
FAST_PRE = transforms.Preprocess.from_transforms(TRANSFORMS, Backend.tensor)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_tensor_backend_is_within_one_level_of_the_reference(fmt):
    """Tensor decode + uint8 resize differs from the PIL reference by at most 1 level."""
    for seed in range(4):
        raw = encode(photo(seed, (500, 375)), fmt)
        ref = crop_of(PIL_PRE, raw)
        fast = crop_of(FAST_PRE, raw)
        diff = (ref.int() - fast.int()).abs()
        assert fast.dtype == torch.uint8 and fast.shape == ref.shape
        assert diff.max() <= 1, (fmt, seed, int(diff.max()))


@pytest.mark.parametrize(
    "raw",
    [
        encode(photo(1), "BMP"),
        encode(photo(2), "TIFF"),
        jpeg(photo(3).convert("CMYK")),
        encode(Image.fromarray(np.full((40, 30), 40000, np.uint16)), "PNG"),
    ],
    ids=["bmp", "tiff", "cmyk", "16-bit"],
)
def test_tensor_backend_hands_other_formats_to_pillow(raw):
    """Formats and modes the tensor decoders do not take go through Pillow, pixel for pixel."""
    ref = crop_of(PIL_PRE, raw)
    assert torch.equal(crop_of(FAST_PRE, raw), ref)


def test_truncated_jpeg_is_an_error_in_the_tensor_backend_too():
    """A truncated JPEG is an error row in both backends, not a half-gray image."""
    good = jpeg(photo(0))
    with pytest.raises(ValueError, match=r"(?i)truncated|incomplete"):
        crop_of(FAST_PRE, good[: len(good) // 2])


def test_low_precision_normalize_is_close_to_fp32():
    """Normalizing in fp16/bf16 on the device stays within the dtype's precision of fp32."""
    batch = torch.stack([PIL_PRE.crop(photo(i)) for i in range(3)])
    ref = PIL_PRE.normalize(batch)
    for dtype, tol in ((torch.float16, 4e-3), (torch.bfloat16, 3e-2)):
        got = PIL_PRE.normalize(batch, dtype, torch.channels_last)
        assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(got.float(), ref, atol=tol * 3, rtol=tol)


def top5(config, tmp_path, name, *overrides):
    run.evaluate(config(*overrides), tmp_path / name)
    return np.stack(pd.read_parquet(tmp_path / name / "predictions.parquet")["topk"])


def test_fast_settings_agree_with_the_exact_mode(config, tmp_path, parquet_file, peaked_checkpoint):
    """NCHW, channels_last, the tensor backend and bf16 AMP all give the exact mode's top-1."""
    data = [
        "dataset=parquet",
        f"dataset.data_files={parquet_file}",
        f"model.weights={peaked_checkpoint}",
    ]
    exact = top5(config, tmp_path, "exact", *data)
    nchw = top5(config, tmp_path, "nchw", *data, "channels_last=false")
    assert (nchw == exact).all()
    fast = top5(config, tmp_path, "fast", *data, "backend=tensor")
    assert (fast[:, 0] == exact[:, 0]).all()
    bf16 = top5(config, tmp_path, "bf16", *data, "backend=tensor", "amp=bf16")
    assert (bf16[:, 0] == exact[:, 0]).mean() >= 0.9


def test_torchvision_io_stands_in_without_torchcodec(monkeypatch):
    """Without TorchCodec the tensor backend decodes with torchvision.io, to the same pixels."""
    import sys

    import torchvision.io

    raw = jpeg(photo(0, (500, 375)))
    with_codec = crop_of(FAST_PRE, raw)
    calls = []
    real = torchvision.io.decode_image

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_image", spy)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # its import now fails
    transforms._tensor_decoder.cache_clear()
    try:
        without = crop_of(FAST_PRE, raw)
    finally:
        transforms._tensor_decoder.cache_clear()
    assert calls and (with_codec.int() - without.int()).abs().max() <= 1


def test_concurrent_streams_land_in_order_with_the_same_results(
    config, tmp_path, parquet_file, peaked_checkpoint
):
    """Batches run as concurrent CPU streams give one stream's predictions, row for row."""
    data = [
        "dataset=parquet",
        f"dataset.data_files={parquet_file}",
        f"model.weights={peaked_checkpoint}",
        "batch_size=2",
    ]
    frames = {}
    for streams in ("1", "3"):
        run.evaluate(config(*data, f"streams={streams}"), tmp_path / streams)
        frames[streams] = pd.read_parquet(tmp_path / streams / "predictions.parquet")
    pd.testing.assert_frame_equal(frames["1"], frames["3"])
    assert pd.read_parquet(tmp_path / "3" / "metrics.parquet")["streams"].iloc[0] == 3


@pytest.mark.parametrize(
    ("value", "device", "compile", "message"),
    [
        ("0", "cpu", False, "valid: auto or a count"),
        ("two", "cpu", False, "valid: auto or a count"),
        ("2", "cuda", False, "on cuda use 1 or auto"),
        ("2", "cpu", True, "compile=true runs one stream"),
    ],
)
def test_streams_mistakes_name_what_is_valid(value, device, compile, message):
    """streams= takes auto or a count; more than one only on CPU and without compile."""
    with pytest.raises(UserError, match=message):
        settings.resolve_streams(value, torch.device(device), compile=compile, threads=4)


@pytest.mark.parametrize("threads", [1, 2, 3, 8, 64])
def test_streams_auto_gives_every_cpu_stream_a_thread_and_a_gpu_one(threads):
    """streams=auto on CPU runs several forwards, each with at least one of the model's
    threads and never more than 4; compiled or on a GPU, one stream."""
    cpu = settings.resolve_streams("auto", torch.device("cpu"), compile=False, threads=threads)
    assert 1 <= cpu <= min(threads, 4) and (cpu > 1) == (threads > 1)
    assert settings.resolve_streams("auto", torch.device("cpu"), compile=True, threads=threads) == 1
    assert (
        settings.resolve_streams("auto", torch.device("cuda"), compile=False, threads=threads) == 1
    )


def oriented(fmt: str, value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return encode(photo(4, (500, 375)), fmt, exif=exif.tobytes())


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("value", range(1, 9))
def test_no_backend_applies_exif_orientation(fmt, value):
    """An image with EXIF orientation 2..8 keeps its stored geometry in every backend, as in
    torchvision's ImageFolder loader and the published numbers (TorchCodec turns images
    upright; that is undone)."""
    raw = oriented(fmt, value)
    ref = crop_of(PIL_PRE, raw)
    fast = crop_of(FAST_PRE, raw)
    assert (ref.int() - fast.int()).abs().max() <= 1, (fmt, value)
    stored = Image.open(io.BytesIO(raw)).convert("RGB")
    assert torch.equal(ref, PIL_PRE.crop(stored))  # the Pillow path applies no rotation


def test_device_backend_agrees_with_the_exact_mode(config, tmp_path, peaked_checkpoint):
    """backend=device (JPEGs decoded in the main process by TorchCodec's batched decoder, the
    call that uses nvJPEG on CUDA; resized there) on 200 realistic JPEGs: the same top-5 set
    as the exact mode on at least 99% of them, and the tensor backend's pixels exactly."""
    path = realistic_split(tmp_path / "real.parquet")
    data = ["dataset=parquet", f"dataset.data_files={path}", f"model.weights={peaked_checkpoint}"]
    exact = top5(config, tmp_path, "exact", *data, "batch_size=16")
    device = top5(config, tmp_path, "device", *data, "batch_size=16", "backend=device")
    tensor = top5(config, tmp_path, "tensor", *data, "batch_size=16", "backend=tensor")
    same_sets = np.mean([set(a) == set(b) for a, b in zip(exact, device, strict=True)])
    assert same_sets >= 0.99, same_sets
    assert (device == tensor).all()


def test_device_backend_takes_rotated_jpegs_in_the_worker():
    """A JPEG with EXIF orientation is decoded in the worker (where orientation is undone);
    a plain one is left encoded for the device; other formats are cropped in the worker."""
    device = transforms.Preprocess.from_transforms(TRANSFORMS, Backend.device)
    assert isinstance(
        device({"bytes": oriented("JPEG", 1), "path": None}, Roots()), transforms.Encoded
    )
    rotated = device({"bytes": oriented("JPEG", 6), "path": None}, Roots())
    ref = crop_of(PIL_PRE, oriented("JPEG", 6))
    assert isinstance(rotated, torch.Tensor) and (rotated.int() - ref.int()).abs().max() <= 1
    assert isinstance(device({"bytes": oriented("PNG", 1), "path": None}, Roots()), torch.Tensor)


def test_device_backend_without_torchcodec_is_one_line(config, tmp_path, monkeypatch):
    """backend=device needs TorchCodec: without it, one line before anything is loaded."""
    import sys

    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    with pytest.raises(UserError, match="backend=device needs TorchCodec"):
        run.evaluate(config("model.weights=none", "backend=device"), tmp_path / "out")

"""Builders shared by the tests: photo-like images, hub-style rows, the CLI."""

from __future__ import annotations

import importlib
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

LABELS = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]  # ImageNet class ids of the fixture images
SPRINGER, GOLDFISH, TENCH = 217, 1, 0
IMAGENETTE = [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]  # tench, English springer, ...


def photo(seed: int, size: tuple[int, int] = (180, 140)) -> Image.Image:
    """A smooth, photo-like RGB image (gradients plus blobs), different per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        a, b, p = rng.uniform(-1, 1, 3)
        img[..., c] = 128 + 60 * np.sin(a * xx / 17 + b * yy / 23 + p * 6)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, 40)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, **kwargs)
    return out.getvalue()


def photo_split(path, n: int, size=(96, 80)):
    """n small photo-like JPEGs as hub-style Parquet, labels i*7 % 1000 (built once)."""
    if not path.exists():
        encoded = [jpeg(photo(seed, size)) for seed in range(17)]
        rows: dict[str, list[Any]] = {
            "image": [{"bytes": encoded[i % 17], "path": f"{i}.jpg"} for i in range(n)],
            "label": [i * 7 % 1000 for i in range(n)],
        }
        hub_dataset(rows).to_parquet(path)
    return path


def realistic_split(path, n: int = 200, seed: int = 0):
    """n ImageNet-like JPEGs (~500x375, quality 90) cut from the bundled sample's real
    photographs (pipeline/sample/corpus.py), as hub-style Parquet."""
    from pipeline.sample import corpus

    rows: dict[str, list[Any]] = {
        "image": [{"bytes": corpus.jpeg(i, seed), "path": f"{i}.jpg"} for i in range(n)]
    }
    rows["label"] = [i % 1000 for i in range(n)]
    hub_dataset(rows).to_parquet(path)
    return path


def split_args(path) -> list[str]:
    """Overrides for a run over a photo_split: random weights, small batches and parts."""
    return [
        "dataset=parquet",
        f"dataset.data_files={path}",
        "model.weights=none",
        "batch_size=4",
        "commit_rows=8",
        "progress=false",
    ]


def uninterrupted(args: list[str], out):
    """The predictions of one uninterrupted in-process run (scored once, then reused)."""
    from conftest import make_config

    from pipeline import run
    from pipeline.runs import claims

    if not (out / claims.METRICS).exists():
        run.evaluate(make_config(*args), out)
    return out / claims.PREDICTIONS


def hub_rows(n: int = len(LABELS)) -> dict[str, list]:
    return {
        "image": [{"bytes": jpeg(photo(i)), "path": f"img{i:02d}.jpg"} for i in range(n)],
        "label": LABELS[:n],
    }


def load(path: str, **kwargs):
    """source.load_split with the defaults of a plain labeled split."""
    from pipeline.data import source
    from pipeline.request import Source

    return source.load_split(Source(path, **kwargs))


def load_model(*, arch: str, weights: str, sha256: str | None = None, **overrides):
    """The model of model.arch=ARCH model.weights=WEIGHTS (and model.* overrides), as a run
    loads it."""
    from pipeline.choices import Interpolation
    from pipeline.models import registry
    from pipeline.models.load import load_model as load
    from pipeline.request import ModelRequest

    library, name = registry.parse(arch)
    if overrides.get("interpolation") is not None:
        overrides["interpolation"] = Interpolation(overrides["interpolation"])
    return load(ModelRequest(library, name, weights, sha256, **overrides))


def wnid(label: int) -> str:
    """The WordNet id of an ImageNet class: the folder name ImageNet's layout gives it."""
    from pipeline.data.imagenet import imagenet_classes

    return imagenet_classes()[0][label]


def categories() -> list[str]:
    from torchvision.models import AlexNet_Weights

    return list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])


def hub_dataset(rows: dict[str, list], label=None):
    """A hub-style dataset: labels are a ClassLabel with torchvision's 1000 names, as hub
    datasets of ImageNet store them (or `label`, another feature)."""
    import datasets

    label = label or datasets.ClassLabel(names=categories())
    features = datasets.Features({"image": datasets.Image(), "label": label})
    extra = {k: datasets.Value("string") for k in rows if k not in features}
    return datasets.Dataset.from_dict(rows, features=datasets.Features({**features, **extra}))


def run_cli(args: list[str], cwd: Path, **env: str):
    """`python -m pipeline ARGS` in a subprocess, offline."""
    environ = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


def on_call(n: int, real, action):
    """`real`, wrapped so that its n-th call runs `action()` first (to inject a fault)."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            action()
        return real(*args, **kwargs)

    return wrapper


def assert_same_predictions(a, b):
    """Same rows, same order, same classes; probabilities equal to float tolerance."""
    import pandas as pd

    x, y = pd.read_parquet(a), pd.read_parquet(b)
    cols = [c for c in x.columns if c not in ("topk", "topk_prob")]
    assert list(x.columns) == list(y.columns)
    pd.testing.assert_frame_equal(x[cols], y[cols])
    assert np.stack(x["topk"]).tolist() == np.stack(y["topk"]).tolist()
    np.testing.assert_allclose(np.stack(x["topk_prob"]), np.stack(y["topk_prob"]), rtol=1e-4)


def snapshot(root) -> dict[str, bytes]:
    """Every file under root, by relative path, with its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def user_files(root, files: dict[str, bytes]) -> None:
    """Files of the user's own (relative path -> bytes) under root."""
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def folder_of(tmp_path, names: list[str], per_class: int = 2, empty: Sequence[str] = ()):
    """An image folder: per_class images in a folder per name (plus empty folders)."""
    root = tmp_path / "folder"
    for k, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            (root / name / f"{k}_{j}.jpg").write_bytes(jpeg(photo(k * per_class + j, (64, 48))))
    for name in empty:
        (root / name).mkdir(parents=True)
    return root


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def headless(tmp_path, *args: str) -> str:
    """Headless Chromium (flags for a closed network, a fresh profile); its stdout."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run(
        [
            str(chromium()),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *args,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout


needs_chromium = pytest.mark.skipif(
    chromium() is None, reason="headless Chromium is not installed (.ci/run installs it)"
)


def crop_of(pre, data, row: int = 0):
    """A Preprocess's uint8 crop of encoded bytes (or an image value), as a worker makes it
    for the pil and tensor backends."""
    import torch

    from pipeline.data.images import Roots

    image = data if isinstance(data, dict) else {"bytes": data, "path": None}
    out = pre(image, Roots(), row)
    assert isinstance(out, torch.Tensor)
    return out


TINY_TIMM = "test_resnet.r160_in1k"  # timm's own test model: 0.47 M parameters


def answering_timm(tmp_path, first: int, then: int | None = None) -> str:
    """A timm test_resnet checkpoint whose top-1 is always `first` (then `then`)."""
    from safetensors.torch import save_file

    timm: Any = importlib.import_module("timm")  # the timm extra

    torch.manual_seed(0)
    net = timm.create_model(TINY_TIMM, pretrained=False)
    with torch.no_grad():
        net.fc.weight.zero_()
        net.fc.bias.zero_()
        net.fc.bias[first] = 20.0
        if then is not None:
            net.fc.bias[then] = 10.0
    path = tmp_path / f"timm-{first}-{then}.safetensors"
    save_file(net.state_dict(), str(path))
    return str(path)


def hf_folder(tmp_path, *, names=None, answer: int | None = None, processor=None) -> str:
    """A tiny transformers ResNet classifier saved as a hub folder: config (id2label), weights,
    and its image processor (ConvNeXT's crop_pct resize unless given); `answer`: the output
    column every image gets."""
    from pipeline.data import imagenet

    transformers: Any = importlib.import_module("transformers")  # the hf extra

    names = names or list(imagenet.imagenet_classes()[1])
    id2label = dict(enumerate(names))
    config = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=len(names),
        id2label=id2label, label2id={v: k for k, v in id2label.items()},
    )  # fmt: skip
    torch.manual_seed(0)
    net = transformers.ResNetForImageClassification(config)
    if answer is not None:
        with torch.no_grad():
            net.classifier[1].weight.zero_()
            net.classifier[1].bias.zero_()
            net.classifier[1].bias[answer] = 20.0
    folder = tmp_path / f"hf-{answer}-{len(names)}-{type(processor).__name__}"
    net.save_pretrained(folder)
    processor = processor or transformers.ConvNextImageProcessor(
        size={"shortest_edge": 224}, crop_pct=0.875
    )
    processor.save_pretrained(folder)
    return str(folder)


# a user's own module (tests/tinynet.py) on a 3-class folder, with the preprocessing given
ANIMALS = ["bird", "cat", "dog"]
TINYNET = "module:tinynet:build"
GIVEN = (
    "model.resize=72",
    "model.crop=64",
    "model.mean=[0.5,0.5,0.5]",
    "model.std=[0.25,0.25,0.25]",
)


def names_file(tmp_path, names: Sequence[str] = tuple(ANIMALS), name: str = "classes.txt") -> str:
    """A class list: one name per line (model.classes=FILE)."""
    path = tmp_path / name
    path.write_text("".join(f"{n}\n" for n in names))
    return str(path)


# a tiny random CLIP (open_clip's CLIP class, seeded), saved as open_clip's own local-dir
# layout; its tokenizer is the one open_clip ships, so nothing is downloaded
TINY_CLIP = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 64,
            "layers": 2,
            "width": 64,
            "patch_size": 16,
            "head_width": 32,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 64,
            "heads": 2,
            "layers": 2,
        },
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        "size": 64,
    },
}


def tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny random open_clip CLIP as a local-dir: folder (config + safetensors)."""
    import json

    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(TINY_CLIP))
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP["model_cfg"])
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    return folder


def labelled(path, labels: list[int], names=None):
    """A Parquet split of photos with these labels (ImageNet ids, or indices into `names`)."""
    import datasets

    rows: dict[str, list[Any]] = {
        "image": [{"bytes": jpeg(photo(i)), "path": f"{i}.jpg"} for i in range(len(labels))]
    }
    rows["label"] = labels
    label = datasets.ClassLabel(names=names) if names else None
    hub_dataset(rows, label=label).to_parquet(path)
    return path

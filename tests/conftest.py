"""Tiny datasets and checkpoints built on the spot: the tests download nothing."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from helpers import LABELS, hub_dataset, hub_rows, jpeg, photo, wnid
from PIL import Image

from pipeline.cli import compose
from pipeline.config import Config


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test may reach a hub; each session gets its own HF, torch and head caches."""
    cache = tmp_path_factory.getbasetemp() / "caches"
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(cache / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(cache / "torch"))
    monkeypatch.setenv("ALEXNET_EVAL_CACHE", str(cache / "alexnet-eval"))  # zero-shot heads
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache / "hf" / "datasets")


@pytest.fixture
def images() -> list[Image.Image]:
    """The fixture photos, decoded from their JPEG bytes (what the pipeline will see)."""
    return [Image.open(io.BytesIO(jpeg(photo(i)))).convert("RGB") for i in range(len(LABELS))]


@pytest.fixture
def imagefolder(tmp_path: Path) -> Path:
    """ImageNet's layout: a folder per class named by WordNet id, each image in its class's."""
    root = tmp_path / "folder"
    for i, label in enumerate(LABELS):
        d = root / wnid(label)
        d.mkdir(parents=True, exist_ok=True)
        (d / f"img{i:02d}.jpg").write_bytes(jpeg(photo(i)))
    return root


@pytest.fixture
def parquet_file(tmp_path: Path) -> Path:
    """Hub-style Parquet: an `image` struct of bytes/path and an int `label`."""
    path = tmp_path / "val.parquet"
    hub_dataset(hub_rows()).to_parquet(path)
    return path


@pytest.fixture
def saved_dir(tmp_path: Path) -> Path:
    """A `save_to_disk` DatasetDict with a validation split."""
    import datasets

    path = tmp_path / "saved"
    datasets.DatasetDict({"validation": hub_dataset(hub_rows())}).save_to_disk(path)
    return path


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """checkpoints(name, build): an AlexNet checkpoint saved once per session and shared.

    Each is 233 MB: one per test filled CI's disk (14 GB a run). They are deterministic
    (seeded) and made read-only, so a test that tried to change one would fail loudly."""
    root = tmp_path_factory.mktemp("checkpoints")

    def get(name: str, build: Callable[[torch.nn.Module], None], seed: int = 0) -> Path:
        path = root / name
        if not path.exists():
            torch.manual_seed(seed)
            model = torchvision.models.alexnet()
            with torch.no_grad():
                build(model)
            torch.save(model.state_dict(), path)
            path.chmod(0o444)
        return path

    return get


@pytest.fixture
def peaked_checkpoint(checkpoints) -> Path:
    """AlexNet with random weights whose last layer is scaled up, so top-5 has clear gaps."""
    return checkpoints("peaked.pth", lambda model: model.classifier[6].weight.mul_(200), seed=1)


def make_config(*overrides: str) -> Config:
    """Compose the real conf/ with overrides, shrunk for tests: cpu, 0 workers, no bar."""
    return compose("device=cpu", "num_workers=0", "progress=false", "batch_size=4", *overrides)


@pytest.fixture
def config() -> Callable[..., Config]:
    return make_config


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture
def answering(checkpoints):
    """answering(c, then=None): a checkpoint whose top-1 is always class c (then `then`)."""

    def make(first: int, then: int | None = None):
        def build(model: Any) -> None:  # an AlexNet: classifier[6] is its last layer
            model.classifier[6].weight.zero_()
            model.classifier[6].bias.zero_()
            model.classifier[6].bias[first] = 20.0
            if then is not None:
                model.classifier[6].bias[then] = 10.0

        return f"model.weights={checkpoints(f'answers-{first}-{then}.pth', build)}"

    return make

"""The model stage: every way to get weights, and one clear error for each way it fails."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from helpers import load_model
from safetensors.torch import save_file

from pipeline import settings
from pipeline.choices import Amp
from pipeline.errors import UserError
from pipeline.models.base import Published

VALID_SHA = "0" * 64


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_none_is_random_init_with_a_warning(caplog):
    """weights=none builds the model, warns that accuracy is meaningless, and is reproducible."""
    with caplog.at_level(logging.WARNING):
        a = load_model(arch="alexnet", weights="none", sha256=None)
    b = load_model(arch="alexnet", weights="none", sha256=None)
    assert "meaningless" in caplog.text
    assert torch.equal(a.model.features[0].weight, b.model.features[0].weight)
    assert len(a.categories) == 1000 and a.categories[281] == "tabby"


def test_pth_checkpoint_loads_with_its_sha256(peaked_checkpoint):
    """A .pth state_dict loads; its sha256 is checked and recorded."""
    digest = sha256(peaked_checkpoint)
    loaded = load_model(arch="alexnet", weights=str(peaked_checkpoint), sha256=digest)
    expected = torch.load(peaked_checkpoint, weights_only=True)
    assert torch.equal(loaded.model.classifier[6].weight, expected["classifier.6.weight"])
    assert loaded.sha256 == digest


def test_wrapped_and_ddp_checkpoints_load(tmp_path):
    """{'state_dict': ...} wrappers and DDP's 'module.' prefixes are unwrapped."""
    sd = torchvision.models.alexnet().state_dict()
    path = tmp_path / "ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
    loaded = load_model(arch="alexnet", weights=str(path), sha256=None)
    assert torch.equal(loaded.model.features[0].bias, sd["features.0.bias"])


def test_safetensors_checkpoint_loads(tmp_path):
    """A .safetensors file loads through safetensors, never through pickle."""
    sd = torchvision.models.alexnet().state_dict()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    loaded = load_model(arch="alexnet", weights=str(path), sha256=None)
    assert torch.equal(loaded.model.classifier[1].weight, sd["classifier.1.weight"])


def test_sha256_mismatch_is_refused_before_loading(peaked_checkpoint):
    """A checkpoint whose sha256 differs from model.sha256 is refused."""
    with pytest.raises(UserError, match=r"sha256 of .* expected 0000"):
        load_model(arch="alexnet", weights=str(peaked_checkpoint), sha256=VALID_SHA)


def test_missing_file_names_the_valid_weights(tmp_path):
    """A weights value that is no name and no file lists the valid names."""
    with pytest.raises(UserError, match=r"IMAGENET1K_V1.*none"):
        load_model(arch="alexnet", weights=str(tmp_path / "nope.pth"), sha256=None)


def test_wrong_shapes_say_what_does_not_fit(tmp_path):
    """A checkpoint of another architecture's layers fails naming the mismatching tensor
    (a head of another size is a fine-tune's: test_models' classes tests)."""
    path = tmp_path / "wide.pth"
    state = torchvision.models.alexnet().state_dict()
    state["features.0.weight"] = torch.zeros(32, 3, 11, 11)
    torch.save(state, path)
    with pytest.raises(UserError, match=r"1 wrong shape.*features.0.weight: \(32, 3, 11, 11\)"):
        load_model(arch="alexnet", weights=str(path), sha256=None)


class Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    """A checkpoint carrying a pickled callable is refused, and its code never runs."""
    path, marker = tmp_path / "evil.pth", tmp_path / "pwned"
    path.write_bytes(pickle.dumps({"features.0.weight": Boom(marker)}, protocol=2))
    with pytest.raises(UserError, match="Refusing to load"):
        load_model(arch="alexnet", weights=str(path), sha256=None)
    assert not marker.exists()


def stage(torch_home, name: str, state_dict) -> Path:
    path = torch_home / "hub" / "checkpoints" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, path)
    return path


def test_prestaged_torchvision_weights_load_offline(tmp_path, monkeypatch):
    """IMAGENET1K_V1 (also the default, `pretrained`) goes through the weights API and reads
    a file pre-staged in $TORCH_HOME (here random weights, staged under a name carrying
    their own hash prefix, as torchvision names its files); it carries the published
    numbers."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    staged = stage(tmp_path, "tmp.pth", torchvision.models.alexnet().state_dict())
    name = f"alexnet-owt-{sha256(staged)[:8]}.pth"
    staged = staged.rename(staged.with_name(name))
    entry = torchvision.models.AlexNet_Weights.IMAGENET1K_V1
    monkeypatch.setattr(entry.value, "url", entry.url.rsplit("/", 1)[0] + "/" + name)
    for weights in ("IMAGENET1K_V1", "pretrained", "DEFAULT"):  # the default names V1
        loaded = load_model(arch="alexnet", weights=weights, sha256=None)
        assert loaded.sha256 == sha256(staged) and loaded.weights == "IMAGENET1K_V1"
    assert loaded.published == Published(56.522, 79.066, "torchvision IMAGENET1K_V1")


def test_wrong_file_under_torchvisions_name_is_refused(tmp_path, monkeypatch):
    """A file staged as alexnet-owt-7be5be79.pth whose sha256 does not start with 7be5be79
    is not IMAGENET1K_V1: refused, naming the file, before any image is scored."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    stage(tmp_path, "alexnet-owt-7be5be79.pth", torchvision.models.alexnet().state_dict())
    loaded = load_model(arch="alexnet", weights="IMAGENET1K_V1", sha256=None)
    with pytest.raises(
        UserError, match=r"alexnet-owt-7be5be79.pth has sha256 .* starts with 7be5be79"
    ):
        _ = loaded.sha256


def test_legacy_pth_and_truncated_safetensors(tmp_path):
    """A pre-1.6 (non-zip) .pth state dict loads; a truncated .safetensors is one clear error."""
    sd = torchvision.models.alexnet().state_dict()
    legacy = tmp_path / "legacy.pth"
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    loaded = load_model(arch="alexnet", weights=str(legacy), sha256=None)
    assert torch.equal(loaded.model.classifier[6].bias, sd["classifier.6.bias"])
    cut = tmp_path / "cut.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, cut)
    cut.write_bytes(cut.read_bytes()[:1000])
    with pytest.raises(UserError, match=r"Cannot read .*cut.safetensors as safetensors"):
        load_model(arch="alexnet", weights=str(cut), sha256=None)


def test_sha256_without_a_file_and_unknown_preprocess_are_refused(peaked_checkpoint):
    """model.sha256 with weights=none, and a model.preprocess that names no weights, fail."""
    with pytest.raises(UserError, match=r"model.sha256 is set but model.weights=none"):
        load_model(arch="alexnet", weights="none", sha256=VALID_SHA)
    with pytest.raises(UserError, match=r"model.preprocess=NOPE .*IMAGENET1K_V1"):
        load_model(arch="alexnet", weights=str(peaked_checkpoint), sha256=None, preprocess="NOPE")
    other = load_model(
        arch="alexnet",
        weights=str(peaked_checkpoint),
        sha256=None,
        preprocess="ResNet50_Weights.IMAGENET1K_V2",
    )
    assert other.preprocess == "ResNet50_Weights.IMAGENET1K_V2"
    assert list(other.transforms.resize_size) == [232]  # ResNet50 V2's eval resize


def test_unstaged_weights_offline_say_how_to_prestage(tmp_path, monkeypatch):
    """Without network or cache, the error names the file and folder to pre-stage."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError, match=r"alexnet-owt-7be5be79.pth to .*hub/checkpoints"):
        load_model(arch="alexnet", weights="IMAGENET1K_V1", sha256=None)


def test_unknown_arch_lists_the_choices():
    """model.arch must be a torchvision classifier; the error lists them."""
    with pytest.raises(UserError, match=r"alexnet.*resnet50"):
        load_model(arch="alexnett", weights="none", sha256=None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="asserts the no-GPU error")
def test_cuda_without_a_gpu_is_one_clear_error():
    """device=cuda on a machine without CUDA says so and suggests cpu."""
    with pytest.raises(UserError, match=r"CUDA is not available.*device=cpu"):
        settings.resolve_device("cuda:0")


def test_device_and_amp_resolution():
    """auto picks what exists; amp auto is fp16 on CUDA only; fp16 on CPU is refused."""
    assert settings.resolve_device("cpu").type == "cpu"
    with pytest.raises(UserError, match="valid: auto, cpu, cuda, cuda:N, mps"):
        settings.resolve_device("tpu")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert settings.resolve_amp(Amp.auto, cpu) is None
    assert settings.resolve_amp(Amp.auto, cuda) is torch.float16
    assert settings.resolve_amp(Amp.bf16, cpu) is torch.bfloat16
    with pytest.raises(UserError, match="amp=fp16 needs a GPU"):
        settings.resolve_amp(Amp.fp16, cpu)


def test_cuda_n_becomes_the_current_device(monkeypatch):
    """device=cuda:1 makes GPU 1 current (else DataLoader's pin-memory thread works on 0)."""
    from pipeline import distributed

    current: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    group, device = distributed.setup("cuda:1")
    assert device == torch.device("cuda", 1) and current == [device] and group.world == 1


def test_an_amp_dtype_the_gpu_lacks_is_one_line(monkeypatch):
    """amp=bf16 on a GPU without bf16 is refused before anything is loaded, naming the GPU."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    with pytest.raises(UserError, match="amp=bf16: Tesla V100 has no bf16 support; use amp=fp16"):
        settings.resolve_amp(Amp.bf16, torch.device("cuda"))


def test_normalization_constants_are_made_once_per_device(monkeypatch):
    """mean and std are put on the device once: the batches after the first make no tensor
    of them (on a GPU each would be a blocking upload that waits for the last forward)."""
    from torchvision.models import AlexNet_Weights

    from pipeline.data.transforms import Preprocess

    made: list[tuple] = []
    real = torch.tensor

    def counted(*a, **k):
        made.append(a)
        return real(*a, **k)

    monkeypatch.setattr(torch, "tensor", counted)
    pre = Preprocess.from_transforms(AlexNet_Weights.IMAGENET1K_V1.transforms())
    batch = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    pre.normalize(batch, torch.float64)  # a dtype nothing else normalizes in: a first batch
    assert len(made) == 2  # mean and std
    for _ in range(3):
        pre.normalize(batch, torch.float64)
    assert len(made) == 2

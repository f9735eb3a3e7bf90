"""Any ImageNet classifier: timm's and transformers' models with their own preprocessing
(pixels equal to each library's eval transform), their heads read as ImageNet-1k by name
or refused, their published numbers and sizes, offline loading, and the OOM retry.

The models are tiny and random, built here; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from helpers import (
    GOLDFISH,
    SPRINGER,
    TENCH,
    TINY_TIMM,
    answering_timm,
    crop_of,
    folder_of,
    hf_folder,
    load_model,
    photo_split,
    run_cli,
    split_args,
    wnid,
)
from PIL import Image
from torchvision.transforms.v2 import functional as F2

from pipeline import inference, run
from pipeline.data import imagenet
from pipeline.data.transforms import Preprocess
from pipeline.errors import UserError
from pipeline.models import heads
from pipeline.models.load import measure
from pipeline.runs import claims

timm = pytest.importorskip("timm", reason="the timm extra")
transformers = pytest.importorskip("transformers", reason="the hf extra")
# odd sizes, a strip, and 256x259, where transformers' floored crop offset (17) is not
# torchvision's rounded one (18)
SIZES = [(500, 375), (301, 457), (1000, 17), (256, 259)]


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    w, h = size
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def ours(loaded, image: Image.Image) -> torch.Tensor:
    """The pipeline's uint8 crop of a PIL image, as a worker makes it."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    preprocess = Preprocess.from_transforms(loaded.transforms)
    return crop_of(preprocess, buffer.getvalue())


@pytest.mark.parametrize("name", [TINY_TIMM, "resnet18.a1_in1k"])
def test_timm_pixels_equal_timms_own_eval_transform(name):
    """A timm model's crop, normalized, equals timm's create_transform of the config that
    validate.py resolves (resnet18.a1_in1k: 288 px test size, crop_pct 1.0, bicubic), bit
    for bit, whatever the image's shape."""
    loaded = load_model(arch=f"timm:{name}", weights="none", sha256=None)
    config = timm.data.resolve_data_config({}, model=loaded.model, use_test_size=True)
    reference = timm.data.create_transform(**config)
    for size in SIZES:
        image = noise(size)
        crop = ours(loaded, image)
        normalized = Preprocess.from_transforms(loaded.transforms).normalize(crop[None])[0]
        assert torch.equal(normalized, reference(image)), (name, size)


def test_timm_squash_crop_mode_equals_timms_transform():
    """crop_mode squash (both sides to size / crop_pct, then the crop), as timm makes it."""
    from pipeline.models import from_timm

    config = {"input_size": (3, 160, 160), "interpolation": "bicubic", "crop_pct": 0.9,
              "crop_mode": "squash", "mean": (0.5,) * 3, "std": (0.5,) * 3}  # fmt: skip
    transforms = from_timm.eval_transform(config, "squashed")
    assert transforms.resize_size == (177, 177)
    reference = timm.data.create_transform(**config)
    preprocess = Preprocess.from_transforms(transforms)
    for size in SIZES:
        image = noise(size, 1)
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        crop = crop_of(preprocess, buffer.getvalue())
        assert torch.equal(preprocess.normalize(crop[None])[0], reference(image))
    with pytest.raises(UserError, match="crop_mode border"):
        from_timm.eval_transform(config | {"crop_mode": "border"}, "bordered")


@pytest.mark.parametrize(
    "processor",
    [
        None,  # ConvNeXT's: shorter side to 224 / 0.875, crop 224
        "deit",  # resize 256x256, then crop 224
        "vit",  # squash to 224x224, no crop
        "mobilenet_v2",  # overrides preprocess for segmentation maps only: generic pixels
        "beit",  # likewise
    ],
)
def test_hf_pixels_equal_the_image_processors(tmp_path, processor):
    """A transformers model's uint8 crop equals its AutoImageProcessor's (rescale and
    normalize off) bit for bit, and the normalized batch its pixel_values to float
    rounding; the floored crop offset is transformers' own (torchvision's differs here)."""
    made = {
        None: None,
        "deit": transformers.DeiTImageProcessor(
            size={"height": 256, "width": 256}, crop_size={"height": 224, "width": 224}
        ),
        "vit": transformers.ViTImageProcessor(size={"height": 224, "width": 224}),
        "mobilenet_v2": transformers.MobileNetV2ImageProcessor(),  # google/mobilenet_v2_1.0_224's
        "beit": transformers.BeitImageProcessor(),
    }[processor]
    folder = hf_folder(tmp_path, processor=made)
    loaded = load_model(arch=f"hf:{folder}", weights="pretrained", sha256=None)
    reference = transformers.AutoImageProcessor.from_pretrained(folder)
    for size in SIZES:
        image = noise(size, 2)
        crop = ours(loaded, image)
        raw = reference(image, do_rescale=False, do_normalize=False, return_tensors="pt")
        assert torch.equal(crop.float(), raw["pixel_values"][0]), size
        normalized = Preprocess.from_transforms(loaded.transforms).normalize(crop[None])[0]
        expected = reference(image, return_tensors="pt")["pixel_values"][0]
        assert torch.allclose(normalized, expected, atol=1e-6), size
    if processor is None:  # 256x259 resized keeps 256x259: the offsets differ by one
        tensor = torch.from_numpy(np.asarray(noise((256, 259), 2)).copy()).permute(2, 0, 1)
        rounded = F2.center_crop(tensor, [224])
        assert not torch.equal(rounded, ours(loaded, noise((256, 259), 2)))


@pytest.mark.parametrize(
    ("processor", "why"),
    [
        (transformers.LevitImageProcessor(), "makes other pixels than its settings"),
        (transformers.MobileViTImageProcessor(), "makes other pixels"),  # flips to BGR
        (transformers.EfficientNetImageProcessor(), "cannot process a 500x375 image"),
    ],
    ids=["levit-own-resize", "mobilevit-bgr", "efficientnet"],
)
def test_processors_whose_pixels_differ_are_refused_by_name(tmp_path, processor, why):
    """A processor whose pixels our transform does not make (its own resize, channels
    flipped, its own rescale) is refused on load, naming it, after the probe images."""
    folder = hf_folder(tmp_path, processor=processor)
    name = type(processor).__name__
    with pytest.raises(UserError, match=rf"image processor {name} {why}"):
        load_model(arch=f"hf:{folder}", weights="pretrained", sha256=None)


def test_timm_weights_load_offline_from_the_hub_cache(repo_root, tmp_path):
    """weights=pretrained reads timm's hub weights from the Hugging Face cache, offline (a
    real process: the hub's settings are read at import); the file's sha256 is recorded
    and timm's published numbers for that eval transform come along; another crop has
    none (timm published no run at it); without the file, one line."""
    from safetensors.torch import save_file

    home = tmp_path / "hf"
    snapshot = home / "hub" / f"models--timm--{TINY_TIMM}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    torch.manual_seed(1)
    save_file(
        timm.create_model(TINY_TIMM, pretrained=False).state_dict(),
        str(snapshot / "model.safetensors"),
    )
    data = photo_split(tmp_path / "split.parquet", 8)
    args = [
        "dataset=parquet",
        f"dataset.data_files={data}",
        f"model.arch=timm:{TINY_TIMM}",
        "progress=false",
    ]
    rows: list[pd.Series] = []
    for extra in ([], ["model.crop=192"]):
        out = tmp_path / f"run{len(rows)}"
        proc = run_cli([*args, *extra, f"output_dir={out}"], cwd=repo_root, HF_HOME=str(home))
        assert proc.returncode == 0, proc.stderr[-2000:]
        rows.append(pd.read_parquet(out / claims.METRICS).iloc[0])
    expected = hashlib.sha256((snapshot / "model.safetensors").read_bytes()).hexdigest()
    assert rows[0]["weights_sha256"] == expected and rows[0]["weights"] == "pretrained"
    assert rows[0]["weights_path"] == str(snapshot / "model.safetensors")
    assert rows[0]["published_ref"] == "[41.602, 67.984]"
    assert rows[0]["published_by"] == "timm results, 160 px, crop_pct 0.950, bilinear"
    assert rows[1]["published_ref"] is None and "with model.crop=192" in rows[1]["preprocess"]
    assert "resize [202] (shorter side)" in rows[1]["preprocess"]  # 192 / 0.95: crop_pct kept
    (snapshot / "model.safetensors").unlink()
    proc = run_cli([*args, f"output_dir={tmp_path / 'gone'}"], cwd=repo_root, HF_HOME=str(home))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not in the Hugging Face cache and could not be downloaded" in proc.stderr


def test_timm_and_hf_checkpoints_score_the_known_answer(config, tmp_path):
    """A timm checkpoint file and a transformers folder, each answering goldfish, score the
    goldfish images right and nothing else, through the real run (one by its model group,
    one by its arch); the metrics row names the library, the head and the model's size."""
    root = folder_of(tmp_path, [wnid(c) for c in (TENCH, GOLDFISH, SPRINGER)])
    data = ["dataset=imagefolder", f"dataset.path={root}", "dataset.restrict=false"]
    hf = f"hf:{hf_folder(tmp_path, answer=GOLDFISH)}"
    by_group = ["model=timm", f"model.name={TINY_TIMM}"]
    for arch, chosen, weights in (
        (f"timm:{TINY_TIMM}", by_group, answering_timm(tmp_path, GOLDFISH)),
        (hf, [f"model.arch={hf}"], "pretrained"),
    ):
        out = tmp_path / arch.split(":")[0]
        row = run.evaluate(config(*data, *chosen, f"model.weights={weights}"), out)
        frame = pd.read_parquet(out / claims.PREDICTIONS)
        assert frame["pred"].tolist() == [GOLDFISH] * 6
        assert row.row["top1"] == pytest.approx(100 / 3)
        assert row.row["model"] == arch and row.row["params"] > 0 and row.row["gmacs"] > 0
        assert row.row["model_library"].split()[0] in ("timm", "transformers")
        assert "ImageNet-1k (1000 outputs)" in row.row["head"]


def test_a_model_name_beside_another_arch_is_refused(config, tmp_path):
    """model.name belongs to model=timm / model=hf; beside a torchvision arch it would be
    silently ignored, so it is one line instead."""
    with pytest.raises(UserError, match=r"model\.name=resnet18 is read by model=timm"):
        run.evaluate(config("model.name=resnet18", "model.weights=none"), tmp_path / "o")


def test_a_head_in_another_order_is_mapped_by_name_and_restricted(config, tmp_path):
    """A transformers head whose id2label is ImageNet's WordNet ids in reverse order is read
    by name: its output 998 is goldfish. Restricted to the folder's 3 classes
    (dataset.restrict=true), a head answering a class outside them (then tench) predicts
    tench."""
    reverse = list(reversed(imagenet.imagenet_classes()[0]))  # WordNet ids
    folder = hf_folder(tmp_path, names=reverse, answer=999 - GOLDFISH)
    loaded = load_model(arch=f"hf:{folder}", weights="pretrained", sha256=None)
    assert "1000 outputs, ImageNet-1k's 1000 picked by name" in loaded.head
    with torch.inference_mode():
        assert int(loaded.model(torch.zeros(1, 3, 224, 224)).argmax()) == GOLDFISH
    root = folder_of(tmp_path, [wnid(c) for c in (TENCH, GOLDFISH, SPRINGER)])
    elsewhere = answering_timm(tmp_path, 500, then=TENCH)
    overrides = (f"model.arch=timm:{TINY_TIMM}", f"model.weights={elsewhere}")
    data = ("dataset=imagefolder", f"dataset.path={root}", "dataset.restrict=true")
    row = run.evaluate(config(*data, *overrides), tmp_path / "r")
    frame = pd.read_parquet(tmp_path / "r" / claims.PREDICTIONS)
    assert row.row["restricted"] and frame["pred"].tolist() == [TENCH] * 6


def test_googles_head_is_imagenet_1k_after_its_background_output(tmp_path):
    """Google's own layout (1001 outputs: 'background', then ILSVRC's long names in
    ImageNet's order, 'crane' twice among them) is ImageNet-1k's 1000 after the first
    output: columns 1..1000, in order; a head naming them in another order with an
    extra output is still read by name."""
    names = ["background", *imagenet.imagenet_classes()[1]]
    columns, how = heads.to_imagenet(names, "a head")
    assert columns == tuple(range(1, 1001)) and "after 'background'" in how
    folder = hf_folder(tmp_path, names=names, answer=1 + GOLDFISH)
    loaded = load_model(arch=f"hf:{folder}", weights="pretrained", sha256=None)
    with torch.inference_mode():
        assert int(loaded.model(torch.zeros(1, 3, 224, 224)).argmax()) == GOLDFISH


@pytest.mark.parametrize(
    "names, message",
    [
        (
            [f"LABEL_{i}" for i in range(10)],
            r"a head has 10 outputs, not ImageNet-1k's 1000: it is",
        ),
        (list(imagenet.imagenet_classes()[0][:999]), r"has 999 outputs, not .*missing n15075141"),
        (
            list(reversed(imagenet.imagenet_classes()[1])),  # a permutation of ILSVRC's names
            r"name 998 of .*missing n02012849 \(crane\), n03126707 \(crane\); 'crane' names",
        ),
        (
            [*imagenet.imagenet_classes()[0], "goldfish"],
            r"has 1001 outputs, not .*outputs 1 \('n01443537'\) and 1000 \('goldfish'\) are",
        ),
    ],
)
def test_heads_that_are_not_imagenet_1k_are_refused(names, message):
    """A head fine-tuned on other classes, one lacking a class, or naming one twice is
    refused in one line; none is read as if its outputs were ImageNet ids."""
    with pytest.raises(UserError, match=message):
        heads.to_imagenet(names, "a head")


def test_timm_in22k_heads_are_their_own_classes_and_unknown_names_are_refused():
    """timm's ImageNet-22k head is not read as ImageNet-1k: it is its own 21843 classes,
    named by the synsets timm gives it (ImageNet-1k's labels find them by WordNet id); an
    unknown model or tag names the near ones."""
    loaded = load_model(arch="timm:vit_tiny_patch16_224.augreg_in21k", weights="none")
    assert loaded.classes.kind == "named:21843" and "its own 21843 classes" in loaded.head
    assert loaded.classes.find("n01440764") is not None  # tench, among the 21843
    with pytest.raises(UserError, match="did you mean resnet18"):
        load_model(arch="timm:resnt18", weights="none", sha256=None)
    with pytest.raises(UserError, match=r"no such pretrained tag of resnet18; it has resnet18\.a1"):
        load_model(arch="timm:resnet18.a1_in1kk", weights="none", sha256=None)


def test_timms_default_tag_is_resolved_and_recorded():
    """timm:resnet18 is timm's default tag, a1_in1k (not torchvision's preprocessing): the
    run records which, and its transform is that tag's test-time one."""
    loaded = load_model(arch="timm:resnet18", weights="none", sha256=None)
    assert loaded.arch == "timm:resnet18.a1_in1k"
    assert (loaded.transforms.resize_size, loaded.transforms.crop_size) == ((288,), (288,))


def test_an_overridden_transform_has_timms_numbers_only_for_its_own_weights(monkeypatch):
    """Another eval transform that timm measured (resnet18.a1_in1k at 224, crop_pct 0.95)
    brings its published numbers for timm's pretrained weights, found by the default tag
    timm resolved; random weights (or a checkpoint) at it have none."""
    from pipeline.models import from_timm

    net = timm.create_model("resnet18.a1_in1k", pretrained=False)
    monkeypatch.setattr(from_timm, "_pretrained", lambda _timm, _name: net)
    at_224 = {"resize": 235, "crop": 224}
    loaded = load_model(arch="timm:resnet18", weights="pretrained", sha256=None, **at_224)
    assert (loaded.published.top1, loaded.published.top5) == (71.504, 90.086)
    random = load_model(arch="timm:resnet18.a1_in1k", weights="none", sha256=None, **at_224)
    assert random.published is None


def test_gmacs_match_torchvisions_published_operation_counts():
    """measure() over one image: AlexNet's and ResNet-18's GMACs are torchvision's _ops."""
    for arch in ("alexnet", "resnet18"):
        loaded = load_model(arch=arch, weights="none", sha256=None)
        entry = torchvision.models.get_model_weights(arch).DEFAULT
        assert loaded.gmacs == pytest.approx(entry.meta["_ops"], rel=0.01)
        assert loaded.params == entry.meta["num_params"]
        assert measure(loaded, loaded.transforms)[1] == loaded.gmacs


@pytest.mark.parametrize("module, arch", [("timm", "timm:resnet18"), ("transformers", "hf:x")])
def test_a_missing_extra_is_one_line(monkeypatch, module, arch):
    """Without its library, a timm or transformers model is one line naming the extra."""
    monkeypatch.setitem(sys.modules, module, None)
    extra = "timm" if module == "timm" else "hf"
    with pytest.raises(UserError, match=rf"pip install 'alexnet-eval\[{extra}\]'"):
        load_model(arch=arch, weights="none", sha256=None)


def test_hf_refuses_a_checkpoint_path_and_unknown_folders(tmp_path):
    """A transformers model's weights are its folder's: a checkpoint path is refused, and a
    folder that holds no model is one line."""
    with pytest.raises(UserError, match="pretrained, or none"):
        load_model(arch="hf:x", weights="/tmp/w.pth", sha256=None)
    with pytest.raises(UserError, match=f"model.arch=hf:{tmp_path}"):
        load_model(arch=f"hf:{tmp_path}", weights="pretrained", sha256=None)


def test_oom_retry_halves_the_batch_and_says_so(config, tmp_path, monkeypatch, caplog):
    """Out of device memory at batch 8 (and 4), the rows left go on at half the batch until
    it fits; predictions equal an unfaulted run's, and run.json and the metrics row hold
    the batch size that finished."""
    split = photo_split(tmp_path / "split.parquet", 40)
    args = [*split_args(split), "batch_size=8", "commit_rows=8"]
    run.evaluate(config(*args), tmp_path / "plain")
    real = inference.launch

    def too_big(batch, *rest):
        if len(batch.index) > 2 and int(batch.index[0]) >= 16:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(batch, *rest)

    monkeypatch.setattr(inference, "launch", too_big)
    with caplog.at_level(logging.WARNING, logger="pipeline.run"):
        row = run.evaluate(config(*args), tmp_path / "retried")
    assert (
        "out of cpu memory at batch_size=8: the 24 rows left go on at batch_size=4" in caplog.text
    )
    assert "at batch_size=4: the 24 rows left go on at batch_size=2" in caplog.text
    retried = claims.read_plan(tmp_path / "retried").runtime.batch_size
    assert row.row["batch_size"] == 2 and retried == 2
    plain = pd.read_parquet(tmp_path / "plain" / claims.PREDICTIONS)
    retried = pd.read_parquet(tmp_path / "retried" / claims.PREDICTIONS)
    pd.testing.assert_frame_equal(
        plain.drop(columns="topk_prob"), retried.drop(columns="topk_prob")
    )


@pytest.mark.slow
def test_a_zoo_sweep_tables_models_of_three_libraries(repo_root, tmp_path):
    """One -m sweep over a torchvision, a timm and a transformers model: the table holds
    each model with its parameters, GMACs, top-1/top-5 and img/s."""
    split = photo_split(tmp_path / "zoo.parquet", 12)
    folder = hf_folder(tmp_path)
    sweep = tmp_path / "sweep"
    archs = f"alexnet,timm:{TINY_TIMM},hf:{folder}"
    proc = run_cli(
        ["-m", *split_args(split), f"model.arch={archs}", f"hydra.sweep.dir={sweep}"],
        cwd=repo_root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_parquet(sweep / "summary.parquet")
    assert table["model"].tolist() == ["alexnet", f"timm:{TINY_TIMM}", f"hf:{folder}"]
    assert table["params_m"].round(2).tolist() == [61.1, 0.47, 0.02]
    assert table["gmacs"].iloc[0] == pytest.approx(0.714, rel=0.01)
    assert (table["status"] == "done").all() and table["images_per_sec"].gt(0).all()
    assert "params_m" in proc.stdout and f"timm:{TINY_TIMM}" in proc.stdout
    assert json.loads((sweep / "0" / claims.RUN_FILE).read_text())["results"]["head"]

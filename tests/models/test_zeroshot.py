"""Zero-shot classifiers: open_clip models (a tiny random CLIP saved as open_clip's own
local-dir: folder; its tokenizer ships with open_clip) and transformers' CLIP, on ImageNet
and on a dataset of their own classes. Every prediction is open_clip's own
build_zero_shot_classifier + encode_image on the same images; heads are cached by content;
resume compares the names' and templates' hashes; the effective-robustness plot marks
zero-shot points and fits its line without them.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import (
    ANIMALS,
    GOLDFISH,
    SPRINGER,
    TENCH,
    assert_same_predictions,
    crop_of,
    folder_of,
    labelled,
    names_file,
    tiny_clip,
    wnid,
)
from PIL import Image

from pipeline import run
from pipeline.data.transforms import Preprocess
from pipeline.errors import UserError
from pipeline.models import zeroshot
from pipeline.runs import claims

open_clip = pytest.importorskip("open_clip", reason="the clip extra")
ONE_TEMPLATE = "a photo of a {}."


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return tiny_clip(tmp_path_factory.mktemp("clip") / "tiny")


def open_clips_own(folder: Path, files: list[Path], names, templates, k: int):
    """open_clip's own zero-shot top-k: build_zero_shot_classifier over the names and
    templates, encode_image of its preprocess_val's tensors, the model's logit scale."""
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    model.eval()
    with torch.no_grad():
        head = open_clip.build_zero_shot_classifier(model, tokenizer, names, templates)
        images = torch.stack([preprocess(Image.open(f)) for f in files])
        logits = model.logit_scale.exp() * model.encode_image(images, normalize=True) @ head
    return logits.softmax(-1).topk(k)


def template_file(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "templates.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_a_dataset_of_its_own_classes(config, tmp_path, clip_dir, caplog):
    """Folders bird/cat/dog: the head is built on the dataset's 3 names with 'a photo of a
    {}.'; per image, the run's top-3 and probabilities are open_clip's own; the plan
    records the names' and templates' sha256 and says how the head was read."""
    root = folder_of(tmp_path, ANIMALS, per_class=3)
    model = ("model=openclip", f"model.name=local-dir:{clip_dir}")
    data = ("dataset=imagefolder", f"dataset.path={root}")
    with caplog.at_level(logging.INFO):
        finished = run.evaluate(config(*data, *model), tmp_path / "o")
    frame = pd.read_parquet(tmp_path / "o" / claims.PREDICTIONS)
    want = open_clips_own(clip_dir, [root / i for i in frame["id"]], ANIMALS, [ONE_TEMPLATE], 3)
    assert np.stack(frame["topk"]).tolist() == want.indices.tolist()
    np.testing.assert_allclose(np.stack(frame["topk_prob"]), want.values.numpy(), atol=1e-5)
    plan = finished.plan.model
    assert plan.classes == "named:3" and plan.categories == tuple(ANIMALS)
    assert plan.zero_shot_names_sha256 == zeroshot._digest(ANIMALS)
    assert plan.zero_shot_templates_sha256 == zeroshot._digest([ONE_TEMPLATE])
    assert "zero-shot over named:3: the dataset's 3 class names" in plan.head
    assert plan.weights_sha256 and plan.model == f"openclip:local-dir:{clip_dir}"
    assert "built in" in caplog.text and "cached at" in caplog.text


def test_imagenet_uses_open_clips_curated_names(config, tmp_path, clip_dir):
    """WordNet-id folders read as ImageNet-1k: the head is the 1000 curated names open_clip
    ships (one template here, for speed), scored 1000-way; per image equal to open_clip's
    classifier over IMAGENET_CLASSNAMES."""
    root = folder_of(tmp_path, [wnid(c) for c in (TENCH, GOLDFISH, SPRINGER)])
    templates = template_file(tmp_path, ONE_TEMPLATE)
    overrides = ("dataset=imagefolder", f"dataset.path={root}", "model=openclip",
                 f"model.name=local-dir:{clip_dir}", f"model.templates={templates}")  # fmt: skip
    finished = run.evaluate(config(*overrides), tmp_path / "o")
    frame = pd.read_parquet(tmp_path / "o" / claims.PREDICTIONS)
    files = [root / i for i in frame["id"]]
    want = open_clips_own(clip_dir, files, open_clip.IMAGENET_CLASSNAMES, [ONE_TEMPLATE], 5)
    assert np.stack(frame["topk"]).tolist() == want.indices.tolist()
    assert finished.row["label_space"] == "subset:3" and not finished.row["restricted"]
    assert finished.plan.model.classes == "imagenet-1k"
    assert "open_clip's curated names" in finished.plan.model.head


def test_the_default_imagenet_prompts_are_openais_80():
    p = zeroshot.prompts(None, classnames=None, templates=None, device="cpu")
    assert len(p.templates) == 80 and p.names == tuple(open_clip.IMAGENET_CLASSNAMES)
    assert p.templates[0] == "a bad photo of a {}." and p.classes.kind == "imagenet-1k"


def test_a_datasets_own_names_read_underscores_as_spaces():
    """Folder names have no spaces: the text says "British Shorthair", the classes (what
    rows and the plan name) stay the folders'."""
    p = zeroshot.prompts(["Abyssinian", "British_Shorthair"], classnames=None, templates=None,
                         device="cpu")  # fmt: skip
    assert p.names == ("Abyssinian", "British Shorthair") and p.templates == (ONE_TEMPLATE,)
    assert p.classes.names == ("Abyssinian", "British_Shorthair")


def test_a_cached_head_gives_the_same_predictions(config, tmp_path, caplog, monkeypatch):
    """The second run (another folder, same model, names and templates) reads the head
    from the cache and scores the same; a damaged cache file is said and rebuilt."""
    monkeypatch.setenv("ALEXNET_EVAL_CACHE", str(tmp_path / "cache"))
    clip = tiny_clip(tmp_path / "clip", seed=1)
    root = folder_of(tmp_path, ANIMALS)
    args = ("dataset=imagefolder", f"dataset.path={root}", "model=openclip",
            f"model.name=local-dir:{clip}")  # fmt: skip
    with caplog.at_level(logging.INFO):
        run.evaluate(config(*args), tmp_path / "first")
        assert "built in" in caplog.text and "from the cache" not in caplog.text
        caplog.clear()
        run.evaluate(config(*args), tmp_path / "second")
    assert "from the cache" in caplog.text and "built in" not in caplog.text
    assert_same_predictions(
        tmp_path / "first" / claims.PREDICTIONS, tmp_path / "second" / claims.PREDICTIONS
    )
    (cached,) = zeroshot.cache_dir().glob("*.pt")
    cached.write_bytes(b"not a tensor")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run.evaluate(config(*args), tmp_path / "third")
    assert "unreadable" in caplog.text and "built in" in caplog.text
    assert_same_predictions(
        tmp_path / "first" / claims.PREDICTIONS, tmp_path / "third" / claims.PREDICTIONS
    )


def test_resume_compares_the_templates(config, tmp_path, clip_dir):
    """A folder scored with one set of templates is not finished with another."""
    root = folder_of(tmp_path, ANIMALS)
    base = ("dataset=imagefolder", f"dataset.path={root}", "model=openclip",
            f"model.name=local-dir:{clip_dir}", "limit=2")  # fmt: skip
    run.evaluate(config(*base), tmp_path / "o")
    other = template_file(tmp_path, "a drawing of a {}.")
    with pytest.raises(UserError, match="zero_shot_templates_sha256"):
        run.evaluate(config(*base[:-1], f"model.templates={other}"), tmp_path / "o")


@pytest.mark.parametrize(
    ("key", "lines", "message"),
    [
        ("model.templates", ["a photo"], r"each line needs one \{\} where the class name goes"),
        ("model.classnames", ["a", "b"], r"names 2 classes; the head has 3 \(named:3\)"),
        ("model.weights", None, r"brings its own weights; leave model.weights"),
    ],
    ids=["no-placeholder", "wrong-count", "tag-for-a-folder"],
)
def test_zero_shot_mistakes_are_one_line(config, tmp_path, clip_dir, key, lines, message):
    root = folder_of(tmp_path, ANIMALS)
    value = "laion2b_s34b_b79k" if lines is None else names_file(tmp_path, lines)
    overrides = ("dataset=imagefolder", f"dataset.path={root}", "model=openclip",
                 f"model.name=local-dir:{clip_dir}", f"{key}={value}")  # fmt: skip
    with pytest.raises(UserError, match=message):
        run.evaluate(config(*overrides), tmp_path / "o")


def test_a_built_in_name_without_its_tag_lists_the_tags(config, tmp_path):
    root = folder_of(tmp_path, ANIMALS)
    overrides = ("dataset=imagefolder", f"dataset.path={root}", "model=openclip")
    with pytest.raises(UserError, match=r"model.weights=TAG \(.*laion2b_s34b_b79k"):
        run.evaluate(config(*overrides), tmp_path / "o")
    with pytest.raises(UserError, match=r"zero-shot model's text"):
        run.evaluate(config("model.classnames=x.txt", "model.weights=none"), tmp_path / "p")


@pytest.mark.parametrize("size", [(500, 375), (301, 457), (1000, 17), (256, 259)])
def test_pixels_equal_open_clips_preprocess(clip_dir, size):
    """The workers' uint8 crop, normalized on the device, is open_clip's preprocess_val
    tensor to float rounding, on odd sizes."""
    from pipeline.models.from_openclip import eval_transform

    _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{clip_dir}")
    ours = Preprocess.from_transforms(eval_transform(preprocess, "tiny"))
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (*size[::-1], 3), np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    crop = crop_of(ours, buffer.getvalue())
    assert torch.allclose(ours.normalize(crop[None])[0], preprocess(image), atol=1e-5)


def test_the_published_table_is_open_clips(monkeypatch):
    """ViT-B-32 laion2b_s34b_b79k: open_clip's table's 0.6656 as 66.56, top-5 unpublished;
    the check then compares top-1 only."""
    from pipeline.models.from_openclip import published

    ref = published("ViT-B-32", "laion2b_s34b_b79k")
    assert ref is not None and ref.top1 == pytest.approx(66.56) and ref.top5 is None
    assert published("ViT-B-32", "no-such-tag") is None


def hf_clip(tmp_path: Path) -> Path:
    """A tiny random transformers CLIP saved with its image processor and a tokenizer made
    from the BPE vocabulary open_clip ships (nothing downloaded)."""
    transformers = pytest.importorskip("transformers", reason="the hf extra")
    folder = tmp_path / "hf-clip"
    folder.mkdir()
    simple = open_clip.get_tokenizer("ViT-B-32")
    (folder / "vocab.json").write_text(json.dumps(simple.encoder))
    merges = sorted(simple.bpe_ranks.items(), key=lambda kv: kv[1])
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for (a, b), _ in merges)
    )
    special = {"bos_token": "<start_of_text>", "eos_token": "<end_of_text>",
               "unk_token": "<end_of_text>", "pad_token": "<end_of_text>"}  # fmt: skip
    tokenizer = transformers.CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), **special
    )
    config = transformers.CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 2,
                     "num_hidden_layers": 2, "vocab_size": 49408, "max_position_embeddings": 77},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 2,
                       "num_hidden_layers": 2, "image_size": 64, "patch_size": 16},
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    transformers.CLIPImageProcessor(
        size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}
    ).save_pretrained(folder)
    return folder


def test_transformers_clip_is_zero_shot_too(config, tmp_path):
    """model=hf with a CLIP folder: a zero-shot head over the dataset's names; per image,
    the run's top-3 is transformers' own logits_per_image over the same prompts."""
    import transformers

    folder = hf_clip(tmp_path)
    root = folder_of(tmp_path, ANIMALS, per_class=3)
    data = ("dataset=imagefolder", f"dataset.path={root}", f"model.arch=hf:{folder}")
    finished = run.evaluate(config(*data), tmp_path / "o")
    frame = pd.read_parquet(tmp_path / "o" / claims.PREDICTIONS)
    model = transformers.CLIPModel.from_pretrained(folder).eval()
    processor = transformers.CLIPProcessor.from_pretrained(folder)
    images = [Image.open(root / i).convert("RGB") for i in frame["id"]]
    texts = [ONE_TEMPLATE.format(n) for n in ANIMALS]
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        own = model(**inputs).logits_per_image.softmax(-1).topk(3)
    assert np.stack(frame["topk"]).tolist() == own.indices.tolist()
    np.testing.assert_allclose(np.stack(frame["topk_prob"]), own.values.numpy(), atol=1e-4)
    assert finished.plan.model.classes == "named:3" and "zero-shot" in finished.plan.model.head


def test_effective_robustness_marks_zero_shot_points(config, tmp_path, answering):
    """Three ImageNet-trained models fit the line; a fourth, zero-shot, is measured
    against it, not fitted: the line is the three's, its effective robustness is its
    distance above that line, and the table and plot mark it."""
    import math

    from pipeline.reports import numbers, robustness

    val = labelled(tmp_path / "val.parquet", [TENCH] * 5 + [GOLDFISH] * 3 + [SPRINGER] * 2)
    shifted = labelled(tmp_path / "shifted.parquet", [TENCH] * 2 + [GOLDFISH] * 3 + [SPRINGER] * 5)
    runs = []
    for c in (TENCH, GOLDFISH, SPRINGER):
        for title, path in (("imagenet-val", val), ("shifted", shifted)):
            out = tmp_path / f"{c}-{title}"
            data = ["dataset=parquet", f"dataset.data_files={path}", f"dataset.title={title}"]
            run.evaluate(config(*data, answering(c)), out)
            loaded = numbers.load(out)
            runs.append((str(out), loaded.plan, loaded.scores))
    zero = []  # the springer model's runs, relabelled as a zero-shot model's (its numbers kept)
    for where, plan, scores in runs[4:]:
        marked = plan.changed(
            model="openclip:tiny", weights="pretrained", zero_shot_names_sha256="x"
        )
        zero.append((where + "-zero", marked, scores))
    found = robustness.summary(runs[:4] + zero + runs[4:])
    (entry,) = found["datasets"]
    rows = {r["model"]: r for r in entry["models"]}
    assert rows["openclip:tiny"]["zero_shot"] and entry["fit"]["models"] == 3
    trained = [r for r in rows.values() if not r["zero_shot"]]
    slope, intercept = np.polyfit([_logit(r["val_top1"]) for r in trained],
                                  [_logit(r["top1"]) for r in trained], 1)  # fmt: skip
    z = rows["openclip:tiny"]
    expected = 100 / (1 + math.exp(-(slope * _logit(z["val_top1"]) + intercept)))
    assert z["effective_robustness"] == pytest.approx(z["top1"] - expected)
    assert any("(zero-shot)" in line for line in robustness.lines(found))


def _logit(percent: float) -> float:
    import math

    return math.log(percent / (100 - percent))

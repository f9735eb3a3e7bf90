"""Hostile data and faults: every image gets one row, errors are recorded, nothing is lost."""

from __future__ import annotations

import contextlib
import io
import os
import signal
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import hub_dataset, jpeg, load, on_call, photo, wnid
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.models import AlexNet_Weights

from pipeline import inference, run
from pipeline.data import loader, transforms
from pipeline.data.images import Roots
from pipeline.data.labels import LabelSpace
from pipeline.errors import UserError
from pipeline.stop import Stopped

BOMB_LIMIT = 100_000  # pixels; the test lowers Pillow's limit instead of building a 90 MP image


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 30), c) for c in ("red", "blue")]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    return out.getvalue()


def palette_with_transparency() -> bytes:
    return encode(photo(3).convert("P"), "PNG", transparency=0)


GOOD = jpeg(photo(0))
# (file name, bytes, None if it must be scored, else a piece of the expected error)
CASES = [
    ("ok.jpg", GOOD, None),
    ("truncated.jpg", GOOD[: len(GOOD) // 2], "truncated"),  # both backends say so
    ("empty.jpg", b"", "empty file"),
    ("text.jpg", b"no image here, just text\n" * 20, "not an image"),
    ("bomb.png", encode(Image.new("RGB", (500, 500)), "PNG"), "decompression bomb: 250000 pixels"),
    ("vector.png", b'<svg xmlns="http://www.w3.org/2000/svg"/>', "not an image"),
    ("gray.png", encode(photo(1).convert("L"), "PNG"), None),
    ("cmyk.jpg", jpeg(photo(2).convert("CMYK")), None),
    ("rgba.png", encode(photo(3).convert("RGBA"), "PNG"), None),
    ("la.png", encode(photo(4).convert("LA"), "PNG"), None),
    ("palette.png", palette_with_transparency(), None),
    ("sixteen.png", encode(Image.fromarray(np.full((30, 40), 40000, np.uint16)), "PNG"), None),
    ("tiny.png", encode(Image.new("RGB", (1, 1), "green"), "PNG"), None),
    ("strip.png", encode(Image.new("RGB", (4000, 10), "white"), "PNG"), None),
    ("anim.gif", animated_gif(), None),
    ("photo.webp", encode(photo(5), "WEBP"), None),
    ("photo.bmp", encode(photo(6), "BMP"), None),
    ("photo.tiff", encode(photo(7), "TIFF"), None),
]
N_ERRORS = sum(expected is not None for _, _, expected in CASES)


@pytest.fixture
def small_bomb_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_LIMIT)


@pytest.fixture
def hostile_parquet(tmp_path):
    path = tmp_path / "hostile.parquet"
    rows: dict[str, list[Any]] = {
        "image": [{"bytes": raw, "path": name} for name, raw, _ in CASES],
        "label": [i % 7 for i in range(len(CASES))],
    }
    hub_dataset(rows).to_parquet(path)
    return ["dataset=parquet", f"dataset.data_files={path}"]


@pytest.fixture
def hostile_folder(tmp_path):
    root = tmp_path / "hostile"
    for i, (name, raw, _) in enumerate(CASES):
        folder = root / wnid(i % 2)  # two classes: with one, imagefolder drops labels
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(raw)
    return ["dataset=imagefolder", f"dataset.path={root}", "dataset.restrict=false"]


@pytest.mark.parametrize("backend", ["pil", "tensor", "device"])
@pytest.mark.parametrize("form", ["hostile_parquet", "hostile_folder"])
def test_every_image_gets_one_row_and_errors_are_counted(
    request, form, backend, config, tmp_path, small_bomb_limit, capsys
):
    """Each case gets exactly one row: scored, or with its reason and null predictions."""
    cfg = config(*request.getfixturevalue(form), "model.weights=none", f"backend={backend}")
    result = run.evaluate(cfg, tmp_path / "out")
    frame = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    assert frame["index"].tolist() == list(range(len(CASES)))
    by_name = {
        os.path.basename(i): row for i, row in zip(frame["id"], frame.itertuples(), strict=True)
    }
    assert sorted(by_name) == sorted(name for name, _, _ in CASES)
    for name, _, expected in CASES:
        row = by_name[name]
        if expected is None:
            assert pd.isna(row.error), (name, row.error)
            assert len(row.topk) == 5 and not pd.isna(row.pred)
        else:
            assert expected in row.error, (name, row.error)
            assert pd.isna(row.pred) and row.topk is None and pd.isna(row.correct_top1)
    assert (result.row["n_errors"], result.row["n_scored"]) == (N_ERRORS, len(CASES) - N_ERRORS)
    assert f"{N_ERRORS} image(s) could not be scored" in capsys.readouterr().out


@pytest.mark.parametrize("backend", ["pil", "device"])
def test_on_error_raise_names_the_row(config, tmp_path, hostile_parquet, small_bomb_limit, backend):
    """on_error=raise stops at the first undecodable image, naming its row and id (with
    backend=device too, where a truncated JPEG is found only when the batch is decoded)."""
    cfg = config(*hostile_parquet, "model.weights=none", "on_error=raise", f"backend={backend}")
    with pytest.raises(UserError, match=r"row 1 \(id truncated.jpg\).*truncated"):
        run.evaluate(cfg, tmp_path / "out")


def test_unknown_labels_are_left_out_of_accuracy(config, tmp_path):
    """Labels -1 and null are scored but not counted; correct_* are null for them."""
    path = tmp_path / "unlabeled.parquet"
    rows: dict[str, list[Any]] = {
        "image": [{"bytes": jpeg(photo(i)), "path": None} for i in range(4)]
    }
    rows["label"] = [-1, None, 5, -1]
    hub_dataset(rows).to_parquet(path)
    cfg = config("dataset=parquet", f"dataset.data_files={path}", "model.weights=none")
    result = run.evaluate(cfg, tmp_path / "out")
    frame = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    assert frame["label"].isna().tolist() == [True, True, False, True]
    assert frame["correct_top1"].isna().tolist() == [True, True, False, True]
    assert frame["id"].isna().all()
    assert (result.row["n_labeled"], result.row["n_scored"]) == (1, 4)


def test_dead_worker_is_an_error_not_a_hang(config, tmp_path, parquet_file, monkeypatch):
    """A DataLoader worker killed mid-run ends the run with one clear error."""

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(transforms, "read_bytes", die)
    cfg = config("dataset=parquet", f"dataset.data_files={parquet_file}", "model.weights=none")
    cfg.num_workers = "1"
    with pytest.raises(UserError, match=r"A data worker died.*output_dir="):
        run.evaluate(cfg, tmp_path / "out")


@pytest.mark.slow
def test_a_run_that_fails_mid_loop_still_exits(tmp_path, parquet_file, repo_root):
    """An error escaping the loop while a DataLoader worker runs ends the process: the worker
    must not outlive it (multiprocessing stops leftover workers with SIGTERM at exit)."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        f"""
        from pipeline import inference, run
        from pipeline.config import Config, DatasetConfig, ModelConfig

        def boom(batch, *args):
            raise RuntimeError("boom")

        inference.launch = boom
        cfg = Config(
            dataset=DatasetConfig(path="parquet", data_files={str(parquet_file)!r}, split="train"),
            model=ModelConfig(weights="none"),
            device="cpu", num_workers="1", batch_size=2, progress=False,
        )
        run.evaluate(cfg, {str(tmp_path / "out")!r})
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=repo_root,
        env={**os.environ, "HF_DATASETS_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "RuntimeError: boom" in proc.stderr


def test_out_of_memory_names_the_batch_size_and_keeps_rows(
    config, tmp_path, parquet_file, monkeypatch
):
    """OOM suggests a smaller batch size; batches scored before it stay committed."""

    real = inference.launch

    def oom_on_second_batch(batch, *args):  # by rows, not call order: streams run concurrently
        if int(batch.index[0]) == 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(batch, *args)

    monkeypatch.setattr(inference, "launch", oom_on_second_batch)
    cfg = config(
        "dataset=parquet",
        f"dataset.data_files={parquet_file}",
        "model.weights=none",
        "commit_rows=1",
        "oom_retry=false",
    )
    with pytest.raises(UserError, match="batch_size=4; try batch_size=2"):
        run.evaluate(cfg, tmp_path / "out")
    parts = sorted(p.name for p in (tmp_path / "out" / "parts").glob("part-*.parquet"))
    assert parts == ["part-000000000000-000000000004.parquet"]
    assert not (tmp_path / "out" / "predictions.parquet").exists()


def test_unwritable_output_fails_before_inference(config, tmp_path, monkeypatch):
    """An output folder that cannot be created fails at once, before any model or data work."""
    monkeypatch.setattr(run, "load_model", lambda *_a, **_k: pytest.fail("loaded the model"))
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError, match="Cannot write to output folder"):
        run.evaluate(config("model.weights=none"), tmp_path / "file" / "out")


def test_dataset_scripts_never_run(tmp_path):
    """A folder holding a dataset loading script is read as data; the script is not executed."""
    root = tmp_path / "evil"
    (root / "cls").mkdir(parents=True)
    (root / "cls" / "a.jpg").write_bytes(GOOD)
    marker = tmp_path / "ran"
    (root / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    with contextlib.suppress(UserError):  # refusing the folder is fine; running the script is not
        load(str(root))
    assert not marker.exists()


PRE = transforms.Preprocess.from_transforms(AlexNet_Weights.IMAGENET1K_V1.transforms())
IDENTITY = LabelSpace("imagenet-1k", "declared", "int64")


def mutated(seed_bytes: bytes):
    return st.lists(
        st.tuples(st.integers(0, len(seed_bytes) - 1), st.integers(0, 255)), max_size=12
    ).map(lambda edits: _apply(seed_bytes, edits))


def _apply(raw: bytes, edits: list[tuple[int, int]]) -> bytes:
    buf = bytearray(raw)
    for pos, value in edits:
        buf[pos] = value
    return bytes(buf)


class RowsTable:
    """The two methods EvalDataset uses of a datasets.Dataset, over plain lists (fast)."""

    def __init__(self, rows: dict[str, list]) -> None:
        self.rows = rows

    def select_columns(self, columns: list[str]) -> RowsTable:
        return RowsTable({c: self.rows[c] for c in columns})

    def __getitem__(self, positions: list[int]) -> dict[str, list]:
        return {c: [v[p] for p in positions] for c, v in self.rows.items()}


SMALL_PNG = encode(photo(8, (48, 32)), "PNG")
SMALL_JPEG = jpeg(photo(9, (48, 32)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=2048),
        mutated(SMALL_JPEG),
        mutated(SMALL_PNG),
        st.binary(max_size=300).map(lambda tail: SMALL_JPEG[:200] + tail),
    )
)
def test_random_and_mutated_bytes_give_one_row_each(raw):
    """Whatever the bytes, the item is either a 224x224 uint8 crop or a short error: no crash."""
    ds = loader.EvalDataset(
        RowsTable({"image": [{"bytes": raw, "path": None}], "label": [1]}),
        positions=range(1), offset=0, image_column="image", label_column="label",
        id_column=None, labels=IDENTITY, preprocess=PRE, roots=Roots(),
    )  # fmt: skip
    (item,) = ds.__getitems__([0])
    assert (item["image"] is None) != (item["error"] is None)
    if item["image"] is not None:
        assert item["image"].shape == (3, 224, 224) and item["image"].dtype == torch.uint8
    else:
        assert 0 < len(item["error"]) <= 200


def test_full_disk_leaves_no_file_that_looks_complete(config, tmp_path, parquet_file, monkeypatch):
    """A write that fails (disk full) is one clear error and leaves no part or temporary file."""
    import errno

    import pyarrow.parquet as pq

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    cfg = config("dataset=parquet", f"dataset.data_files={parquet_file}", "model.weights=none")
    with pytest.raises(UserError, match="No space left on device"):
        run.evaluate(cfg, tmp_path / "out")
    parts = tmp_path / "out" / "parts"
    assert list(parts.iterdir()) == [] and not (tmp_path / "out" / "predictions.parquet").exists()


def test_sigterm_while_decoding_is_a_stop_not_a_bad_image(
    config, tmp_path, parquet_file, monkeypatch
):
    """SIGTERM landing inside a decoder stops the run after that batch; the image it landed
    on is decoded and scored, never recorded as an image error."""

    def term():
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(transforms, "read_bytes", on_call(6, transforms.read_bytes, term))
    cfg = config(
        "dataset=parquet",
        f"dataset.data_files={parquet_file}",
        "model.weights=none",
        "commit_rows=1",
    )
    with pytest.raises(Stopped, match="Stopped by SIGTERM"):
        run.evaluate(cfg, tmp_path / "out")
    parts = sorted((tmp_path / "out" / "parts").glob("part-*.parquet"))
    frame = pd.concat(map(pd.read_parquet, parts))
    assert frame["index"].tolist() == list(range(8)) and frame["error"].isna().all()

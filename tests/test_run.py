"""End to end through the real entry points, against the straightforward reference."""

from __future__ import annotations

import subprocess

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torchvision
from helpers import LABELS, run_cli, snapshot, user_files
from torchvision.models import AlexNet_Weights

from pipeline.labels import imagenet_classes
from pipeline.predictions import schema
from pipeline.run import evaluate


def reference(images, checkpoint) -> torch.Tensor:
    """The loop users write by hand: weights.transforms() + the model, fp32, NCHW."""
    model = torchvision.models.alexnet()
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    x = torch.stack([AlexNet_Weights.IMAGENET1K_V1.transforms()(im) for im in images])
    with torch.no_grad():
        return model.eval()(x).softmax(-1)


def test_predictions_equal_the_reference(config, tmp_path, parquet_file, images, peaked_checkpoint):
    """Same top-5 as the reference loop on the same images; probabilities within float tolerance."""
    cfg = config(
        "dataset=parquet",
        f"dataset.data_files={parquet_file}",
        f"model.weights={peaked_checkpoint}",
    )
    result = evaluate(cfg, tmp_path / "out")
    got = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    probs = reference(images, peaked_checkpoint)
    ref_p, ref_ids = probs.topk(5)
    assert got["index"].tolist() == list(range(len(LABELS)))
    assert np.stack(got["topk"]).tolist() == ref_ids.tolist()
    np.testing.assert_allclose(np.stack(got["topk_prob"]), ref_p.numpy(), rtol=1e-4, atol=1e-6)
    top1 = 100 * np.mean(ref_ids[:, 0].numpy() == np.array(LABELS))
    assert result["top1"] == pytest.approx(top1) and result["n_images"] == len(LABELS)


def test_outputs_follow_the_contract(config, tmp_path, imagefolder):
    """predictions.parquet has the contract schema, a row per image in order; metrics one row."""
    cfg = config("dataset=imagefolder", f"dataset.path={imagefolder}", "model.weights=none")
    evaluate(cfg, tmp_path / "out")
    table = pq.read_table(tmp_path / "out" / "predictions.parquet")
    assert table.schema.equals(schema("int64"))
    frame = table.to_pandas()
    assert frame["index"].tolist() == list(range(len(LABELS)))
    wnids = imagenet_classes()[0]
    folders = frame["id"].str.split("/").str[0]
    assert [wnids[label] for label in frame["label"]] == folders.tolist()  # labels by folder name
    assert sorted(frame["id"].str.split("/").str[1]) == [f"img{i:02d}.jpg" for i in range(12)]
    assert frame["error"].isna().all()
    assert (
        frame["pred_name"].iloc[0]
        == AlexNet_Weights.IMAGENET1K_V1.meta["categories"][frame["pred"].iloc[0]]
    )
    assert (frame["topk"].map(len) == 5).all()
    metrics = pd.read_parquet(tmp_path / "out" / "metrics.parquet")
    assert len(metrics) == 1
    row = metrics.iloc[0]
    assert (row["n_images"], row["n_scored"], row["n_errors"]) == (len(LABELS), len(LABELS), 0)
    assert row["device"] == "cpu" and row["weights"] == "none" and row["batch_size"] == 4
    assert not (tmp_path / "out" / "parts").exists()


def test_limit_scores_the_first_n(config, tmp_path, saved_dir):
    """limit=N scores rows 0..N-1 of the split, here from a save_to_disk folder."""
    cfg = config("dataset=disk", f"dataset.path={saved_dir}", "model.weights=none", "limit=5")
    result = evaluate(cfg, tmp_path / "out")
    assert result["n_images"] == 5
    frame = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    assert frame["label"].tolist() == LABELS[:5]


def test_streaming_run_equals_the_loaded_run(config, tmp_path, parquet_file):
    """dataset.streaming=true writes the same rows, in the same order, as a loaded split."""
    data = ["dataset=parquet", f"dataset.data_files={parquet_file}", "model.weights=none"]
    evaluate(config(*data), tmp_path / "loaded")
    result = evaluate(config(*data, "dataset.streaming=true", "limit=10"), tmp_path / "streamed")
    loaded = pd.read_parquet(tmp_path / "loaded" / "predictions.parquet").head(10)
    streamed = pd.read_parquet(tmp_path / "streamed" / "predictions.parquet")
    pd.testing.assert_frame_equal(
        streamed.drop(columns=["topk", "topk_prob"]), loaded.drop(columns=["topk", "topk_prob"])
    )
    assert np.stack(streamed["topk"]).tolist() == np.stack(loaded["topk"]).tolist()
    assert result["n_images"] == 10


@pytest.mark.slow
def test_cli_runs_the_bundled_sample(repo_root, tmp_path):
    """`python -m pipeline model.weights=none` scores the bundled sample offline, with a
    summary; output_dir holds the run and Hydra's .hydra/ and log too."""
    out = tmp_path / "run"
    proc = run_cli(["model.weights=none", f"output_dir={out}", "num_workers=2"], cwd=repo_root)
    assert proc.returncode == 0, proc.stderr
    assert "top-1" in proc.stdout and "img/s" in proc.stdout
    assert "label space: imagenet-1k" in proc.stdout
    frame = pd.read_parquet(out / "predictions.parquet")
    assert len(frame) == 10 and frame["error"].isna().all()
    assert (out / "metrics.parquet").exists() and (out / "run.json").exists()
    assert (out / ".hydra" / "config.yaml").exists() and (out / "pipeline.log").exists()


EARLY = [  # refused from the command line, in about a second, before Hydra writes anything
    (["dataset=nope"], "dataset=nope is not a config of dataset/; valid: disk, imagefolder"),
    (["dataset=imagenet_val"], "Did you mean 'imagenet-val'?"),
    (["batchsize=8"], "Did you mean 'batch_size'"),
    (["+batchsize=8"], "Unknown config key 'batchsize'. Did you mean 'batch_size'?"),
    (["+foo=1"], "Unknown config key 'foo'"),
    (["batch_size=abc"], "batch_size=abc; it must be an integer"),
    (["limit=1.5"], "limit=1.5; it must be an integer"),
    (["limit=0"], "limit=0 scores nothing"),
    (["backend=cuda"], "backend=cuda; valid: pil, tensor, device"),
    (["dataset=imagefolder"], "dataset.path is required here: add dataset.path=..."),
    (["dataset=disk"], "dataset.path is required here"),
    (["-m", "batch_size=4,abc"], "batch_size=abc; it must be an integer"),
]
LATER = [  # found once the run has started
    (["device=cuda:0"], "CUDA is not available"),
    (["model.weights=/no/such.pth"], "neither a weights name"),
    (["dataset.image_column=img"], "columns present: image, label, id"),
    (["streams=0"], "valid: auto or a count"),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message", "early"),
    [(*case, True) for case in EARLY] + [(*case, False) for case in LATER],
)
def test_cli_mistakes_are_one_line_without_traceback(repo_root, tmp_path, args, message, early):
    """Each user mistake exits with status 2 and one error line saying what is valid, no
    traceback; a mistake on the command line is refused before anything is written."""
    if args == ["device=cuda:0"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "out"
    flags = [a for a in args if a.startswith("-")]
    where = f"hydra.sweep.dir={out}" if "-m" in flags else f"hydra.run.dir={out}"
    rest = [a for a in args if not a.startswith("-")]
    proc = run_cli([*flags, "model.weights=none", *rest, where], cwd=repo_root)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        next(line for line in proc.stderr.splitlines() if message in line)
    ]
    if early:
        assert not out.exists() and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_refuses_a_folder_of_the_users_before_writing_into_it(repo_root, tmp_path):
    """output_dir naming a folder of the user's (or output_dir=. from one, or an empty
    output_dir=) exits 2 in one line naming what is there, before Hydra writes its .hydra/
    and log: every file of the user's is byte-identical afterwards."""
    mine = tmp_path / "mine"
    user_files(mine, {"parts/notes.md": b"my notes", "draft.tmp": b"mine", "a.txt": b"x"})
    before = snapshot(mine)
    for args, cwd in (["output_dir=."], mine), ([f"output_dir={mine}"], repo_root):
        proc = run_cli(["model.weights=none", *args], cwd=cwd)
        assert proc.returncode == 2, proc.stderr
        assert "is not empty and not a run folder of this pipeline" in proc.stderr
        assert "a.txt, draft.tmp, parts" in proc.stderr and "Traceback" not in proc.stderr
        assert snapshot(mine) == before and not (mine / ".hydra").exists()
    proc = run_cli(["model.weights=none", "output_dir="], cwd=mine)
    assert proc.returncode == 2 and "output_dir= is empty" in proc.stderr
    assert snapshot(mine) == before


@pytest.fixture
def unwritable(request, tmp_path):
    """A folder under which outputs/ cannot be made or written, even by root: a read-only
    mount (where this machine lets us mount), or a plain file named outputs in the way."""
    if request.param == "file-in-the-way":
        (tmp_path / "outputs").write_text("a file, not a folder")
        yield tmp_path
        return
    ro = tmp_path / "ro"
    ro.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(ro)]
    mounted = subprocess.run(mount, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.strip()}")
    yield ro
    subprocess.run(["umount", str(ro)], check=False)


@pytest.mark.slow
@pytest.mark.parametrize("unwritable", ["file-in-the-way", "read-only-mount"], indirect=True)
def test_cli_an_unwritable_output_folder_is_one_line(repo_root, unwritable):
    """An output folder that cannot be made or written (output_dir, or Hydra's outputs/
    under the folder the run starts in) exits 2 in one line, without the traceback of
    Hydra's logging set-up."""
    cases = [
        (["model.weights=none", f"output_dir={unwritable}/outputs/run"], repo_root),
        (["model.weights=none"], unwritable),
    ]
    for args, cwd in cases:
        proc = run_cli(args, cwd=cwd)
        assert proc.returncode == 2, proc.stderr
        assert "Cannot write to output folder" in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr

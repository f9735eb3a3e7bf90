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

from pipeline.data.imagenet import imagenet_classes
from pipeline.run import evaluate
from pipeline.runs.predictions import schema


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
    assert result.row["top1"] == pytest.approx(top1) and result.row["n_images"] == len(LABELS)


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
    assert result.row["n_images"] == 5
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
    assert result.row["n_images"] == 10


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
    log = (out / "pipeline.log").read_text()  # what ran, and its summary, as printed
    assert "scoring 10 rows of sample" in log and "top-1" in log and "wrote " in log


EARLY = [  # refused from the command line, in about a second, before Hydra writes anything
    (["dataset=nope"], "dataset=nope is not a config of dataset/. Valid: disk, imagefolder"),
    (["+benchmark=imagenet_c"], "config of benchmark/. Did you mean 'imagenet-c'? Valid: imag"),
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
    (["model=timm", "model.name=null"], "model=timm needs the model's name: model.name=NAME"),
    (["model=hf", "model.name=null"], "model=hf needs the model's name"),
    (["dataset.corrupt=fog:6"], "dataset.corrupt=fog:6; ImageNet-C's severities are 1..5"),
]
LATER = [  # found once the run has started
    (["device=cuda:0"], "CUDA is not available"),
    (["model.weights=/no/such.pth"], "neither a weights name"),
    (["dataset.image_column=img"], "columns present: image, label, id"),
    (["streams=0"], "valid: auto or a count"),
    (["model=timm", "model.name=resnet18", "model.weights=/no/such.pth"],
     "is neither a weights name (pretrained, none) nor an existing file"),
    (["model.arch=hf:/no/such/folder"], "model.arch=hf:/no/such/folder: no such folder"),
]  # fmt: skip


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


def _foreign_run_folder(folder) -> None:
    """Another Hydra app's run folder: its .hydra/ (job name 'train') and its log."""
    user_files(folder, {
        ".hydra/config.yaml": b"lr: 0.1\n",
        ".hydra/hydra.yaml": b"hydra:\n  job:\n    name: train\n",
        "train.log": b"epoch 1\n",
    })  # fmt: skip


@pytest.mark.slow
def test_hydras_own_config_flags_get_every_check(repo_root, tmp_path):
    """With a user's own configs (--config-dir, --config-name) every up-front check still
    runs: a value of the wrong type, another Hydra app's run folder (its .hydra/ left
    byte-identical) and an unwritable folder are each one line, exit 2, nothing written."""
    conf = tmp_path / "conf"
    user_files(conf, {
        "dataset/mine.yaml": b"path: parquet\ndata_files: x.parquet\n",
        "exp.yaml": b"defaults:\n  - config\n  - _self_\nbatch_size: abc\n",
    })  # fmt: skip
    other = tmp_path / "other-app-run"
    _foreign_run_folder(other)
    before = snapshot(other)
    (tmp_path / "file").write_text("in the way")
    out = tmp_path / "out"
    cases = [
        (["-cd", str(conf), "dataset=mine", "batch_size=abc", f"hydra.run.dir={out}"],
         "batch_size=abc; it must be an integer"),
        (["-cd", str(conf), "--config-name", "exp", f"hydra.run.dir={out}"],
         "batch_size=abc; it must be an integer"),
        (["-cd", str(conf), f"output_dir={other}"], "not a run folder of this pipeline"),
        ([f"--config-dir={conf}", f"output_dir={tmp_path}/file/run"],
         "Cannot write to output folder"),
    ]  # fmt: skip
    for args, message in cases:
        proc = run_cli([*args, "model.weights=none"], cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert snapshot(other) == before and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf", "file", "other-app-run"]


@pytest.mark.slow
def test_a_sweep_into_a_users_folder_is_refused_before_writing(repo_root, tmp_path):
    """hydra.sweep.dir naming a folder of the user's own files (a summary.parquet among
    them) is refused in one line before Hydra writes 0/, 1/ or multirun.yaml there."""
    mine = tmp_path / "mine"
    user_files(mine, {"summary.parquet": b"mine", "notes.txt": b"x"})
    before = snapshot(mine)
    args = ["-m", "model.weights=none", "batch_size=2,4", f"hydra.sweep.dir={mine}"]
    proc = run_cli(args, cwd=repo_root)
    assert proc.returncode == 2, proc.stderr
    assert "not a sweep folder of this pipeline (no multirun.yaml): it holds notes.txt, " in (
        proc.stderr
    )
    assert snapshot(mine) == before


@pytest.mark.slow
def test_a_missing_extra_is_one_line_and_leaves_no_folder(repo_root, tmp_path):
    """model=timm where timm is not installed: the one line naming the extra, from the
    command-line check, before Hydra makes the run's outputs/<date>/<time>/ folder."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "import sys\nsys.modules['timm'] = None  # as if never installed\n"
    )
    proc = run_cli(
        ["model=timm", "model.name=resnet18"], cwd=tmp_path, PYTHONPATH=str(tmp_path / "site")
    )
    assert proc.returncode == 2, proc.stderr
    assert "needs timm, which is not installed: pip install 'alexnet-eval[timm]'" in proc.stderr
    assert not (tmp_path / "outputs").exists() and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_timm_says_nothing_of_its_own_before_an_offline_error(repo_root, tmp_path):
    """model=timm offline, its weights not cached: the one error line, and no INFO line of
    timm's before it."""
    proc = run_cli(["model=timm", "model.name=resnet18", f"output_dir={tmp_path}/o"], cwd=repo_root)
    assert proc.returncode == 2, proc.stderr
    assert "not in the Hugging Face cache" in proc.stderr and "timm.models" not in proc.stderr
    assert len((proc.stdout + proc.stderr).strip().splitlines()) == 1, proc.stderr

"""Past one process: shards and merge, resume after a kill, torchrun, Slurm-style sweeps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from helpers import hub_dataset, jpeg, photo, run_cli

from pipeline import run
from pipeline.config import UserError
from pipeline.merge import merge_shards
from pipeline.summarize import summarize

N_BIG = 120


def assert_same_predictions(a, b):
    """Same rows, same order, same classes; probabilities equal to float tolerance."""
    x, y = pd.read_parquet(a), pd.read_parquet(b)
    cols = ["index", "id", "label", "pred", "pred_name", "correct_top1", "correct_top5", "error"]
    pd.testing.assert_frame_equal(x[cols], y[cols])
    assert np.stack(x["topk"]).tolist() == np.stack(y["topk"]).tolist()
    np.testing.assert_allclose(np.stack(x["topk_prob"]), np.stack(y["topk_prob"]), rtol=1e-4)


@pytest.fixture
def big_parquet(tmp_path):
    """A parquet split large enough to kill a run in the middle of it."""
    path = tmp_path / "big.parquet"
    rows = {
        "image": [
            {"bytes": jpeg(photo(i % 17, (96, 80))), "path": f"{i}.jpg"} for i in range(N_BIG)
        ],
        "label": [i % 1000 for i in range(N_BIG)],
    }
    hub_dataset(rows).to_parquet(path)
    return path


def test_shards_merge_into_the_single_run(config, tmp_path, parquet_file):
    """Three shards, merged, equal one run over the whole split, row for row."""
    data = ["dataset=parquet", f"dataset.data_files={parquet_file}", "model.weights=none"]
    run.evaluate(config(*data), tmp_path / "single")
    shards = [tmp_path / f"shard{i}" for i in range(3)]
    for i, d in enumerate(shards):
        run.evaluate(config(*data, f"shard.index={i}", "shard.count=3"), d)
    assert len(pd.read_parquet(shards[0] / "predictions.parquet")) == 4
    result = merge_shards(tmp_path / "merged", list(reversed(shards)))
    assert_same_predictions(
        tmp_path / "merged" / "predictions.parquet", tmp_path / "single" / "predictions.parquet"
    )
    single = pd.read_parquet(tmp_path / "single" / "metrics.parquet").iloc[0]
    assert (result["n_images"], result["top1"]) == (single["n_images"], single["top1"])


def test_merge_refuses_overlap_gaps_and_foreign_shards(config, tmp_path, parquet_file):
    """The merge names what is wrong: a shard twice, a shard missing, a shard of another run."""
    data = ["dataset=parquet", f"dataset.data_files={parquet_file}", "model.weights=none"]
    for i in range(2):
        run.evaluate(config(*data, f"shard.index={i}", "shard.count=2"), tmp_path / f"s{i}")
    run.evaluate(config(*data, "shard.index=1", "shard.count=2", "limit=10"), tmp_path / "other")
    s0, s1, other = tmp_path / "s0", tmp_path / "s1", tmp_path / "other"
    with pytest.raises(UserError, match="overlap at row 12"):
        merge_shards(tmp_path / "m", [s0, s1, s1])
    with pytest.raises(UserError, match=r"Rows cover 0..6, expected 0..12"):
        merge_shards(tmp_path / "m", [s0])
    with pytest.raises(UserError, match=r"different run .*limit"):
        merge_shards(tmp_path / "m", [s0, other])


def test_resume_refuses_other_settings(config, tmp_path, parquet_file):
    """Running into a folder made under other settings fails, naming the difference."""
    data = ["dataset=parquet", f"dataset.data_files={parquet_file}", "model.weights=none"]
    run.evaluate(config(*data, "limit=5"), tmp_path / "out")
    with pytest.raises(UserError, match=r"limit: 5 -> 6"):
        run.evaluate(config(*data, "limit=6"), tmp_path / "out")


def test_finished_run_is_not_redone(config, tmp_path, parquet_file, monkeypatch, capsys):
    """Running again into a finished folder scores nothing and keeps the results."""
    cfg = config("dataset=parquet", f"dataset.data_files={parquet_file}", "model.weights=none")
    first = run.evaluate(cfg, tmp_path / "out")
    monkeypatch.setattr(run, "score_rows", lambda *a, **k: pytest.fail("scored again"))
    again = run.evaluate(cfg, tmp_path / "out")
    assert again["n_images"] == first["n_images"] and "already complete" in capsys.readouterr().out


def start_cli(args, repo_root):
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=repo_root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_parts(parts, proc, count=2, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if len(list(parts.glob("part-*.parquet"))) >= count:
            return
        time.sleep(0.02)
    stderr = proc.stderr.read() if proc.poll() is not None else ""
    pytest.fail(f"no {count} parts appeared (exit {proc.poll()}): {stderr}")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "workers"),
    [(signal.SIGKILL, 0), (signal.SIGTERM, 0), (signal.SIGTERM, 1)],
    ids=["sigkill", "sigterm", "sigterm-to-all-processes"],
)
def test_killed_run_resumes_to_the_uninterrupted_result(
    repo_root, tmp_path, big_parquet, sig, workers
):
    """Killed mid-run (SIGKILL, or Slurm's SIGTERM) then resumed equals an unbroken run."""
    args = [
        "dataset=parquet",
        f"dataset.data_files={big_parquet}",
        "model.weights=none",
        "batch_size=4",
        "commit_rows=8",
        f"num_workers={workers}",
        "progress=false",
    ]
    whole = run_cli([*args, f"output_dir={tmp_path / 'whole'}"], cwd=repo_root)
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "broken"
    proc = start_cli([*args, f"output_dir={out}"], repo_root)
    wait_for_parts(out / "parts", proc)
    os.killpg(proc.pid, sig)  # the process and its workers, as Slurm signals a job step
    _, stderr = proc.communicate(timeout=60)
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM and "Stopped by SIGTERM" in stderr
    assert not (out / "predictions.parquet").exists()
    done = sum(len(pd.read_parquet(p)) for p in (out / "parts").glob("part-*.parquet"))
    assert 0 < done < N_BIG
    resumed = run_cli([*args, f"output_dir={out}"], cwd=repo_root)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_predictions(out / "predictions.parquet", tmp_path / "whole" / "predictions.parquet")
    assert pd.read_parquet(out / "metrics.parquet")["n_images"].iloc[0] == N_BIG


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_two_ranks_equal_one_process(repo_root, tmp_path, parquet_file):
    """torchrun with 2 gloo ranks on CPU writes the same predictions as one process, row for row."""
    args = [
        "dataset=parquet",
        f"dataset.data_files={parquet_file}",
        "model.weights=none",
        "num_workers=0",
        "progress=false",
        "batch_size=3",
    ]
    single = run_cli([*args, f"output_dir={tmp_path / 'one'}"], cwd=repo_root)
    assert single.returncode == 0, single.stderr
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29517",
            "-m",
            "pipeline",
            *args,
            f"output_dir={tmp_path / 'two'}",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_predictions(
        tmp_path / "two" / "predictions.parquet", tmp_path / "one" / "predictions.parquet"
    )
    metrics = pd.read_parquet(tmp_path / "two" / "metrics.parquet").iloc[0]
    assert metrics["world_size"] == 2 and metrics["n_images"] == 12
    assert proc.stdout.count("top-1") == 1  # rank 0 alone reports


@pytest.mark.slow
def test_submitit_local_sweep_and_its_summary(repo_root, tmp_path):
    """A real 2-job sweep through submitit (local) writes both runs; the summary lists both."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            "hydra/launcher=submitit_local",
            "model.weights=none",
            "batch_size=2,5",
            "num_workers=0",
            "progress=false",
            "device=cpu",
            f"hydra.sweep.dir={sweep}",
            "hydra.launcher.timeout_min=5",
        ],
        cwd=repo_root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = summarize(sweep)
    assert table["status"].tolist() == ["done", "done"]
    assert table["batch_size"].tolist() == [2, 5] and (table["n_images"] == 10).all()
    assert (sweep / "summary.parquet").exists()


@pytest.mark.slow
def test_summary_shows_failed_and_unfinished_jobs(repo_root, tmp_path):
    """A failed job shows its error; one with committed rows but no metrics shows unfinished."""
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            "model.weights=none,/no/such.pth",
            "progress=false",
            "num_workers=0",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=repo_root,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]  # the sweep reports its failed job
    (sweep / "0" / "metrics.parquet").unlink()  # as if killed before the end
    (sweep / "0" / "parts").mkdir()
    os.rename(
        sweep / "0" / "predictions.parquet",
        sweep / "0" / "parts" / "part-000000000000-000000000010.parquet",
    )
    table = summarize(sweep)
    assert table["status"].tolist()[0] == "unfinished (10 rows committed)"
    assert table["status"].tolist()[1].startswith("failed: model.weights='/no/such.pth'")
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.summarize", str(sweep)], capture_output=True, text=True
    )
    assert out.returncode == 0 and "unfinished" in out.stdout and "failed" in out.stdout

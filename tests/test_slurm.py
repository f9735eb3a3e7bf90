"""On a real (one-node) Slurm with accounting, started by tests/slurm/cluster.sh (.ci/run
starts it): sweeps as job arrays, time limits that requeue and resume, scancel.

Each job runs `python -m pipeline` exactly as on a cluster: submitted by the Slurm
launcher (or sbatch), signalled by Slurm, requeued by submitit.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import assert_same_predictions, photo_split, run_cli, split_args, uninterrupted

from pipeline import rundir
from pipeline.summarize import summarize

CLUSTER = subprocess.run(
    ["bash", str(Path(__file__).parent / "slurm" / "cluster.sh"), "status"], capture_output=True
)
pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        CLUSTER.returncode != 0,
        reason="no Slurm cluster here: `bash tests/slurm/cluster.sh start` (root, apt) starts one",
    ),
]
LAUNCHER = [
    "hydra/launcher=slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=2",
    "hydra.launcher.mem_gb=4",
]


def slurm(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def test_a_sweep_is_a_job_array_and_summarize_shows_every_job(repo_root, tmp_path):
    """A 3-job sweep through hydra/launcher=slurm: two jobs finish, the one with a missing
    checkpoint fails without stopping them; the sweep exits 1 and summarize names it."""
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            *LAUNCHER,
            "model.weights=none,/no/such.pth",
            "batch_size=4,8",
            "limit=6",
            "num_workers=0",
            "progress=false",
            f"hydra.sweep.dir={sweep}",
            "hydra.launcher.timeout_min=5",
        ],
        cwd=repo_root,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "2 of 4 sweep jobs did not finish" in proc.stderr
    table = summarize(sweep)
    good = table["overrides"].str.contains("model.weights=none")
    assert (table.loc[good, "status"] == "done").all() and good.sum() == 2
    assert table.loc[good, "batch_size"].tolist() == [4, 8]
    failed = table.loc[~good, "status"].tolist()
    assert len(failed) == 2 and all(
        s.startswith("failed: model.weights='/no/such.pth'") for s in failed
    )


def requeue_watch(proc: subprocess.Popen, deadline: float) -> list[str]:
    """While the launcher waits: start every requeued job at once (a requeued job waits
    about 2.5 minutes for its BeginTime: what the test skips, not what it tests)."""
    bumped: list[str] = []
    while proc.poll() is None and time.time() < deadline:
        for line in slurm("squeue", "-h", "-o", "%i %T %r").splitlines():
            job, state, reason = [*line.split(), "", ""][:3]
            if state == "PENDING" and reason == "BeginTime":
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=False)
                bumped.append(job)
        time.sleep(1)
    return bumped


# Slurm's controller checks time limits every 30 s; the warning goes out at the first check
# with less than signal_delay_s + 30 s left, so 30 s early at most (its manual allows 60).
# With timeout_min=1 and 30 s that was the first check after the start, which came 2 s
# after the start in one run of 2 here: before submitit had installed its handler (about
# 3 s after the start), so SIGUSR2 killed the job. With 2 minutes and 45 s the warning
# comes 45 to 75 s after the start (15 s at the very earliest, by the manual). Tasks are
# bound to their CPUs (cluster.sh): on one core a job scored 131-136 images/s here, so
# one attempt scores at most ~10,000 rows, and 24,000 rows take at least 3 attempts even
# on a core 20% faster.
REQUEUE_ROWS = 24_000


@pytest.mark.slow
def test_a_time_limit_requeues_and_the_job_resumes(repo_root, tmp_path_factory, tmp_path):
    """timeout_min=2, signal_delay_s=45: Slurm warns with SIGUSR2, the job commits what it
    scored and submitit requeues it, again and again; the finished predictions equal an
    uninterrupted run's, row for row, and no row was scored twice."""
    n = REQUEUE_ROWS
    split = photo_split(tmp_path_factory.getbasetemp() / "slurm.parquet", n)
    args = [*split_args(split), "batch_size=32", "num_workers=1", "commit_rows=256"]
    whole = tmp_path / "whole"
    # the uninterrupted run, side by side with the job (which has one core of the two)
    baseline = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args, f"output_dir={whole}"],
        cwd=repo_root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HOME": str(tmp_path / "hf")},  # two caches: no race on one
    )
    sweep = tmp_path / "sweep"
    t0 = time.time()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "-m",
            *LAUNCHER,
            *args,
            f"hydra.sweep.dir={sweep}",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.timeout_min=2",
            "hydra.launcher.signal_delay_s=45",
            "hydra.launcher.max_num_timeout=10",
        ],
        cwd=repo_root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    bumped = requeue_watch(proc, time.time() + 900)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]
    assert baseline.wait(timeout=600) == 0, baseline.stderr.read()[-3000:]
    job = sweep / "0"
    assert_same_predictions(job / rundir.PREDICTIONS, whole / rundir.PREDICTIONS)
    log = (job / "pipeline.log").read_text()
    resumed = [int(m) for m in re.findall(r"resuming: (\d+) rows already committed", log)]
    attempts = 1 + len(resumed)
    print(
        f"requeue: {attempts} attempts, rows committed before each resume {resumed}, "
        f"{n} rows, {time.time() - t0:.0f} s, requeued jobs started early: {bumped}"
    )
    assert attempts >= 3, (resumed, log[-3000:])
    assert resumed == sorted(resumed) and resumed[-1] < n


def test_scancel_term_then_a_rerun_finishes_the_folder(repo_root, tmp_path_factory, tmp_path):
    """scancel --signal=TERM reaches the job's processes (workers ignore it, the main one
    commits and stops); a plain rerun into the folder finishes it exactly."""
    split = photo_split(tmp_path_factory.getbasetemp() / "slurm-small.parquet", 1200)
    args = [*split_args(split), "num_workers=1"]
    whole = uninterrupted(args, tmp_path_factory.getbasetemp() / "slurm-small-whole")
    out = tmp_path / "run"
    command = " ".join([sys.executable, "-m", "pipeline", *args, f"output_dir={out}"])
    job = slurm(
        "sbatch",
        "--parsable",
        "-c",
        "2",
        "-o",
        str(tmp_path / "job.log"),
        f"--chdir={repo_root}",
        "--wrap",
        f"srun {command}",
    ).strip()
    deadline = time.time() + 300
    while len(rundir.list_parts(out / rundir.PARTS)) < 3 and time.time() < deadline:
        time.sleep(0.2)
    slurm("scancel", "--signal=TERM", job)
    while "RUNNING" in slurm("squeue", "-h", "-j", job, "-o", "%T") and time.time() < deadline:
        time.sleep(0.5)
    log = (tmp_path / "job.log").read_text()
    assert "Stopped by SIGTERM; rows scored so far are committed" in log, log[-3000:]
    assert 0 < rundir.committed_rows(out) < 1200 and not (out / rundir.METRICS).exists()
    rerun = run_cli([*args, f"output_dir={out}"], cwd=repo_root)
    assert rerun.returncode == 0, rerun.stderr
    assert_same_predictions(out / rundir.PREDICTIONS, whole)

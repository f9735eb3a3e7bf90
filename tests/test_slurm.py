"""On a real (one-node) Slurm with accounting, started by tests/slurm/cluster.sh (.ci/run
starts it): shard sweeps as job arrays that merge themselves, jobs of several tasks
(ranks from Slurm), time limits that requeue and resume, scancel.

Each job runs `python -m pipeline` exactly as on a cluster: submitted by the Slurm
launcher (or sbatch), signalled by Slurm, requeued by submitit.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers import (
    assert_same_predictions,
    hub_dataset,
    jpeg,
    photo,
    photo_split,
    run_cli,
    split_args,
    uninterrupted,
)

from pipeline.reports.sweep import summarize
from pipeline.runs import claims, parts

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
TWO_TASKS = ["hydra.launcher.tasks_per_node=2", "hydra.launcher.cpus_per_task=1"]


def slurm(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def task_logs(sweep: Path) -> str:
    """Everything the tasks of a sweep's Slurm jobs printed."""
    return "".join(p.read_text() for p in sorted((sweep / ".submitit").glob("*/*_log.*")))


def test_a_shard_sweep_is_a_job_array_that_merges_itself(repo_root, tmp_path_factory, tmp_path):
    """A 3-shard sweep through hydra/launcher=slurm is a job array; one shard fails (its
    folder holds a run of other settings) without stopping the others, the sweep exits 1
    and names it, summarize records why; rerun into the same sweep folder, only that shard
    is scored and the merged folder equals one run over the split."""
    split = photo_split(tmp_path_factory.getbasetemp() / "slurm-array.parquet", 240)
    args = [*split_args(split), "num_workers=0"]
    whole = uninterrupted(args, tmp_path_factory.getbasetemp() / "slurm-array-whole")
    other = tmp_path / "other"
    uninterrupted([*args, "limit=10"], other)
    sweep = tmp_path / "sweep"
    (sweep / "1").mkdir(parents=True)
    shutil.copy(other / claims.RUN_FILE, sweep / "1" / claims.RUN_FILE)
    command = ["-m", *LAUNCHER, *args, "shard.index=0,1,2", "shard.count=3"]
    command += [f"hydra.sweep.dir={sweep}", "hydra.launcher.timeout_min=5"]
    first = run_cli(command, cwd=repo_root)
    assert first.returncode == 1, first.stderr[-3000:]
    assert "1 of 3 sweep jobs did not finish" in first.stderr
    assert "shards 1 (job 1) did not finish" in first.stdout
    status = summarize(sweep)["status"].tolist()
    assert status[0] == status[2] == "done"
    assert status[1].startswith("failed: ") and "holds a run made under other settings" in status[1]
    shutil.rmtree(sweep / "1")
    again = run_cli(command, cwd=repo_root)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "merged 3 shards" in again.stdout
    assert_same_predictions(sweep / "merged" / claims.PREDICTIONS, whole)


def test_two_tasks_in_one_job_score_each_row_once(repo_root, tmp_path_factory, tmp_path):
    """A job of 2 tasks (tasks_per_node=2; gloo on CPU) is one run of 2 ranks that read
    their ranks from Slurm: half the rows each, one folder equal to a single-process run,
    and no traceback or lock error from either task."""
    split = photo_split(tmp_path_factory.getbasetemp() / "slurm-ranks.parquet", 1200)
    args = [*split_args(split), "num_workers=0", "commit_rows=64"]
    whole = uninterrupted(args, tmp_path_factory.getbasetemp() / "slurm-ranks-whole")
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *LAUNCHER, *TWO_TASKS, *args, f"hydra.sweep.dir={sweep}"], cwd=repo_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_predictions(sweep / "0" / claims.PREDICTIONS, whole)
    log = (sweep / "0" / "pipeline.log").read_text()  # both tasks log into the job's log
    shares = sorted(re.findall(r"rank (\d) of 2 scores (\d+) rows", log))
    logs = task_logs(sweep) + log
    print("rows per rank:", shares)
    assert shares == [("0", "600"), ("1", "600")]
    assert "Traceback" not in logs and "in use by another run" not in logs
    assert claims.read_plan(sweep / "0").runtime.world_size == 2


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
# comes 45 to 75 s after the start (15 s at the very earliest, by the manual).
#
# How many rows an attempt scores depends on the machine: 131-136 images/s on one core of
# this EPYC, about 45 on a busy AVX2-only one, where a fixed 47,872 rows needed 11
# attempts. So the split is sized from this machine's rate, measured first on one bound
# core as Slurm binds each task (cluster.sh): at most 2 tasks x 75 s a try, and the split
# REQUEUE_TRIES times that, so at least 3 attempts even at 1.25x the measured rate; the
# requeues allowed and the watch are set by time, not by an assumed speed.
PERIOD = 17 * 32  # the split repeats every 544 rows: 17 images, labels of period 544
LATEST_WARNING_S, REQUEUE_TRIES = 75, 2.5
WATCH_S = 1800  # the launcher's wait: ~80 s an attempt; a machine slowing down gets more


def requeue_rows(args: list[str], repo_root: Path, tmp_path: Path) -> int:
    """The split's size for the time-limit test: this machine's one-core rate (a bound
    process scoring two periods), times 2 tasks, the latest warning and REQUEUE_TRIES, in
    whole periods."""
    out = tmp_path / "rate"
    command = [sys.executable, "-m", "pipeline", *args, f"limit={2 * PERIOD}", f"output_dir={out}"]
    core = min(os.sched_getaffinity(0))
    subprocess.run(command, cwd=repo_root, check=True, capture_output=True,
                   preexec_fn=lambda: os.sched_setaffinity(0, {core}))  # fmt: skip
    rate = float(pd.read_parquet(out / claims.METRICS)["images_per_sec"].iloc[0])
    most = 2 * rate * LATEST_WARNING_S  # rows two tasks can score before the warning
    return PERIOD * math.ceil(REQUEUE_TRIES * most / PERIOD)


def periodic_split(path: Path, n: int) -> Path:
    """n rows of 17 photo-like JPEGs whose labels repeat every PERIOD rows: its predictions
    are an uninterrupted run's over its first PERIOD rows, repeated (built once)."""
    if not path.exists():
        encoded = [jpeg(photo(seed, (96, 80))) for seed in range(17)]
        rows: dict[str, list[Any]] = {
            "image": [{"bytes": encoded[i % 17], "path": f"{i}.jpg"} for i in range(n)],
            "label": [(i % PERIOD) * 7 % 1000 for i in range(n)],
        }
        hub_dataset(rows).to_parquet(path)
    return path


def repeated(one_period: Path, n: int, out: Path) -> Path:
    """The predictions of n rows of a periodic split, from those of its first period."""
    frame = pd.read_parquet(one_period)
    whole = pd.concat([frame] * (n // PERIOD), ignore_index=True)
    whole["index"] = range(n)
    whole["id"] = [f"{i}.jpg" for i in range(n)]
    whole.to_parquet(out, index=False)
    return out


@pytest.mark.slow
def test_a_time_limit_requeues_a_two_task_job_and_it_resumes(repo_root, tmp_path_factory, tmp_path):
    """timeout_min=2, signal_delay_s=45, two tasks, a split sized from this machine's rate:
    Slurm warns every task with SIGUSR2, every rank commits what it scored, rank 0 hands
    the signal to submitit, which requeues the job, again and again (at least 3 attempts);
    the finished predictions equal an uninterrupted run's, row for row, and no row was
    scored twice."""
    probe = periodic_split(
        tmp_path_factory.getbasetemp() / "slurm-periodic-probe.parquet", 2 * PERIOD
    )
    settings = ["batch_size=32", "num_workers=0", "commit_rows=256"]
    n = requeue_rows([*split_args(probe), *settings], repo_root, tmp_path)
    split = periodic_split(tmp_path_factory.getbasetemp() / f"slurm-periodic-{n}.parquet", n)
    args = [*split_args(split), *settings]
    period = uninterrupted([*args, f"limit={PERIOD}"], tmp_path / "one-period")
    sweep = tmp_path / "sweep"
    t0 = time.time()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "-m",
            *LAUNCHER,
            *TWO_TASKS,
            *args,
            f"hydra.sweep.dir={sweep}",
            "hydra.launcher.timeout_min=2",
            "hydra.launcher.signal_delay_s=45",
            f"hydra.launcher.max_num_timeout={WATCH_S // 60}",  # requeues: the watch decides
        ],
        cwd=repo_root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    bumped = requeue_watch(proc, time.time() + WATCH_S)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]
    job = sweep / "0"
    assert_same_predictions(
        job / claims.PREDICTIONS, repeated(period, n, tmp_path / "whole.parquet")
    )
    log = (job / "pipeline.log").read_text()
    resumed = [int(m) for m in re.findall(r"resuming: (\d+) rows already committed", log)]
    attempts = 1 + len(resumed)
    print(
        f"requeue: {attempts} attempts, rows committed before each resume {resumed}, "
        f"{n} rows, {time.time() - t0:.0f} s, requeued jobs started early: {bumped}"
    )
    assert attempts >= 3, (resumed, log[-3000:])
    assert resumed == sorted(resumed) and resumed[-1] < n
    assert "Traceback" not in task_logs(sweep)


def test_scancel_term_stops_every_task_and_one_process_finishes(
    repo_root, tmp_path_factory, tmp_path
):
    """scancel --signal=TERM reaches both tasks of a job (workers ignore it, each rank
    commits and stops); a plain one-process rerun into the folder finishes it exactly."""
    split = photo_split(tmp_path_factory.getbasetemp() / "slurm-small.parquet", 2400)
    args = [*split_args(split), "num_workers=0"]
    whole = uninterrupted(args, tmp_path_factory.getbasetemp() / "slurm-small-whole")
    out = tmp_path / "run"
    command = " ".join([sys.executable, "-m", "pipeline", *args, f"output_dir={out}"])
    job = slurm(
        "sbatch",
        "--parsable",
        "-n",
        "2",
        "-c",
        "1",
        "-o",
        str(tmp_path / "job.log"),
        f"--chdir={repo_root}",
        "--wrap",
        f"srun {command}",
    ).strip()
    deadline = time.time() + 300
    while len(parts.list_parts(out / claims.PARTS)) < 6 and time.time() < deadline:
        time.sleep(0.2)
    slurm("scancel", "--signal=TERM", job)
    while "RUNNING" in slurm("squeue", "-h", "-j", job, "-o", "%T") and time.time() < deadline:
        time.sleep(0.5)
    log = (tmp_path / "job.log").read_text()
    assert log.count("Stopped by SIGTERM; rows scored so far are committed") == 2, log[-3000:]
    assert 0 < parts.committed_rows(out) < 2400 and not (out / claims.METRICS).exists()
    rerun = run_cli([*args, f"output_dir={out}"], cwd=repo_root)
    assert rerun.returncode == 0, rerun.stderr
    assert_same_predictions(out / claims.PREDICTIONS, whole)

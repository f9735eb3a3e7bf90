"""Past one process, with real processes: kills at random moments, two runs at once, torchrun
ranks, Ctrl-C, sweeps that go on past a failed job."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import assert_same_predictions, photo_split, run_cli, split_args, uninterrupted

from pipeline import run, scoring
from pipeline.errors import UserError
from pipeline.reports.sweep import summarize
from pipeline.runs import claims, parts, predictions

N_BIG = 320


@pytest.fixture
def big_parquet(tmp_path_factory):
    """A split large enough to interrupt a run in the middle of it (built once)."""
    return photo_split(tmp_path_factory.getbasetemp() / "big.parquet", N_BIG)


@pytest.fixture
def big_args(big_parquet):
    return split_args(big_parquet)


@pytest.fixture
def big_whole(big_args, tmp_path_factory):
    """The uninterrupted run of the big split (in process; computed once)."""
    return uninterrupted(big_args, tmp_path_factory.getbasetemp() / "big-whole")


def test_resume_compares_what_changes_results_not_names(
    config, tmp_path, imagefolder, peaked_checkpoint, capsys
):
    """A byte-identical checkpoint at another path, and dataset.classes listing the very
    folder names the run read, are the same run (the sha256 and the resolved label map
    count; a path and how labels were given are runtime); other weights are refused."""
    import shutil

    import torch

    data = ["dataset=imagefolder", f"dataset.path={imagefolder}"]
    out = tmp_path / "out"
    run.evaluate(config(*data, f"model.weights={peaked_checkpoint}"), out)
    copy = tmp_path / "elsewhere" / "copy.pth"
    copy.parent.mkdir()
    shutil.copy(peaked_checkpoint, copy)
    names = ",".join(sorted(p.name for p in imagefolder.iterdir()))
    capsys.readouterr()
    run.evaluate(config(*data, f"model.weights={copy}", f"dataset.classes=[{names}]"), out)
    assert "already complete" in capsys.readouterr().out
    other = tmp_path / "other.pth"
    state = torch.load(peaked_checkpoint, weights_only=True)
    state["classifier.6.bias"] += 1
    torch.save(state, other)
    with pytest.raises(UserError, match=r"other settings \(weights_sha256: '[0-9a-f]{64}' -> "):
        run.evaluate(config(*data, f"model.weights={other}"), out)


def test_finished_run_is_not_redone(config, tmp_path, parquet_file, monkeypatch, capsys):
    """Running again into a finished folder scores nothing and keeps the results."""
    cfg = config("dataset=parquet", f"dataset.data_files={parquet_file}", "model.weights=none")
    first = run.evaluate(cfg, tmp_path / "out")
    monkeypatch.setattr(scoring, "score_rows", lambda *a, **k: pytest.fail("scored again"))
    again = run.evaluate(cfg, tmp_path / "out")
    assert (
        again.row["n_images"] == first.row["n_images"]
        and "already complete" in capsys.readouterr().out
    )


def start_cli(args, repo_root, *prefix, env=None):
    return subprocess.Popen(
        [*(prefix or [sys.executable, "-m", "pipeline"]), *args],
        cwd=repo_root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", **(env or {})},
    )


# A run that, after each part it commits, waits until a file exists: the moment a test
# needs (a run in progress) held however fast the machine scores.
HOLD = """import os, sys, time
sys.path.insert(0, {repo!r})
from pipeline.runs.folder import RunFolder
_commit = RunFolder.commit_part
def _held(self, table):
    _commit(self, table)
    while not os.path.exists({gate!r}):
        time.sleep(0.05)
RunFolder.commit_part = _held
"""


def held_after_each_part(tmp_path, repo_root) -> tuple[dict[str, str], Path]:
    """The environment of a run held after each committed part, and the file that lets it
    go on."""
    site, gate = tmp_path / "hold", tmp_path / "go"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HOLD.format(repo=str(repo_root), gate=str(gate)))
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path}, gate


def wait_for_parts(folder, proc, count=2, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if len(list(folder.glob("part-*.parquet"))) >= count:
            return
        time.sleep(0.02)
    stderr = proc.stderr.read() if proc.poll() is not None else ""
    pytest.fail(f"no {count} parts appeared (exit {proc.poll()}): {stderr}")


def interrupt_at_random(proc, folder, rng) -> str:
    """Wait for a random moment of a run (its start-up, or just after its k-th new part is
    committed), then return when; what counts is the moment, not the clock."""
    if rng.random() < 0.3:
        time.sleep(rng.uniform(0.2, 3.0))  # imports, config, dataset or model loading
        return "start-up"
    target = len(list(folder.glob("part-*.parquet"))) + rng.randint(1, 4)
    while proc.poll() is None and len(list(folder.glob("part-*.parquet"))) < target:
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.3))  # somewhere in the next batches
    return f"after part {target}"


@pytest.mark.slow
def test_a_storm_of_interruptions_then_one_plain_run(repo_root, tmp_path, big_args, big_whole):
    """Several runs of one folder, each cut at a random moment by SIGTERM, SIGINT or SIGKILL
    (to the whole process group, as Slurm and a terminal send them), then a committed part
    damaged, then one plain run: its predictions equal an uninterrupted run's, row for row."""
    rng = random.Random(7)
    out = tmp_path / "storm"
    args = [*big_args, "num_workers=1", f"output_dir={out}"]
    seen = []
    for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        proc = start_cli(args, repo_root)
        when = interrupt_at_random(proc, out / "parts", rng)
        os.killpg(proc.pid, sig)
        _, stderr = proc.communicate(timeout=120)
        seen.append((sig.name, when, proc.returncode, parts.committed_rows(out)))
        assert proc.returncode != 0, f"a run finished before its interruption: {seen}"
        if sig != signal.SIGKILL:
            assert proc.returncode == 128 + sig, stderr
            assert "Traceback" not in stderr, stderr
            hint, early = f"output_dir={out}", "Interrupted: exiting. Committed rows are kept."
            assert hint in stderr or early in stderr, stderr
    assert any(0 < committed < N_BIG for *_, committed in seen), seen  # cut mid-run
    files = sorted((out / "parts").glob("part-*.parquet"))
    files[len(files) // 2].write_bytes(files[len(files) // 2].read_bytes()[:100])  # damaged
    final = run_cli(args, cwd=repo_root)
    assert final.returncode == 0, final.stderr
    assert "damaged part" in final.stdout + final.stderr  # Hydra logs to stdout
    assert_same_predictions(out / claims.PREDICTIONS, big_whole)
    assert pd.read_parquet(out / claims.METRICS)["n_images"].iloc[0] == N_BIG
    print("storm:", seen)


@pytest.mark.slow
def test_ctrl_c_once_stops_with_a_hint_twice_exits_at_once(repo_root, tmp_path, big_args):
    """One Ctrl-C: the batches in flight land, one line with the resume hint, exit 130, no
    traceback. Two: exit at once; the committed parts are still whole."""
    out = tmp_path / "once"
    proc = start_cli([*big_args, f"output_dir={out}"], repo_root)
    wait_for_parts(out / "parts", proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert (
        f"Stopped by SIGINT; rows scored so far are committed. Run again with output_dir={out}"
        in stderr
    )
    assert "Traceback" not in stderr
    out = tmp_path / "twice"
    slow = [*big_args, "batch_size=48", "commit_rows=48"]  # a stop then takes ~1 s to land
    proc = start_cli([*slow, f"output_dir={out}"], repo_root)
    wait_for_parts(out / "parts", proc, count=1)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.1)  # two signals sent at once would merge into one
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Interrupted twice" in stderr, stderr
    found = parts.list_parts(out / "parts")
    assert found and all(
        parts.why_damaged(p.path, p.first, p.stop, predictions.schema()) is None for p in found
    )


@pytest.mark.slow
def test_two_runs_into_one_folder(repo_root, tmp_path, big_args):
    """A second run into a folder in use fails at once naming the first's pid; the first
    finishes, and the loser leaves nothing in the folder. The first is held after its first
    part until the second has run: on a fast machine it would otherwise finish first."""
    out = tmp_path / "shared"
    env, gate = held_after_each_part(tmp_path, repo_root)
    first = start_cli([*big_args, f"output_dir={out}"], repo_root, env=env)
    wait_for_parts(out / "parts", first, count=1)
    second = run_cli([*big_args, f"output_dir={out}"], cwd=repo_root)
    assert first.poll() is None, "the first run was not held"
    gate.touch()
    assert second.returncode == 2, second.stderr
    assert f"is in use by another run (pid {first.pid} on" in second.stderr
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert not (out / claims.ERROR_FILE).exists()
    assert pd.read_parquet(out / claims.METRICS)["n_images"].iloc[0] == N_BIG


def torchrun(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={port}",
        "-m",
        "pipeline",
    ]


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
        [*torchrun(29517), *args, f"output_dir={tmp_path / 'two'}"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert_same_predictions(
        tmp_path / "two" / claims.PREDICTIONS, tmp_path / "one" / claims.PREDICTIONS
    )
    metrics = pd.read_parquet(tmp_path / "two" / claims.METRICS).iloc[0]
    assert metrics["world_size"] == 2 and metrics["n_images"] == 12
    assert proc.stdout.count("top-1") == 1  # rank 0 alone reports


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_stopped_then_finished_by_one_process(repo_root, tmp_path, big_args, big_whole):
    """A 2-rank torchrun stopped by SIGTERM commits each rank's rows; one plain process then
    scores exactly the rest, and the result equals an uninterrupted run."""
    out = tmp_path / "ranks"
    proc = start_cli([*big_args, "num_workers=0", f"output_dir={out}"], repo_root, *torchrun(29518))
    wait_for_parts(out / "parts", proc, count=3)
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0 and not (out / claims.METRICS).exists()
    assert "Stopped by SIGTERM" in stderr, stderr[-3000:]  # torchrun's agent adds its own trace
    assert "pipeline/" not in stderr.replace("-m pipeline", ""), stderr[-3000:]
    committed = parts.committed_rows(out)
    assert 0 < committed < N_BIG
    final = run_cli([*big_args, f"output_dir={out}"], cwd=repo_root)
    assert final.returncode == 0, final.stderr
    assert_same_predictions(out / claims.PREDICTIONS, big_whole)


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
    assert table["top1_ci95"].tolist() == ["[0.00, 27.75]"] * 2  # Wilson, 0 of 10
    assert (sweep / "summary.parquet").exists()


@pytest.mark.slow
def test_a_sweep_whose_first_job_fails_runs_the_rest(repo_root, tmp_path):
    """The first job's failure is recorded in its folder and the next job runs; the sweep
    prints its table and exits non-zero naming how many jobs failed."""
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            "model.weights=/no/such.pth,none",
            "progress=false",
            "num_workers=0",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=repo_root,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "1 of 2 sweep jobs did not finish" in proc.stderr
    assert "Traceback" not in proc.stderr
    table = summarize(sweep)
    assert table["status"].tolist()[0].startswith("failed: model.weights='/no/such.pth'")
    assert table["status"].tolist()[1] == "done"
    assert "failed: model.weights" in proc.stdout  # the table, printed at the end
    (sweep / "1" / claims.METRICS).unlink()  # as if killed before the end
    (sweep / "1" / "parts").mkdir()
    os.rename(
        sweep / "1" / claims.PREDICTIONS,
        sweep / "1" / "parts" / parts.PART_NAME.format(0, 10),
    )
    assert summarize(sweep)["status"].tolist()[1] == "unfinished (10 rows committed)"
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.summarize", str(sweep)], capture_output=True, text=True
    )
    assert out.returncode == 0 and "unfinished" in out.stdout and "failed" in out.stdout


@pytest.mark.slow
def test_a_merge_killed_at_any_moment_is_finished_by_running_it_again(
    config, repo_root, tmp_path, big_args, big_whole
):
    """`python -m pipeline.merge` killed (SIGKILL, SIGTERM) just after predictions.parquet
    lands and at random moments is finished by running it again: the target is a run
    folder like any other, equal row for row to an uninterrupted run."""
    shards = [tmp_path / f"s{i}" for i in range(3)]
    for i, shard in enumerate(shards):
        run.evaluate(config(*big_args, f"shard.index={i}", "shard.count=3"), shard)
    target = tmp_path / "merged"
    merge = [sys.executable, "-m", "pipeline.merge", str(target), *map(str, shards)]
    rng, seen = random.Random(11), []
    for k, sig in enumerate((signal.SIGKILL, signal.SIGTERM, signal.SIGKILL, signal.SIGTERM)):
        proc = subprocess.Popen(
            merge, cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        if k == 0:  # the bad moment: predictions written, metrics not yet
            while proc.poll() is None and not (target / claims.PREDICTIONS).exists():
                time.sleep(0.001)
        else:
            time.sleep(rng.uniform(0.0, 2.5))
        proc.send_signal(sig)
        proc.communicate(timeout=60)
        state = sorted(p.name for p in target.iterdir()) if target.exists() else []
        seen.append((sig.name, proc.returncode, state))
    assert claims.PREDICTIONS in seen[0][2] and claims.METRICS not in seen[0][2], seen
    final = subprocess.run(merge, cwd=repo_root, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert_same_predictions(target / claims.PREDICTIONS, big_whole)
    assert pd.read_parquet(target / claims.METRICS)["n_images"].iloc[0] == N_BIG
    record = (target / claims.RUN_FILE).stat().st_mtime_ns
    again = subprocess.run(merge, cwd=repo_root, capture_output=True, text=True)
    assert again.returncode == 0 and "already holds this merge" in again.stdout
    assert again.stdout.count("\n") == 1  # the one line, and run.json not written again
    assert (target / claims.RUN_FILE).stat().st_mtime_ns == record
    print("merge kills:", seen)


SLURM_STEP = {  # what srun sets in each task of a step (seen on the one-node cluster)
    "SLURM_JOB_ID": "20",
    "SLURM_STEP_ID": "0",
    "SLURM_STEP_NUM_TASKS": "8",
    "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
    "SLURM_STEP_NODELIST": "gpu[07-08]",
    "SLURM_NODEID": "1",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
    "SLURM_NTASKS": "8",
}


def test_ranks_come_from_torchrun_or_from_the_tasks_of_a_slurm_step():
    """srun's tasks are ranks (the master is the step's first node); torchrun's variables
    win where both are set (torchrun started inside a job); a batch script, which is no
    step, is one process whatever --ntasks the job asked for."""
    from pipeline import distributed

    slurm = distributed.launch(SLURM_STEP)
    assert (slurm.rank, slurm.world, slurm.local_rank, slurm.by) == (5, 8, 1, "slurm")
    assert slurm.master == ("gpu07", 20020)
    inside = SLURM_STEP | {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "3",
        "LOCAL_WORLD_SIZE": "4",
    }
    torchrun = distributed.launch(inside)
    assert (torchrun.rank, torchrun.world, torchrun.sharing, torchrun.by) == (3, 4, 4, "torchrun")
    assert torchrun.master is None
    batch = {k: v for k, v in SLURM_STEP.items() if not k.startswith("SLURM_STEP")}
    assert distributed.launch(batch) == distributed.Launch()
    assert distributed.launch(SLURM_STEP | {"MASTER_PORT": "1234"}).master == ("gpu07", 1234)


@pytest.mark.parametrize(
    ("nodelist", "first"),
    [("vm", "vm"), ("gpu[07-09,12],cpu3", "gpu07"), ("a-b[1-2]-x,c", "a-b1-x"), ("n[3]", "n3")],
)
def test_the_first_host_of_a_slurm_node_list(nodelist, first):
    """The ranks meet on the first node of the step, in Slurm's compressed notation too."""
    from pipeline import distributed

    assert distributed.first_host(nodelist) == first


def test_slurm_tasks_per_node():
    """Slurm's tasks per node, repetitions included, node by node."""
    from pipeline import distributed

    assert distributed.tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert distributed.tasks_per_node("8") == [8]
    with pytest.raises(UserError, match="is not Slurm's form"):
        distributed.tasks_per_node("two")


@pytest.mark.slow
def test_a_shard_sweep_merges_itself_and_a_rerun_finishes_the_missing_shard(
    repo_root, tmp_path, big_args, big_whole
):
    """`-m shard.index=0,1,2 shard.count=3` ends with SWEEP/merged, equal to one run over
    the split. With one shard refused (its folder holds a run of other settings), the sweep
    names it and exits 1; rerun into the same sweep folder, only that shard is scored and
    the merge follows. (A user's own file there refuses the whole sweep folder up front:
    test_run's test_a_sweep_into_a_users_folder_is_refused_before_writing.)"""
    import shutil

    other = uninterrupted([*big_args, "limit=10"], tmp_path / "other")
    sweep = tmp_path / "sweep"
    (sweep / "1").mkdir(parents=True)
    shutil.copy(other.parent / claims.RUN_FILE, sweep / "1" / claims.RUN_FILE)
    args = ["-m", *big_args, "shard.index=0,1,2", "shard.count=3", f"hydra.sweep.dir={sweep}"]
    first = run_cli(args, cwd=repo_root)
    assert first.returncode == 1, first.stderr[-3000:]
    assert "shards 1 (job 1) did not finish" in first.stdout and not (sweep / "merged").exists()
    assert f"rerun the sweep with hydra.sweep.dir={sweep}" in first.stdout
    shutil.rmtree(sweep / "1")
    again = run_cli(args, cwd=repo_root)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already complete" in again.stdout and "merged 3 shards" in again.stdout
    assert_same_predictions(sweep / "merged" / claims.PREDICTIONS, big_whole)
    assert claims.read_plan(sweep / "merged").versions.merged_shards == 3

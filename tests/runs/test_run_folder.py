"""The run folder protocol, in process: any interruption, any parts, one rerun finishes it."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import (
    assert_same_predictions,
    hub_dataset,
    jpeg,
    photo,
    photo_split,
    snapshot,
    split_args,
    uninterrupted,
    user_files,
)

from pipeline import inference, run
from pipeline.errors import UserError
from pipeline.runs import claims, durable, folder, parts, predictions
from pipeline.runs.merge import merge_shards
from pipeline.runs.parts import Part, cover
from pipeline.stop import Stopped

N = 40


@pytest.fixture(scope="module")
def forty(tmp_path_factory):
    """A 40-image split and its uninterrupted run (scored once for the whole module)."""
    return photo_split(tmp_path_factory.mktemp("forty") / "forty.parquet", N, (64, 48))


@pytest.fixture
def args(forty):
    return split_args(forty)


@pytest.fixture
def whole(args, tmp_path_factory):
    return uninterrupted(args, tmp_path_factory.getbasetemp() / "forty-whole")


def test_cover_takes_each_row_once_and_finds_every_gap():
    """Parts of any sizes, with overlaps and gaps anywhere: each row from one part, the rest
    missing (an open end when the split's length is unknown)."""
    found = [
        Part(0, 8, Path("a")),
        Part(4, 12, Path("b")),
        Part(20, 24, Path("c")),
        Part(22, 23, Path("d")),
    ]
    c = cover(found, 0, 30)
    assert [(p.path.name, a, b) for p, a, b in c.segments] == [
        ("a", 0, 8),
        ("b", 8, 12),
        ("c", 20, 24),
    ]
    assert c.missing == [(12, 20), (24, 30)]
    assert cover(found, 2, 10).missing == [] and cover([], 5, 9).missing == [(5, 9)]
    assert cover(found, 0, None).missing == [(12, 20), (24, None)]
    assert parts.rows_of(c.missing) == 14 and parts.rows_of([(3, None)]) is None


def signal_at(monkeypatch, where: str, signum: int, nth: int = 2) -> None:
    """Deliver `signum` to this process at the nth call of one step of landing or committing."""
    targets = {
        "before-land": (inference.Landing, "land_oldest"),
        "before-add": (predictions.PredictionWriter, "add"),
        "inside-commit": (pq, "write_table"),  # after it: the part is written, not renamed
        "after-commit": (folder.RunFolder, "commit_part"),
    }
    owner, name = targets[where]
    real = getattr(owner, name)
    calls = []
    after = where in ("inside-commit", "after-commit")

    def wrapper(*a, **k):
        calls.append(1)
        if not after and len(calls) == nth:
            os.kill(os.getpid(), signum)
        out = real(*a, **k)
        if after and len(calls) == nth:
            os.kill(os.getpid(), signum)
        return out

    monkeypatch.setattr(owner, name, wrapper)


@pytest.mark.parametrize("where", ["before-land", "before-add", "inside-commit", "after-commit"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_at_any_point_of_landing_is_resumed_exactly(
    config, args, tmp_path, whole, monkeypatch, where, signum
):
    """A signal at each step of landing and committing a batch stops the run cleanly (exit
    code 128+signal, the resume hint); the rerun scores only the rest and equals an
    uninterrupted run row for row."""
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        signal_at(m, where, signum)
        with pytest.raises(Stopped) as stopped:
            run.evaluate(config(*args), out)
    assert stopped.value.exit_code == 128 + signum
    assert f"output_dir={out}" in str(stopped.value)
    committed = parts.committed_rows(out)
    assert 0 < committed < N and not (out / claims.PREDICTIONS).exists()
    launched: list[int] = []
    monkeypatch.setattr(inference, "launch", counting(inference.launch, launched))
    run.evaluate(config(*args), out)
    assert sum(launched) == N - committed  # exactly the missing rows
    assert_same_predictions(out / claims.PREDICTIONS, whole)


def counting(real, counts):
    def wrapper(batch, *a):
        counts.append(len(batch.index))
        return real(batch, *a)

    return wrapper


def test_parts_with_gaps_overlaps_and_damage_are_finished_exactly(
    config, args, tmp_path, whole, monkeypatch, caplog
):
    """Parts left by other runs (other sizes, gaps anywhere, an overlap, a truncated file, a
    temporary file): damaged parts move to parts/damaged/ with a warning, and exactly the
    rows no valid part holds are scored."""
    table = pq.read_table(whole)
    folder = tmp_path / "out" / "parts"
    folder.mkdir(parents=True)
    (folder.parent / claims.RUN_FILE).write_bytes((whole.parent / claims.RUN_FILE).read_bytes())
    for a, b in [(0, 5), (3, 9), (12, 13), (20, 31)]:  # overlap 3..5; gaps 9..12, 13..20, 31..40
        pq.write_table(table.slice(a, b - a), folder / parts.PART_NAME.format(a, b))
    damaged = folder / parts.PART_NAME.format(13, 17)
    pq.write_table(table.slice(13, 4), damaged)
    damaged.write_bytes(damaged.read_bytes()[:-20])  # footer cut off
    (folder / ".part-000000000017-000000000020.parquet.123-abc123.tmp").write_bytes(b"half")
    launched: list[int] = []
    monkeypatch.setattr(inference, "launch", counting(inference.launch, launched))
    run.evaluate(config(*args), tmp_path / "out")
    assert sum(launched) == 3 + 7 + 9  # 9..12, 13..20, 31..40
    assert "damaged part part-000000000013-000000000017.parquet" in caplog.text
    assert_same_predictions(tmp_path / "out" / claims.PREDICTIONS, whole)
    assert not folder.exists()


def test_a_part_whose_rows_do_not_match_its_name_is_damaged(tmp_path, whole):
    """Footer, row count, columns and index are all checked against the part's name."""
    table = pq.read_table(whole).slice(0, 8)
    path = tmp_path / "p.parquet"
    pq.write_table(table, path)
    schema = predictions.schema()
    assert parts.why_damaged(path, 0, 8, schema) is None
    assert "holds 8 rows" in str(parts.why_damaged(path, 0, 9, schema))
    assert "index column" in str(parts.why_damaged(path, 1, 9, schema))
    assert "columns" in str(parts.why_damaged(path, 0, 8, predictions.schema("string")))


def test_resume_under_other_results_settings_is_refused(config, args, tmp_path, monkeypatch):
    """A folder is resumed only under the same plan: another amp, or a run made on another
    device type (a GPU run resumed on a CPU), is refused naming the difference; batch size,
    commit_rows and streams may differ."""
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        signal_at(m, "after-commit", signal.SIGTERM)
        with pytest.raises(Stopped):
            run.evaluate(config(*args), out)
    with pytest.raises(UserError, match=r"amp: 'off' -> 'bfloat16'"):
        run.evaluate(config(*args, "amp=bf16"), out)
    record = json.loads((out / claims.RUN_FILE).read_text())
    record["results"]["device_type"] = "cuda"
    (out / claims.RUN_FILE).write_text(json.dumps(record))
    with pytest.raises(UserError, match=r"device_type: 'cuda' -> 'cpu'"):
        run.evaluate(config(*args), out)
    record["results"]["device_type"] = "cpu"
    (out / claims.RUN_FILE).write_text(json.dumps(record))
    result = run.evaluate(config(*args, "batch_size=3", "commit_rows=5", "streams=1"), out)
    assert result.row["n_images"] == N


def test_a_second_run_into_a_held_folder_fails_at_once(config, args, tmp_path, monkeypatch):
    """While one run holds the folder, another fails before loading anything, naming the
    holder, and leaves no trace in the folder."""
    out = tmp_path / "out"
    monkeypatch.setattr(run, "load_model", lambda *_a, **_k: pytest.fail("loaded the model"))
    with folder.open_folder(out):
        with pytest.raises(
            claims.FolderBusy, match=rf"in use by another run \(pid {os.getpid()} on"
        ):
            run.evaluate(config(*args), out)
        claims.record_error(out, "must not be written")
    assert not (out / claims.ERROR_FILE).exists()


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"parts/notes.md": b"my notes", "draft.tmp": b"mine", ".cache.tmp": b"also mine"},
            r"is not empty and not a run folder of this pipeline \(no run.json\): it holds "
            r"\.cache\.tmp, draft\.tmp, parts; use a new or empty output_dir",
        ),
        (
            {"metrics.parquet": b"PAR1 stray", "predictions.parquet": b"12345"},
            r"not a run folder of this pipeline \(no run.json\): it holds metrics.parquet, "
            r"predictions.parquet",
        ),
        (
            {"run.json": b'{"mine": true}', "parts/part-000000000000-000000000004.parquet": b"x"},
            r"run.json is not this pipeline's run record",
        ),
    ],
    ids=["user-files", "outputs-without-run-json", "foreign-run-json"],
)
def test_a_folder_that_is_not_a_run_folder_is_refused_untouched(
    config, args, tmp_path, files, message
):
    """A folder holding files this pipeline cannot prove it wrote is refused in one line
    naming them, before anything is written there: every file is byte-identical after, and
    outputs without a run.json are never taken for a finished run."""
    out = tmp_path / "mine"
    user_files(out, files)
    before = snapshot(out)
    with pytest.raises(UserError, match=message):
        run.evaluate(config(*args), out)
    claims.record_error(out, "must not be written")
    assert snapshot(out) == before and sorted(os.listdir(out)) == sorted(
        {n.split("/")[0] for n in files}
    )


def test_user_files_in_a_run_folder_outlive_its_resume(config, args, tmp_path, whole):
    """In a run folder of this pipeline, a resume removes only its own parts and temporary
    files: the user's files beside them (named like temporaries or parts, even in
    parts/damaged/) are byte-identical after the run finishes, and parts/ stays for them."""
    out = tmp_path / "out"
    user_files(
        out,
        {
            "notes.txt": b"mine",
            "draft.tmp": b"mine too",
            "parts/notes.md": b"notes",
            "parts/part-notes.parquet": b"not a part",
            "parts/.part-x.parquet.tmp": b"mine, not a temporary of the pipeline",
            "parts/damaged/why.txt": b"my own notes on damage",
        },
    )
    mine = snapshot(out)
    (out / claims.RUN_FILE).write_bytes((whole.parent / claims.RUN_FILE).read_bytes())
    table = pq.read_table(whole)
    pq.write_table(table.slice(0, 8), out / "parts" / parts.PART_NAME.format(0, 8))
    (out / "parts" / ".part-000000000008-000000000012.parquet.77-a1b2c3.tmp").write_bytes(b"x")
    run.evaluate(config(*args), out)
    assert_same_predictions(out / claims.PREDICTIONS, whole)
    after = snapshot(out)
    assert {k: after[k] for k in mine} == mine
    assert not [n for n in after if parts.PART_RE.fullmatch(n.rsplit("/", 1)[-1])]
    assert not [n for n in after if durable.TMP_RE.fullmatch(n.rsplit("/", 1)[-1])]


def test_merge_refusals_leave_every_file_as_it_was(config, args, tmp_path):
    """merge checks everything before writing: into a finished run, into one of its shards,
    with an unfinished, overlapping or foreign shard, nothing changes on disk."""
    shards = [tmp_path / f"s{i}" for i in range(2)]
    for i, d in enumerate(shards):
        run.evaluate(config(*args, f"shard.index={i}", "shard.count=2"), d)
    run.evaluate(config(*args, "limit=30"), tmp_path / "done")
    run.evaluate(config(*args, "limit=30", "shard.index=1", "shard.count=2"), tmp_path / "foreign")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / claims.RUN_FILE).write_text((shards[1] / claims.RUN_FILE).read_text())
    before = snapshot(tmp_path)
    cases = [
        (tmp_path / "done", shards, r"holds a run made under other settings \(limit: 30 -> None"),
        (shards[0], shards, "is one of the shards"),
        (tmp_path / "m1", [shards[0], unfinished], "is not finished"),
        (tmp_path / "m2", [shards[0], shards[1], shards[1]], "overlap at row 40"),
        (tmp_path / "m3", [shards[0], tmp_path / "foreign"], r"different run .*limit: None -> 30"),
    ]
    for target, inputs, message in cases:
        with pytest.raises(UserError, match=message):
            merge_shards(target, inputs)
    assert snapshot(tmp_path) == before
    assert not any((tmp_path / f"m{i}").exists() for i in (1, 2, 3))


def test_a_merge_into_a_held_folder_fails_at_once(config, args, tmp_path):
    """merge takes the target's lock like a run: while another holds it, the merge fails
    naming the holder, and writes nothing."""
    shards = [tmp_path / f"s{i}" for i in range(2)]
    for i, d in enumerate(shards):
        run.evaluate(config(*args, f"shard.index={i}", "shard.count=2"), d)
    target = tmp_path / "merged"
    with folder.open_folder(target), pytest.raises(claims.FolderBusy, match="in use by"):
        merge_shards(target, shards)
    assert sorted(os.listdir(target)) == [claims.LOCK]


def test_shards_merge_into_the_single_run(config, args, tmp_path, whole):
    """Three shards, merged, equal one run over the whole split, row for row."""
    shards = [tmp_path / f"shard{i}" for i in range(3)]
    for i, d in enumerate(shards):
        run.evaluate(config(*args, f"shard.index={i}", "shard.count=3"), d)
    result = merge_shards(tmp_path / "merged", list(reversed(shards)))
    assert_same_predictions(tmp_path / "merged" / claims.PREDICTIONS, whole)
    assert result["n_images"] == N and result["merged_shards"] == 3
    assert json.loads((tmp_path / "merged" / claims.RUN_FILE).read_text())["results"]["rows"] == [
        0,
        N,
    ]


def test_a_streamed_row_without_bytes_or_path_is_an_error_row(config, tmp_path):
    """In streaming mode, an image with neither bytes nor a path gets its error row."""
    import pyarrow as pa

    schema = hub_dataset({"image": [], "label": []}).data.table.schema  # with HF's features
    images = [{"bytes": jpeg(photo(1)), "path": "a.jpg"}, {"bytes": None, "path": None}] * 2
    path = tmp_path / "holes.parquet"
    pq.write_table(pa.table({"image": images, "label": [1, 2, 3, 4]}, schema=schema), path)
    cfg = config(
        "dataset=parquet",
        f"dataset.data_files={path}",
        "model.weights=none",
        "dataset.streaming=true",
    )
    result = run.evaluate(cfg, tmp_path / "out")
    errors = pq.read_table(tmp_path / "out" / claims.PREDICTIONS).column("error").to_pylist()
    assert errors == [None, "no image bytes and no path"] * 2
    assert result.row["n_errors"] == 2


def test_out_of_memory_moving_the_model_is_one_line(config, args, tmp_path, monkeypatch):
    """CUDA out of memory outside the loop (moving the model) is a UserError, not a traceback."""
    import torch

    def full(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(torch.nn.Module, "to", full)
    with pytest.raises(UserError, match="Out of cpu memory moving the model"):
        run.evaluate(config(*args), tmp_path / "out")


@pytest.mark.parametrize("cores", [1, 2, 3, 16])
def test_torchrun_ranks_share_the_cores(config, monkeypatch, cores):
    """num_workers=auto on a GPU box decodes on every core; on CPU the workers leave the
    model its share; ranks that see the same cores (torchrun's of a node) split them
    instead of each taking all of them, and none is left with nothing."""
    import torch

    from pipeline import resolve, settings

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    asked = resolve.request(config("num_workers=auto", "streams=auto")).runtime
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert settings.resolve_workers("auto", gpu) == cores  # one rank: every core decodes
    one = settings.resolve(asked, cpu, 1)  # decoding leaves the model at least half the cores
    assert one.num_workers >= 1 and (2 * one.num_workers <= cores or one.num_workers == 1)
    on_gpu = settings.resolve_workers("auto", gpu, sharing=2)
    on_cpu = settings.resolve(asked, cpu, 2, sharing=2)
    assert on_gpu >= 1 and (2 * on_gpu <= cores or cores == 1)
    assert on_cpu.threads >= 1 and (2 * on_cpu.threads <= cores or cores == 1)
    assert on_cpu.num_workers >= 1 and (2 * on_cpu.num_workers <= cores or cores == 1)

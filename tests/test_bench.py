"""The benchmark scripts work the first time they meet a GPU box: checked here on CPU."""

from __future__ import annotations

import importlib
import os
import subprocess
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"


@pytest.fixture
def bench(monkeypatch):
    """benchmarks/bench.py as a module (importable by name: its process pool pickles it)."""
    monkeypatch.syspath_prepend(str(BENCH.parent))
    return importlib.import_module("bench")


def test_child_runs_keep_the_callers_pythonpath(bench, monkeypatch):
    """On a bare GPU box the dependencies arrive on PYTHONPATH: children get the repository
    first, then whatever the caller had."""
    monkeypatch.setenv("PYTHONPATH", "/tmp/site:/opt/more")
    assert bench.child_env()["PYTHONPATH"] == f"{bench.ROOT}:/tmp/site:/opt/more"
    monkeypatch.delenv("PYTHONPATH")
    assert bench.child_env()["PYTHONPATH"] == str(bench.ROOT)


def test_preflight_names_every_problem_before_any_work(bench, tmp_path, monkeypatch):
    """A missing import and a missing GPU are each one line, found before the corpus."""
    import importlib

    import torch

    real = importlib.import_module

    def missing_datasets(name, *a, **k):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", missing_datasets)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    problems, _ = bench.preflight("cuda", tmp_path)
    assert "import datasets failed: No module named 'datasets'" in problems
    assert any(p.startswith("CUDA is not available") for p in problems)
    assert not list(tmp_path.iterdir())  # no corpus yet


def test_corpus_is_the_same_however_it_is_built(bench, tmp_path):
    """Image i depends on (seed, i) only: a pool of any size builds the same files."""
    one = bench.build_corpus(tmp_path / "one", 12, processes=1)
    two = bench.build_corpus(tmp_path / "two", 12, processes=2)
    files = sorted(p.relative_to(one) for p in one.rglob("*.JPEG"))
    assert len(files) == 12
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)


@pytest.mark.slow
def test_gpu_script_dry_run_runs_every_step(tmp_path):
    """`bash benchmarks/gpu.sh --dry-run` runs each step on CPU with a tiny corpus."""
    proc = subprocess.run(
        ["bash", str(BENCH.parent / "gpu.sh"), "--dry-run"],
        env={**os.environ, "WORK": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in (
        "exact mode vs baseline: identical top-5 100.00%",
        "pipeline-device  median",
        "end to end reached",
        "whole process, 48 images",
    ):
        assert line in proc.stdout, proc.stdout

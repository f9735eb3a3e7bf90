"""The package as a user installs it: a wheel, in a fresh virtual environment, run from
outside the source tree."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.errors import UserError


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project's wheel (`pip wheel .`, as a release builds it) installed into a fresh
    venv, without its dependencies: those are borrowed from this environment by a path
    entry (not its .pth files, so this checkout's editable install stays out)."""
    repo = Path(__file__).resolve().parent.parent
    root = tmp_path_factory.mktemp("installed")
    wheels = root / "wheels"
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-q", "-w", str(wheels), str(repo)],
        check=True,
        capture_output=True,
    )
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    (wheel,) = wheels.glob("alexnet_eval-*.whl")
    subprocess.run(
        [*pip, "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def run_installed(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.slow
def test_the_installed_wheel_runs_the_sample_from_anywhere(installed, tmp_path):
    """From a folder outside the source tree, the installed package finds its configs in
    itself (conf/ is shipped in the wheel): the sample runs, the Slurm launcher's config
    and the ImageNet-C benchmark compose, and the published AlexNet table is there."""
    where = run_installed(
        installed, "-c", "import pipeline.config as c; print(c.CONF_DIR)", cwd=tmp_path
    )
    assert where.returncode == 0, where.stderr
    conf = Path(where.stdout.strip())
    assert conf.is_relative_to(installed.parent.parent) and (conf / "config.yaml").is_file()
    proc = run_installed(
        installed, "-m", "pipeline", "model.weights=none", "output_dir=run", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "predictions.parquet").is_file() and "top-1" in proc.stdout
    job = run_installed(
        installed, "-m", "pipeline", "--cfg", "job", "hydra/launcher=slurm", cwd=tmp_path
    )
    assert job.returncode == 0, job.stderr
    assert "batch_size: 256" in job.stdout
    slurm = run_installed(
        installed, "-m", "pipeline", "--cfg", "hydra", "hydra/launcher=slurm", cwd=tmp_path
    )
    assert (
        "submitit_launcher.SlurmLauncher" in slurm.stdout and "signal_delay_s: 120" in slurm.stdout
    )
    bench = run_installed(
        installed,
        "-m",
        "pipeline",
        "--cfg",
        "hydra",
        "+benchmark=imagenet-c",
        "dataset.path=c",
        cwd=tmp_path,
    )
    assert bench.returncode == 0 and "jpeg_compression/5" in bench.stdout, bench.stderr
    table = "from pipeline.reports import mce; print(mce.published().errors['fog'][0])"
    published = run_installed(installed, "-c", table, cwd=tmp_path)
    assert published.stdout.strip() == "0.67474", published.stderr


def test_the_slurm_launcher_without_its_extra_is_one_line(monkeypatch):
    """hydra/launcher=slurm where hydra-submitit-launcher is not installed names the extra
    that brings it."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (
            None if name.startswith("hydra_plugins.hydra_submitit") else real(name, *a)
        ),
    )
    with pytest.raises(UserError, match=r"pip install 'alexnet-eval\[slurm\]'"):
        cli.check_command_line(["-m", "hydra/launcher=slurm", "batch_size=4"])

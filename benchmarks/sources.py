"""The model sources beyond the libraries' own, side by side on one device: a torchvision
model in PyTorch, its ONNX export under onnxruntime (the CUDA provider on a GPU, where
onnxruntime-gpu is installed), its torch.export program, and a zero-shot open_clip model
(its head's build time, then the run). Whole processes of `python -m pipeline` on bench.py's
corpus, random weights (nothing downloaded); each line: the source, img/s as the run's
summary prints it, whole-process seconds, and the ratio to PyTorch's img/s.

    python benchmarks/sources.py --device cuda --images 5000      # gpu.sh runs this
    python benchmarks/sources.py --dry-run                        # tiny, on CPU

A source whose package is missing (onnxruntime, open_clip) is one line saying so, not a
failure.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import build_corpus, child_env

SPEED = re.compile(r"errors \d+\s+([\d.]+) img/s")
HEAD = re.compile(
    r"zero-shot head: .*?; (built in [\d.]+ s on \S+ \(\d+ classes x \d+ templates\)"
    r"|from the cache)"
)


def pipeline(args: list[str], timeout: float, cache: Path) -> tuple[float, float, str]:
    """(img/s the summary prints, whole-process seconds, the output) of one run."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
        env={**child_env(), "ALEXNET_EVAL_CACHE": str(cache)}, timeout=timeout, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    found = SPEED.search(out)
    if proc.returncode or not found:
        sys.exit(f"python -m pipeline {' '.join(args)} failed:\n{out[-3000:]}")
    return float(found[1]), seconds, out


def export(out: Path, arch: str, timeout: float) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pipeline.export",
        str(out),
        f"model.arch={arch}",
        "model.weights=none",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=child_env(), timeout=timeout, check=False
    )
    if proc.returncode:
        sys.exit(f"export to {out} failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--clip", default="ViT-B-32", help="the open_clip architecture (random init)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--work", type=Path, default=Path("/tmp/alexnet-eval-sources"))
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--dry-run", action="store_true", help="tiny, on CPU: checks the script")
    args = p.parse_args()
    if args.dry_run:
        args.device, args.images, args.arch, args.batch_size = "cpu", 64, "resnet18", 32
    args.work.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(args.work / f"corpus-{args.images}", args.images, processes=4)
    common = ["dataset=imagefolder", f"dataset.path={corpus}", "dataset.restrict=false",
              f"device={args.device}", f"batch_size={args.batch_size}", "progress=false",
              "amp=off"]  # fmt: skip
    print(
        f"# {args.images} images, {args.arch}, device {args.device}, fp32, batch {args.batch_size}"
    )

    def run(name: str, model: list[str]) -> float:
        out = args.work / ("run-" + re.sub(r"\W+", "-", name))
        folder = f"output_dir={out}-{time.time_ns()}"
        speed, seconds, text = pipeline([*common, *model, folder], args.timeout, cache)
        head = HEAD.search(text)
        ratio = f"x{speed / base:.2f} vs PyTorch" if base else ""
        print(f"{name:<22} {speed:8.1f} img/s  whole process {seconds:6.1f} s  {ratio}"
              + (f"  head {head[1]}" if head else ""))  # fmt: skip
        return speed

    cache = args.work / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # the first zero-shot run builds its head
    base = 0.0
    base = run("pytorch", [f"model.arch={args.arch}", "model.weights=none"])
    pt2 = args.work / f"{args.arch}.pt2"
    if not pt2.exists():
        export(pt2, args.arch, args.timeout)
    run("torch.export (.pt2)", [f"model.arch=pt2:{pt2}"])
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnxscript"):
        onnx = args.work / f"{args.arch}.onnx"
        if not onnx.exists():
            export(onnx, args.arch, args.timeout)
        run("onnxruntime", [f"model.arch=onnx:{onnx}"])
    else:
        print(
            "onnxruntime: not installed (pip install 'alexnet-eval[onnx]'; for CUDA, "
            "onnxruntime-gpu)"
        )
    if args.dry_run:  # a CLIP's text tower over 1000 names takes minutes on a CPU
        print("zero-shot: left out of --dry-run")
    elif importlib.util.find_spec("open_clip"):
        clip = ["model=openclip", f"model.name={args.clip}", "model.weights=none"]
        for attempt in ("zero-shot (head built)", "zero-shot (cached)"):
            run(attempt, clip)
    else:
        print("open_clip: not installed (pip install 'alexnet-eval[clip]')")


if __name__ == "__main__":
    main()

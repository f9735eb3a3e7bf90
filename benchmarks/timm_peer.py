"""The pipeline against timm's own validate.py and inference.py, side by side, whole process.

    python benchmarks/timm_peer.py --timm-repo DIR     # DIR: a clone of pytorch-image-models

Nothing of timm's scripts is copied here: they run from the clone as its users run them
(`python DIR/validate.py ...`), and the commit they ran at is printed. Both sides get the
same corpus (bench.py's ImageNet-like JPEGs in WordNet-id folders), the same timm
checkpoint (random init, seeded: no weights are downloaded), the model's own pretrained
eval transform (resnet18.a1_in1k: 288 px test size, crop_pct 1.0, bicubic), fp32 on the
CPU, batch size 256 and each tool's default worker count. validate.py gets a class map of
all 1000 WordNet ids, or its folder reader would number only the 10 non-empty folders;
the pipeline gets dataset.restrict=false (else it scores a 10-class folder 10-way).

Printed: whole-process seconds (spawn to exit, median of interleaved runs) and their
ratio; top-1/top-5 of both; and per image, whether the pipeline's top-5 equals
inference.py's (same order). inference.py resolves the train-time size (224) unless told,
validate.py the test size: it is given validate.py's 288 and crop_pct 1.0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import build_corpus, child_env

MODEL = "resnet18.a1_in1k"


def timed(cmd: list[str], timeout: float) -> tuple[float, str]:
    """A whole command's seconds and its stdout, or exit naming what failed."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=child_env(), timeout=timeout, check=False
    )
    if proc.returncode:
        sys.exit(f"{' '.join(cmd[:3])} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--timm-repo", type=Path, required=True, help="a pytorch-image-models clone"
    )
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=3, help="interleaved A/B runs")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "timm-peer")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    import timm
    import torch

    from pipeline.data.imagenet import imagenet_classes

    repo = args.timm_repo
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(f"# timm {timm.__version__}; scripts from {repo} at commit {commit or 'unknown'}")
    args.work.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(args.work / f"corpus-{args.images}", args.images, processes=2)
    torch.manual_seed(0)
    ckpt = args.work / "resnet18-random.pth"
    torch.save(timm.create_model(MODEL, pretrained=False).state_dict(), ckpt)
    class_map = args.work / "wnids.txt"
    class_map.write_text("\n".join(imagenet_classes()[0]) + "\n")

    ours = [sys.executable, "-m", "pipeline", "dataset=imagefolder", f"dataset.path={corpus}"]
    ours += ["dataset.restrict=false"]  # 10 WordNet-id folders, scored 1000-way as timm does
    ours += ["model=timm", f"model.name={MODEL}", f"model.weights={ckpt}", "device=cpu"]
    ours += ["batch_size=256", "progress=false"]
    theirs = [sys.executable, str(repo / "validate.py"), str(corpus), "--model", MODEL]
    theirs += ["--checkpoint", str(ckpt), "--device", "cpu", "-b", "256"]
    theirs += ["--class-map", str(class_map), "--log-freq", "1000", "--results-format", "json"]
    seconds: dict[str, list[float]] = {"pipeline": [], "validate.py": []}
    for k in range(args.pairs):
        out = args.work / f"run-{k}"
        shutil.rmtree(out, ignore_errors=True)  # a finished run folder would not run again
        took, _ = timed([*ours, f"output_dir={out}"], args.timeout)
        seconds["pipeline"].append(took)
        result = args.work / f"validate-{k}.json"
        took, _ = timed([*theirs, "--results-file", str(result)], args.timeout)
        seconds["validate.py"].append(took)
        print(f"# pair {k}: pipeline {seconds['pipeline'][-1]:.1f} s, validate.py {took:.1f} s")
    med = {k: statistics.median(v) for k, v in seconds.items()}
    row = pd.read_parquet(out / "metrics.parquet").iloc[0]
    theirs_result = json.loads(result.read_text())
    theirs_result = theirs_result[0] if isinstance(theirs_result, list) else theirs_result
    ratio = med["pipeline"] / med["validate.py"]
    print(f"whole process, median of {args.pairs}: pipeline {med['pipeline']:.1f} s, "
          f"validate.py {med['validate.py']:.1f} s: ratio {ratio:.2f}x")  # fmt: skip
    print(f"top-1/top-5: pipeline {row['top1']:.3f}/{row['top5']:.3f}, validate.py "
          f"{theirs_result['top1']:.3f}/{theirs_result['top5']:.3f}")  # fmt: skip

    infer = [sys.executable, str(repo / "inference.py"), str(corpus), "--model", MODEL]
    infer += ["--checkpoint", str(ckpt), "--device", "cpu", "-b", "256", "--topk", "5"]
    infer += ["--img-size", "288", "--crop-pct", "1.0"]  # its default is the train size, 224
    infer += ["--results-dir", str(args.work), "--results-file", "inference", "--label-type"]
    infer += ["none", "--include-index", "--results-format", "parquet", "--no-console-results"]
    took, _ = timed(infer, args.timeout)
    timm_top5 = pd.read_parquet(args.work / "inference.parquet")["index"]
    predictions = pd.read_parquet(out / "predictions.parquet", columns=["id", "topk"])
    ours_top5 = dict(
        zip(
            predictions["id"].map(lambda i: Path(i).name),
            predictions["topk"].map(list),
            strict=True,
        )
    )
    same = sum(ours_top5.get(name) == list(t) for name, t in timm_top5.items())
    print(f"per-image top-5 equal to inference.py's ({took:.1f} s whole process): "
          f"{same} of {len(timm_top5)}")  # fmt: skip


if __name__ == "__main__":
    main()

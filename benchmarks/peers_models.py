"""The pipeline scoring fine-tuned heads, against the peers that score them, side by side.

    python benchmarks/peers_models.py all --timm-repo DIR --evaluate-repo DIR \\
        --evaluate-python /tmp/venv-evaluate/bin/python      # about 8 minutes on 2 cores
    python benchmarks/peers_models.py timm --timm-repo DIR    # or: onnx; evaluate; speed

DIR: a checkout of pytorch-image-models (validate.py, inference.py, onnx_validate.py,
onnx_export.py; these import the checkout's own `timm`, as a script's folder comes first on
sys.path: both versions are printed) and one of huggingface/evaluate (its metrics/accuracy
folder, loaded by path, so offline). The evaluate side runs under --evaluate-python, an
environment with `evaluate` and scikit-learn (the accuracy metric imports it) beside
transformers and datasets; the rest runs under this Python. Nothing of the peers' code is
copied here: timm's scripts run from the checkout as their users run them, evaluate as its
users call it (`evaluator("image-classification").compute(...)`), and the commits and
versions that ran are printed. Every command is printed before it runs.

Everything is built here, seeded, with no download: ImageNet-like JPEGs (bench.py's
photographs, 500x375) in 10 class folders named like a pets fine-tune's (`Abyssinian`,
`British_Shorthair`, ...), each class tinted 12% with a colour of its own so a classifier
can learn it (--images, default 200, 20 a class); and "fine-tunes" whose random-init
backbones get a linear head fitted on the features of 10 other images a class, so the
accuracies are neither 0 nor 100 and a label mapped to the wrong class shows. Timings are
whole processes (spawn to exit), A B A B ..., medians of --pairs (default 2) or
--speed-pairs (default 3), with the load average after each pair (others' work on the
machine). Batch size 64 where both sides take one; each tool's default workers. Four parts:

1. `timm`: validate.py with `--num-classes 10 --class-map FILE --checkpoint CKPT` against
   `python -m pipeline dataset=imagefolder model.arch=timm:resnet18.a1_in1k
   model.weights=CKPT model.classes=FILE2`, CKPT a .safetensors resnet18 whose 10-class
   head is in an order that is not the folders' sorted one. FILE (timm's class map) lists
   the folder names in head order; FILE2 the same classes spelled otherwise (lower case,
   spaces: `british shorthair`), matched to the folders by the pipeline's normalisation.
   Printed: top-1/top-5 of both; per image, the pipeline's top-1 and top-5 list against
   inference.py's (same flags; its default size is the train size, 224, so it is told
   validate.py's 288 and crop 1.0), and the pipeline's label against the index timm's
   class map gives the image's folder; the seconds of both and their ratio.
2. `evaluate`: evaluate's image-classification evaluator against `python -m pipeline
   dataset=disk model.arch=hf:FOLDER`, FOLDER a tiny transformers ResNet with 4 labels
   whose id2label order differs from the dataset's ClassLabel order, saved with
   save_pretrained beside a ConvNeXT image processor (as microsoft/resnet-50 has: shortest
   edge 224 / crop_pct 0.875, centre crop 224, bicubic), scored on a `save_to_disk` Dataset
   of 4 of the classes (80 images); `label_mapping` maps id2label's names to the
   ClassLabel's ids. Every 4th image carries an EXIF orientation tag 6: transformers'
   `load_image` rotates it, the pipeline does not (as torchvision's ImageFolder does not),
   so agreement is printed for tagged and untagged images apart. compute() returns no
   per-image output: the evaluator's `predictions_processor` (the step compute() applies to
   the transformers pipeline's output) is wrapped to record each image's top label and
   score on the way through. Once more with `label_mapping` by position (id2label's ids
   taken for the ClassLabel's: the trap the names avoid). The same rows as a DatasetDict
   folder and as a Parquet file (`dataset=parquet`) are scored once each, against the
   first run per row.
3. `onnx`: onnx_validate.py against `python -m pipeline model.arch=onnx:FILE` on the same
   file, written by `python -m pipeline.export` from the checkpoint of (1) with its head
   put in the folders' sorted order (onnx_validate.py takes no class map: it numbers the
   folders alphabetically), and told the eval transform (it resolves none from a file:
   224 px, crop 0.875, bilinear unless told); once with its defaults, to show what they
   do. Then the same checkpoint exported by timm's onnx_export.py (no metadata: the
   pipeline is given model.classes and model.preprocess=timm:resnet18.a1_in1k), scored by
   both once; per image, the pipeline's top-5 on the two files, and the first file's
   top-5 names against inference.py's on the PyTorch checkpoint.
4. `speed`: onnxruntime against PyTorch: `python -m pipeline model.arch=resnet18
   model.weights=none` against `model.arch=onnx:resnet18.onnx`, its export (the same
   seeded random weights), fp32 both, on the CPU, on bench.py's corpus (--speed-images,
   default 500); whole process and the img/s the summary prints, their ratios, and per
   image the top-1 and top-5 agreement (random weights pick nearly one class for every
   image: the top-5 probabilities' largest difference is printed too).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ROOT, build_corpus, child_env

sys.path.insert(0, str(ROOT))  # this tree's pipeline, here as in the child runs (child_env)

TIMM_MODEL = "resnet18.a1_in1k"  # test size 288, crop_pct 1.0, bicubic (validate.py's)
# The folders, as a pets fine-tune names them, sorted; the head's order is HEAD_ORDER.
FOLDERS = (
    "Abyssinian",
    "Bengal",
    "Birman",
    "Bombay",
    "British_Shorthair",
    "Egyptian_Mau",
    "Maine_Coon",
    "Persian",
    "Ragdoll",
    "Russian_Blue",
)
HEAD_ORDER = (7, 2, 9, 0, 5, 3, 8, 1, 6, 4)  # head output k is FOLDERS[HEAD_ORDER[k]]
TINTS = (
    (230, 60, 50),
    (50, 170, 60),
    (60, 80, 220),
    (230, 210, 40),
    (170, 60, 200),
    (40, 200, 210),
    (240, 140, 40),
    (120, 120, 120),
    (250, 250, 250),
    (20, 20, 20),
)
HF_CLASSES = FOLDERS[:4]  # the HF dataset's ClassLabel names, in this order
HF_ID2LABEL = ("Bombay", "Birman", "Abyssinian", "Bengal")  # the HF head's order
TINT = 0.12  # how much of each image is its class's colour
TRAIN_PER_CLASS = 10


# ------------------------------------------------------------------ running


def timed(
    cmd: Sequence[str], timeout: float, env: dict[str, str] | None = None, *, fail: bool = True
) -> tuple[float, str]:
    """A whole command's seconds (spawn to exit) and its output; where it fails, exit naming
    it (fail), or its output's last line after `FAILED (exit N):`."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        list(cmd),
        capture_output=True,
        text=True,
        env=env or child_env(),
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
    if proc.returncode and not fail:
        last = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        return time.perf_counter() - t0, f"FAILED (exit {proc.returncode}): " + " ".join(last)
    if proc.returncode:
        sys.exit(
            f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}):\n"
            f"{(proc.stdout + proc.stderr)[-3000:]}"
        )
    return time.perf_counter() - t0, proc.stdout + proc.stderr


def interleaved(
    sides: dict[str, Callable[[int], tuple[Sequence[str], dict[str, str] | None]]],
    pairs: int,
    timeout: float,
) -> tuple[dict[str, list[float]], dict[str, list[str]]]:
    """Each side's command run `pairs` times, A B A B ...; their seconds and outputs."""
    seconds: dict[str, list[float]] = {k: [] for k in sides}
    outputs: dict[str, list[str]] = {k: [] for k in sides}
    for k in range(pairs):
        for name, make in sides.items():
            cmd, env = make(k)
            took, out = timed(cmd, timeout, env)
            seconds[name].append(took)
            outputs[name].append(out)
        load = os.getloadavg()[0]  # others' work on the machine shows here
        print(f"# pair {k}: " + ", ".join(f"{n} {s[-1]:.1f} s" for n, s in seconds.items())
              + f" (load average {load:.2f})")  # fmt: skip
    return seconds, outputs


def medians(seconds: dict[str, list[float]], ours: str, theirs: str) -> str:
    """The medians of both sides and their ratio, as one line."""
    a, b = statistics.median(seconds[ours]), statistics.median(seconds[theirs])
    n = len(seconds[ours])
    return f"whole process, median of {n}: {ours} {a:.1f} s, {theirs} {b:.1f} s: ratio {a / b:.2f}x"


def against(
    ours: list[str],
    name: str,
    theirs: Callable[[int], list[str]],
    work: Path,
    args: argparse.Namespace,
    env: dict[str, str] | None = None,
) -> tuple[dict[str, list[float]], dict[str, list[str]], Path]:
    """The pipeline (a fresh run folder each time) and a peer's command of the pair's number,
    interleaved over args.pairs: their seconds, their outputs, the last pipeline run."""
    print("$ " + " ".join([*ours, "output_dir=RUN"]))
    print("$ " + " ".join(theirs(-1)))
    seconds, outputs = interleaved(
        {
            "pipeline": lambda k: ([*ours, f"output_dir={fresh(work / f'run-{k}')}"], env),
            name: lambda k: (theirs(k), env),
        },
        args.pairs,
        args.timeout,
    )
    return seconds, outputs, work / f"run-{args.pairs - 1}"


def pipeline_cmd(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "device=cpu", "progress=false", *overrides]


def fresh(folder: Path) -> Path:
    """An empty run folder: a finished one would not be run again."""
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def git_commit(repo: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return out or "unknown (not a git checkout)"


def metrics_row(run: Path) -> dict[str, Any]:
    import pandas as pd

    return dict(pd.read_parquet(run / "metrics.parquet").iloc[0])


def summary_rate(output: str) -> float:
    """The img/s of the pipeline's summary line (`top-1 ... errors 0  213.9 img/s`)."""
    found = re.findall(r"errors \d+\s+([\d.]+) img/s", output)
    if not found:
        sys.exit(f"no img/s in the pipeline's summary:\n{output[-2000:]}")
    return float(found[-1])


# ------------------------------------------------------------------- corpus


def tinted_jpeg(i: int, seed: int, cls: int) -> bytes:
    """Image i of bench's corpus (seed), blended with its class's colour (TINT)."""
    import numpy as np
    from PIL import Image

    from pipeline.sample import corpus

    img = Image.open(io.BytesIO(corpus.jpeg(i, seed)))
    tint = np.array(TINTS[cls], np.float32)
    mixed = np.asarray(img, np.float32) * (1 - TINT) + tint * TINT
    out = io.BytesIO()
    Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def _write_named(job: tuple[Path, list[int], int]) -> None:
    folder, indices, seed = job
    for i in indices:
        cls = i % len(FOLDERS)
        d = folder / FOLDERS[cls]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{FOLDERS[cls].lower()}_{seed}_{i:05d}.jpg").write_bytes(tinted_jpeg(i, seed, cls))


def named_corpus(folder: Path, n: int, seed: int) -> Path:
    """n tinted JPEGs in the 10 class folders (n // 10 each), built by 2 processes."""
    stamp = f"{n} {seed} {TINT}"
    if (folder / "done").exists() and (folder / "done").read_text() == stamp:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_write_named, [(folder, list(range(k, n, 8)), seed) for k in range(8)]))
    (folder / "done").write_text(stamp)
    print(f"# corpus {folder.name}: {n} images in {time.perf_counter() - t0:.1f} s")
    return folder


def images_of(folder: Path) -> list[tuple[Path, int]]:
    """(file, folder index in FOLDERS) of a named corpus, in sorted order."""
    return [
        (f, FOLDERS.index(f.parent.name))
        for f in sorted(folder.glob("*/*.jpg"))
        if f.parent.name in FOLDERS
    ]


def fit_head(features: Any, labels: Any, classes: int) -> tuple[Any, Any]:
    """A linear head (weight, bias) fitted by logistic regression on standardized features,
    the standardization folded in: what a linear-probe fine-tune leaves in the checkpoint."""
    import torch

    torch.manual_seed(0)
    mean, std = features.mean(0), features.std(0) + 1e-6
    x = (features - mean) / std
    linear = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(linear.parameters(), lr=0.01, weight_decay=1e-2)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(linear(x), labels).backward()
        opt.step()
    with torch.no_grad():
        weight = linear.weight / std
        bias = linear.bias - weight @ mean
    return weight.detach().clone(), bias.detach().clone()


# --------------------------------------------------------------------- timm


def timm_finetune(work: Path, train: Path) -> dict[str, Path]:
    """resnet18 (random backbone, seeded) with a 10-class head fitted on `train`'s features;
    saved with the head in HEAD_ORDER (ckpt) and in the folders' sorted order (ckpt_sorted),
    with timm's class map, the pipeline's classes file (other spelling) and the sorted one."""
    files = {
        "ckpt": work / "resnet18-ft10.safetensors",
        "ckpt_sorted": work / "resnet18-ft10-sorted.safetensors",
        "class_map": work / "class_map.txt",
        "classes": work / "classes.txt",
        "classes_sorted": work / "classes-sorted.txt",
    }
    names = [FOLDERS[k] for k in HEAD_ORDER]
    files["class_map"].write_text("\n".join(names) + "\n")
    files["classes"].write_text("\n".join(n.lower().replace("_", " ") for n in names) + "\n")
    files["classes_sorted"].write_text("\n".join(FOLDERS) + "\n")
    if all(files[k].exists() for k in ("ckpt", "ckpt_sorted")):
        return files
    import timm
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from timm.data import create_transform, resolve_data_config

    t0 = time.perf_counter()
    torch.manual_seed(0)
    model: Any = timm.create_model(TIMM_MODEL, pretrained=False, num_classes=len(FOLDERS))
    model.eval()
    transform = create_transform(**resolve_data_config({}, model=model, use_test_size=True))
    shots = images_of(train)
    feats = []
    with torch.inference_mode():
        for k in range(0, len(shots), 50):
            batch = torch.stack(
                [transform(Image.open(f).convert("RGB")) for f, _ in shots[k : k + 50]]
            )
            feats.append(model.forward_head(model.forward_features(batch), pre_logits=True))
    labels = torch.tensor([c for _, c in shots])
    weight, bias = fit_head(torch.cat(feats), labels, len(FOLDERS))  # rows: FOLDERS order
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = weight.contiguous(), bias.contiguous()
    save_file(state, str(files["ckpt_sorted"]))
    order = torch.tensor(HEAD_ORDER)
    state["fc.weight"] = weight[order].contiguous()
    state["fc.bias"] = bias[order].contiguous()
    save_file(state, str(files["ckpt"]))
    print(f"# resnet18 fine-tune: head fitted on {len(shots)} images in "
          f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    return files


def compare_timm(args: argparse.Namespace, corpus: Path, ft: dict[str, Path]) -> dict[str, Any]:
    import pandas as pd

    repo = args.timm_repo
    work = args.work / "timm"
    work.mkdir(parents=True, exist_ok=True)
    common = ["--model", TIMM_MODEL, "--num-classes", str(len(FOLDERS))]
    common += ["--class-map", str(ft["class_map"]), "--checkpoint", str(ft["ckpt"])]
    common += ["--device", "cpu", "-b", str(args.batch_size)]
    validate = [sys.executable, str(repo / "validate.py"), str(corpus), *common]
    validate += ["--log-freq", "1000", "--results-format", "json"]
    ours = pipeline_cmd("dataset=imagefolder", f"dataset.path={corpus}")
    ours += [f"model.arch=timm:{TIMM_MODEL}", f"model.weights={ft['ckpt']}"]
    ours += [f"model.classes={ft['classes']}", f"batch_size={args.batch_size}"]
    seconds, _, run = against(
        ours,
        "validate.py",
        lambda k: [*validate, "--results-file", str(work / f"validate-{k}.json")],
        work,
        args,
    )
    row = metrics_row(run)
    theirs = json.loads((work / f"validate-{args.pairs - 1}.json").read_text())
    theirs = theirs[0] if isinstance(theirs, list) else theirs
    print(medians(seconds, "pipeline", "validate.py"))
    print(f"top-1/top-5: pipeline {row['top1']:.3f}/{row['top5']:.3f}, validate.py "
          f"{theirs['top1']:.3f}/{theirs['top5']:.3f}")  # fmt: skip

    infer = [sys.executable, str(repo / "inference.py"), str(corpus), *common, "--topk", "5"]
    infer += ["--img-size", "288", "--crop-pct", "1.0"]  # its default is the train size, 224
    infer += ["--results-dir", str(work), "--results-file", "inference", "--label-type", "none"]
    infer += ["--include-index", "--results-format", "parquet", "--no-console-results"]
    print("$ " + " ".join(infer))
    took, _ = timed(infer, args.timeout)
    timm_top5 = {
        name: [int(i) for i in idx]
        for name, idx in pd.read_parquet(work / "inference.parquet")["index"].items()
    }
    preds = pd.read_parquet(run / "predictions.parquet")
    class_map = ft["class_map"].read_text().split()
    same5 = same1 = same_label = timm_right = 0
    for _, p in preds.iterrows():
        name = Path(p["id"]).name
        t5 = timm_top5.get(name)
        target = class_map.index(Path(p["id"]).parent.name)  # timm's target via its class map
        same5 += t5 == [int(i) for i in p["topk"]]
        same1 += t5 is not None and t5[0] == int(p["pred"])
        same_label += int(p["label"]) == target
        timm_right += t5 is not None and t5[0] == target
    n = len(preds)
    print(f"inference.py ({took:.1f} s whole process, {len(timm_top5)} images): per image, "
          f"top-1 equal {same1} of {n}, top-5 lists equal (in order) {same5} of {n}; "
          f"the pipeline's label equal to timm's class-map index {same_label} of {n}; "
          f"inference.py's top-1 by the class map {100 * timm_right / n:.3f}")  # fmt: skip
    return {
        "seconds": seconds,
        "pipeline": [row["top1"], row["top5"]],
        "validate": [theirs["top1"], theirs["top5"]],
        "same1": same1,
        "same5": same5,
        "same_label": same_label,
        "n": n,
        "inference_s": took,
    }


# ---------------------------------------------------------------------- onnx


def compare_onnx(args: argparse.Namespace, corpus: Path, ft: dict[str, Path]) -> dict[str, Any]:
    import pandas as pd

    work = args.work / "onnx"
    work.mkdir(parents=True, exist_ok=True)
    model = work / "resnet18-ft10-sorted.onnx"
    export = [sys.executable, "-m", "pipeline.export", str(model)]
    export += [f"model.arch=timm:{TIMM_MODEL}", f"model.weights={ft['ckpt_sorted']}"]
    export += [f"model.classes={ft['classes_sorted']}"]
    print("$ " + " ".join(export))
    if not model.exists():
        took, out = timed(export, args.timeout)
        print(f"# export: {took:.1f} s; " + " ".join(out.strip().splitlines()[-1:]))
    ours = pipeline_cmd("dataset=imagefolder", f"dataset.path={corpus}", f"model.arch=onnx:{model}")
    ours += [f"batch_size={args.batch_size}"]
    validate = [sys.executable, str(args.timm_repo / "onnx_validate.py"), str(corpus)]
    validate += ["--onnx-input", str(model), "-b", str(args.batch_size), "--print-freq", "1000"]
    told = [*validate, "--img-size", "288", "--crop-pct", "1.0", "--interpolation", "bicubic"]
    seconds, outputs, run = against(ours, "onnx_validate.py", lambda k: told, work, args)
    row = metrics_row(run)

    def prec(out: str) -> tuple[float, float]:
        found = re.findall(r"\* Prec@1 ([\d.]+) \([\d.]+\) Prec@5 ([\d.]+)", out)
        if not found:
            sys.exit(f"no ' * Prec@1' line in onnx_validate.py's output:\n{out[-2000:]}")
        return float(found[-1][0]), float(found[-1][1])

    theirs = prec(outputs["onnx_validate.py"][-1])
    print(medians(seconds, "pipeline", "onnx_validate.py"))
    print(f"top-1/top-5: pipeline {row['top1']:.3f}/{row['top5']:.3f}, onnx_validate.py "
          f"{theirs[0]:.3f}/{theirs[1]:.3f}")  # fmt: skip
    print("$ " + " ".join(validate))
    took, out = timed(validate, args.timeout, fail=False)
    defaults = out if out.startswith("FAILED") else "top-1/top-5 {:.3f}/{:.3f}".format(*prec(out))
    print(f"onnx_validate.py with its defaults (224 px, crop 0.875, bilinear; {took:.1f} s): "
          f"{defaults}")  # fmt: skip
    # The same checkpoint exported by timm's onnx_export.py: no metadata, so the pipeline is
    # told its classes and borrows timm's eval transform of the tag.
    timm_file = work / "resnet18-ft10-sorted-timm.onnx"
    export = [sys.executable, str(args.timm_repo / "onnx_export.py"), str(timm_file)]
    export += ["--model", TIMM_MODEL, "--num-classes", str(len(FOLDERS))]
    export += ["--checkpoint", str(ft["ckpt_sorted"]), "--img-size", "288"]
    print("$ " + " ".join(export))
    if not timm_file.exists():
        took, _ = timed(export, args.timeout)
        print(f"# onnx_export.py: {took:.1f} s")
    told_timm = [*told]
    told_timm[told_timm.index(str(model))] = str(timm_file)
    ours_timm = pipeline_cmd("dataset=imagefolder", f"dataset.path={corpus}")
    ours_timm += [f"model.arch=onnx:{timm_file}", f"model.classes={ft['classes_sorted']}"]
    ours_timm += [f"model.preprocess=timm:{TIMM_MODEL}", f"batch_size={args.batch_size}"]
    print("$ " + " ".join([*ours_timm, "output_dir=RUN"]))
    print("$ " + " ".join(told_timm))
    run_timm = fresh(work / "run-timm-export")
    took_ours, _ = timed([*ours_timm, f"output_dir={run_timm}"], args.timeout)
    took_theirs, out = timed(told_timm, args.timeout)
    on_timm = prec(out)
    row_timm = metrics_row(work / "run-timm-export")
    a = pd.read_parquet(run / "predictions.parquet").set_index("id")
    b = pd.read_parquet(work / "run-timm-export" / "predictions.parquet").set_index("id")
    same_files = sum(
        list(x) == list(y) for x, y in zip(a["topk"], b.loc[a.index, "topk"], strict=True)
    )
    print(f"timm's own export: pipeline {row_timm['top1']:.3f}/{row_timm['top5']:.3f} "
          f"({took_ours:.1f} s), onnx_validate.py {on_timm[0]:.3f}/{on_timm[1]:.3f} "
          f"({took_theirs:.1f} s); per image, the pipeline's top-5 on the two files equal: "
          f"{same_files} of {len(a)}")  # fmt: skip
    result: dict[str, Any] = {
        "seconds": seconds,
        "pipeline": [row["top1"], row["top5"]],
        "timm_export": {
            "pipeline": [row_timm["top1"], row_timm["top5"]],
            "onnx_validate": list(on_timm),
            "same5_files": same_files,
        },
        "onnx_validate": list(theirs),
        "onnx_validate_defaults": defaults,
    }
    infer = args.work / "timm" / "inference.parquet"
    if infer.exists():  # the PyTorch checkpoint's top-5 by inference.py, from `timm`
        timm_top5 = pd.read_parquet(infer)["index"]
        head = [FOLDERS[k] for k in HEAD_ORDER]
        preds = pd.read_parquet(run / "predictions.parquet")
        same = sum(
            [head[int(i)] for i in timm_top5[Path(i).name]] == [FOLDERS[int(j)] for j in t]
            for i, t in zip(preds["id"], preds["topk"], strict=True)
        )
        print(f"per image, the ONNX run's top-5 names equal inference.py's on the PyTorch "
              f"checkpoint (head in the other order): {same} of {len(preds)}")  # fmt: skip
        result["same5_vs_torch"] = same
    return result


# ------------------------------------------------------------------ evaluate


def hf_model(work: Path, train: Path) -> Path:
    """A tiny transformers ResNet, random backbone (seeded), 4 labels in HF_ID2LABEL order,
    its classifier fitted on `train`'s features, saved with a ConvNeXT image processor
    (shortest edge 256 = 224 / 0.875, centre crop 224, bicubic, ImageNet mean/std)."""
    folder = work / "hf-resnet-tiny-ft4"
    if (folder / "config.json").exists():
        return folder
    import torch
    from PIL import Image
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    settings: dict[str, Any] = {
        "embedding_size": 16,
        "hidden_sizes": [16, 32, 64, 128],
        "depths": [1, 1, 1, 1],
        "layer_type": "basic",
        "num_labels": len(HF_ID2LABEL),
        "id2label": dict(enumerate(HF_ID2LABEL)),
        "label2id": {n: i for i, n in enumerate(HF_ID2LABEL)},
    }
    config = ResNetConfig(**settings)
    model = ResNetForImageClassification(config).eval()
    processor = ConvNextImageProcessor(
        size={"shortest_edge": 224},
        crop_pct=0.875,
        resample=3,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    shots = [(f, c) for f, c in images_of(train) if FOLDERS[c] in HF_ID2LABEL]
    with torch.inference_mode():
        pixels = processor(
            images=[Image.open(f).convert("RGB") for f, _ in shots], return_tensors="pt"
        )["pixel_values"]
        feats = model.resnet(pixels).pooler_output.flatten(1)
    labels = torch.tensor([HF_ID2LABEL.index(FOLDERS[c]) for _, c in shots])
    weight, bias = fit_head(feats, labels, len(HF_ID2LABEL))
    with torch.no_grad():
        model.classifier[1].weight.copy_(weight)
        model.classifier[1].bias.copy_(bias)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def hf_dataset(work: Path, corpus: Path) -> tuple[Path, list[bool]]:
    """The corpus's HF_CLASSES images as a `save_to_disk` Dataset (image bytes, a ClassLabel
    `label`); every 4th image with an EXIF orientation tag 6 (shown rotated 90 degrees)."""
    from PIL import Image

    folder = work / "hf-dataset"
    rows = [(f, c) for f, c in images_of(corpus) if FOLDERS[c] in HF_CLASSES]
    tagged = [k % 4 == 3 for k in range(len(rows))]
    if (folder / "dataset_info.json").exists():
        return folder, tagged
    import datasets

    images = []
    for (f, _), tag in zip(rows, tagged, strict=True):
        data = f.read_bytes()
        if tag:
            img = Image.open(io.BytesIO(data))
            exif = img.getexif()
            exif[0x0112] = 6  # Orientation: rotate 90 CW to display
            out = io.BytesIO()
            img.save(out, "JPEG", quality=90, exif=exif.tobytes())
            data = out.getvalue()
        images.append({"bytes": data, "path": f"{f.parent.name}/{f.name}"})
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(HF_CLASSES))}
    )
    labels = [HF_CLASSES.index(FOLDERS[c]) for _, c in rows]
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(
        str(folder)
    )
    return folder, tagged


def evaluate_child(args: argparse.Namespace) -> None:
    """Run under the evaluate environment: the evaluator as its users call it, and the
    per-image labels its predictions_processor saw, as one JSON line."""
    import datasets
    import evaluate
    import transformers
    from evaluate.evaluator import ImageClassificationEvaluator

    seen: list[dict[str, Any]] = []  # each image's top label and score, as the evaluator saw

    class Recording(ImageClassificationEvaluator):
        def predictions_processor(self, predictions: Any, label_mapping: Any) -> Any:
            seen.extend(max(p, key=lambda x: x["score"]) for p in predictions)
            return super().predictions_processor(predictions, label_mapping)

    data = datasets.load_from_disk(args.data)
    names = data.features["label"].names
    config = transformers.AutoConfig.from_pretrained(args.model)
    label_mapping = {config.id2label[i]: names.index(config.id2label[i]) for i in config.id2label}
    if args.positional:  # the trap: id2label's ids taken for the ClassLabel's
        label_mapping = {config.id2label[i]: int(i) for i in config.id2label}
    result = Recording().compute(
        model_or_pipeline=args.model,
        data=data,
        metric=evaluate.load(args.metric),
        label_mapping=label_mapping,
    )
    processor = transformers.AutoImageProcessor.from_pretrained(args.model)
    print("RESULT " + json.dumps({
        "result": result,
        "label_mapping": label_mapping,
        "predicted": [p["label"] for p in seen],
        "scores": [float(p["score"]) for p in seen],
        "evaluate": evaluate.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "processor": type(processor).__name__,
    }))  # fmt: skip


def compare_evaluate(args: argparse.Namespace, corpus: Path, train: Path) -> dict[str, Any]:
    import pandas as pd

    work = args.work / "evaluate"
    work.mkdir(parents=True, exist_ok=True)
    model = hf_model(work, train)
    data, tagged = hf_dataset(work, corpus)
    metric = args.evaluate_repo / "metrics" / "accuracy"
    theirs = [str(args.evaluate_python), str(Path(__file__).resolve()), "evaluate-child"]
    theirs += ["--data", str(data), "--model", str(model), "--metric", str(metric)]
    offline = {**child_env(), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    ours = pipeline_cmd("dataset=disk", f"dataset.path={data}", f"model.arch=hf:{model}")
    seconds, outputs, run = against(ours, "evaluate", lambda k: theirs, work, args, offline)
    row = metrics_row(run)
    lines = [s for s in outputs["evaluate"][-1].splitlines() if s.startswith("RESULT ")]
    if not lines:
        sys.exit(f"no RESULT line from the evaluate side:\n{outputs['evaluate'][-1][-3000:]}")
    got = json.loads(lines[-1][len("RESULT ") :])
    print(f"# evaluate {got['evaluate']} (accuracy from {metric}), transformers "
          f"{got['transformers']}, datasets {got['datasets']}; image processor "
          f"{got['processor']}; label_mapping {got['label_mapping']}")  # fmt: skip
    print(medians(seconds, "pipeline", "evaluate"))
    accuracy = 100 * got["result"]["accuracy"]
    print(f"top-1: pipeline {row['top1']:.3f}, evaluate accuracy {accuracy:.3f} "
          f"(evaluate's own timing: {got['result'].get('samples_per_second', 0):.1f} "
          "samples/s in its pipeline call)")  # fmt: skip
    preds = pd.read_parquet(run / "predictions.parquet").sort_values("index")
    ours_names = list(preds["pred_name"])
    if len(ours_names) != len(got["predicted"]):
        sys.exit(f"{len(ours_names)} pipeline rows, {len(got['predicted'])} evaluate predictions")
    split: dict[bool, list[int]] = {False: [0, 0], True: [0, 0]}
    gaps = {False: 0.0, True: 0.0}  # top-1 probabilities, where both name the same class
    for a, b, tag, pa, pb in zip(
        ours_names, got["predicted"], tagged, preds["topk_prob"], got["scores"], strict=True
    ):
        split[tag][0] += a == b
        split[tag][1] += 1
        if a == b:
            gaps[tag] = max(gaps[tag], abs(float(pa[0]) - pb))
    acc: dict[bool, list[float]] = {}
    labels = list(preds["label"])
    for tag in (False, True):
        idx = [k for k, t in enumerate(tagged) if t == tag]
        right_ours = sum(bool(preds["correct_top1"].iloc[k]) for k in idx)
        right_theirs = sum(
            got["label_mapping"][got["predicted"][k]]
            == HF_CLASSES.index(HF_ID2LABEL[int(labels[k])])
            for k in idx
        )
        acc[tag] = [100 * right_ours / len(idx), 100 * right_theirs / len(idx)]
    print(f"per image, the same top-1 name: {split[False][0]} of {split[False][1]} untagged "
          f"images, {split[True][0]} of {split[True][1]} with EXIF orientation 6; top-1 on the "
          f"untagged: pipeline {acc[False][0]:.3f}, evaluate {acc[False][1]:.3f}; on the "
          f"tagged: pipeline {acc[True][0]:.3f}, evaluate {acc[True][1]:.3f}; top-1 "
          f"probabilities (same class) within {gaps[False]:.1e} on the untagged, "
          f"{gaps[True]:.1e} on the tagged")  # fmt: skip
    print("$ " + " ".join([*theirs, "--positional"]))
    took, out = timed([*theirs, "--positional"], args.timeout, offline)
    positional = json.loads(out.split("RESULT ")[-1].splitlines()[0])
    print(f"evaluate with label_mapping by position ({positional['label_mapping']}; "
          f"{took:.1f} s): accuracy {100 * positional['result']['accuracy']:.3f}")  # fmt: skip
    routes = other_routes(args, work, data, model, list(preds["pred"]), offline)
    return {
        "seconds": seconds,
        "pipeline": row["top1"],
        "routes": routes,
        "positional": 100 * positional["result"]["accuracy"],
        "evaluate": accuracy,
        "agree": {str(k): v for k, v in split.items()},
        "acc": {str(k): v for k, v in acc.items()},
        "prob_gap": {str(k): v for k, v in gaps.items()},
        "versions": {k: got[k] for k in ("evaluate", "transformers", "datasets", "processor")},
    }


def other_routes(
    args: argparse.Namespace,
    work: Path,
    data: Path,
    model: Path,
    preds: list[int],
    env: dict[str, str],
) -> dict[str, str]:
    """The same rows as a DatasetDict's `save_to_disk` folder (its one split, `test`, left
    to be found) and as one Parquet file (`to_parquet`: the ClassLabel in its schema's
    metadata): the pipeline's top-1 per row against the `dataset=disk` run's."""
    import datasets
    import pandas as pd

    dataset = datasets.load_from_disk(str(data))
    as_dict, as_parquet = work / "hf-datasetdict", work / "hf-dataset.parquet"
    if not (as_dict / "dataset_dict.json").exists():
        datasets.DatasetDict({"test": dataset}).save_to_disk(str(as_dict))
    if not as_parquet.exists():
        dataset.to_parquet(str(as_parquet))
    found = {}
    for name, overrides in (
        ("DatasetDict", ["dataset=disk", f"dataset.path={as_dict}"]),
        ("Parquet", ["dataset=parquet", f"dataset.data_files={as_parquet}"]),
    ):
        cmd = pipeline_cmd(*overrides, f"model.arch=hf:{model}")
        print("$ " + " ".join([*cmd, "output_dir=RUN"]))
        out = fresh(work / f"run-{name}")
        took, text = timed([*cmd, f"output_dir={out}"], args.timeout, env, fail=False)
        if text.startswith("FAILED"):
            found[name] = text
        else:
            got = pd.read_parquet(out / "predictions.parquet").sort_values("index")
            same = sum(int(a) == b for a, b in zip(got["pred"], preds, strict=True))
            found[name] = f"top-1 {metrics_row(out)['top1']:.3f}, {same} of {len(preds)} rows same"
        print(f"{name} ({took:.1f} s): {found[name]}")
    return found


# --------------------------------------------------------------------- speed


def compare_speed(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    work = args.work / "speed"
    work.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(args.work / f"corpus-{args.speed_images}", args.speed_images, 2)
    model = work / "resnet18.onnx"
    export = [sys.executable, "-m", "pipeline.export", str(model)]
    export += ["model.arch=resnet18", "model.weights=none"]
    print("$ " + " ".join(export))
    if not model.exists():
        took, _ = timed(export, args.timeout)
        print(f"# export: {took:.1f} s")
    base = pipeline_cmd("dataset=imagefolder", f"dataset.path={corpus}")
    torch_run = [*base, "model.arch=resnet18", "model.weights=none"]
    onnx_run = [*base, f"model.arch=onnx:{model}"]
    print("$ " + " ".join([*torch_run, "output_dir=RUN"]))
    print("$ " + " ".join([*onnx_run, "output_dir=RUN"]))
    seconds, outputs = interleaved(
        {
            "pytorch": lambda k: ([*torch_run, f"output_dir={fresh(work / f'torch-{k}')}"], None),
            "onnxruntime": lambda k: ([*onnx_run, f"output_dir={fresh(work / f'onnx-{k}')}"], None),
        },
        args.speed_pairs,
        args.timeout,
    )
    rates = {k: [summary_rate(o) for o in v] for k, v in outputs.items()}
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"# img/s per run: pytorch {rates['pytorch']}, onnxruntime {rates['onnxruntime']}")
    print(medians(seconds, "onnxruntime", "pytorch"))
    ratio = med["onnxruntime"] / med["pytorch"]
    print(f"summary img/s, median of {args.speed_pairs}: pytorch {med['pytorch']:.1f}, onnxruntime "
          f"{med['onnxruntime']:.1f}: ratio {ratio:.2f}x")  # fmt: skip
    last = args.speed_pairs - 1
    a = pd.read_parquet(work / f"torch-{last}" / "predictions.parquet").set_index("id")
    b = pd.read_parquet(work / f"onnx-{last}" / "predictions.parquet").set_index("id")
    b = b.loc[a.index]
    same1 = int((a["pred"] == b["pred"]).sum())
    same5 = sum(list(x) == list(y) for x, y in zip(a["topk"], b["topk"], strict=True))
    gap = max(
        float(abs(np.asarray(x) - np.asarray(y)).max())
        for x, y in zip(a["topk_prob"], b["topk_prob"], strict=True)
    )
    print(f"per image: top-1 equal {same1} of {len(a)}, top-5 lists equal {same5} of {len(a)}, "
          f"top-5 probabilities within {gap:.1e}; {a['pred'].nunique()} distinct top-1 classes "
          "(random weights: nearly one class for every image)")  # fmt: skip
    return {
        "seconds": seconds,
        "rates": rates,
        "same1": same1,
        "same5": same5,
        "n": len(a),
        "prob_gap": gap,
    }


# ---------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    parts = {}
    for name in ("all", "timm", "onnx", "evaluate", "speed"):
        p = sub.add_parser(name)
        p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "peers-models")
        p.add_argument("--images", type=int, default=200, help="the named corpus (10 classes)")
        p.add_argument("--speed-images", type=int, default=500, help="the speed corpus")
        p.add_argument("--pairs", type=int, default=2, help="interleaved A/B runs, 1-3")
        p.add_argument("--speed-pairs", type=int, default=3, help="interleaved runs, speed")
        p.add_argument("--batch-size", type=int, default=64)
        p.add_argument("--timeout", type=float, default=600)
        if name in ("all", "timm", "onnx"):
            p.add_argument("--timm-repo", type=Path, required=True)
        if name in ("all", "evaluate"):
            p.add_argument("--evaluate-repo", type=Path, required=True)
            p.add_argument("--evaluate-python", type=Path, required=True)
        parts[name] = p
    child = sub.add_parser("evaluate-child", help="internal: the evaluate side, in its venv")
    child.add_argument("--data", required=True)
    child.add_argument("--model", required=True)
    child.add_argument("--metric", required=True)
    child.add_argument("--positional", action="store_true", help="label_mapping by position")
    args = parser.parse_args()
    if args.what == "evaluate-child":
        evaluate_child(args)
        return
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    import pipeline

    print(f"# the pipeline from {Path(pipeline.__file__).parent} (git HEAD of {ROOT}: "
          f"{git_commit(ROOT)})")  # fmt: skip
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    if args.what in ("all", "timm", "onnx", "evaluate"):
        import timm

        corpus = named_corpus(args.work / f"named-{args.images}", args.images, seed=0)
        train = named_corpus(args.work / "named-train", TRAIN_PER_CLASS * len(FOLDERS), seed=1)
        if args.what != "evaluate":
            commit = git_commit(args.timm_repo)
            _, theirs = timed([sys.executable, "-c", "import timm; print(timm.__version__)"],
                              60, {**child_env(), "PYTHONPATH": str(args.timm_repo)})  # fmt: skip
            print(f"# timm {timm.__version__} installed (the pipeline's); scripts from "
                  f"{args.timm_repo} at commit {commit}, which import the checkout's own timm "
                  f"{theirs.strip()} (a script's folder comes first on sys.path)")  # fmt: skip
            ft = timm_finetune(args.work, train)
        if args.what in ("all", "timm"):
            print("\n## 1. timm validate.py / inference.py, --num-classes --class-map")
            results["timm"] = compare_timm(args, corpus, ft)
        if args.what in ("all", "evaluate"):
            print(f"\n## 2. Hugging Face evaluate (metrics from {args.evaluate_repo} at commit "
                  f"{git_commit(args.evaluate_repo)})")  # fmt: skip
            results["evaluate"] = compare_evaluate(args, corpus, train)
        if args.what in ("all", "onnx"):
            print("\n## 3. timm onnx_validate.py")
            results["onnx"] = compare_onnx(args, corpus, ft)
    if args.what in ("all", "speed"):
        print("\n## 4. onnxruntime against PyTorch, the pipeline on the CPU")
        results["speed"] = compare_speed(args)
    (args.work / f"results-{args.what}.json").write_text(json.dumps(results, default=str))
    print(f"\n# all done in {time.perf_counter() - t0:.0f} s; numbers in "
          f"{args.work / f'results-{args.what}.json'}")  # fmt: skip


if __name__ == "__main__":
    main()

"""The pipeline's zero-shot CLIP against LAION's clip_benchmark, side by side.

    python benchmarks/peers_zeroshot.py --python /tmp/venv-clipbench/bin/python
        [--imagenet DIR] [--pairs 2]                       # about 10 minutes on 2 cores

--python: an environment with clip_benchmark (its PyPI release: the `clip_benchmark eval`
command its users run) beside open_clip and scikit-learn. Nothing of clip_benchmark's code
is copied here: its CLI runs as `python -m clip_benchmark.cli eval ...`, and, for each
image's logits (its CLI writes accuracies only), this file's `child` command, run under
--python, calls the functions that CLI calls (load_clip, build_dataset,
zero_shot_classifier, run_classification) and saves what they return.

The model is a tiny random open_clip CLIP (tests/helpers.py's: ViT, 64 px, 2 layers, no
download), as a `local-dir:` folder both sides read. Its logits over classes are close, so
the per-image comparison is strict: a rounding difference shows as a flip. Two datasets:

1. ImageNet-1k: a folder of 1000 WordNet-id class folders, one JPEG each (bench.py's
   photographs, or --imagenet DIR, e.g. real ImageNet images in that layout), read by
   clip_benchmark as `imagenet1k-unverified` (an ImageFolder of `val/`; its class index is
   the sorted WordNet id, ImageNet's own order) and by the pipeline as `dataset=imagefolder`.
   Both build the head from OpenAI's curated names and 80 templates: that the two lists
   are the same text is checked and printed.
2. Ten classes: peers_models.py's pets-named folders (200 images), the pipeline with its
   defaults (the folder names, `_` read as a space, and "a photo of a {}."), clip_benchmark
   given the same names and template in its --custom_classname_file / --custom_template_file.

Each side at fp32 (clip_benchmark's --no_amp; its default autocast runs bfloat16 on a CPU,
scored once to show what it does), batch size 64, each tool's default workers. Whole
processes (spawn to exit), A B A B ..., medians of --pairs, the pipeline with an empty head
cache each time (cold: it builds the head as clip_benchmark does), then once more with the
head cached. Per image: top-1 equal, top-5 lists equal, and the largest difference of the
probabilities after putting clip_benchmark's logits on the model's scale (it multiplies
the cosines by 100 whatever the model learnt; the pipeline by the model's logit scale,
here 1/0.07 = 14.3: top-k is the same, probabilities are not).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ROOT, child_env
from peers_models import (
    FOLDERS,
    fresh,
    interleaved,
    medians,
    metrics_row,
    named_corpus,
    pipeline_cmd,
    timed,
    tinted_jpeg,
)

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

DATASET = "imagenet1k-unverified"  # clip_benchmark's ImageFolder of ROOT/val
TIMEOUT = 1800.0


def imagenet_folder(work: Path, given: Path | None) -> Path:
    """ROOT with ROOT/val the 1000 WordNet-id folders: --imagenet's, or one photograph each."""
    from pipeline.data.imagenet import imagenet_classes

    root = work / "imagenet"
    if given is not None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "val").unlink(missing_ok=True)
        (root / "val").symlink_to(given.resolve())
        return root
    val = root / "val"
    if not (root / "done").exists():
        shutil.rmtree(root, ignore_errors=True)
        for i, wnid in enumerate(imagenet_classes()[0]):
            (val / wnid).mkdir(parents=True)
            (val / wnid / f"{wnid}_{i:04d}.JPEG").write_bytes(tinted_jpeg(i, 7, i % len(FOLDERS)))
        (root / "done").touch()
    return root


def ten_class_folder(work: Path) -> tuple[Path, Path, Path]:
    """ROOT (ROOT/val: the pets-named folders) and clip_benchmark's class-name and template
    files giving the pipeline's defaults for them."""
    root = work / "ten"
    named_corpus(root / "val", 200, 0)
    names, templates = work / "ten-names.json", work / "ten-templates.json"
    names.write_text(json.dumps({DATASET: [f.replace("_", " ") for f in FOLDERS]}))
    templates.write_text(json.dumps({DATASET: ["a photo of a {c}."]}))
    return root, names, templates


def clip_benchmark_cmd(
    python: str, root: Path, model: Path, out: Path, *extra: str, amp: bool = False
) -> list[str]:
    return [
        python, "-m", "clip_benchmark.cli", "eval", "--dataset", DATASET,
        "--dataset_root", str(root), "--model", f"local-dir:{model}", "--pretrained", "none",
        "--task", "zeroshot_classification", "--batch_size", "64",
        "--output", str(out), *([] if amp else ["--no_amp"]), *extra,
    ]  # fmt: skip


def child(args: argparse.Namespace) -> None:
    """Under --python: the logits clip_benchmark's own functions give each image, with the
    names and templates it used, saved to args.out (torch.save)."""
    import torch
    from clip_benchmark.datasets.builder import build_dataset
    from clip_benchmark.metrics.zeroshot_classification import (
        run_classification,
        zero_shot_classifier,
    )
    from clip_benchmark.models import load_clip

    model, transform, tokenizer = load_clip("open_clip", args.model, "none", None, "cpu")
    model.eval()
    ds = build_dataset(
        DATASET, root=args.root, transform=transform, split="test", download=False,
        custom_classname_file=args.names, custom_template_file=args.templates,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=False, num_workers=4)
    head = zero_shot_classifier(model, tokenizer, ds.classes, ds.templates, "cpu", amp=False)
    logits, target = run_classification(model, head, loader, "cpu", amp=False)
    files = [Path(p).name for p, _ in ds.samples]
    torch.save(
        {"logits": logits, "target": target, "files": files, "classes": list(ds.classes),
         "templates": list(ds.templates), "scale": float(model.logit_scale.exp())},
        args.out,
    )  # fmt: skip


def per_image(run: Path, theirs: dict[str, Any]) -> str:
    """The pipeline's predictions against clip_benchmark's logits, per image, by file name."""
    import pandas as pd
    import torch

    rows = pd.read_parquet(run / "predictions.parquet").set_index("id")
    rows.index = [Path(str(i)).name for i in rows.index]
    probs = (theirs["logits"] / 100 * theirs["scale"]).softmax(-1)
    top1 = top5 = 0
    worst = 0.0
    for k, name in enumerate(theirs["files"]):
        row = rows.loc[name]
        order = probs[k].topk(5).indices.tolist()
        top1 += order[0] == row["pred"]
        top5 += order == list(row["topk"])
        ours = torch.tensor(list(row["topk_prob"]))
        worst = max(worst, float((probs[k][list(row["topk"])] - ours).abs().max()))
    n = len(theirs["files"])
    given = torch.tensor(rows.loc[theirs["files"], "label"].tolist())
    labels = int((given == theirs["target"]).sum())
    return (
        f"per image ({n}): top-1 equal {top1}, top-5 lists equal (in order) {top5}; the label "
        f"equal {labels}; top-5 probabilities within {worst:.1e} (clip_benchmark's logits "
        f"put on the model's scale {theirs['scale']:.2f})"
    )


def compare(
    args: argparse.Namespace, what: str, root: Path, model: Path, extra: list[str], work: Path
) -> None:
    """Both sides on one dataset: whole processes, accuracies, per image."""
    print(f"\n## {what}")
    run, out = work / f"run-{root.name}", work / f"cb-{root.name}.json"
    ours = pipeline_cmd(
        "dataset=imagefolder", f"dataset.path={root / 'val'}", "model=openclip",
        f"model.name=local-dir:{model}", "batch_size=64", f"output_dir={run}",
    )  # fmt: skip
    theirs = clip_benchmark_cmd(args.python, root, model, out, *extra)
    print("$ " + " ".join(ours) + "\n$ " + " ".join(theirs))

    def cold(k: int) -> tuple[list[str], dict[str, str]]:
        fresh(run)
        return ours, {**child_env(), "ALEXNET_EVAL_CACHE": str(fresh(work / f"cache-{k}"))}

    seconds, _ = interleaved({"pipeline": cold, "clip_benchmark": lambda k: (theirs, None)},
                             args.pairs, TIMEOUT)  # fmt: skip
    print(medians(seconds, "pipeline", "clip_benchmark"))
    metrics, cb = metrics_row(run), json.loads(out.read_text())["metrics"]
    print(
        f"top-1/top-5: pipeline {metrics['top1']:.3f}/{metrics['top5']:.3f}, clip_benchmark "
        f"{100 * cb['acc1']:.3f}/{100 * cb['acc5']:.3f}"
    )
    env = {**child_env(), "ALEXNET_EVAL_CACHE": str(work / f"cache-{args.pairs - 1}")}
    fresh(run)
    took, _ = timed(ours, TIMEOUT, env)  # the last cold run's head, from its cache
    print(f"the pipeline again with its head cached: {took:.1f} s")
    amp_took, _ = timed(clip_benchmark_cmd(args.python, root, model, out, *extra, amp=True),
                        TIMEOUT)  # fmt: skip
    amp = json.loads(out.read_text())["metrics"]
    print(
        f"clip_benchmark with its default autocast (bfloat16 on a CPU; {amp_took:.1f} s): "
        f"{100 * amp['acc1']:.3f}/{100 * amp['acc5']:.3f}"
    )
    saved = work / f"child-{root.name}.pt"
    files = dict(zip(("--names", "--templates"), extra[1::2], strict=False))
    subprocess.run(
        [args.python, __file__, "child", "--root", str(root), "--model", f"local-dir:{model}",
         "--out", str(saved), *(x for kv in files.items() for x in kv)],
        check=True, cwd=ROOT, env=child_env(), timeout=TIMEOUT, capture_output=True,
    )  # fmt: skip
    import torch

    logits = torch.load(saved)
    print(per_image(run, logits))
    if what.startswith("ImageNet"):
        from pipeline.models.zeroshot import _shipped

        same = (
            tuple(logits["classes"]) == _shipped("clip-imagenet-names.txt"),
            tuple(t.replace("{c}", "{}") for t in logits["templates"])
            == _shipped("clip-imagenet-templates.txt"),
        )
        print(f"clip_benchmark's ImageNet names, templates equal the pipeline's: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what")
    kid = sub.add_parser("child", help="internal: clip_benchmark's side, under --python")
    kid.add_argument("--root", required=True)
    kid.add_argument("--model", required=True)
    kid.add_argument("--out", required=True)
    kid.add_argument("--names")
    kid.add_argument("--templates")
    parser.add_argument("--python", help="a Python with clip_benchmark")
    parser.add_argument("--imagenet", type=Path, help="1000 WordNet-id folders of images")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "peers27")
    args = parser.parse_args()
    if args.what == "child":
        return child(args)
    if not args.python:
        parser.error("--python: a Python with clip_benchmark installed")
    from helpers import tiny_clip

    version = subprocess.run(
        [args.python, "-c", "import importlib.metadata as m; print(m.version('clip_benchmark'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    print(f"# clip_benchmark {version} under {args.python}; the pipeline from {ROOT}")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    model = tiny_clip(work / "tiny-clip")
    compare(args, "ImageNet-1k (OpenAI's names and 80 templates)",
            imagenet_folder(work, args.imagenet), model, [], work)  # fmt: skip
    root, names, templates = ten_class_folder(work)
    extra = ["--custom_classname_file", str(names), "--custom_template_file", str(templates)]
    compare(args, "Ten classes (the folder names, 'a photo of a {}.')", root, model, extra, work)


if __name__ == "__main__":
    main()

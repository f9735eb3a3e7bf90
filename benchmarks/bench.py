"""The pipeline against torchvision's reference evaluation loop, side by side.

    python benchmarks/bench.py    # CPU: 4000 images, 3 A/B pairs, memory at 2k/8k/24k images
    python benchmarks/bench.py --device cuda --images 20000 --batch-size 512 --workers 16

Builds its own corpus (no network): ImageNet-like JPEGs (~500x375, quality
90) cut from the bundled sample's photographs with random crops, flips and
color shifts, in an ImageFolder layout. Both sides use the same random-init
AlexNet checkpoint, images, machine, batch size and worker count.

- baseline: torchvision references/classification's eval loop: ImageFolder +
  PIL + weights.transforms() + DataLoader + inference_mode, fp32, NCHW.
- pipeline: `pipeline.run.evaluate` end to end (dataset load, decoding,
  inference, Parquet writing) in the exact mode (backend=pil, fp32).
- pipeline-fast: the same with backend=tensor and AMP (fp16 on CUDA; bf16 on
  CPUs with bf16 units such as AMX, else off).

Each run is its own process (clean peak RSS); runs are interleaved A B C A B
C ... and medians are reported. Then the ceiling: model-only throughput on
ready tensors, decode+transform throughput of one worker, and the fraction of
the ceiling they imply that the pipeline reaches.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "pipeline" / "sample" / "sample.parquet"


# ------------------------------------------------------------------ corpus


def build_corpus(folder: Path, n: int, seed: int = 0) -> Path:
    """n ImageNet-like JPEGs in 10 class folders, cut from the sample's photographs."""
    import pyarrow.parquet as pq

    if (folder / "done").exists() and int((folder / "done").read_text()) == n:
        return folder
    photos = [
        Image.open(io.BytesIO(row["bytes"])).convert("RGB")
        for row in pq.read_table(SAMPLE, columns=["image"]).column("image").to_pylist()
    ]
    rng = np.random.default_rng(seed)
    for i in range(n):
        src = photos[i % len(photos)]
        w, h = src.size
        scale = rng.uniform(0.55, 1.0)
        cw, ch = int(w * scale), int(h * scale)
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        size = (500, 375) if rng.random() < 0.75 else (375, 500)
        img = src.crop((x, y, x + cw, y + ch)).resize(size, Image.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        shift = rng.uniform(0.8, 1.2, 3)
        img = Image.fromarray(np.clip(np.asarray(img) * shift, 0, 255).astype(np.uint8))
        d = folder / f"n{i % 10:08d}"
        d.mkdir(parents=True, exist_ok=True)
        img.save(d / f"img{i:06d}.JPEG", quality=90)
    (folder / "done").write_text(str(n))
    return folder


def checkpoint(folder: Path) -> Path:
    """Random AlexNet weights (no download here), last layer scaled so logits have real gaps:
    with plain random init every class scores ~0.001 and top-5 order is float noise."""
    path = folder / "alexnet-peaked.pth"
    if not path.exists():
        torch.manual_seed(0)
        model = torchvision.models.alexnet()
        with torch.no_grad():
            model.classifier[6].weight.mul_(200)
        torch.save(model.state_dict(), path)
    return path


# -------------------------------------------------------------- one run each


def run_baseline(
    corpus: Path, ckpt: Path, batch_size: int, workers: int, device: str, out: Path
) -> float:
    """torchvision references/classification's evaluate(): the loop users run today."""
    from torchvision.models import AlexNet_Weights

    t0 = time.perf_counter()
    model = torchvision.models.alexnet()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model = model.to(device).eval()
    dataset = torchvision.datasets.ImageFolder(
        str(corpus), AlexNet_Weights.IMAGENET1K_V1.transforms()
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, pin_memory=device == "cuda"
    )
    top5 = []
    with torch.inference_mode():
        for image, _target in loader:
            output = model(image.to(device, non_blocking=True))
            top5.append(output.topk(5).indices.cpu())
    paths = [os.path.relpath(path, corpus) for path, _ in dataset.samples]
    np.savez(out, top5=torch.cat(top5).numpy(), ids=np.array(paths))
    return time.perf_counter() - t0


def fast_amp(device: str) -> str:
    """The AMP of the fast mode: fp16 on CUDA; bf16 on CPUs with bf16 units (AMX, AVX512-BF16)."""
    if device.startswith("cuda"):
        return "fp16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "off"


def run_pipeline(
    corpus: Path, ckpt: Path, batch_size: int, workers: int, device: str, out: Path, fast: bool
) -> float:
    import datasets  # noqa: F401  (imported before the clock starts, like the baseline's libraries)

    from pipeline.config import Amp, Backend, Config, DatasetConfig, ModelConfig
    from pipeline.run import evaluate

    cfg = Config(
        dataset=DatasetConfig(path=str(corpus), split="train"),
        model=ModelConfig(weights=str(ckpt)),
        batch_size=batch_size,
        num_workers=str(workers),
        device=device,
        backend=Backend.tensor if fast else Backend.pil,
        amp=Amp(fast_amp(device)) if fast else Amp.off,
        progress=False,
    )
    t0 = time.perf_counter()
    evaluate(cfg, out)
    return time.perf_counter() - t0


def malloc_peak() -> Callable[[], float]:
    """Start sampling the bytes malloc has handed out and not taken back (glibc's mallinfo2,
    every 10 ms); returns a function giving the peak in MB (NaN where there is no glibc).

    Unlike peak RSS this leaves out memory the allocator holds free: if it is flat
    while RSS rises, nothing is being kept per image; the heap is fragmenting.
    """
    import ctypes
    import threading

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in [
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            ]
        ]

    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return lambda: float("nan")
    mallinfo2.restype = MallInfo2
    peak = [0]

    def sample() -> None:
        while True:
            info = mallinfo2()
            peak[0] = max(peak[0], info.uordblks + info.hblkhd)
            time.sleep(0.01)

    threading.Thread(target=sample, daemon=True).start()
    return lambda: peak[0] / 2**20


def one_run(args: argparse.Namespace) -> None:
    """A single timed run in this process; prints one JSON line."""
    corpus, ckpt, out = Path(args.corpus), Path(args.checkpoint), Path(args.out)
    n = int((corpus / "done").read_text())
    in_use = malloc_peak()
    if args.run == "baseline":
        wall = run_baseline(corpus, ckpt, args.batch_size, args.workers, args.device, out)
    else:
        fast = args.run == "pipeline-fast"
        wall = run_pipeline(corpus, ckpt, args.batch_size, args.workers, args.device, out, fast)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {
        "run": args.run,
        "n": n,
        "wall": wall,
        "img_s": n / wall,
        "rss_mb": rss_mb,
        "malloc_mb": in_use(),
    }
    if args.run != "baseline":  # the inference loop alone, without start-up and writing
        import pandas as pd

        row["loop_img_s"] = float(
            pd.read_parquet(out / "metrics.parquet")["images_per_sec"].iloc[0]
        )
    print(json.dumps(row))


def spawn(run: str, corpus: Path, ckpt: Path, out: Path, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--run",
        run,
        "--corpus",
        str(corpus),
        "--checkpoint",
        str(ckpt),
        "--out",
        str(out),
        "--batch-size",
        str(args.batch_size),
        "--workers",
        str(args.workers),
        "--device",
        args.device,
    ]
    shutil.rmtree(out, ignore_errors=True)  # a finished run folder would not be run again
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        sys.exit(f"{run} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------- ceiling


def model_only(batch_size: int, device: str, amp: str, seconds: float = 5.0) -> float:
    """Images/s of the model on ready normalized tensors, run as the pipeline runs it:
    channels_last, one autocast, `streams=auto` concurrent forwards (on CPU each on its share
    of the threads)."""
    import threading

    from pipeline.inference import resolve_streams, threads_per_stream

    dev = torch.device(device)
    streams = resolve_streams("auto", dev, compile=False)
    net = torchvision.models.alexnet().eval().to(dev).to(memory_format=torch.channels_last)
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    window: list[float] = []
    counts: list[int] = []

    def start_clock() -> None:  # runs once, when every stream has warmed up
        window[:] = [time.perf_counter(), time.perf_counter() + seconds]

    barrier = threading.Barrier(streams, action=start_clock)

    def stream() -> None:
        x = torch.randn(batch_size, 3, 224, 224, device=dev)
        x = x.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(dev.type, dtype=dtypes.get(amp), enabled=amp in dtypes)
        with torch.inference_mode(), autocast:
            net(x)
            barrier.wait()
            n = 0
            while time.perf_counter() < window[1]:
                net(x).topk(5)
                n += batch_size
            if dev.type == "cuda":
                torch.cuda.synchronize()
        counts.append(n)

    with threads_per_stream(streams, dev):
        threads = [threading.Thread(target=stream) for _ in range(streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return sum(counts) / (time.perf_counter() - window[0])


def decode_per_worker(corpus: Path, backend: str, count: int = 300) -> float:
    """Images/s of one worker (one thread): read, decode, resize and crop to uint8."""
    from torchvision.models import AlexNet_Weights

    from pipeline.transforms import Preprocess

    pre = Preprocess.from_transforms(AlexNet_Weights.IMAGENET1K_V1.transforms(), backend)
    raws = [f.read_bytes() for f in sorted(corpus.glob("*/*.JPEG"))[:count]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    t0 = time.perf_counter()
    for raw in raws:
        pre({"bytes": raw, "path": None}, ())
    rate = len(raws) / (time.perf_counter() - t0)
    torch.set_num_threads(threads)
    return rate


# -------------------------------------------------------------------- main


def agreement(a: Path, b: Path) -> tuple[float, float]:
    """(% identical top-5 lists, % same top-1) between two runs, matched by image file."""
    import pandas as pd

    def load(p: Path) -> dict[str, tuple[int, ...]]:
        if p.suffix == ".npz":
            z = np.load(p)
            return {str(i): tuple(t) for i, t in zip(z["ids"], z["top5"], strict=True)}
        frame = pd.read_parquet(p / "predictions.parquet", columns=["id", "topk"])
        return {i: tuple(t) for i, t in zip(frame["id"], frame["topk"], strict=True)}

    x, y = load(a), load(b)
    assert x.keys() == y.keys(), "the two runs saw different images"
    same5 = sum(x[k] == y[k] for k in x) / len(x)
    same1 = sum(x[k][0] == y[k][0] for k in x) / len(x)
    return 100 * same5, 100 * same1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=max(1, len(os.sched_getaffinity(0)) // 2))
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--memory", default="2000,8000,24000", help="image counts for the RSS check ('' to skip)"
    )
    p.add_argument("--work", default=str(ROOT / "benchmarks" / ".work"))
    p.add_argument("--run", help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run:
        return one_run(args)

    work = Path(args.work)
    corpus = build_corpus(work / f"corpus-{args.images}", args.images)
    ckpt = checkpoint(work)
    print(
        f"# {args.images} images, batch {args.batch_size}, {args.workers} workers, {args.device}, "
        f"{len(os.sched_getaffinity(0))} cores, torch {torch.__version__}"
    )
    runs = ["baseline", "pipeline", "pipeline-fast"]
    spawn("pipeline", corpus, ckpt, work / "warmup", args)  # fills the datasets cache once
    results: dict[str, list[dict]] = {r: [] for r in runs}
    for i in range(args.pairs):
        for r in runs:
            out = work / f"{r}-{i}" if r != "baseline" else work / f"baseline-{i}.npz"
            results[r].append(spawn(r, corpus, ckpt, out, args))
            row = results[r][-1]
            loop = (
                f"  (inference loop alone {row['loop_img_s']:.1f})" if "loop_img_s" in row else ""
            )
            print(f"  pair {i}: {r:14s} {row['img_s']:8.1f} img/s{loop}", flush=True)
    med = {r: statistics.median(x["img_s"] for x in results[r]) for r in runs}
    for r in runs:
        print(f"{r:14s} median {med[r]:8.1f} img/s   x{med[r] / med['baseline']:.2f} vs baseline")

    same5, same1 = agreement(work / "baseline-0.npz", work / "pipeline-0")
    print(f"exact mode vs baseline: identical top-5 {same5:.2f}%, same top-1 {same1:.2f}%")
    same5, same1 = agreement(work / "pipeline-0", work / "pipeline-fast-0")
    amp = fast_amp(args.device)
    print(
        f"fast mode (tensor, amp={amp}) vs exact: identical top-5 {same5:.2f}%, top-1 {same1:.2f}%"
    )

    cores = len(os.sched_getaffinity(0))
    for name, backend, mode_amp in (("pipeline", "pil", "off"), ("pipeline-fast", "tensor", amp)):
        m, d = (
            model_only(args.batch_size, args.device, mode_amp),
            decode_per_worker(corpus, backend),
        )
        if args.device == "cpu":  # model and decoding share the cores: their costs add up
            ceiling = 1 / (1 / m + 1 / (d * cores))
        else:  # the GPU runs the model while the workers decode
            ceiling = min(m, d * args.workers)
        print(
            f"{name:14s} model only {m:8.1f} img/s, decode+transform {d:6.1f} img/s per worker;"
            f" ceiling {ceiling:7.1f} img/s, end to end reached {100 * med[name] / ceiling:.0f}%"
        )

    counts = [int(c) for c in args.memory.split(",") if c]
    for c in counts:
        corpus_c = build_corpus(work / f"corpus-{c}", c)
        r = spawn("pipeline-fast", corpus_c, ckpt, work / f"mem-{c}", args)
        print(
            f"{c:6d} images (fast mode): peak RSS of the main process {r['rss_mb']:.0f} MB, "
            f"peak malloc in use {r['malloc_mb']:.0f} MB"
        )


if __name__ == "__main__":
    main()

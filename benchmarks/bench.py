"""The pipeline against torchvision's reference evaluation loop, side by side.

    python benchmarks/bench.py              # CPU: 4000 images, 3 A/B pairs, memory at 2k/8k/24k
    python benchmarks/bench.py --dry-run    # every step, tiny, on CPU: checks the script itself
    bash benchmarks/gpu.sh                  # the GPU run (its preflight, then this on CUDA)

Builds its own corpus (no network): ImageNet-like JPEGs (~500x375, quality 90)
cut from the bundled sample's photographs (pipeline/sample/corpus.py), in an
ImageFolder layout with real WordNet-id folders, in parallel. Both sides use
the same random-init AlexNet checkpoint, images, machine, batch size and
worker count.

- baseline: torchvision references/classification's eval loop: ImageFolder +
  PIL + weights.transforms() + DataLoader + inference_mode, fp32, NCHW.
- pipeline: `pipeline.run.evaluate` end to end (dataset load, decoding,
  inference, Parquet writing) in the exact mode (backend=pil, fp32).
- pipeline-fast: backend=tensor and AMP (fp16 on CUDA; bf16 on CPUs with bf16
  units such as AMX, else off).
- pipeline-device: backend=device (JPEGs decoded on the model's device in
  batches; nvJPEG on CUDA) with the same AMP.

Each run is its own process with a timeout; runs are interleaved A B C A B C
and medians are reported: whole-process seconds (spawn to exit), end-to-end
images/s inside the process, and the inference loop's images/s. Then the
ceiling (the model alone on ready tensors, one worker's decoding), the start-up
comparison (the whole `python -m pipeline` process against the whole baseline
process on 600 images), and peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMPORTS: tuple[str, ...] = ("torch", "torchvision", "datasets", "hydra", "omegaconf", "pandas")
IMPORTS += ("pyarrow", "tqdm", "PIL", "numpy", "safetensors", "pipeline.run")


# --------------------------------------------------------------- preflight


def preflight(device: str, work: Path) -> tuple[list[str], bool]:
    """Every reason this machine cannot run the benchmark, one line each, before any work:
    imports, CUDA, room in /dev/shm (DataLoader workers pass batches through it) and in
    the work folder; and whether TorchCodec imports (without it the device mode is left
    out and the tensor backend uses torchvision.io: said, not fatal). Prints versions."""
    import importlib

    problems, versions, codec = [], [], True
    for name in IMPORTS:
        try:
            module = importlib.import_module(name)
            versions.append(f"{name} {getattr(module, '__version__', '')}".strip())
        except Exception as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            problems.append(f"import {name} failed: {reason}")
    try:
        from torchcodec.decoders import decode_jpeg  # noqa: F401

        versions.append("torchcodec ok")
    except Exception as e:
        codec = False
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"# preflight: TorchCodec does not import ({reason}): no device mode this time")
    if device.startswith("cuda"):
        try:
            import torch

            if not torch.cuda.is_available():
                problems.append(f"CUDA is not available to torch {torch.__version__}")
            else:
                versions.append(f"GPU {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}")
        except Exception as e:
            problems.append(f"CUDA check failed: {e}")
    work.mkdir(parents=True, exist_ok=True)
    for folder, need in ((Path("/dev/shm"), 2.0), (work, 4.0)):
        if folder.exists():
            free = shutil.disk_usage(folder).free / 2**30
            if free < need:
                problems.append(f"{folder} has {free:.1f} GiB free; need {need:.0f} GiB")
    print("# " + ", ".join(versions))
    return problems, codec


# ------------------------------------------------------------------ corpus


def _write_images(args: tuple[Path, list[int], int]) -> None:
    from pipeline.data.imagenet import imagenet_classes
    from pipeline.sample import corpus

    folder, indices, seed = args
    wnids = imagenet_classes()[0]
    for i in indices:
        d = folder / wnids[(i % 10) * 97]  # 10 real ImageNet classes
        d.mkdir(parents=True, exist_ok=True)
        (d / f"img{i:06d}.JPEG").write_bytes(corpus.jpeg(i, seed))


def build_corpus(folder: Path, n: int, processes: int, seed: int = 0) -> Path:
    """n ImageNet-like JPEGs in 10 WordNet-id class folders, built by a process pool."""
    if (folder / "done").exists() and int((folder / "done").read_text()) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    chunks = [(folder, list(range(k, n, processes * 4)), seed) for k in range(processes * 4)]
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_write_images, chunks))
    (folder / "done").write_text(str(n))
    print(f"# corpus: {n} images in {time.perf_counter() - t0:.1f} s on {processes} processes")
    return folder


def checkpoint(folder: Path) -> Path:
    """Random AlexNet weights (no download here), last layer scaled so logits have real gaps:
    with plain random init every class scores ~0.001 and top-5 order is float noise."""
    import torch
    import torchvision

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
) -> tuple[float, float]:
    """torchvision references/classification's evaluate(): the loop users run today.
    Returns (seconds in the process, seconds of the loop alone)."""
    import numpy as np
    import torch
    import torchvision
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
    t_loop = time.perf_counter()
    with torch.inference_mode():
        for image, _target in loader:
            output = model(image.to(device, non_blocking=True))
            top5.append(output.topk(5).indices.cpu())
    loop = time.perf_counter() - t_loop
    paths = [os.path.relpath(path, corpus) for path, _ in dataset.samples]
    np.savez(out, top5=torch.cat(top5).numpy(), ids=np.array(paths))
    return time.perf_counter() - t0, loop


def fast_amp(device: str) -> str:
    """The AMP of the fast modes: fp16 on CUDA; bf16 on CPUs with bf16 units (AMX, AVX512-BF16)."""
    import torch

    if device.startswith("cuda"):
        return "fp16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "off"


MODES = {  # run name -> (backend, fast amp?)
    "pipeline": ("pil", False),
    "pipeline-fast": ("tensor", True),
    "pipeline-device": ("device", True),
}


def pipeline_overrides(run: str, corpus: Path, ckpt: Path, args: argparse.Namespace) -> list[str]:
    backend, fast = MODES[run]
    return [
        "dataset=imagefolder",
        f"dataset.path={corpus}",
        f"model.weights={ckpt}",
        f"batch_size={args.batch_size}",
        f"num_workers={args.workers}",
        f"device={args.device}",
        f"backend={backend}",
        f"amp={fast_amp(args.device) if fast else 'off'}",
        "dataset.restrict=false",  # 10 of the 1000 classes here: score over all, as the baseline
        "progress=false",
    ]


def run_pipeline(run: str, corpus: Path, ckpt: Path, out: Path, args: argparse.Namespace) -> float:
    import datasets  # noqa: F401  (imported before the clock starts, like the baseline's libraries)

    from pipeline.cli import compose
    from pipeline.run import evaluate

    cfg = compose(*pipeline_overrides(run, corpus, ckpt, args))
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
    row: dict = {"run": args.run, "n": n}
    if args.run == "baseline":
        wall, loop = run_baseline(corpus, ckpt, args.batch_size, args.workers, args.device, out)
        row["loop_img_s"] = n / loop
    else:
        wall = run_pipeline(args.run, corpus, ckpt, out, args)
        import pandas as pd

        metrics = pd.read_parquet(out / "metrics.parquet").iloc[0]
        row["loop_img_s"] = float(metrics["images_per_sec"])  # the inference loop alone
    row |= {
        "wall": wall,
        "img_s": n / wall,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "malloc_mb": in_use(),
    }
    print(json.dumps(row))


def child_env() -> dict[str, str]:
    """The caller's environment, with this repository first on PYTHONPATH: on a bare GPU
    box the dependencies themselves arrive on PYTHONPATH (wheels installed with --target)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": path}


def spawn(run: str, corpus: Path, ckpt: Path, out: Path, args: argparse.Namespace) -> dict:
    """One run in its own process, with a timeout; adds the whole process's seconds."""
    cmd = [sys.executable, __file__, "--run", run, "--corpus", str(corpus)]
    cmd += ["--checkpoint", str(ckpt), "--out", str(out), "--batch-size", str(args.batch_size)]
    cmd += ["--workers", str(args.workers), "--device", args.device]
    shutil.rmtree(out, ignore_errors=True)  # a finished run folder would not be run again
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=child_env(), timeout=args.timeout, check=False
    )
    if proc.returncode:
        sys.exit(f"{run} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]) | {"process": time.perf_counter() - t0}


def whole_process(run: str, corpus: Path, ckpt: Path, out: Path, args: argparse.Namespace) -> float:
    """Seconds of a whole command, start-up included: the real `python -m pipeline` entry
    point (Hydra and all) for the pipeline, this script's baseline for the reference."""
    shutil.rmtree(out, ignore_errors=True)
    if run == "baseline":
        cmd = [sys.executable, __file__, "--run", "baseline", "--corpus", str(corpus)]
        cmd += ["--checkpoint", str(ckpt), "--out", str(out), "--batch-size", str(args.batch_size)]
        cmd += ["--workers", str(args.workers), "--device", args.device]
    else:
        cmd = [sys.executable, "-m", "pipeline", *pipeline_overrides(run, corpus, ckpt, args)]
        cmd += [f"output_dir={out}"]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=child_env(), timeout=args.timeout, check=False
    )
    if proc.returncode:
        sys.exit(f"{run} (whole process) failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


# ----------------------------------------------------------------- ceiling


def model_only(batch_size: int, device: str, amp: str, seconds: float) -> float:
    """Images/s of the model on ready normalized tensors, run as the pipeline runs it:
    channels_last, one autocast, `streams=auto` concurrent forwards (on CPU each on its share
    of the threads)."""
    import threading

    import torch
    import torchvision

    from pipeline.inference import threads_per_stream
    from pipeline.settings import resolve_streams

    dev = torch.device(device)
    threads = torch.get_num_threads()
    streams = resolve_streams("auto", dev, compile=False, threads=threads)
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

    with threads_per_stream(streams, threads, dev):
        workers = [threading.Thread(target=stream) for _ in range(streams)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
    return sum(counts) / (time.perf_counter() - window[0])


def decode_per_worker(corpus: Path, backend: str, count: int = 300) -> float:
    """Images/s of one worker (one thread): read, decode, resize and crop to uint8."""
    import torch
    from torchvision.models import AlexNet_Weights

    from pipeline.choices import Backend
    from pipeline.data.images import Roots
    from pipeline.data.transforms import Preprocess

    pre = Preprocess.from_transforms(AlexNet_Weights.IMAGENET1K_V1.transforms(), Backend(backend))
    raws = [f.read_bytes() for f in sorted(corpus.glob("*/*.JPEG"))[:count]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    t0 = time.perf_counter()
    for raw in raws:
        pre({"bytes": raw, "path": None}, Roots())
    rate = len(raws) / (time.perf_counter() - t0)
    torch.set_num_threads(threads)
    return rate


# -------------------------------------------------------------------- main


def agreement(a: Path, b: Path) -> tuple[float, float]:
    """(% identical top-5 lists, % same top-1) between two runs, matched by image file."""
    import numpy as np
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


def compare(
    runs: list[str], corpus: Path, ckpt: Path, work: Path, args: argparse.Namespace
) -> dict:
    """Interleaved runs, medians, and the agreement of the fast modes with the exact one."""
    results: dict[str, list[dict]] = {r: [] for r in runs}
    for i in range(args.pairs):
        for r in runs:
            out = work / f"{r}-{i}" if r != "baseline" else work / f"baseline-{i}.npz"
            row = spawn(r, corpus, ckpt, out, args)
            results[r].append(row)
            print(
                f"  pair {i}: {r:16s} {row['img_s']:8.1f} img/s end to end, loop "
                f"{row['loop_img_s']:8.1f} img/s, whole process {row['process']:6.1f} s",
                flush=True,
            )
    med = {r: statistics.median(x["img_s"] for x in results[r]) for r in runs}
    for r in runs:
        loop = statistics.median(x["loop_img_s"] for x in results[r])
        process = statistics.median(x["process"] for x in results[r])
        print(
            f"{r:16s} median {med[r]:8.1f} img/s end to end (x{med[r] / med['baseline']:.2f} vs "
            f"baseline), loop {loop:8.1f} img/s, whole process {process:6.1f} s"
        )
    same5, same1 = agreement(work / "baseline-0.npz", work / "pipeline-0")
    print(f"exact mode vs baseline: identical top-5 {same5:.2f}%, same top-1 {same1:.2f}%")
    for r in runs[2:]:
        same5, same1 = agreement(work / "pipeline-0", work / f"{r}-0")
        print(f"{r} vs exact: identical top-5 {same5:.2f}%, same top-1 {same1:.2f}%")
    return med


def ceiling(med: dict, corpus: Path, args: argparse.Namespace) -> None:
    cores = len(os.sched_getaffinity(0))
    amp = fast_amp(args.device)
    for name, backend, mode_amp in (("pipeline", "pil", "off"), ("pipeline-fast", "tensor", amp)):
        m = model_only(args.batch_size, args.device, mode_amp, args.model_seconds)
        d = decode_per_worker(corpus, backend)
        # on CPU the model and decoding share the cores, so their costs add up; on a GPU
        # the model runs while the workers decode
        top = 1 / (1 / m + 1 / (d * cores)) if args.device == "cpu" else min(m, d * args.workers)
        print(
            f"{name:16s} model only {m:8.1f} img/s, decode+transform {d:6.1f} img/s per worker;"
            f" ceiling {top:7.1f} img/s, end to end reached {100 * med[name] / top:.0f}%"
        )


def start_up(corpus: Path, ckpt: Path, work: Path, args: argparse.Namespace) -> None:
    """The whole process, start-up included, on a small corpus: `python -m pipeline` (exact
    mode) against the baseline process, interleaved pairs, medians."""
    times: dict[str, list[float]] = {"baseline": [], "pipeline": []}
    for i in range(args.pairs):
        for run in times:
            times[run].append(whole_process(run, corpus, ckpt, work / f"whole-{run}-{i}", args))
        last = {run: f"{t[-1]:.2f} s" for run, t in times.items()}
        print(f"  pair {i}: baseline {last['baseline']}, pipeline {last['pipeline']}")
    b, p = statistics.median(times["baseline"]), statistics.median(times["pipeline"])
    n = int((corpus / "done").read_text())
    print(
        f"whole process, {n} images: baseline {b:.2f} s, python -m pipeline {p:.2f} s: {p / b:.2f}x"
    )


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
    p.add_argument(
        "--startup-images", type=int, default=600, help="corpus of the start-up comparison"
    )
    p.add_argument("--timeout", type=int, default=900, help="seconds any one child run may take")
    p.add_argument("--model-seconds", type=float, default=5.0)
    p.add_argument("--work", default=str(ROOT / "benchmarks" / ".work"))
    p.add_argument("--dry-run", action="store_true", help="every step, tiny, on CPU (< 3 minutes)")
    for hidden in ("--run", "--corpus", "--checkpoint", "--out"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run:
        return one_run(args)
    if args.dry_run:
        args.device, args.images, args.pairs, args.memory = "cpu", 96, 1, ""
        args.startup_images, args.batch_size, args.workers, args.model_seconds = 48, 16, 1, 1.0
    work = Path(args.work)
    problems, codec = preflight(args.device, work)
    if problems:
        print("\n".join(f"preflight: {line}" for line in problems), file=sys.stderr)
        sys.exit(1)
    cores = len(os.sched_getaffinity(0))
    corpus = build_corpus(work / f"corpus-{args.images}", args.images, cores)
    ckpt = checkpoint(work)
    print(
        f"# {args.images} images, batch {args.batch_size}, {args.workers} workers, {args.device}, "
        f"{cores} cores"
    )
    runs = ["baseline", "pipeline", "pipeline-fast"]
    if codec and (args.device.startswith("cuda") or args.dry_run):
        runs.append("pipeline-device")
    spawn("pipeline", corpus, ckpt, work / "warmup", args)  # fills the datasets cache once
    med = compare(runs, corpus, ckpt, work, args)
    ceiling(med, corpus, args)
    small = build_corpus(work / f"corpus-{args.startup_images}", args.startup_images, cores)
    whole_process("pipeline", small, ckpt, work / "whole-warmup", args)  # its datasets cache
    start_up(small, ckpt, work, args)
    for c in [int(c) for c in args.memory.split(",") if c]:
        corpus_c = build_corpus(work / f"corpus-{c}", c, cores)
        r = spawn("pipeline-fast", corpus_c, ckpt, work / f"mem-{c}", args)
        print(
            f"{c:6d} images (fast mode): peak RSS of the main process {r['rss_mb']:.0f} MB, "
            f"peak malloc in use {r['malloc_mb']:.0f} MB"
        )


if __name__ == "__main__":
    main()

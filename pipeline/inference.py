"""The inference loop: batches of uint8 crops -> top-k on the device -> the writer.

Batches run on `streams` threads. On a GPU that is one thread that queues
kernels while the main thread brings the previous batch's top-k back, so the
GPU never waits for the writer. On a CPU it is several forwards at once, each
with its share of the cores: independent forwards need no barrier between
cores, so a core that a decoding worker takes slows one forward, not all of
them. The main thread lands batches strictly in order.
"""

from __future__ import annotations

import math
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, nullcontext, suppress
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.choices import OnError
from pipeline.data.loader import Batch
from pipeline.data.transforms import Preprocess
from pipeline.errors import UserError
from pipeline.runs import predictions
from pipeline.runs.plan import RuntimePlan

_thread = threading.local()
TOPK = 5


def score(
    batches: Iterable[Batch],
    writer: predictions.PredictionWriter,
    net: torch.nn.Module,
    preprocess: Preprocess,
    runtime: RuntimePlan,
    *,
    progress: tqdm,
    mask: torch.Tensor | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Score every batch and hand it to the writer in order; returns how many images it scored.

    Up to streams + 1 batches are in flight. `should_stop` is asked between batches (a
    signal sets it): the batches in flight then land and the loop returns early. On an
    exception (a dead worker, a bad image with on_error=raise, OOM) the batches already
    scored are landed first, so the resume starts after them.
    """
    device, amp, streams = torch.device(runtime.device), runtime.amp_dtype, runtime.streams
    dtype = amp if amp and device.type == "cuda" else torch.float32  # normalize in AMP dtype
    memory_format = torch.channels_last if runtime.channels_last else torch.contiguous_format
    mask = None if mask is None else mask.to(device)
    loop = Landing(writer, progress, device=device, on_error=runtime.on_error, slots=streams + 1)
    with Streams(streams, device, amp) as pool, progress:
        try:
            for batch in batches:
                if loop.full:
                    loop.land_oldest()
                args = (net, preprocess, device, dtype, memory_format, loop.buffer(), mask)
                loop.start(batch, pool.submit(launch, batch, *args))
                if should_stop():
                    break
            loop.land_all()
        except BaseException:
            loop.abandon()
            raise
    return loop.scored


class Streams:
    """`count` threads that run batches, each for its whole life under inference mode, one
    autocast (which then caches the weights' low-precision copies instead of casting them
    every batch) and, on CUDA, the side stream that copies inputs while the previous batch
    computes; left cleanly when the loop ends."""

    def __init__(self, count: int, device: torch.device, amp: torch.dtype | None) -> None:
        self.jobs: queue.SimpleQueue[tuple[Future, Callable[..., Any], tuple] | None]
        self.jobs = queue.SimpleQueue()
        self.threads = [
            threading.Thread(target=self._serve, args=(device, amp), daemon=True)
            for _ in range(count)
        ]

    def __enter__(self) -> Streams:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for _ in self.threads:
            self.jobs.put(None)
        for thread in self.threads:
            thread.join()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        self.jobs.put((future, fn, args))
        return future

    def _serve(self, device: torch.device, amp: torch.dtype | None) -> None:
        autocast = torch.autocast(device.type, dtype=amp) if amp else nullcontext()
        with torch.inference_mode(), autocast, _copy_stream(device):
            while (job := self.jobs.get()) is not None:
                future, fn, args = job
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args))
                    except BaseException as e:  # raised again where the batch lands
                        future.set_exception(e)


@contextmanager
def _copy_stream(device: torch.device) -> Iterator[None]:
    """On CUDA, this thread's side stream for host-to-device copies (to_device)."""
    _thread.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    try:
        yield
    finally:
        _thread.copy_stream = None


class Landing:
    """The batches in flight, oldest first, and their landing: results to the CPU and to
    the writer, strictly in order. Each slot has its own input buffer, reused by the
    batch after next."""

    def __init__(
        self,
        writer: predictions.PredictionWriter,
        progress: tqdm,
        *,
        device: torch.device,
        on_error: OnError,  # type: ignore[valid-type]
        slots: int,
    ) -> None:
        self.writer, self.progress, self.device, self.on_error = writer, progress, device, on_error
        self.buffers: list[torch.Tensor | None] = [None] * slots
        self.inflight: deque[tuple[int, Batch, Future]] = deque()
        self.started = self.scored = 0

    @property
    def full(self) -> bool:
        return len(self.inflight) == len(self.buffers)

    def buffer(self) -> torch.Tensor | None:
        """The input buffer of the next slot (its previous batch has landed)."""
        return self.buffers[self.started % len(self.buffers)]

    def start(self, batch: Batch, future: Future) -> None:
        self.inflight.append((self.started % len(self.buffers), batch, future))
        self.started += 1

    def land_oldest(self) -> None:
        """Wait for the oldest batch and hand its results to the writer. If it failed, the
        later batches are dropped: landing them would leave a gap."""
        slot, batch, future = self.inflight.popleft()
        try:
            outputs, self.buffers[slot] = future.result()
            check_decoded(batch, self.on_error)  # in row order: backend=device decodes late
        except torch.OutOfMemoryError:
            self.inflight.clear()
            raise OutOfMemory(self.device, len(batch.index)) from None
        except BaseException:
            self.inflight.clear()
            raise
        self.writer.add(scored(batch, *outputs))
        self.progress.update(len(batch.index))
        self.scored += len(outputs[0])

    def land_all(self) -> None:
        while self.inflight:
            self.land_oldest()

    def abandon(self) -> None:
        """After a failure: cancel what has not started, land what was scored before it."""
        for _, _, future in self.inflight:
            future.cancel()  # not started yet: not worth waiting for
        with suppress(Exception):  # the first error is the one to report
            while self.inflight and not self.inflight[0][2].cancelled():
                self.land_oldest()


def scored(batch: Batch, ids: torch.Tensor, probs: torch.Tensor) -> predictions.Scored:
    """A landed batch as the writer takes it: every row's metadata, the outputs of the rows
    that were scored, copied off the device's (and the stream's) memory."""
    ids_np, probs_np = (t.cpu().numpy().copy() for t in (ids, probs))
    ok = batch.ok.numpy().copy()
    labels = [x for x, good in zip(batch.label, ok, strict=True) if good]
    label_ids = torch.tensor([-1 if x is None else x for x in labels], dtype=torch.int64)
    top1, top5 = (t.numpy() for t in hits(torch.from_numpy(ids_np), label_ids))
    return predictions.Scored(
        index=batch.index.numpy().copy(),
        id=batch.id,
        dataset_label=batch.dataset_label,
        label=batch.label,
        error=batch.error,
        ok=ok,
        topk=ids_np,
        topk_prob=probs_np.astype(np.float32, copy=False),  # already a copy, fp32 from topk
        top1=top1,
        top5=top5,
    )


def launch(
    batch: Batch,
    net: torch.nn.Module,
    preprocess: Preprocess,
    device: torch.device,
    dtype: torch.dtype,
    memory_format: torch.memory_format,
    buffer: torch.Tensor | None,
    mask: torch.Tensor | None = None,
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    """Run one batch of uint8 crops: (top-k ids, probs) on the device, and the input buffer
    to reuse for a later batch."""
    images = to_device(batch.image, device)
    if batch.encoded:
        images = with_decoded(batch, images, preprocess, device)
    if not batch.ok.any():
        k = TOPK
        return (torch.zeros(0, k, dtype=torch.int64), torch.zeros(0, k)), buffer
    x = preprocess.normalize(images, dtype, memory_format, out=buffer)
    return topk(net(x), mask), x


def with_decoded(
    batch: Batch, crops: torch.Tensor, preprocess: Preprocess, device: torch.device
) -> torch.Tensor:
    """backend=device: decode the batch's JPEGs on the device, and return every decodable
    row's crop in row order. A JPEG that not even Pillow decodes becomes an error row here
    (its reason in batch.error), as it would have in a worker."""
    ok = batch.ok
    encoded = dict(
        zip(batch.encoded_rows, preprocess.decode_on(batch.encoded, device), strict=True)
    )
    from_workers = [j for j in ok.nonzero().flatten().tolist() if j not in encoded]
    rows = dict(zip(from_workers, crops, strict=True))
    for j, crop in encoded.items():
        if isinstance(crop, str):
            ok[j], batch.error[j] = False, crop
        else:
            rows[j] = crop
    return torch.stack([rows[j] for j in sorted(rows)]) if rows else crops


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a (pinned) batch to the device; on CUDA on this thread's side stream, which the
    compute stream waits for: the copy of batch i+1 overlaps the forward of batch i."""
    copy_stream = getattr(_thread, "copy_stream", None)
    if copy_stream is None:
        return images.to(device, non_blocking=True)
    compute = torch.cuda.current_stream(device)
    with torch.cuda.stream(copy_stream):
        x = images.to(device, non_blocking=True)
    compute.wait_stream(copy_stream)
    x.record_stream(compute)  # its memory is not reused until the compute stream is done
    return x


def check_decoded(batch: Batch, on_error: OnError) -> None:  # type: ignore[valid-type]
    """With on_error=raise, the first undecodable image of a batch ends the run."""
    if on_error is OnError["raise"] and not batch.ok.all():
        j = int((~batch.ok).nonzero()[0])
        raise UserError(
            f"Image at row {int(batch.index[j])} (id {batch.id[j]}) "
            f"could not be decoded: {batch.error[j]}"
        )


class OutOfMemory(UserError):
    """The device ran out of memory scoring a batch of `size` (oom_retry halves it)."""

    def __init__(self, device: torch.device, size: int, where: str = "at") -> None:
        super().__init__(
            f"Out of {device.type} memory {where} batch_size={size}; try "
            f"batch_size={max(size // 2, 1)} (oom_retry=true halves it by itself)"
        )


@contextmanager
def threads_per_stream(streams: int, threads: int, device: torch.device) -> Iterator[None]:
    """On CPU, give each stream an equal share of the model's threads for the loop."""
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(max(1, threads // streams))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def output_mask(subset: tuple[int, ...] | None, classes: int) -> torch.Tensor | None:
    """The outputs a class subset restricts top-k to (None: all of them)."""
    if subset is None:
        return None
    mask = torch.zeros(classes, dtype=torch.bool)
    mask[list(subset)] = True
    return mask


def topk(
    logits: torch.Tensor, mask: torch.Tensor | None = None, k: int = TOPK
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) logits -> (ids, softmax probs) of the k best classes, best first; fp32 softmax.
    `mask` (C,) bool restricts the outputs to a class subset: the others get no probability,
    and k shrinks to the subset's size (Hendrycks et al.'s protocol for ImageNet-R/-A)."""
    logits = logits.float()
    if mask is not None:
        logits = logits.masked_fill(~mask, -math.inf)
        k = min(k, int(mask.sum()))
    probs, ids = logits.softmax(dim=-1).topk(min(k, logits.shape[-1]), dim=-1)
    return ids, probs


def hits(ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-1 correct, top-5 correct) per row, from (N, k) ids and (N,) labels."""
    match = ids == labels[:, None]
    return match[:, :1].any(dim=1), match[:, :TOPK].any(dim=1)

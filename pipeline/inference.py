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
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline import write
from pipeline.errors import UserError
from pipeline.transforms import Preprocess

_thread = threading.local()
TOPK = 5


def score(
    batches: Iterable[dict[str, Any]],
    writer: write.PredictionWriter,
    net: torch.nn.Module,
    preprocess: Preprocess,
    *,
    device: torch.device,
    amp: torch.dtype | None,
    streams: int,
    on_error: str,
    channels_last: bool,
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
    dtype = amp if amp and device.type == "cuda" else torch.float32  # normalize in AMP dtype
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    mask = None if mask is None else mask.to(device)
    buffers: list[torch.Tensor | None] = [None] * (streams + 1)  # one input buffer per slot
    inflight: deque[tuple[int, dict[str, Any], Future]] = deque()
    n = 0
    pool = ThreadPoolExecutor(streams, initializer=_enter_contexts, initargs=(device, amp))
    with pool, progress:
        try:
            for k, batch in enumerate(batches):
                if len(inflight) == len(buffers):
                    n += _land_oldest(inflight, buffers, writer, progress, device, on_error)
                slot = k % len(buffers)  # its previous batch has landed
                args = (batch, net, preprocess, device, dtype, memory_format, buffers[slot], mask)
                inflight.append((slot, batch, pool.submit(launch, *args)))
                if should_stop():
                    break
            while inflight:
                n += _land_oldest(inflight, buffers, writer, progress, device, on_error)
        except BaseException:
            for _, _, future in inflight:
                future.cancel()  # not started yet: not worth waiting for
            with suppress(Exception):  # the first error is the one to report
                while inflight and not inflight[0][2].cancelled():
                    _land_oldest(inflight, buffers, writer, progress, device, on_error)
            raise
    return n


def _enter_contexts(device: torch.device, amp: torch.dtype | None) -> None:
    """Per stream thread, for its whole life: inference mode, one autocast (which then caches
    the weights' low-precision copies instead of casting them every batch), and on CUDA the
    side stream that copies inputs while the previous batch computes."""
    _thread.contexts = stack = ExitStack()
    stack.enter_context(torch.inference_mode())
    if amp:
        stack.enter_context(torch.autocast(device.type, dtype=amp))
    _thread.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None


def _land_oldest(
    inflight: deque[tuple[int, dict[str, Any], Future]],
    buffers: list[torch.Tensor | None],
    writer: write.PredictionWriter,
    progress: tqdm,
    device: torch.device,
    on_error: str = "record",
) -> int:
    """Wait for the oldest batch, bring its results to the CPU and hand them to the writer.

    If it failed, the later batches are dropped: landing them would leave a gap.
    """
    slot, batch, future = inflight.popleft()
    try:
        outputs, buffers[slot] = future.result()
        check_decoded(batch, on_error)  # here, in row order: backend=device decodes in launch
    except torch.OutOfMemoryError:
        inflight.clear()
        raise UserError(oom_message(device, len(batch["index"]))) from None
    except BaseException:
        inflight.clear()
        raise
    ids, probs = (t.cpu().numpy().copy() for t in outputs)
    ok = batch["ok"].numpy().copy()
    scored = [x for x, good in zip(batch["label"], ok, strict=True) if good]
    labels = torch.tensor([-1 if x is None else x for x in scored], dtype=torch.int64)
    top1, top5 = (t.numpy() for t in hits(torch.from_numpy(ids), labels))
    writer.add(
        write.Scored(
            index=batch["index"].numpy().copy(),
            id=batch["id"],
            dataset_label=batch["dataset_label"],
            label=batch["label"],
            error=batch["error"],
            ok=ok,
            topk=ids,
            topk_prob=probs.astype(np.float32, copy=False),  # already a copy, fp32 from topk
            top1=top1,
            top5=top5,
        )
    )
    progress.update(len(batch["index"]))
    return len(ids)


def launch(
    batch: dict[str, Any],
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
    images = to_device(batch["image"], device)
    if batch["encoded"]:
        images = with_decoded(batch, images, preprocess, device)
    if not batch["ok"].any():
        k = TOPK
        return (torch.zeros(0, k, dtype=torch.int64), torch.zeros(0, k)), buffer
    x = preprocess.normalize(images, dtype, memory_format, out=buffer)
    return topk(net(x), mask), x


def with_decoded(
    batch: dict[str, Any], crops: torch.Tensor, preprocess: Preprocess, device: torch.device
) -> torch.Tensor:
    """backend=device: decode the batch's JPEGs on the device, and return every decodable
    row's crop in row order. A JPEG that not even Pillow decodes becomes an error row here
    (its reason in batch["error"]), as it would have in a worker."""
    ok = batch["ok"]
    encoded = dict(
        zip(batch["encoded_rows"], preprocess.decode_on(batch["encoded"], device), strict=True)
    )
    from_workers = [j for j in ok.nonzero().flatten().tolist() if j not in encoded]
    rows = dict(zip(from_workers, crops, strict=True))
    for j, crop in encoded.items():
        if isinstance(crop, str):
            ok[j], batch["error"][j] = False, crop
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


def check_decoded(batch: dict[str, Any], on_error: str) -> None:
    """With on_error=raise, the first undecodable image of a batch ends the run."""
    if on_error == "raise" and not batch["ok"].all():
        j = int((~batch["ok"]).nonzero()[0])
        raise UserError(
            f"Image at row {int(batch['index'][j])} (id {batch['id'][j]}) "
            f"could not be decoded: {batch['error'][j]}"
        )


def oom_message(device: torch.device, size: int) -> str:
    return f"Out of {device.type} memory at batch_size={size}; try batch_size={max(size // 2, 1)}"


def resolve_streams(value: str, device: torch.device, *, compile: bool) -> int:
    """streams: a count, or auto = on CPU one per core the model may use (at most 4), else 1."""
    if value != "auto":
        if not value.isdigit() or int(value) < 1:
            raise UserError(f"streams={value!r}; valid: auto or a count of 1 or more")
        if int(value) > 1 and device.type != "cpu":
            raise UserError(
                f"streams={value} splits CPU cores between batches; on {device.type} use 1 or auto"
            )
        if int(value) > 1 and compile:
            raise UserError(f"compile=true runs one stream; use streams=1 or auto, not {value}")
        return int(value)
    if device.type != "cpu" or compile:  # compiled graphs warm up once, in one thread
        return 1
    return max(1, min(4, torch.get_num_threads()))


@contextmanager
def threads_per_stream(streams: int, device: torch.device) -> Iterator[None]:
    """On CPU, give each stream an equal share of the model's threads for the run."""
    total = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(max(1, total // streams))
    try:
        yield
    finally:
        torch.set_num_threads(total)


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

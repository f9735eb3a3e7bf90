"""The runtime of this process, resolved before anything is loaded into the plan's
runtime part: the device, the amp dtype, the decoding workers, the streams and the model's
threads.

Resolving changes nothing: torch's thread count is applied by the loop that uses it
(inference.threads_per_stream), the device is made current by the one that joins the
process group (distributed.setup).
"""

from __future__ import annotations

import os

import torch

from pipeline.choices import Amp, Backend
from pipeline.errors import UserError, first_line
from pipeline.request import Runtime
from pipeline.runs.plan import RuntimePlan

DEVICES = "auto, cpu, cuda, cuda:N, mps"


def resolve(
    asked: Runtime, device: torch.device, world_size: int, *, sharing: int = 1
) -> RuntimePlan:
    """The runtime of this process, from the request, the device it runs on, and how many
    processes of the run see the same cores (torchrun's ranks of a node, say)."""
    if asked.backend is Backend.device:
        require_torchcodec()
    threads = _threads(device, sharing)
    amp = resolve_amp(asked.amp, device)
    return RuntimePlan(
        device_type=device.type,
        amp=str(amp).removeprefix("torch.") if amp else "off",
        device=str(device),
        batch_size=asked.batch_size,
        num_workers=resolve_workers(asked.num_workers, device, sharing),
        streams=resolve_streams(asked.streams, device, compile=asked.compile, threads=threads),
        threads=threads,
        world_size=world_size,
        commit_rows=asked.commit_rows,
        channels_last=asked.channels_last,
        compile=asked.compile,
        on_error=asked.on_error,
        progress=asked.progress,
    )


def resolve_device(name: str) -> torch.device:
    """auto | cpu | cuda | cuda:N | mps -> a device that exists here, or a UserError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"Unknown device '{name}'; valid: {DEVICES}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"device={name} but CUDA is not available here; use device=cpu")
        if device.index is not None and device.index >= count:
            raise UserError(
                f"device={name} but only {count} GPU(s) found: cuda:0..cuda:{count - 1}"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device={name} but MPS is not available here; use device=cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"Unknown device '{name}'; valid: {DEVICES}")
    return device


def resolve_amp(amp: Amp, device: torch.device) -> torch.dtype | None:
    """auto | off | fp16 | bf16 -> the autocast dtype (None: fp32). auto = fp16 on CUDA only.
    A dtype the device cannot run is one line here, before anything is loaded."""
    if amp is Amp.auto:
        return torch.float16 if device.type == "cuda" else None
    if amp is Amp.off:
        return None
    if amp is Amp.fp16 and device.type == "cpu":
        raise UserError("amp=fp16 needs a GPU; on cpu use amp=bf16 or amp=off")
    if amp is Amp.bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise UserError(f"amp=bf16: {name} has no bf16 support; use amp=fp16 or amp=off")
    return torch.float16 if amp is Amp.fp16 else torch.bfloat16


def resolve_workers(value: str, device: torch.device, sharing: int = 1) -> int:
    """num_workers: a count, or auto = this rank's cores (on CPU half: the model runs there)."""
    if value != "auto":
        if not value.isdigit():
            raise UserError(
                f"num_workers={value!r}; valid: auto or a count (0 = decode in-process)"
            )
        return int(value)
    return _cores(sharing) if device.type != "cpu" else max(1, _cores(sharing) // 2)


def resolve_streams(value: str, device: torch.device, *, compile: bool, threads: int) -> int:
    """streams: a count, or auto = on CPU one per thread of the model (at most 4), else 1."""
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
    return max(1, min(4, threads))


def require_torchcodec() -> None:
    """backend=device decodes with TorchCodec's batched JPEG decoder: it must import."""
    try:
        from torchcodec.decoders import decode_jpeg  # noqa: F401
    except (ImportError, OSError, RuntimeError) as e:
        reason = first_line(e)
        raise UserError(
            f"backend=device needs TorchCodec ({reason}); pip install torchcodec, or use "
            f"backend=tensor"
        ) from None


def _cores(sharing: int) -> int:
    """This process's share of the cores it may use (`sharing` processes see the same)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // sharing)


def _threads(device: torch.device, sharing: int) -> int:
    """On CPU each rank's model gets its share of the cores (one rank: torch's default,
    which already counts only the cores this process may use)."""
    if device.type == "cpu" and sharing > 1:
        return _cores(sharing)
    return torch.get_num_threads()

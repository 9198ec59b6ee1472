"""Run-time choices that depend on the machine: bf16 autocast or float32, and the CPU thread count.

CPUs differ: with bf16 matrix units (AMX, AVX512-BF16) bf16 autocast makes a training step 1.2-2x faster;
on AVX2-only CPUs it makes it 6-8x *slower* than float32 (oneDNN emulates bf16 there). So recipes ask for
`bf16: auto` and `resolve_bf16("auto", device)` decides from the hardware; the choice is logged. On a CPU with
bf16 units the gain also depends on the model size, so `lomdm-train` does not take this answer there: it times
both precisions on the run's first batch (`hf_lomdm.precision`).

Threads: on a 2-core machine shared with other work, two OpenMP threads were ~3x slower than one (each step
waits for the slowest thread), while on an idle one two threads gain much less than 2x
(`benchmarks/threads.py` measures both). `default_num_threads()` therefore uses one thread on machines
with at most 2 cores and leaves PyTorch's default elsewhere; `OMP_NUM_THREADS` always wins.
"""

from __future__ import annotations

import os

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

BF16_CHOICES = ("auto", "true", "false")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AMX-BF16 or AVX512-BF16), where bf16 autocast pays."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private torch.cpu probes (2.3+)
    if all(hasattr(torch.cpu, name) for name in probes):
        return any(getattr(torch.cpu, name)() for name in probes)
    return bool({"amx_bf16", "avx512_bf16"} & _cpu_flags())


def has_fast_bf16(device: torch.device | str) -> bool:
    """Whether bf16 autocast is faster than float32 on `device`: a CUDA GPU with bf16 support, or a CPU with
    bf16 matrix units. Anything else (AVX2-only CPUs, MPS, old GPUs) answers False."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_fast_bf16()
    return False


def resolve_bf16(value: str | bool, device: torch.device | str) -> bool:
    """`bf16` setting of a recipe (`auto`, true or false) -> whether to use bf16 autocast; logs the decision.

    Raises:
        ValueError: for a value that is none of `auto`, `true`, `false`.
    """
    text = str(value).strip().lower()
    if text not in BF16_CHOICES:
        raise ValueError(f"`bf16` must be one of {BF16_CHOICES}, got {value!r}.")
    if text != "auto":
        return text == "true"
    fast = has_fast_bf16(device)
    kind = "bf16 matrix units" if fast else "no fast bf16 (bf16 autocast would be several times slower)"
    logger.warning(
        f"bf16=auto on {torch.device(device).type}: {kind} -> {'bf16 autocast' if fast else 'float32'}."
    )
    return fast


def default_num_threads() -> int | None:
    """Threads for PyTorch on the CPU when `OMP_NUM_THREADS` is unset: 1 on machines with <= 2 cores
    (never the 3x slow case of two threads on a busy 2-core box), else None (PyTorch's default)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return 1 if (os.cpu_count() or 1) <= 2 else None


def configure_threads() -> int:
    """Apply `default_num_threads()` (logged) and return the number of threads PyTorch uses."""
    threads = default_num_threads()
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        logger.warning(
            f"{os.cpu_count()} CPU cores: using {threads} thread (set OMP_NUM_THREADS to choose; "
            "two threads on a busy 2-core machine were ~3x slower)."
        )
    return torch.get_num_threads()


__all__ = ["configure_threads", "cpu_has_fast_bf16", "default_num_threads", "has_fast_bf16", "resolve_bf16"]

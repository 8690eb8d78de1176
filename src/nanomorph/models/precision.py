"""The device to compute on, and mixed precision on the CPU: bfloat16 autocast where the CPU computes it natively.

On a CPU with AVX512-BF16 or AMX, bf16 autocast made the cpu profile's pretraining steps 1.4x and U-Net
training + prediction 1.8x faster than float32 (benchmarks/results/cpu_bf16_speed.json); elsewhere bf16 is
emulated and slower, so it is used only there. Weights, optimiser state and losses stay float32.
"""

from __future__ import annotations

import contextlib

import torch


def best_device() -> str:
    """CUDA when present (the paper profile on GPU runners), else CPU: every stage's, the API's and the served
    models' choice."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def cpu_bf16_dtype(device: str | torch.device, cpu_bf16: bool) -> torch.dtype | None:
    """torch.bfloat16 when asked for, on a CPU device, with native bf16; else None (float32)."""
    return torch.bfloat16 if cpu_bf16 and torch.device(device).type == "cpu" and cpu_has_bf16() else None


def cpu_autocast(device: str | torch.device, cpu_bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast under the conditions of `cpu_bf16_dtype`, else a no-op context."""
    if cpu_bf16_dtype(device, cpu_bf16) is None:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16)

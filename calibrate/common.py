"""What every suite shares: the run context, dtype names, random inputs and the row format.

A suite is a module with ``NAME``, ``COLUMNS`` (its parameter columns), ``points(ctx)`` (the list of
parameter dicts to measure, each with ``split`` = ``fit`` or ``holdout``) and ``run(ctx, point)``,
which returns the point's row: its parameters, the timing columns and ``status`` (``ok`` or
``missing: <why>`` — a piece that cannot run here is recorded as missing, never invented).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from calibrate.device import Target
from calibrate.grids import Grid
from calibrate.timing import STAT_COLUMNS, Stat

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32,
                "fp32": torch.float32}
ROW_TAIL = (*STAT_COLUMNS, "status")
SEED = 1234


@dataclass(frozen=True)
class Ctx:
    target: Target
    grid: Grid
    threads: int      # torch intra-op threads of every measuring thread (recorded in each header)
    l2: int = 2 << 20  # L2 cache bytes per core (CPU) or per GPU: sizes membw's buffer ring
    llc: int = 64 << 20  # the host's last-level cache bytes: sizes the host copies' buffer ring

    @property
    def cuda(self) -> torch.device | None:
        """The device to time with CUDA events, or None to time on the host clock."""
        return self.target.device if self.target.is_cuda else None


def rand(shape: tuple[int, ...] | int, dtype: torch.dtype, device: torch.device,
         pin: bool = False) -> torch.Tensor:
    """Normal random values (never zeros: some kernels and copies short-cut on zero pages)."""
    t = torch.randn(shape, dtype=torch.float32, device=device).to(dtype)
    return t.pin_memory() if pin else t


def ok(point: dict[str, object], stat: Stat, **extra: object) -> dict[str, object]:
    return {**point, **extra, **stat.row(), "status": "ok"}


def missing(point: dict[str, object], why: str) -> dict[str, object]:
    return {**point, **{c: "" for c in STAT_COLUMNS}, "status": f"missing: {why}"}


def seed() -> None:
    torch.manual_seed(SEED)


def preceding_op(shape: tuple[int, ...], dtype: torch.dtype, target: Target):  # type: ignore[no-untyped-def]
    """On a CPU device, the work a model runs before a GEMM or an attention (an elementwise
    activation over a tensor of the op's input size), to run untimed ahead of every timed call
    (``measure(..., before=...)``); None on a GPU. Back to back, a bf16 GEMM on the development
    CPU's AMX units ran 1.5-2.1x faster than right after a SiLU (e.g. (512, 256) x (256, 896):
    0.66 vs 1.11 ms; fp32 +7-11 %; 2026-11-22 03:22 UTC), and inside a replayed block every GEMM
    follows other work, so the calibration times it that way."""
    if target.is_cuda:
        return None
    x = rand(shape, dtype, target.device)
    return lambda: torch.nn.functional.silu(x)

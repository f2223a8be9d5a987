"""GEMM throughput over a cartesian (M, N, K) grid per dtype, plus off-grid held-out shapes.

One ``torch.mm`` of an M×K by a K×N matrix into a preallocated output: 2·M·N·K FLOPs
(simhete.schedule.Op.flops). ``tf32`` is fp32 with TF32 tensor cores allowed, ``fp32`` with them
forbidden; on a CPU device only fp32 and bf16 are measured.

``layout`` says which operands are transposed views (``n``: row-major, ``t``: the transpose of a
row-major matrix), in the three layouts of a linear layer: forward Y = X·Wᵀ (``nt``), input
gradient dX = dY·W (``nn``), weight gradient dW = dYᵀ·X (``tn``).

On a CPU device each timed call follows an untimed SiLU over an M×K tensor (calibrate/common.py
``preceding_op``): inside a model every GEMM follows other work, and the AMX units of the
development CPU ran bf16 GEMMs 1.5-2.1x slower right after other work than back to back. A GEMM Op carries no layout, so
the fit prices a shape at the mean time of the layouts measured; on the CPU bf16 ``tn`` ran
30-50% slower than ``nn`` of the same shape (2026-11-21).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from calibrate.common import TORCH_DTYPES, Ctx, missing, ok, preceding_op, rand, seed
from calibrate.timing import measure

NAME = "gemm"
COLUMNS = ("dtype", "layout", "M", "N", "K", "flops", "split")


def holdout_shapes(sizes: tuple[int, ...], count: int) -> list[tuple[int, int, int]]:
    """``count`` distinct shapes whose sides are geometric midpoints of neighbouring grid sizes
    (rounded to a multiple of 16), drawn with a fixed seed, so they lie inside the grid, off it."""
    mids = sorted({max(16, 16 * round(math.sqrt(a * b) / 16)) for a, b in zip(sizes, sizes[1:])})
    rng = np.random.default_rng(0)
    combos = list(itertools.product(mids, repeat=3))
    picks = rng.choice(len(combos), size=min(count, len(combos)), replace=False)
    return [combos[i] for i in sorted(picks)]


def points(ctx: Ctx) -> list[dict[str, object]]:
    g = ctx.grid
    out: list[dict[str, object]] = []
    for dt in g.gemm_dtypes:
        shapes = [(s, "fit") for s in itertools.product(g.gemm_sizes, repeat=3)]
        shapes += [(s, "holdout") for s in holdout_shapes(g.gemm_sizes, g.gemm_holdout)]
        # a scenario's exact shapes (--shapes-from), unless the grid measures that shape already
        # (a held-out shape stays held out, so its error is still an independent check)
        known = {s for s, _ in shapes}
        extra = [(m, n, k) for d, m, n, k in g.gemm_extra if d == dt]
        shapes += [(s, "scenario") for s in dict.fromkeys(extra) if s not in known]
        for (m, n, k), split in shapes:
            for lay in g.gemm_layouts:
                out.append({"dtype": dt, "layout": lay, "M": m, "N": n, "K": k,
                            "flops": 2 * m * n * k, "split": split})
    return out


def run(ctx: Ctx, p: dict[str, object]) -> dict[str, object]:
    dev, dt = ctx.target.device, str(p["dtype"])
    m, n, k = int(p["M"]), int(p["N"]), int(p["K"])
    if ctx.target.is_cuda:
        torch.backends.cuda.matmul.allow_tf32 = dt == "tf32"
    elif dt in ("tf32", "fp16"):
        return missing(p, f"{dt} is not measured on a CPU device")
    seed()
    try:
        lay = str(p.get("layout") or "nn")
        a = rand((k, m), TORCH_DTYPES[dt], dev).t() if lay[0] == "t" else rand((m, k), TORCH_DTYPES[dt], dev)
        b = rand((n, k), TORCH_DTYPES[dt], dev).t() if lay[1] == "t" else rand((k, n), TORCH_DTYPES[dt], dev)
        c = torch.empty((m, n), dtype=TORCH_DTYPES[dt], device=dev)
        torch.mm(a, b, out=c)
    except (RuntimeError, NotImplementedError) as e:
        return missing(p, f"{dt} matmul unsupported here ({str(e).splitlines()[0][:80]})")
    try:
        return ok(p, measure(lambda: torch.mm(a, b, out=c), ctx.grid.methodology, ctx.cuda,
                             preceding_op((m, k), TORCH_DTYPES[dt], ctx.target)))
    finally:
        if ctx.target.is_cuda:
            torch.backends.cuda.matmul.allow_tf32 = False

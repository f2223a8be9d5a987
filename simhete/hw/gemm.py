"""Measured GEMM tables: interpolation of TFLOP/s over (M, N, K) in log space.

Points are interpolated linearly (scipy ``LinearNDInterpolator`` over a Delaunay triangulation)
in (log M, log N, log K) → log TFLOP/s. When the measured shapes do not span three dimensions
(for example only square sizes), the rate is interpolated in log FLOPs along the measured sizes
instead. A shape outside the measured hull returns ``None`` and the caller falls back to the
roofline model (and flags it).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:   # scipy.interpolate costs ~0.6 s to import: only a profile with a table needs it
    from scipy.interpolate import LinearNDInterpolator


def quantised_flops(m: float, n: float, k: float, tile_m: int, tile_n: int, sms: int, k_half: float,
                    batch: int = 1) -> float:
    """FLOPs a device spends on an (m, n, k) GEMM — or on one batched launch of ``batch`` of them:
    every SM computes a full tile in every wave (tile and wave quantisation, NVIDIA "Matrix
    Multiplication Background" user guide) and each tile pays ``k_half`` extra steps of K
    (small-K inefficiency). Non-decreasing in m, n, k and batch."""
    tiles = batch * math.ceil(m / tile_m) * math.ceil(n / tile_n)
    waves = math.ceil(tiles / sms)
    return 2.0 * waves * sms * tile_m * tile_n * (k + k_half)


class GemmInterpolator:
    def __init__(self, rows: Sequence[tuple[int, int, int, float]]) -> None:
        pts = np.log(np.array([r[:3] for r in rows], dtype=float))
        vals = np.log(np.array([r[3] for r in rows], dtype=float))
        self._exact = {(int(r[0]), int(r[1]), int(r[2])): float(r[3]) for r in rows}
        self._nd: LinearNDInterpolator | None = None
        self._line: tuple[np.ndarray, np.ndarray] | None = None
        if len(rows) >= 4 and np.linalg.matrix_rank(pts - pts.mean(axis=0)) == 3:
            from scipy.interpolate import LinearNDInterpolator
            from scipy.spatial import QhullError

            try:
                self._nd = LinearNDInterpolator(pts, vals)
            except QhullError:
                self._nd = None
        if self._nd is None:
            # Degenerate point set: interpolate along log FLOPs (2·M·N·K), averaging repeats.
            lf = pts.sum(axis=1)
            order = np.unique(lf)
            mean = np.array([vals[lf == x].mean() for x in order])
            self._line = (order, mean)

    def tflops(self, m: int, n: int, k: int) -> float | None:
        """Interpolated TFLOP/s for (m, n, k), or None outside the measured range."""
        hit = self._exact.get((m, n, k))
        if hit is not None:
            return hit
        if self._nd is not None:
            v = float(self._nd(math.log(m), math.log(n), math.log(k))[()])
            return None if math.isnan(v) else math.exp(v)
        assert self._line is not None
        xs, ys = self._line
        x = math.log(m) + math.log(n) + math.log(k)
        if len(xs) < 2 or x < xs[0] or x > xs[-1]:
            return None
        return math.exp(float(np.interp(x, xs, ys)))

"""Pricing of compute kernels: GEMM (measured table, else roofline with tile/wave quantisation),
attention (measured shapes, interpolated, else roofline) and memory-bound ops (measured curve or
rate per op kind, else device bandwidth). Functions of (model, op); one repetition each."""

from __future__ import annotations

import bisect
import math
from typing import TYPE_CHECKING

from simhete.hw.gemm import GemmInterpolator
from simhete.hw.profile import Curve
from simhete.opkinds import BWD_KIND, DTYPE_BYTES, OpKind
from simhete.schedule.model import Op

if TYPE_CHECKING:
    from simhete.hw.cost.model import CostModel

# A memory-bound kind without its own profile entry is priced as the kind it was split from
# (profiles calibrated before the op vocabulary had these kinds measured only the older ones).
MB_FALLBACK = {OpKind.RMSNORM: OpKind.NORM, OpKind.GELU: OpKind.ELEMENTWISE,
               OpKind.RELU: OpKind.ELEMENTWISE, OpKind.SWIGLU: OpKind.ELEMENTWISE,
               OpKind.DROPOUT: OpKind.ELEMENTWISE, OpKind.ROPE: OpKind.ELEMENTWISE,
               # a backward kind: its forward's entry (which older profiles fitted to the mean
               # call of both passes)
               **{bwd: fwd for fwd, bwd in BWD_KIND.items()}}


def gemm(cm: CostModel, op: Op) -> float:
    m, n, k = op.shape
    flops = 2.0 * m * n * k  # one multiply-add per (m, n, k)
    nbytes = float(m * k + k * n + m * n) * DTYPE_BYTES[op.dtype]  # read A, B; write C
    table = cm.tables.gemm.get(op.dtype)
    if table is not None:
        tflops = table.tflops(m, n, k)
        if tflops is not None:
            assert cm.profile.gpu.gemm.table is not None
            cm.use("gpu.gemm.table", cm.profile.gpu.gemm.table)
            # Table rates are end to end per call (launch and memory traffic included): no
            # launch term and no memory bound (a bandwidth measured on other ops could only
            # price a measured point above its own measurement).
            return flops / (tflops * 1e12)
    # Roofline: quantised FLOPs at max_efficiency × peak (= FLOPs / (peak × efficiency(M, N, K)),
    # written without the M·N cancellation so rounding cannot make a bigger GEMM faster).
    g = cm.profile.gpu
    peak, peak_q = cm.peak_rate(op.dtype)
    cm.roofline_shape((op.dtype, m, n, k))
    anchor = g.gemm.anchor
    if anchor is None or anchor.dtype != op.dtype:
        cm.use(f"gpu.peak_tflops.{op.dtype}", peak_q)  # an anchor of this dtype cancels the peak
    cm.use(cm.tables.max_eff_key, cm.tables.max_eff_prov)
    cm.use("gpu.gemm.k_half", g.gemm.k_half)
    use_sustained(cm)
    rate = peak * cm.tables.max_eff * cm.tables.sustain
    slow = g.gemm.misaligned_slowdown
    align = 16 // DTYPE_BYTES[op.dtype]     # elements in the 16 bytes cuBLAS's fast kernels need
    if slow is not None and (m % align or n % align or k % align):
        cm.use("gpu.gemm.misaligned_slowdown", slow)
        rate /= slow.value
    if op.batched and op.count > 1:
        # one launch for the whole batch: every entry's tiles share the waves (NVIDIA "Matrix
        # Multiplication Background": a batched GEMM's tiles are scheduled together), one launch
        # and one memory pass; priced per entry, as the caller multiplies by the count
        c = op.count
        return cm.roofline(g.quantised_flops_batched(m, n, k, c), rate, nbytes * c) / c
    return cm.roofline(g.quantised_flops(m, n, k), rate, nbytes)


def use_sustained(cm: CostModel) -> None:
    q = cm.profile.gpu.sustained_clock_factor
    if q is not None:
        cm.use("gpu.sustained_clock_factor", q)


def attention(cm: CostModel, op: Op) -> float:
    b, h, sq, skv, d, causal = op.shape
    flops = op.flops / op.count
    db = DTYPE_BYTES[op.dtype]
    if op.kind is OpKind.ATTN_FWD:
        nbytes = float(b * h * d * (2 * sq + 2 * skv)) * db   # read Q, K, V; write O
    else:
        nbytes = float(b * h * d * (4 * sq + 4 * skv)) * db   # read Q, K, V, O, dO; write dQ, dK, dV
    att = cm.profile.gpu.attention
    exact = cm.tables.attn_exact.get((op.kind, op.dtype, tuple(op.shape)))
    if exact is None:
        exact = attn_interpolated(cm, op)
    if exact is not None and att is not None and att.table is not None:
        cm.use("gpu.attention.table", att.table)
        return flops / (exact * 1e12)   # measured end to end, like the GEMM table
    peak, peak_q = cm.peak_rate(op.dtype)
    cm.use(f"gpu.peak_tflops.{op.dtype}", peak_q)
    if att is None:
        cm.flag(f"gpu.attention (absent: {cm.tables.max_eff_key} used)")
        cm.use(cm.tables.max_eff_key, cm.tables.max_eff_prov)
        eff = cm.tables.max_eff
    else:
        key = "fwd_efficiency" if op.kind is OpKind.ATTN_FWD else "bwd_efficiency"
        q = getattr(att, key)
        cm.use(f"gpu.attention.{key}", q)
        eff = q.value
    use_sustained(cm)
    return cm.roofline(flops, peak * eff * cm.tables.sustain, nbytes)


def attn_interpolated(cm: CostModel, op: Op) -> float | None:
    """TFLOP/s interpolated in the measured table of the op's pass, dtype and causality, over
    (log batch·heads, log seq_q·seq_kv, log head_dim), or None outside the measured hull."""
    b, h, sq, skv, d, causal = op.shape
    key = (op.kind, op.dtype, int(causal))
    rows = cm.tables.attn_rows.get(key)
    if rows is None:
        return None
    interp = cm.tables.attn_interp.get(key)
    if interp is None:
        # shapes with equal (batch·heads, seq², head_dim): the geometric mean of their rates
        same: dict[tuple[int, int, int], list[float]] = {}
        for bh, ss, dd, r in rows:
            same.setdefault((bh, ss, dd), []).append(math.log(r))
        interp = cm.tables.attn_interp[key] = GemmInterpolator(
            [(*k, math.exp(sum(v) / len(v))) for k, v in sorted(same.items())])
    return interp.tflops(b * h, sq * skv, d)


def memory_bound(cm: CostModel, op: Op) -> float:
    mb = cm.profile.gpu.memory_bound
    kind, entry = op.kind, None
    while mb is not None:
        entry = getattr(mb, kind.value)
        if entry is not None or kind not in MB_FALLBACK:
            break
        kind = MB_FALLBACK[kind]
    if entry is None:
        return cm.dispatched(cm.mem_seconds(op.n))
    entry, suffix = entry.for_dtype(op.dtype)
    key = f"gpu.memory_bound.{kind.value}{suffix}"
    if entry.curve is not None:
        cm.use(f"{key}.curve", entry.curve)
        return curve_seconds(cm, key, entry.curve, op.n)
    cm.use(f"{key}.bandwidth_gbps", entry.bandwidth_gbps)
    if entry.overhead_us is None:
        return cm.dispatched(op.n / (entry.bandwidth_gbps.value * 1e9))
    # a measured per-call fixed cost: the calibrated law as it was measured
    cm.use(f"{key}.overhead_us", entry.overhead_us)
    return entry.overhead_us.value * 1e-6 + op.n / (entry.bandwidth_gbps.value * 1e9)


def curve_seconds(cm: CostModel, key: str, curve: Curve, n: int) -> float:
    """Seconds for n bytes on a measured [bytes, GB/s] curve: the points' times made
    non-decreasing (a bigger op is never priced faster; noise can invert neighbours), linear in
    n between them (exact for a fixed cost + n / bandwidth law), the smallest time below them,
    the largest size's rate above them."""
    pts = cm.tables.mb_curves.get(key)
    if pts is None:
        sizes = [p[0] for p in curve.points]
        times: list[float] = []
        for b, g in curve.points:
            times.append(max(b / (g * 1e9), times[-1] if times else 0.0))
        pts = cm.tables.mb_curves[key] = (sizes, times)
    sizes, times = pts
    if n <= sizes[0]:
        return times[0]
    if n >= sizes[-1]:
        return times[-1] * (n / sizes[-1])
    i = bisect.bisect_right(sizes, n)
    (n0, n1), (t0, t1) = sizes[i - 1:i + 1], times[i - 1:i + 1]
    return min(max(t0 + (n - n0) * (t1 - t0) / (n1 - n0), t0), t1)   # clamp: float rounding

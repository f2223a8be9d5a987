"""Estimate how long the full suite takes on one H100 (SXM), from the grid and datasheet rates.

An estimate, not a measurement: each point costs (warm-up + repeats) samples of at least
``min_sample_s`` or one call, whichever is longer, plus the re-measure of a noisy point (2 × repeats)
for an assumed fraction of points. Call times come from the H100 SXM datasheet rates
(docs/references.md: 989 TFLOP/s bf16/fp16, 494.5 tf32, 67 fp32, 3.35 TB/s HBM3, PCIe Gen5 ≈ 55 GB/s
per direction) at an assumed efficiency. Run: ``python -m calibrate.estimate``.
"""

from __future__ import annotations

import itertools

from calibrate import membw
from calibrate.grids import grid

PEAK = {"bf16": 989e12, "fp16": 989e12, "tf32": 494.5e12, "fp32": 67e12}   # H100 SXM datasheet
EFF = 0.5            # assumed average fraction of peak over the grid (small shapes run far below)
HBM = 3.35e12 * 0.8  # bytes/s, assumed 80 % of datasheet for memory-bound ops
PCIE = {"pinned": 55e9, "pageable": 10e9}   # bytes/s; pageable assumed as in hwprofiles/h100-sxm
HOST_DRAM = 100e9    # bytes/s, assumed for host memcpy / Adam on a server CPU
SETUP_S = 0.02       # allocation, random init and dispatch per point, assumed
NOISY = 0.2          # fraction of points assumed to be re-measured
CORES = 112          # DGX H100 host (2 x 56 cores)


def estimate() -> dict[str, float]:
    g = grid("full", "cuda", CORES)
    m = g.methodology
    per = m.warmup + m.repeats + NOISY * 2 * m.repeats

    def point(call_s: float) -> float:
        return SETUP_S + per * max(call_s, m.min_sample_s)

    out: dict[str, float] = {}
    shapes = list(itertools.product(g.gemm_sizes, repeat=3))
    out["gemm"] = sum(point(2 * a * b * c / (PEAK[dt] * EFF)) for dt in g.gemm_dtypes
                      for a, b, c in shapes + [(4096, 4096, 4096)] * g.gemm_holdout)
    attn = 0.0
    for b, h, _kv, s, d in g.attn_shapes + g.attn_holdout:
        f = 4 * b * h * s * s * d * 0.5   # causal forward FLOPs (simhete.schedule.Op.flops)
        attn += point(f / (PEAK["bf16"] * 0.35)) + point(2.5 * f / (PEAK["bf16"] * 0.3))
    out["attention"] = attn
    out["membw"] = sum(point(3 * n * 2 / HBM) for n in g.mem_elems) * len(membw.benchmarks())
    copies = sum(point(n / PCIE[k]) for k in ("pinned", "pageable") for n in g.copy_bytes) * 2
    copies += sum(point(n / HOST_DRAM) for n in g.copy_bytes) * 2 + \
        sum(point(n / PCIE["pinned"]) for n in g.duplex_bytes)
    out["copy"] = copies
    out["adam"] = sum(point(28 * n / min(HOST_DRAM, t * 10e9)) for t in g.adam_threads
                      for n in g.adam_params)
    gemm_s = 2 * g.interf_gemm ** 3 / (PEAK["bf16"] * 0.8)
    out["interference"] = 9 * 2 * point(max(gemm_s, g.interf_copy_bytes / PCIE["pinned"]))
    out["collectives"] = 0.0   # one GPU: recorded as missing
    out["total"] = sum(out.values())
    return out


if __name__ == "__main__":
    for k, v in estimate().items():
        print(f"{k:<13} {v:7.1f} s")

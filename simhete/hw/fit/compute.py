"""Fits of the compute suites: the GEMM table and roofline fallback, attention rates and
efficiencies, and whole blocks measured inside training steps."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from simhete.errors import ConfigError
from simhete.hw.fit.common import TABLE_SPLITS, FitState, alpha_beta, num, scenario_note, sig
from simhete.hw.gemm import quantised_flops
from simhete.opkinds import OpKind
from simhete.schedule.model import Op


def fit_gemm(st: FitState, sysinfo: dict[str, str], gpu: dict[str, Any]) -> None:
    t = st.tables["gemm"]
    rows = [r for r in t.ok() if r["split"] in TABLE_SPLITS]
    if not rows:
        raise ConfigError(str(t.path), None, problem="no measured GEMM points to fit")
    # One rate per (dtype, M, N, K): FLOPs / the mean time over the layouts measured (a GEMM Op
    # has no layout; a linear layer runs one GEMM of each of its three layouts).
    by_shape: dict[tuple[str, int, int, int], list[float]] = {}
    for r in rows:
        by_shape.setdefault((r["dtype"], int(r["M"]), int(r["N"]), int(r["K"])), []).append(
            num(r, "median_s"))
    mean_s = {key: sum(v) / len(v) for key, v in by_shape.items()}
    layouts = sorted({r.get("layout") or "nn" for r in rows})
    points: dict[str, list[list[float]]] = {}
    for (dt, m, n, k), t_s in mean_s.items():
        points.setdefault(dt, []).append([m, n, k, sig(2.0 * m * n * k / t_s / 1e12)])
    peak = {dt: max(p[3] for p in pts) for dt, pts in points.items()}
    sms, tile = int(sysinfo["sms"]), int(sysinfo["gemm_tile"])

    def shape_factor(m: float, n: float, k: float, k_half: float) -> float:
        # useful / quantised FLOPs, as Gpu.shape_factor prices it, with k_half free
        return 2.0 * m * n * k / quantised_flops(m, n, k, tile, tile, sms, k_half)

    def loss(log_kh: float) -> float:
        kh = math.exp(log_kh)
        return sum((math.log(p[3] / peak[dt]) - math.log(shape_factor(p[0], p[1], p[2], kh))) ** 2
                   for dt, pts in points.items() for p in pts)

    best = minimize_scalar(loss, bounds=(0.0, math.log(1e5)), method="bounded",
                           options={"xatol": 1e-6})
    k_half = sig(math.exp(float(best.x)))
    for dt in points:
        points[dt].sort()
    gpu["peak_tflops"] = {dt: st.q("gemm", peak[dt], f"best measured {dt} GEMM rate over the grid "
                                   "(used as peak; not a datasheet number)") for dt in sorted(peak)}
    gpu["gemm"] = {
        "model": "table",
        "max_efficiency": st.q("gemm", 1.0, "1 by construction: peak_tflops is the best measured rate"),
        "tile_m": tile, "tile_n": tile,
        "k_half": st.q("gemm", k_half, "least squares of log(rate/peak) against the roofline "
                                       "shape factor over the fit points"),
        "table": {**st.prov("gemm", "torch.mm end to end per call, median of repeats, mean over "
                                    f"layouts {'/'.join(layouts)}; fit points only (held-out "
                                    "shapes are in the raw file)" + scenario_note(rows)),
                  "points": {dt: points[dt] for dt in sorted(points)}},
    }
    held = t.ok(split="holdout")
    st.holdout["gemm"] = [(Op(OpKind.GEMM, (int(r["M"]), int(r["N"]), int(r["K"])), dtype=r["dtype"]),
                           num(r, "median_s")) for r in held]
    st.holdout_by["gemm"] = [f"{r['dtype']} {r.get('layout') or 'nn'}" for r in held]
    roof = [sig(math.exp(float(best.x)))]
    # Cross-check of launch_overhead_us (fitted from membw): alpha of time vs FLOPs over the
    # smallest shapes (at most 4x the FLOPs of the smallest) of each dtype.
    small = []
    for dt in sorted(points):
        sub = [(2.0 * m * n * k, t_s) for (d, m, n, k), t_s in sorted(mean_s.items()) if d == dt]
        least = min(f for f, _ in sub)
        sub = [(f, t_s) for f, t_s in sub if f <= 4 * least]
        a, _ = alpha_beta([f for f, _ in sub], [t_s for _, t_s in sub])
        small.append(f"{dt} {a * 1e6:.2f} us over {len(sub)} shapes")
    st.sections.append(
        f"## gemm\n\n- fit points: {sum(len(p) for p in points.values())} shapes × layouts "
        f"{'/'.join(layouts)}{scenario_note(rows)} "
        f"({', '.join(f'{dt}: {len(p)}' for dt, p in sorted(points.items()))})\n"
        f"- peak (best measured) TFLOP/s: "
        f"{', '.join(f'{dt} {peak[dt]}' for dt in sorted(peak))}\n"
        f"- roofline fallback: tile {tile}, units {sms}, k_half {roof[0]} "
        f"(log-space residual {math.sqrt(best.fun / max(1, len(rows))):.3f})\n"
        f"- small-shape alpha (cross-check of launch_overhead_us): {'; '.join(small)}\n")


def _kv(r: dict[str, str]) -> int:
    """K/V heads of an attention row (raw data from before the GQA column: the head count)."""
    return int(r.get("kv_heads") or r["heads"])


def fit_attention(st: FitState, gpu: dict[str, Any]) -> None:
    """Measured rates of the fit shapes → ``gpu.attention.table`` (the cost model uses an exact
    shape's rate and interpolates between shapes); the efficiencies (median rate / peak of the
    fit shapes, per pass) price shapes outside the table. Grouped-query rows (kv_heads < heads)
    are held out only: an attention Op has no K/V head count, so they are priced as the same
    query shape with full heads — their held-out error is what that costs."""
    t = st.tables["attention"]
    # A scenario's exact shape (--shapes-from) is a table point whatever its K/V heads (it is the
    # shape that scenario prices) and replaces a grid point of the same query shape.
    scen = [r for r in t.ok() if r["split"] == "scenario"]
    taken = {(r["pass"], r["dtype"], r["batch"], r["heads"], r["seq"], r["head_dim"]) for r in scen}
    rows = [r for r in t.ok() if r["split"] == "fit" and _kv(r) == int(r["heads"])
            and (r["pass"], r["dtype"], r["batch"], r["heads"], r["seq"], r["head_dim"]) not in taken]
    rows += scen
    if not rows:
        return
    peak = {dt: q["value"] for dt, q in gpu["peak_tflops"].items()}
    table: dict[str, dict[str, list[list[float]]]] = {"fwd": {}, "bwd": {}}
    effs: dict[str, list[float]] = {"fwd": [], "bwd": []}
    for r in rows:
        dt = r["dtype"]
        tflops = num(r, "flops") / num(r, "median_s") / 1e12
        s = int(r["seq"])
        table[r["pass"]].setdefault(dt, []).append(
            [int(r["batch"]), int(r["heads"]), s, s, int(r["head_dim"]), int(r["causal"]), sig(tflops)])
        if dt in peak:
            effs[r["pass"]].append(tflops / peak[dt])
    eff = {p: sig(min(1.0, float(np.median(v)))) for p, v in effs.items() if v}
    if set(eff) != {"fwd", "bwd"}:
        return
    gpu["attention"] = {
        f"{p}_efficiency": st.q("attention", eff[p], f"median over {len(effs[p])} fit shapes of "
                                f"measured rate / peak_tflops (capped at 1)") for p in ("fwd", "bwd")}
    gpu["attention"]["table"] = {
        **st.prov("attention", "scaled_dot_product_attention, causal, end to end per call; "
                               "interpolated between shapes in log space" + scenario_note(rows)),
        **{p: {dt: sorted(v) for dt, v in sorted(table[p].items())} for p in ("fwd", "bwd")}}
    held = t.ok(split="holdout")
    st.holdout["attention"] = [
        (Op(OpKind.ATTN_FWD if r["pass"] == "fwd" else OpKind.ATTN_BWD,
            (int(r["batch"]), int(r["heads"]), int(r["seq"]), int(r["seq"]), int(r["head_dim"]),
             int(r["causal"])), dtype=r["dtype"]), num(r, "median_s"))
        for r in held]
    st.holdout_by["attention"] = [
        f"{r['pass']} {r['dtype']}{' GQA' if _kv(r) != int(r['heads']) else ''}" for r in held]
    rates = "; ".join(
        f"{p} {dt} {min(v[-1] for v in pts):.4g}-{max(v[-1] for v in pts):.4g}"
        for p in ("fwd", "bwd") for dt, pts in sorted(table[p].items()))
    st.sections.append(f"## attention\n\n- fit shapes: {len(rows)}{scenario_note(rows)}; efficiency of peak: "
                       f"fwd {eff['fwd']}, bwd {eff['bwd']}\n- measured TFLOP/s (min-max over "
                       f"the fit shapes): {rates}\n")


def fit_blocks(st: FitState, gpu: dict[str, Any]) -> None:
    """Whole blocks measured inside training steps (calibrate/blocks.py) → ``gpu.blocks``: each
    distinct op sequence (a block's forward, backward or optimizer step) at its median time (the
    first scenario's row where two share one)."""
    rows = st.tables["blocks"].ok()
    entries: dict[str, list[Any]] = {}
    for r in rows:
        entries.setdefault(r["key"], [r["key"], f"{r['scenario']} {r['block']} {r['pass']}",
                                      sig(num(r, "median_s"))])
    if not entries:
        return
    gpu["blocks"] = {**st.prov("blocks", "each block's forward, backward or optimizer step timed "
                                         "whole inside training steps of the scenario's model; "
                                         "median over its calls (--shapes-from)"),
                     "entries": list(entries.values())}
    scen = sorted({r["scenario"] for r in rows})
    st.sections.append(f"## blocks\n\n- {len(entries)} op sequences measured whole, from "
                       f"{', '.join(scen)}; tasks with exactly these ops are priced at these times\n")

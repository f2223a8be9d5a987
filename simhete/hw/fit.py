"""Fitting raw calibration data into a hardware profile. No torch: a profile is refitted anywhere.

Raw data is one CSV per suite (written by :mod:`calibrate`), each starting with ``# key: value``
provenance lines (suite, device, driver, torch, host, date, methodology), then a header row and one
row per measured point with its timing statistics and ``status`` (``ok`` or ``missing: <why>``).
Points are split into ``fit`` and ``holdout``; fits use only ``fit`` rows, and the error of the
fitted profile *as priced by* :class:`simhete.hw.cost.CostModel` is reported on the held-out rows.

Fits (docs/calibration.md has the details):

- GEMM: the measured rates as a table (interpolated in log space by
  :class:`simhete.hw.gemm.GemmInterpolator`); peak = best measured rate; the roofline fallback's
  ``k_half`` by least squares in log space.
- Attention: the measured exact shapes as a table; fwd/bwd efficiency = median of rate / peak.
- Memory-bound ops: per OpKind the measured (bytes, GB/s) curve → ``gpu.memory_bound``; the
  ELEMENTWISE rate at the largest size → ``mem_bandwidth_gbps``; α of an α-β fit over the
  smallest add/mul → ``launch_overhead_us``.
- Links and host memcpy: α-β per direction and memory kind, plus the measured curve.
- CPU Adam: α-β per thread count (β → ``by_threads``; at the calibration's threads per stream
  β → ``params_per_s``, α → ``overhead_us``, and ``threads`` records that count).
- Interference: slowdown = median(victim with aggressor) / median(victim alone).

Every fitted number is a ``measured`` quantity carrying the raw file, device, driver, torch
version, host and date of the data it came from. Output is deterministic: the same raw files give
the same profile, byte for byte.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from scipy.optimize import lsq_linear, minimize_scalar

from simhete.config import validate
from simhete.errors import ConfigError
from simhete.hw.cost import BUS_FACTOR
from simhete.hw.gemm import quantised_flops
from simhete.opkinds import BWD_KIND, OpKind
from simhete.schedule.model import Op

SUITES = ("gemm", "attention", "membw", "copy", "adam", "interference", "collectives", "blocks")
SYSTEM = "system"   # facts queried from the OS/driver, not timed; always written
SIG = 4             # significant digits kept in fitted numbers (measurements are noisier)


# ------------------------------------------------------------------------------ raw CSV ----

@dataclass(frozen=True)
class RawTable:
    """One raw CSV: provenance header, column names, and rows of strings."""

    meta: dict[str, str]
    columns: tuple[str, ...]
    rows: tuple[dict[str, str], ...]
    path: Path

    def ok(self, **match: str) -> list[dict[str, str]]:
        """Rows measured successfully whose columns equal ``match``."""
        return [r for r in self.rows if r["status"] == "ok"
                and all(r[k] == v for k, v in match.items())]


def _fmt(v: object) -> str:
    return repr(v) if isinstance(v, float) else str(v)  # repr round-trips floats exactly


def write_raw(path: str | Path, meta: dict[str, str], columns: Iterable[str],
              rows: Iterable[dict[str, object]]) -> None:
    cols = list(columns)
    buf = io.StringIO()
    buf.write("# simhete raw calibration data (docs/calibration.md)\n")
    for k, v in meta.items():
        buf.write(f"# {k}: {' '.join(str(v).split())}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([_fmt(r.get(c, "")) for c in cols])
    Path(path).write_text(buf.getvalue())


def read_raw(path: str | Path) -> RawTable:
    p = Path(path)
    meta: dict[str, str] = {}
    lines = p.read_text().splitlines()
    body = []
    for line in lines:
        if line.startswith("#"):
            key, sep, val = line[1:].partition(":")
            if sep and not body:
                meta[key.strip()] = val.strip()
        else:
            body.append(line)
    reader = csv.reader(body)
    try:
        columns = tuple(next(reader))
    except StopIteration:
        raise ConfigError(str(p), None, problem="raw CSV has no header row") from None
    rows = []
    for i, rec in enumerate(reader):
        if len(rec) != len(columns):
            raise ConfigError(str(p), f"row {i + 1}", problem=f"has {len(rec)} fields, header has "
                                                               f"{len(columns)}")
        rows.append(dict(zip(columns, rec)))
    if "status" not in columns:
        raise ConfigError(str(p), None, problem="raw CSV lacks the status column")
    return RawTable(meta, columns, tuple(rows), p)


# ------------------------------------------------------------------------------ helpers ----

def sig(x: float) -> float:
    return float(f"{x:.{SIG}g}")


def alpha_beta(sizes: list[float], times: list[float]) -> tuple[float, float]:
    """Least squares of T = α + n/β in relative error (each row divided by its T).

    0 ≤ α ≤ the fastest measured time (a fixed cost cannot exceed a whole call). If the fit still
    leaves no per-unit cost (noise made a larger size as fast as a smaller one), β comes from the
    largest size alone, through the origin. Returns (α seconds, β units per second).
    """
    n = np.asarray(sizes, dtype=float)
    t = np.asarray(times, dtype=float)
    big = int(np.argmax(n))
    if len(n) == 1:
        return 0.0, float(n[big] / t[big])
    a = np.column_stack([1.0 / t, n / t])
    res = lsq_linear(a, np.ones_like(t), bounds=([0.0, 0.0], [float(t.min()), np.inf]),
                     method="bvls")
    alpha, inv_beta = (float(x) for x in res.x)
    if inv_beta * n[big] < 1e-6 * t[big]:
        return 0.0, float(n[big] / t[big])
    return alpha, 1.0 / inv_beta


def rel_errors(pred: Iterable[float], meas: Iterable[float]) -> list[float]:
    return [abs(p - m) / m for p, m in zip(pred, meas)]


def err_text(errs: list[float]) -> str:
    if not errs:
        return "no held-out points"
    return (f"median {100 * float(np.median(errs)):.1f}%, max {100 * max(errs):.1f}% "
            f"over {len(errs)} held-out points")


def _f(r: dict[str, str], k: str) -> float:
    return float(r[k])


@dataclass
class Fit:
    """The fitted profile (a dict ready for YAML) and the fit report (Markdown)."""

    profile: dict[str, Any]
    report: str
    # held-out relative errors as the report's table has them: (suite, op label or "", errors)
    errors: list[tuple[str, str, list[float]]] = field(default_factory=list)


@dataclass
class _State:
    raw_dir: Path
    profile_dir: Path
    tables: dict[str, RawTable]
    sections: list[str] = field(default_factory=list)
    holdout: dict[str, list[tuple[Op, float]]] = field(default_factory=dict)
    holdout_by: dict[str, list[str]] = field(default_factory=dict)   # a label per held-out point

    def q(self, suite: str, value: float, ref: str) -> dict[str, Any]:
        """A measured Quantity backed by ``suite``'s raw file."""
        t = self.tables[suite]
        m = t.meta
        raw = os.path.relpath(t.path, self.profile_dir).replace(os.sep, "/")
        out: dict[str, Any] = {"value": value, "source": "measured", "ref": ref, "raw": raw,
                               "device": m.get("device", "?"), "driver": m.get("driver", "?"),
                               "torch": m.get("torch", "?"), "date": m.get("date", "?"),
                               "host": m.get("host", "?")}
        return out

    def prov(self, suite: str, ref: str) -> dict[str, Any]:
        out = self.q(suite, 0.0, ref)
        del out["value"]
        return out


# -------------------------------------------------------------------------------- fits -----

def _system(st: _State) -> dict[str, str]:
    t = st.tables[SYSTEM]
    return {r["item"]: r["value"] for r in t.rows}


def _fit_gemm(st: _State, sysinfo: dict[str, str], gpu: dict[str, Any]) -> None:
    t = st.tables["gemm"]
    rows = [r for r in t.ok() if r["split"] in TABLE_SPLITS]
    if not rows:
        raise ConfigError(str(t.path), None, problem="no measured GEMM points to fit")
    # One rate per (dtype, M, N, K): FLOPs / the mean time over the layouts measured (a GEMM Op
    # has no layout; a linear layer runs one GEMM of each of its three layouts).
    by_shape: dict[tuple[str, int, int, int], list[float]] = {}
    for r in rows:
        by_shape.setdefault((r["dtype"], int(r["M"]), int(r["N"]), int(r["K"])), []).append(
            _f(r, "median_s"))
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
                                    "shapes are in the raw file)" + _scenario_note(rows)),
                  "points": {dt: points[dt] for dt in sorted(points)}},
    }
    held = t.ok(split="holdout")
    st.holdout["gemm"] = [(Op(OpKind.GEMM, (int(r["M"]), int(r["N"]), int(r["K"])), dtype=r["dtype"]),
                           _f(r, "median_s")) for r in held]
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
        f"{'/'.join(layouts)}{_scenario_note(rows)} "
        f"({', '.join(f'{dt}: {len(p)}' for dt, p in sorted(points.items()))})\n"
        f"- peak (best measured) TFLOP/s: "
        f"{', '.join(f'{dt} {peak[dt]}' for dt in sorted(peak))}\n"
        f"- roofline fallback: tile {tile}, units {sms}, k_half {roof[0]} "
        f"(log-space residual {math.sqrt(best.fun / max(1, len(rows))):.3f})\n"
        f"- small-shape alpha (cross-check of launch_overhead_us): {'; '.join(small)}\n")


# Splits whose points are table points: the grid's "fit" points and the exact shapes of the
# scenarios named with `simhete calibrate --shapes-from` ("scenario"); "holdout" never.
TABLE_SPLITS = ("fit", "scenario")


def _scenario_note(rows: list[dict[str, str]]) -> str:
    n = sum(r["split"] == "scenario" for r in rows)
    return f"; plus {n} rows at scenario shapes (--shapes-from)" if n else ""


def _kv(r: dict[str, str]) -> int:
    """K/V heads of an attention row (raw data from before the GQA column: the head count)."""
    return int(r.get("kv_heads") or r["heads"])


def _fit_attention(st: _State, gpu: dict[str, Any]) -> None:
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
        tflops = _f(r, "flops") / _f(r, "median_s") / 1e12
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
                               "interpolated between shapes in log space" + _scenario_note(rows)),
        **{p: {dt: sorted(v) for dt, v in sorted(table[p].items())} for p in ("fwd", "bwd")}}
    held = t.ok(split="holdout")
    st.holdout["attention"] = [
        (Op(OpKind.ATTN_FWD if r["pass"] == "fwd" else OpKind.ATTN_BWD,
            (int(r["batch"]), int(r["heads"]), int(r["seq"]), int(r["seq"]), int(r["head_dim"]),
             int(r["causal"])), dtype=r["dtype"]), _f(r, "median_s"))
        for r in held]
    st.holdout_by["attention"] = [
        f"{r['pass']} {r['dtype']}{' GQA' if _kv(r) != int(r['heads']) else ''}" for r in held]
    rates = "; ".join(
        f"{p} {dt} {min(v[-1] for v in pts):.4g}-{max(v[-1] for v in pts):.4g}"
        for p in ("fwd", "bwd") for dt, pts in sorted(table[p].items()))
    st.sections.append(f"## attention\n\n- fit shapes: {len(rows)}{_scenario_note(rows)}; efficiency of peak: "
                       f"fwd {eff['fwd']}, bwd {eff['bwd']}\n- measured TFLOP/s (min-max over "
                       f"the fit shapes): {rates}\n")


def _fit_blocks(st: _State, gpu: dict[str, Any]) -> None:
    """Whole blocks measured inside training steps (calibrate/blocks.py) → ``gpu.blocks``: each
    distinct op sequence (a block's forward, backward or optimizer step) at its median time (the
    first scenario's row where two share one)."""
    rows = st.tables["blocks"].ok()
    entries: dict[str, list[Any]] = {}
    for r in rows:
        entries.setdefault(r["key"], [r["key"], f"{r['scenario']} {r['block']} {r['pass']}",
                                      sig(_f(r, "median_s"))])
    if not entries:
        return
    gpu["blocks"] = {**st.prov("blocks", "each block's forward, backward or optimizer step timed "
                                         "whole inside training steps of the scenario's model; "
                                         "median over its calls (--shapes-from)"),
                     "entries": list(entries.values())}
    scen = sorted({r["scenario"] for r in rows})
    st.sections.append(f"## blocks\n\n- {len(entries)} op sequences measured whole, from "
                       f"{', '.join(scen)}; tasks with exactly these ops are priced at these times\n")


# Memory-bound microbenchmark ops → the OpKind they price (byte counts: calibrate/membw.py).
MEMBW_KINDS = {"add": OpKind.ELEMENTWISE, "mul": OpKind.ELEMENTWISE, "layernorm": OpKind.NORM,
               "rmsnorm": OpKind.RMSNORM, "softmax": OpKind.SOFTMAX_CE, "embedding": OpKind.EMBED,
               "gelu": OpKind.GELU, "relu": OpKind.RELU, "silu": OpKind.SWIGLU,
               "dropout": OpKind.DROPOUT, "attn_dropout": OpKind.DROPOUT, "rope": OpKind.ROPE}
LAUNCH_FIT_SIZES = 3   # launch_overhead_us: alpha over the smallest fit sizes of add and mul


def _pass(r: dict[str, str]) -> str:
    return r.get("pass") or "fwd"   # raw data from before backward rows: forward only


def _mb_kind(r: dict[str, str]) -> OpKind:
    """The OpKind a membw row prices: its op's kind, or that kind's backward kind for a backward
    row (NORM_BWD, ...)."""
    kind = MEMBW_KINDS[r["op"]]
    return BWD_KIND.get(kind, kind) if _pass(r) == "bwd" else kind


def _mb_curve(rows: list[dict[str, str]]) -> list[list[float]]:
    """[bytes, GB/s] of the mean call at each measured size (elems): the arithmetic mean of the
    bytes and of the median times of every op of one kind (add and mul; the two dropout sites).
    Each pass is its own kind (a backward row fits NORM_BWD, ...), so a curve mixes ops that
    move the same bytes the same way, never a forward with its backward."""
    by_elems: dict[int, list[tuple[float, float]]] = {}
    for r in rows:
        by_elems.setdefault(int(r["elems"]), []).append((_f(r, "bytes"), _f(r, "median_s")))
    curve: dict[int, float] = {}
    for _, v in sorted(by_elems.items()):
        b = sum(x for x, _ in v) / len(v)
        t = sum(y for _, y in v) / len(v)
        curve[round(b)] = sig(round(b) / t / 1e9)
    return [[b, g] for b, g in sorted(curve.items())]


def _fit_membw(st: _State, gpu: dict[str, Any]) -> None:
    """Per OpKind and dtype (a backward pass is its own kind), the measured curve (bytes, GB/s) of
    its ops (the mean call at each size: :func:`_mb_curve`) and its rate at the largest size. The first dtype measured is
    the kind's own entry; other dtypes go to its ``dtypes``. The ELEMENTWISE rate is also
    ``mem_bandwidth_gbps``; the per-op fixed cost ``launch_overhead_us`` is alpha of an
    alpha-beta fit over the smallest add/mul of the first dtype."""
    t = st.tables["membw"]
    rows = [r for r in t.ok() if r["split"] == "fit" and r["op"] in MEMBW_KINDS]
    if not rows:
        raise ConfigError(str(t.path), None, problem="no measured memory-bound points to fit")
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    lines = []
    per_kind: dict[str, dict[str, Any]] = {}
    for kind in dict.fromkeys(map(_mb_kind, rows)):
        for dt in dtypes:
            sub = [r for r in rows if _mb_kind(r) is kind and r["dtype"] == dt]
            if not sub:
                continue
            curve = _mb_curve(sub)
            what = " and ".join(dict.fromkeys(f"{r['op']} {_pass(r)}" for r in sub)) + f", {dt}"
            entry: dict[str, Any] = {"bandwidth_gbps": st.q(
                "membw", curve[-1][1], f"{what}: bytes read + written / time at the largest fit "
                                       "size")}
            if len(curve) >= 2:
                entry["curve"] = {**st.prov("membw", f"{what}: bytes read + written / median time "
                                            "per call (fixed cost included), mean call at each "
                                            "fit size"),
                                  "points": curve}
            if kind.value not in per_kind:
                if dt != dtypes[0]:
                    continue   # a dtype-only entry needs the kind's own (first-dtype) rate
                per_kind[kind.value] = entry
            else:
                per_kind[kind.value].setdefault("dtypes", {})[dt] = entry
            lines.append(f"- {kind.value} {dt} ({what.rsplit(',', 1)[0]}): {curve[0][1]} GB/s at "
                         f"{curve[0][0]} B ... {curve[-1][1]} GB/s at {curve[-1][0]} B "
                         f"(peak {max(g for _, g in curve)} GB/s)")
    if "ELEMENTWISE" not in per_kind:
        raise ConfigError(str(t.path), None, problem="no measured add/mul points to fit")
    ew = sorted((r for r in rows if _mb_kind(r) is OpKind.ELEMENTWISE
                 and r["dtype"] == dtypes[0]), key=lambda r: int(r["bytes"]))
    small = sorted({int(r["bytes"]) for r in ew})[:LAUNCH_FIT_SIZES]
    pts = [r for r in ew if int(r["bytes"]) in small]
    alpha, beta = alpha_beta([_f(r, "bytes") for r in pts], [_f(r, "median_s") for r in pts])
    gpu["mem_bandwidth_gbps"] = st.q("membw", per_kind["ELEMENTWISE"]["bandwidth_gbps"]["value"],
                                     "add and mul (bytes read + written) at the largest fit size: "
                                     "achievable streaming bandwidth")
    gpu["memory_bound_efficiency"] = st.q("membw", 1.0, "1 by construction: mem_bandwidth_gbps "
                                          "is the achieved bandwidth of these ops")
    gpu["launch_overhead_us"] = st.q("membw", sig(alpha * 1e6), f"alpha (intercept) of an "
                                     f"alpha-beta fit over add and mul at the {len(small)} "
                                     f"smallest fit sizes ({small[0]}-{small[-1]} bytes): per-op "
                                     f"fixed cost")
    gpu["memory_bound"] = per_kind
    held = [r for r in t.ok(split="holdout") if r["op"] in MEMBW_KINDS]
    st.holdout["membw"] = [(Op(_mb_kind(r), n=int(r["bytes"]), dtype=r["dtype"]),
                            _f(r, "median_s")) for r in held]
    st.holdout_by["membw"] = [f"{r['op']}{' bwd' if _pass(r) == 'bwd' else ''}"
                              f"{'' if r['dtype'] == dtypes[0] else ' ' + r['dtype']}" for r in held]
    st.sections.append(f"## membw\n\n- launch overhead: {alpha * 1e6:.2f} us (alpha-beta over "
                       f"add and mul at {', '.join(map(str, small))} bytes; beta "
                       f"{beta / 1e9:.1f} GB/s)\n" + "\n".join(lines) + "\n")


def _link(st: _State, rows: list[dict[str, str]], what: str) -> dict[str, Any]:
    sizes = [_f(r, "bytes") for r in rows]
    times = [_f(r, "median_s") for r in rows]
    a, b = alpha_beta(sizes, times)
    curve = sorted({int(s): sig(s / t / 1e9) for s, t in zip(sizes, times)}.items())
    out: dict[str, Any] = {
        "bandwidth_gbps": st.q("copy", sig(b / 1e9), f"alpha-beta fit of {what} time vs bytes"),
        "latency_us": st.q("copy", sig(a * 1e6), f"alpha of the {what} alpha-beta fit"),
    }
    if len(curve) >= 2:
        out["curve"] = {**st.prov("copy", f"{what}: bytes / median time at each fit size"),
                        "points": [[s, g] for s, g in curve]}
    return out


def _fit_copy(st: _State, device_type: str, host: dict[str, Any]) -> dict[str, Any] | None:
    t = st.tables["copy"]
    lines = []
    memcpy = [r for r in t.ok(kind="memcpy", memory="host") if r["split"] == "fit"]
    stream = [r for r in t.ok(kind="stream_add", memory="host") if r["split"] == "fit"]
    if not memcpy or not stream:
        raise ConfigError(str(t.path), None, problem="no measured host memcpy/stream_add points")
    a, b = alpha_beta([_f(r, "bytes") for r in memcpy], [_f(r, "median_s") for r in memcpy])
    host["memcpy_gbps"] = st.q("copy", sig(b / 1e9), "alpha-beta fit of host-to-host copy_ "
                               "(bytes copied / time)")
    lines.append(f"- host memcpy: {b / 1e9:.2f} GB/s, alpha {a * 1e6:.2f} us")
    sa, sb = alpha_beta([3 * _f(r, "bytes") for r in stream], [_f(r, "median_s") for r in stream])
    host["dram_bandwidth_gbps"] = st.q("copy", sig(sb / 1e9), "alpha-beta fit of STREAM add "
                                       "(3 x bytes: read a, b; write c) on host fp32 tensors")
    lines.append(f"- host STREAM add: {sb / 1e9:.2f} GB/s, alpha {sa * 1e6:.2f} us")
    links: dict[str, Any] | None
    singles: dict[str, dict[int, float]] = {}
    if device_type == "cuda":
        links = {}
        for d in ("h2d", "d2h"):
            links[d] = {}
            for mem in ("pinned", "pageable"):
                rows = [r for r in t.ok(kind=d, memory=mem) if r["split"] == "fit"]
                if not rows:
                    return None  # a cuda profile needs every link; the report says which is missing
                links[d][mem] = _link(st, rows, f"{d} {mem}")
                lines.append(f"- {d} {mem}: {links[d][mem]['bandwidth_gbps']['value']} GB/s, "
                             f"latency {links[d][mem]['latency_us']['value']} us")
                st.holdout.setdefault("copy", []).extend(
                    (Op(OpKind.H2D if d == "h2d" else OpKind.D2H, n=int(r["bytes"]),
                        pinned=mem == "pinned"), _f(r, "median_s"))
                    for r in t.ok(kind=d, memory=mem, split="holdout"))
            singles[d] = {int(r["bytes"]): _f(r, "median_s") for r in t.ok(kind=d, memory="pinned")}
    else:
        # A CPU device has no copy engine and no pinned memory: an H2D or D2H there is a host
        # memcpy, whatever its memory kind, so both kinds of both directions get the memcpy fit.
        what = "host memcpy (CPU device: H2D/D2H are host memcpy; pinned is not applicable)"
        link = _link(st, memcpy, what)
        links = {d: {"pinned": link, "pageable": link} for d in ("h2d", "d2h")}
        st.holdout["copy"] = [(Op(OpKind.H2D, n=int(r["bytes"])), _f(r, "median_s"))
                              for r in t.ok(kind="memcpy", memory="host", split="holdout")]
        single = {int(r["bytes"]): _f(r, "median_s") for r in t.ok(kind="memcpy", memory="host")}
        singles = {"h2d": single, "d2h": single}
    dmem = "pinned" if device_type == "cuda" else "host"
    ratios = []
    for r in t.ok(kind="duplex", memory=dmem):
        n = int(r["bytes"])
        if all(n in singles[d] for d in ("h2d", "d2h")):
            one = (singles["h2d"][n] + singles["d2h"][n]) / 2
            ratios.append((n, one / _f(r, "median_s")))
    if ratios:
        n, frac = max(ratios)  # the largest size: copies long enough to overlap fully
        frac_c = sig(min(1.0, frac))
        note = "" if frac <= 1 else f" (measured {frac:.3f} > 1, within noise; capped at 1)"
        lines.append(f"- duplex at {n} bytes: each direction keeps {frac:.3f} of its bandwidth")
        links["duplex_factor"] = st.q("copy", frac_c, f"single-direction time / time of both "
                                      f"directions at once, {n} bytes{note}")
    if "duplex_factor" not in links:
        if device_type == "cuda":
            raise ConfigError(str(t.path), None, problem="no duplex measurement with matching "
                                                         "single-direction sizes; links need one")
        links = None  # CPU device: the cost model then prices copies with host.memcpy_gbps
    missing = sorted({f"{r['kind']} {r['memory']}: {r['status']}" for r in t.rows
                      if r["status"] != "ok"})
    lines += [f"- {m}" for m in missing]
    st.sections.append("## copy\n\n" + "\n".join(lines) + "\n")
    return links


def _fit_adam(st: _State, host: dict[str, Any], threads: int) -> None:
    """Per thread count, an alpha-beta fit of step time against parameters (relative error):
    beta → ``by_threads``; at the calibration's threads per stream (the threads the CPU optimizer
    runs with) beta → ``params_per_s`` and alpha → ``overhead_us``, the fixed cost of a call."""
    t = st.tables["adam"]
    fits: dict[int, tuple[float, float]] = {}
    lines = []
    impls = sorted({r["impl"] for r in t.ok()})
    for th in sorted({int(r["threads"]) for r in t.ok()}):
        rows = [r for r in t.ok(threads=str(th)) if r["split"] == "fit"]
        if not rows:
            continue
        a, b = alpha_beta([_f(r, "params") for r in rows], [_f(r, "median_s") for r in rows])
        fits[th] = (sig(a * 1e6), sig(b))
        ho = t.ok(threads=str(th), split="holdout")
        errs = rel_errors([a + _f(r, "params") / b for r in ho], [_f(r, "median_s") for r in ho])
        lines.append(f"- {th} threads: {b / 1e6:.1f} M params/s + {a * 1e6:.1f} us per call over "
                     f"{len(rows)} sizes; held-out {err_text(errs)}")
    if not fits:
        return
    th = threads if threads in fits else max(fits)
    how = (f"alpha-beta fit of torch AdamW ({', '.join(impls)}) fp32 step time vs parameters, "
           f"{th} threads (the calibration's threads per stream)")
    host["adam"] = {
        "params_per_s": st.q("adam", fits[th][1], f"beta of the {how}"),
        "by_threads": {**st.prov("adam", "beta of the alpha-beta fit of step time vs parameters, "
                                         "per thread count"),
                       "points": [[k, v[1]] for k, v in sorted(fits.items())]},
        "threads": th,
        "overhead_us": st.q("adam", fits[th][0], f"alpha of the {how}: fixed cost per call"),
    }
    st.holdout["adam"] = [(Op(OpKind.ADAM_CPU, n=int(r["params"])), _f(r, "median_s"))
                          for r in t.ok(threads=str(th), split="holdout")]
    st.sections.append(f"## adam\n\n- implementation: {', '.join(impls)}; priced at {th} "
                       f"threads\n" + "\n".join(lines) + "\n")


# Interference workloads → the schedule streams they stand for (simhete.schedule.model.STREAM_RE).
_STREAMS = {
    "cpu": {"gemm": ("gpu*.compute",), "memcpy": ("gpu*.h2d", "gpu*.d2h"), "adam": ("cpu.optim",)},
    "cuda": {"gemm": ("gpu*.compute",), "h2d_pinned": ("gpu*.h2d",), "d2h_pinned": ("gpu*.d2h",),
             "adam": ("cpu.optim",)},
}


def _fit_interference(st: _State, device_type: str, out: list[dict[str, Any]]) -> None:
    t = st.tables["interference"]
    lines = []
    streams = _STREAMS[device_type]
    for r in t.ok(condition="concurrent"):
        v, ag = r["victim"], r["aggressor"]
        alone = t.ok(victim=v, aggressor=ag, condition="alone")
        if not alone:
            continue
        ratio = _f(r, "median_s") / _f(alone[0], "median_s")
        unstable = r["unstable"] == "1" or alone[0]["unstable"] == "1"
        lines.append(f"- {v} while {ag} runs: x{ratio:.3f}{' (unstable)' if unstable else ''}")
        if v not in streams or ag not in streams:
            lines[-1] += " (not in the profile: its stream cannot be told apart)"
            continue
        note = "" if ratio >= 1 else f"; measured {ratio:.3f} < 1, within noise: recorded as 1"
        for vs in streams[v]:
            for ags in streams[ag]:
                out.append({"victim": vs, "aggressor": ags, "slowdown": st.q(
                    "interference", sig(max(1.0, ratio)),
                    f"median time of {v} while {ag} loops on another thread / alone{note}")})
    st.sections.append("## interference\n\n" + "\n".join(lines) + "\n")


def _fit_collectives(st: _State) -> dict[str, Any] | None:
    t = st.tables["collectives"]
    rows = [r for r in t.ok() if r["split"] == "fit" and r["op"] != "peer_copy"]
    if not rows:
        why = sorted({r["status"] for r in t.rows if r["status"] != "ok"})
        st.sections.append("## collectives\n\n- " + ("; ".join(why) or "no data") + "\n")
        return None
    kind = {"all_reduce": OpKind.ALLREDUCE, "reduce_scatter": OpKind.REDUCE_SCATTER,
            "all_gather": OpKind.ALLGATHER}
    sizes = [_f(r, "bytes") * BUS_FACTOR[kind[r["op"]]](int(r["ranks"])) for r in rows]
    a, b = alpha_beta(sizes, [_f(r, "median_s") for r in rows])
    st.sections.append(f"## collectives\n\n- bus bandwidth {b / 1e9:.1f} GB/s, "
                       f"latency {a * 1e6:.1f} us over {len(rows)} points\n")
    return {"bus_bandwidth_gbps": st.q("collectives", sig(b / 1e9), "alpha-beta fit of NCCL "
                                       "collective time vs bytes x nccl-tests bus factor"),
            "latency_us": st.q("collectives", sig(a * 1e6), "alpha of the same fit")}


def _noise(st: _State) -> str:
    lines = ["## noise\n", "| suite | points | remeasured | unstable | median spread (IQR/median) |",
             "|---|---|---|---|---|"]
    for name in SUITES:
        t = st.tables.get(name)
        if t is None:
            continue
        ok = t.ok()
        spreads = [(_f(r, "q3_s") - _f(r, "q1_s")) / _f(r, "median_s") for r in ok]
        rem = sum(r["remeasured"] == "1" for r in ok)
        uns = sum(r["unstable"] == "1" for r in ok)
        med = f"{100 * float(np.median(spreads)):.1f}%" if spreads else "-"
        lines.append(f"| {name} | {len(ok)} | {rem} | {uns} | {med} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- refit -----

def fit(raw_dir: str | Path, name: str | None = None, profile_dir: str | Path | None = None) -> Fit:
    """Fit the raw CSVs in ``raw_dir`` into a profile dict and a report.

    ``raw`` references in the profile are relative to ``profile_dir`` (default: the parent of
    ``raw_dir``, where ``simhete calibrate`` puts the profile); ``name`` defaults to the raw
    directory's name without ``.raw``. Raw data that was edited by hand or cut short is a
    one-line ConfigError naming the directory and what is wrong, never a traceback.
    """
    try:
        return _fit(raw_dir, name, profile_dir)
    except KeyError as e:
        raise ConfigError(str(raw_dir), None, problem=f"raw data lacks {e.args[0]!r} (a column, a "
                          "system item or a table the fit needs); re-run simhete calibrate") from None
    except (ValueError, IndexError) as e:
        raise ConfigError(str(raw_dir), None, problem=f"malformed raw data ({e}); re-run simhete "
                          "calibrate") from None
    except OSError as e:                       # unreadable (permissions), a directory named x.csv
        raise ConfigError(e.filename or str(raw_dir), None,
                          problem=f"cannot read raw data: {e.strerror or e}") from None


def _fit(raw_dir: str | Path, name: str | None, profile_dir: str | Path | None) -> Fit:
    from simhete.hw.cost import CostModel
    from simhete.hw.profile import HardwareProfile

    rd = Path(raw_dir)
    if not rd.is_dir():
        raise ConfigError(str(rd), None, problem="raw data directory not found")
    # only the CSVs calibrate writes: another file in the directory is not raw data of a suite
    tables = {p.stem: read_raw(p) for p in sorted(rd.glob("*.csv")) if p.stem in (SYSTEM, *SUITES)}
    if not tables:
        raise ConfigError(str(rd), None, problem=(
            "holds no raw calibration data; expected the CSVs simhete calibrate writes into X.raw/ "
            "beside a profile X.yaml: system.csv, gemm.csv, membw.csv and copy.csv, and any of "
            + ", ".join(f"{s}.csv" for s in SUITES if s not in ("gemm", "membw", "copy"))))
    for need in (SYSTEM, "gemm", "membw", "copy"):
        if need not in tables:
            raise ConfigError(str(rd / f"{need}.csv"), None,
                              problem=f"missing; a profile needs at least the {need} data")
    st = _State(rd, Path(profile_dir) if profile_dir is not None else rd.parent, tables)
    sysinfo = _system(st)
    device_type = sysinfo["device_type"]
    sys_ref = (f"queried from the OS and torch on {tables[SYSTEM].meta.get('date', '?')} "
               f"(raw {os.path.relpath(tables[SYSTEM].path, st.profile_dir)})")
    gpu: dict[str, Any] = {
        "ref": sys_ref, "model": sysinfo["device"], "count": int(sysinfo["count"]),
        "memory_bytes": int(sysinfo["memory_bytes"]),
        "reserved_bytes": st.q(SYSTEM, int(sysinfo["reserved_bytes"]), sysinfo["reserved_how"]),
        "sms": int(sysinfo["sms"]),
    }
    host: dict[str, Any] = {
        "ref": sys_ref, "cpu_model": sysinfo["host_cpu"], "sockets": int(sysinfo["host_sockets"]),
        "cores": int(sysinfo["host_cores"]), "memory_bytes": int(sysinfo["host_memory_bytes"]),
    }
    interference: list[dict[str, Any]] = []
    _fit_gemm(st, sysinfo, gpu)
    if "attention" in tables:
        _fit_attention(st, gpu)
    _fit_membw(st, gpu)
    if "blocks" in tables:
        _fit_blocks(st, gpu)
    links = _fit_copy(st, device_type, host)
    pinned = int(sysinfo["pinned_limit_bytes"])
    if device_type == "cuda" or pinned > 0:   # a CPU device has no pinned memory: key left out
        host["pinned_limit_bytes"] = {"value": pinned, "source": "assumed",
                                      "ref": sysinfo["pinned_limit_how"]}
    if "adam" in tables:
        _fit_adam(st, host, int(sysinfo.get("torch_threads", sysinfo["host_cores"])))
    if "interference" in tables:
        _fit_interference(st, device_type, interference)
    coll = _fit_collectives(st) if "collectives" in tables else None
    prof_name = name or rd.name.removesuffix(".raw")
    profile: dict[str, Any] = {
        "name": prof_name,
        "description": f"calibrated by simhete calibrate on {sysinfo['device']} "
                       f"({tables[SYSTEM].meta.get('date', '?')}, grid {sysinfo['grid']}, torch threads "
                       f"{sysinfo.get('torch_threads', '?')} per stream)",
        "validated": False, "device_type": device_type, "gpu": gpu, "host": host,
    }
    if links is not None:
        profile["links"] = links
    if coll is not None:
        profile["collectives"] = coll
    profile["interference"] = interference
    prof = validate(HardwareProfile, profile, str(rd))
    cm = CostModel(prof)
    errs_lines = ["## held-out error (the fitted profile priced by CostModel)\n",
                  "| suite | error |", "|---|---|"]
    by_label = []
    errors: list[tuple[str, str, list[float]]] = []
    for suite in SUITES:
        if suite in st.holdout:
            pts = st.holdout[suite]
            errs = rel_errors([cm.op_seconds(op) for op, _ in pts], [m for _, m in pts])
            errs_lines.append(f"| {suite} | {err_text(errs)} |")
            errors.append((suite, "", errs))
            labels = st.holdout_by.get(suite)
            if labels:
                parts = []
                for lab in dict.fromkeys(labels):
                    e = [x for x, y in zip(errs, labels) if y == lab]
                    errors.append((suite, lab, e))
                    parts.append(f"{lab} {100 * float(np.median(e)):.1f}% "
                                 f"(max {100 * max(e):.1f}%)")
                by_label.append(f"- {suite} by op, median: {'; '.join(parts)}")
    if by_label:
        errs_lines.append("\n" + "\n".join(by_label))
    head = (f"# Fit report: {prof_name}\n\n- device: {sysinfo['device']} ({device_type})\n"
            f"- raw data: {rd.name}/ ({', '.join(sorted(tables))})\n"
            f"- torch {tables[SYSTEM].meta.get('torch', '?')}, date "
            f"{tables[SYSTEM].meta.get('date', '?')}, grid {sysinfo['grid']}, torch threads "
            f"{sysinfo.get('torch_threads', '?')} per measuring thread\n"
            f"- held-out points were never used by the fits\n")
    report = "\n".join([head, "\n".join(errs_lines) + "\n", *st.sections, _noise(st)])
    return Fit(profile, report, errors)


def refit(raw_dir: str | Path, name: str | None = None,
          profile_dir: str | Path | None = None) -> dict[str, Any]:
    """The profile dict fitted from raw CSV alone (no torch, no device)."""
    return fit(raw_dir, name, profile_dir).profile

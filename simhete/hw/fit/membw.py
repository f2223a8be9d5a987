"""Fit of the memory-bound suite: a curve and rate per OpKind and dtype (``gpu.memory_bound``),
the device's streaming bandwidth and its per-op launch overhead."""

from __future__ import annotations

from typing import Any

from simhete.errors import ConfigError
from simhete.hw.fit.common import FitState, alpha_beta, num, sig
from simhete.opkinds import MEMORY_BOUND_KINDS, OpKind
from simhete.schedule.model import Op


LAUNCH_FIT_SIZES = 3   # launch_overhead_us: alpha over the smallest fit sizes of ELEMENTWISE


def _mb_kind(r: dict[str, str]) -> OpKind:
    """The OpKind a membw row prices: its ``kind`` column (calibrate/membw.py names rows by
    OpKind; older raw files are translated when read: simhete/hw/fit/raw.py)."""
    return OpKind(r["kind"])


def _label(r: dict[str, str]) -> str:
    """A row's kind and, where the kind has several microbenchmarks, its variant: ``NORM_BWD``,
    ``ELEMENTWISE add``."""
    return f"{r['kind']} {r['variant']}" if r["variant"] else r["kind"]


def _mb_curve(rows: list[dict[str, str]]) -> list[list[float]]:
    """[bytes, GB/s] of the mean call at each measured size (elems): the arithmetic mean of the
    bytes and of the median times of every op of one kind (ELEMENTWISE's add and mul; DROPOUT's
    two sites).
    Each pass is its own kind (a backward row fits NORM_BWD, ...), so a curve mixes ops that
    move the same bytes the same way, never a forward with its backward."""
    by_elems: dict[int, list[tuple[float, float]]] = {}
    for r in rows:
        by_elems.setdefault(int(r["elems"]), []).append((num(r, "bytes"), num(r, "median_s")))
    curve: dict[int, float] = {}
    for _, v in sorted(by_elems.items()):
        b = sum(x for x, _ in v) / len(v)
        t = sum(y for _, y in v) / len(v)
        curve[round(b)] = sig(round(b) / t / 1e9)
    return [[b, g] for b, g in sorted(curve.items())]


def fit_membw(st: FitState, gpu: dict[str, Any]) -> None:
    """Per OpKind and dtype (a backward pass is its own kind), the measured curve (bytes, GB/s) of
    its ops (the mean call at each size: :func:`_mb_curve`) and its rate at the largest size. The first dtype measured is
    the kind's own entry; other dtypes go to its ``dtypes``. The ELEMENTWISE rate is also
    ``mem_bandwidth_gbps``; the per-op fixed cost ``launch_overhead_us`` is alpha of an
    alpha-beta fit over the smallest add/mul of the first dtype."""
    t = st.tables["membw"]
    rows = [r for r in t.ok() if r["split"] == "fit" and r["kind"] in MEMORY_BOUND_KINDS]
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
            variants = " and ".join(dict.fromkeys(r["variant"] for r in sub if r["variant"]))
            desc = f"{kind.value} ({variants})" if variants else kind.value
            what = f"{desc}, {dt}"
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
            lines.append(f"- {desc} {dt}: {curve[0][1]} GB/s at "
                         f"{curve[0][0]} B ... {curve[-1][1]} GB/s at {curve[-1][0]} B "
                         f"(peak {max(g for _, g in curve)} GB/s)")
    if "ELEMENTWISE" not in per_kind:
        raise ConfigError(str(t.path), None, problem="no measured ELEMENTWISE (add/mul) points to fit")
    ew = sorted((r for r in rows if _mb_kind(r) is OpKind.ELEMENTWISE
                 and r["dtype"] == dtypes[0]), key=lambda r: int(r["bytes"]))
    small = sorted({int(r["bytes"]) for r in ew})[:LAUNCH_FIT_SIZES]
    pts = [r for r in ew if int(r["bytes"]) in small]
    alpha, beta = alpha_beta([num(r, "bytes") for r in pts], [num(r, "median_s") for r in pts])
    gpu["mem_bandwidth_gbps"] = st.q("membw", per_kind["ELEMENTWISE"]["bandwidth_gbps"]["value"],
                                     "ELEMENTWISE (add and mul; bytes read + written) at the largest "
                                     "fit size: "
                                     "achievable streaming bandwidth")
    gpu["memory_bound_efficiency"] = st.q("membw", 1.0, "1 by construction: mem_bandwidth_gbps "
                                          "is the achieved bandwidth of these ops")
    gpu["launch_overhead_us"] = st.q("membw", sig(alpha * 1e6), f"alpha (intercept) of an "
                                     f"alpha-beta fit over ELEMENTWISE (add and mul) at the {len(small)} "
                                     f"smallest fit sizes ({small[0]}-{small[-1]} bytes): per-op "
                                     f"fixed cost")
    gpu["memory_bound"] = per_kind
    held = [r for r in t.ok(split="holdout") if r["kind"] in MEMORY_BOUND_KINDS]
    st.holdout["membw"] = [(Op(_mb_kind(r), n=int(r["bytes"]), dtype=r["dtype"]),
                            num(r, "median_s")) for r in held]
    st.holdout_by["membw"] = [f"{_label(r)}{'' if r['dtype'] == dtypes[0] else ' ' + r['dtype']}"
                              for r in held]
    st.sections.append(f"## membw\n\n- launch overhead: {alpha * 1e6:.2f} us (alpha-beta over "
                       f"ELEMENTWISE (add and mul) at {', '.join(map(str, small))} bytes; beta "
                       f"{beta / 1e9:.1f} GB/s)\n" + "\n".join(lines) + "\n")

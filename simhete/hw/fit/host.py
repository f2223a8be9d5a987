"""Fits of the host-side suites: host memcpy and DRAM bandwidth, H2D/D2H links and duplex, CPU
Adam by thread count, interference between streams, and NCCL collectives."""

from __future__ import annotations

from typing import Any

from simhete.errors import ConfigError
from simhete.hw.cost import BUS_FACTOR
from simhete.hw.fit.common import FitState, alpha_beta, err_text, num, rel_errors, sig
from simhete.opkinds import OpKind
from simhete.schedule.model import Op


def link_fit(st: FitState, rows: list[dict[str, str]], what: str) -> dict[str, Any]:
    sizes = [num(r, "bytes") for r in rows]
    times = [num(r, "median_s") for r in rows]
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


def fit_copy(st: FitState, device_type: str, host: dict[str, Any]) -> dict[str, Any] | None:
    t = st.tables["copy"]
    lines = []
    memcpy = [r for r in t.ok(kind="memcpy", memory="host") if r["split"] == "fit"]
    stream = [r for r in t.ok(kind="stream_add", memory="host") if r["split"] == "fit"]
    if not memcpy or not stream:
        raise ConfigError(str(t.path), None, problem="no measured host memcpy/stream_add points")
    a, b = alpha_beta([num(r, "bytes") for r in memcpy], [num(r, "median_s") for r in memcpy])
    host["memcpy_gbps"] = st.q("copy", sig(b / 1e9), "alpha-beta fit of host-to-host copy_ "
                               "(bytes copied / time)")
    lines.append(f"- host memcpy: {b / 1e9:.2f} GB/s, alpha {a * 1e6:.2f} us")
    sa, sb = alpha_beta([3 * num(r, "bytes") for r in stream], [num(r, "median_s") for r in stream])
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
                links[d][mem] = link_fit(st, rows, f"{d} {mem}")
                lines.append(f"- {d} {mem}: {links[d][mem]['bandwidth_gbps']['value']} GB/s, "
                             f"latency {links[d][mem]['latency_us']['value']} us")
                st.holdout.setdefault("copy", []).extend(
                    (Op(OpKind.H2D if d == "h2d" else OpKind.D2H, n=int(r["bytes"]),
                        pinned=mem == "pinned"), num(r, "median_s"))
                    for r in t.ok(kind=d, memory=mem, split="holdout"))
            singles[d] = {int(r["bytes"]): num(r, "median_s") for r in t.ok(kind=d, memory="pinned")}
    else:
        # A CPU device has no copy engine and no pinned memory: an H2D or D2H there is a host
        # memcpy, whatever its memory kind, so both kinds of both directions get the memcpy fit.
        what = "host memcpy (CPU device: H2D/D2H are host memcpy; pinned is not applicable)"
        link = link_fit(st, memcpy, what)
        links = {d: {"pinned": link, "pageable": link} for d in ("h2d", "d2h")}
        st.holdout["copy"] = [(Op(OpKind.H2D, n=int(r["bytes"])), num(r, "median_s"))
                              for r in t.ok(kind="memcpy", memory="host", split="holdout")]
        single = {int(r["bytes"]): num(r, "median_s") for r in t.ok(kind="memcpy", memory="host")}
        singles = {"h2d": single, "d2h": single}
    dmem = "pinned" if device_type == "cuda" else "host"
    ratios = []
    for r in t.ok(kind="duplex", memory=dmem):
        n = int(r["bytes"])
        if all(n in singles[d] for d in ("h2d", "d2h")):
            one = (singles["h2d"][n] + singles["d2h"][n]) / 2
            ratios.append((n, one / num(r, "median_s")))
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


def fit_adam(st: FitState, host: dict[str, Any], threads: int) -> None:
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
        a, b = alpha_beta([num(r, "params") for r in rows], [num(r, "median_s") for r in rows])
        fits[th] = (sig(a * 1e6), sig(b))
        ho = t.ok(threads=str(th), split="holdout")
        errs = rel_errors([a + num(r, "params") / b for r in ho], [num(r, "median_s") for r in ho])
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
    st.holdout["adam"] = [(Op(OpKind.ADAM_CPU, n=int(r["params"])), num(r, "median_s"))
                          for r in t.ok(threads=str(th), split="holdout")]
    st.sections.append(f"## adam\n\n- implementation: {', '.join(impls)}; priced at {th} "
                       f"threads\n" + "\n".join(lines) + "\n")


# Interference workloads → the schedule streams they stand for (simhete.schedule.model.STREAM_RE).
_STREAMS = {
    "cpu": {"gemm": ("gpu*.compute",), "memcpy": ("gpu*.h2d", "gpu*.d2h"), "adam": ("cpu.optim",)},
    "cuda": {"gemm": ("gpu*.compute",), "h2d_pinned": ("gpu*.h2d",), "d2h_pinned": ("gpu*.d2h",),
             "adam": ("cpu.optim",)},
}


def fit_interference(st: FitState, device_type: str, out: list[dict[str, Any]]) -> None:
    t = st.tables["interference"]
    lines = []
    streams = _STREAMS[device_type]
    for r in t.ok(condition="concurrent"):
        v, ag = r["victim"], r["aggressor"]
        alone = t.ok(victim=v, aggressor=ag, condition="alone")
        if not alone:
            continue
        ratio = num(r, "median_s") / num(alone[0], "median_s")
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


def fit_collectives(st: FitState) -> dict[str, Any] | None:
    t = st.tables["collectives"]
    rows = [r for r in t.ok() if r["split"] == "fit" and r["op"] != "peer_copy"]
    if not rows:
        why = sorted({r["status"] for r in t.rows if r["status"] != "ok"})
        st.sections.append("## collectives\n\n- " + ("; ".join(why) or "no data") + "\n")
        return None
    kind = {"all_reduce": OpKind.ALLREDUCE, "reduce_scatter": OpKind.REDUCE_SCATTER,
            "all_gather": OpKind.ALLGATHER}
    sizes = [num(r, "bytes") * BUS_FACTOR[kind[r["op"]]](int(r["ranks"])) for r in rows]
    a, b = alpha_beta(sizes, [num(r, "median_s") for r in rows])
    st.sections.append(f"## collectives\n\n- bus bandwidth {b / 1e9:.1f} GB/s, "
                       f"latency {a * 1e6:.1f} us over {len(rows)} points\n")
    return {"bus_bandwidth_gbps": st.q("collectives", sig(b / 1e9), "alpha-beta fit of NCCL "
                                       "collective time vs bytes x nccl-tests bus factor"),
            "latency_us": st.q("collectives", sig(a * 1e6), "alpha of the same fit")}

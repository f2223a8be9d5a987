"""What a sweep's rows say: the best configurations and the Pareto fronts, as tables and a plot.

Best: feasible rows (they fit, and respect the sweep's limits) by throughput, highest first, ties
by grid index. Pareto front against a memory column: feasible rows for which no other feasible row
has at least the throughput with at most the memory and is better in one of them; listed by memory,
ascending (equal memory keeps the highest throughput, equal both the lowest grid index).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from rich.table import Table

from simhete.search.evaluate import Row
from simhete.search.runner import feasible
from simhete.search.space import Limits

GIB = 2**30
FRONTS = {"gpu": ("peak_gpu_bytes", "peak GPU memory"), "host": ("peak_host_bytes", "peak host memory")}


def best(rows: Sequence[Row], limits: Limits, k: int = 10) -> list[Row]:
    ok = [r for r in rows if feasible(r, limits)]
    return sorted(ok, key=lambda r: (-float(r.tokens_per_s or 0.0), r.idx))[:k]


def pareto(rows: Sequence[Row], limits: Limits, column: str) -> list[Row]:
    """Rows on the (max throughput, min ``column``) front, by ``column`` ascending."""
    ok = sorted((r for r in rows if feasible(r, limits) and getattr(r, column) is not None),
                key=lambda r: (getattr(r, column), -float(r.tokens_per_s or 0.0), r.idx))
    front: list[Row] = []
    top = -1.0
    for r in ok:
        t = float(r.tokens_per_s or 0.0)
        if t > top:
            front.append(r)
            top = t
    return front


def status_counts(rows: Sequence[Row]) -> dict[str, int]:
    c = Counter(r.status for r in rows)
    return {s: c[s] for s in ("ok", "oom", "invalid", "error") if c[s]}


# the columns a narrow console drops first (tokens/s, the memory peaks and the axes always stay)
OPTIONAL = ("iter s", "MFU")


def rows_table(rows: Sequence[Row], keys: Sequence[str], title: str) -> "RowsTable":
    """The rows as a table, one column per axis (headed by the key's last part, values as a person
    writes them) and tokens/s, iteration time, MFU and peak GPU/host memory; on a console too
    narrow for all, iteration time then MFU are left out and cells wrap (never cut)."""
    return RowsTable(rows, keys, title)


class RowsTable:
    def __init__(self, rows: Sequence[Row], keys: Sequence[str], title: str) -> None:
        self.rows, self.keys, self.title = list(rows), list(keys), title

    def table(self, drop: Sequence[str] = (), box: Any = None) -> Table:
        nums = [n for n in ("tokens/s", "iter s", "MFU", "GPU GiB", "host GiB") if n not in drop]
        body = []
        for r in self.rows:
            p = json.loads(r.params)
            cells = {"tokens/s": f"{r.tokens_per_s:,.0f}", "iter s": f"{r.iter_time_s:.3f}",
                     "MFU": f"{r.mfu:.1%}", "GPU GiB": _gib(r.peak_gpu_bytes), "host GiB": _gib(r.peak_host_bytes)}
            body.append([str(r.idx), *(_short(p.get(k)) for k in self.keys), *(cells[n] for n in nums)])

        def word(i: int) -> int:     # a column wraps at spaces, never inside a word or a number
            return max((len(w) for row in body for w in row[i].split()), default=1)
        t = Table(title=self.title, title_justify="left", **({"box": box} if box is not None else {}))
        t.add_column("#", justify="right", min_width=word(0))
        for i, k in enumerate(self.keys, 1):
            t.add_column(k.rsplit(".", 1)[-1], overflow="fold", min_width=word(i))
        for i, name in enumerate(nums, 1 + len(self.keys)):
            t.add_column(name, justify="right", min_width=word(i))
        for row in body:
            t.add_row(*row)
        return t

    def __rich_console__(self, console, options):  # type: ignore[no-untyped-def]
        from rich import box
        from rich.measure import Measurement
        tries = [dict(drop=OPTIONAL[:i]) for i in range(len(OPTIONAL) + 1)]
        tries.append(dict(drop=OPTIONAL, box=box.SIMPLE_HEAD))        # no vertical rules: n+1 more columns
        for kw in tries:
            t = self.table(**kw)
            if Measurement.get(console, options.update_width(10_000), t).maximum <= options.max_width:
                break
        yield t


def failures_table(rows: Sequence[Row], limit: int = 5) -> Table | None:
    """The most common failure reasons (first line, numbers kept), with counts."""
    bad = [r for r in rows if r.status != "ok"]
    if not bad:
        return None
    c = Counter((r.status, r.reason.split(" at t=")[0][:160]) for r in bad)
    t = Table(title="Failures (most common reasons)", title_justify="left")
    t.add_column("status")
    t.add_column("points", justify="right")
    t.add_column("reason")
    for (status, reason), n in c.most_common(limit):
        t.add_row(status, str(n), reason)
    return t


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LIMIT_KEYS = {"peak_gpu_bytes": "gpu_memory", "peak_host_bytes": "host_memory"}


def point_hardware(r: Row) -> str:
    """The hardware a row ran on, short: its ``hardware`` axis value (``h200-sxm gpus=1``) when the
    sweep varies it, else the profile named in its summary."""
    p = json.loads(r.params)
    if "hardware" in p:
        return _short(p["hardware"])
    meta = json.loads(r.summary).get("meta", {}) if r.summary else {}
    return str(meta.get("hardware", "?"))


def plot_fronts(rows: Sequence[Row], limits: Limits, path: str | Path, title: str = "") -> None:
    """PNG: throughput vs peak GPU memory and vs peak host memory. Every feasible point, coloured
    by policy and shaped by hardware (a legend of both); the Pareto front as a black step line
    through ringed points; the sweep's memory limits as dashed lines."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(12, 5), dpi=110, layout="constrained")
    ok = [r for r in rows if feasible(r, limits)]
    policies = sorted({r.policy for r in ok})
    hardware = sorted({point_hardware(r) for r in ok})
    colour = {p: f"C{i % 10}" for i, p in enumerate(policies)}
    marker = {h: MARKERS[i % len(MARKERS)] for i, h in enumerate(hardware)}
    for ax, (col, label) in zip(fig.subplots(1, 2), FRONTS.values()):
        groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for r in ok:
            if getattr(r, col) is not None:
                groups.setdefault((r.policy, point_hardware(r)), []).append((getattr(r, col) / GIB, r.tokens_per_s))
        for (pol, hw), pts in sorted(groups.items()):
            ax.scatter(*zip(*pts), s=22, color=colour[pol], marker=marker[hw], alpha=0.8)
        front = pareto(rows, limits, col)
        if front:
            xs = [getattr(r, col) / GIB for r in front]
            ys = [r.tokens_per_s for r in front]
            ax.step(xs, ys, where="post", color="black", lw=1.0)
            ax.scatter(xs, ys, s=90, facecolors="none", edgecolors="black", zorder=3)
        lim = getattr(limits, LIMIT_KEYS[col])
        if lim is not None:
            ax.axvline(lim / GIB, color="black", linestyle="--", lw=0.8)
        ax.set_xlabel(f"{label} (GiB)")
        ax.set_ylabel("throughput (tokens/s)")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], linestyle="none", marker="o", color=colour[p], label=f"policy {p}") for p in policies]
    handles += [Line2D([], [], linestyle="none", marker=marker[h], color="0.4", label=h) for h in hardware]
    if ok:
        handles.append(Line2D([], [], color="black", marker="o", markerfacecolor="none", markersize=9,
                              label="Pareto front"))
    if limits.gpu_memory is not None or limits.host_memory is not None:
        handles.append(Line2D([], [], color="black", linestyle="--", lw=0.8, label="sweep limit"))
    if handles:
        fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    from simhete.fileio import write_atomic
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    write_atomic(Path(path), buf.getvalue(), "--plot")


def _gib(n: int | None) -> str:
    return "" if n is None else f"{n / GIB:.1f}"


def _short(v: object) -> str:
    """An axis value as a person writes it: ``h200-sxm gpus=1`` for ``{profile: h200-sxm, gpus:
    1}``, ``llama2-7b hidden=2048`` for a model mapping, lists comma separated; never JSON."""
    if isinstance(v, dict):
        head = next((v[k] for k in ("profile", "preset", "hf_config") if isinstance(v.get(k), str)), None)
        rest = [f"{k}={_short(x)}" for k, x in v.items() if not (x is head and head is not None)]
        return " ".join(([head] if head is not None else []) + rest)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_short(x) for x in v) + "]"
    if v is None:
        return "—"
    return v if isinstance(v, str) else json.dumps(v)

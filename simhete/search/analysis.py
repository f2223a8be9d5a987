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
from typing import Sequence

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


def rows_table(rows: Sequence[Row], keys: Sequence[str], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column("#", justify="right")
    for k in keys:
        t.add_column(k)
    for name in ("tokens/s", "iter s", "MFU", "GPU GiB", "host GiB"):
        t.add_column(name, justify="right")
    for r in rows:
        p = json.loads(r.params)
        t.add_row(str(r.idx), *(_short(p.get(k)) for k in keys),
                  f"{r.tokens_per_s:,.0f}", f"{r.iter_time_s:.3f}", f"{r.mfu:.1%}",
                  _gib(r.peak_gpu_bytes), _gib(r.peak_host_bytes))
    return t


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


def plot_fronts(rows: Sequence[Row], limits: Limits, path: str | Path, title: str = "") -> None:
    """PNG: throughput vs peak GPU memory and vs peak host memory; fronts drawn as steps."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), dpi=110)
    ok = [r for r in rows if feasible(r, limits)]
    for ax, (col, label) in zip(fig.subplots(1, 2), FRONTS.values()):
        pts = [(getattr(r, col) / GIB, r.tokens_per_s) for r in ok if getattr(r, col) is not None]
        if pts:
            ax.scatter(*zip(*pts), s=12, color="0.65", label="fits")
        front = pareto(rows, limits, col)
        if front:
            xs = [getattr(r, col) / GIB for r in front]
            ys = [r.tokens_per_s for r in front]
            ax.step(xs, ys, where="post", color="C3", lw=1.2)
            ax.scatter(xs, ys, s=24, color="C3", zorder=3, label="Pareto front")
        ax.set_xlabel(f"{label} (GiB)")
        ax.set_ylabel("tokens/s")
        ax.grid(alpha=0.3)
        if pts:
            ax.legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    from simhete.fileio import write_atomic
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    write_atomic(Path(path), buf.getvalue(), "--plot")


def _gib(n: int | None) -> str:
    return "" if n is None else f"{n / GIB:.1f}"


def _short(v: object) -> str:
    s = v if isinstance(v, str) else json.dumps(v)
    return s if len(s) <= 24 else s[:21] + "..."

"""PNG of a Timeline: a Gantt chart per stream (coloured by TaskCat, iteration ends marked) and,
below it, bytes in use per memory pool over time with the pool's capacity.

Draws on an Agg canvas without pyplot, so no display and no global figure state are involved.
One ``broken_barh`` collection per (stream, category) keeps ~10k records fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from simhete.engine.timeline import Timeline
from simhete.opkinds import TaskCat

GIB = 2**30
BAR_HEIGHT = 0.8
# Fixed colours (matplotlib's tab10 palette) so a category looks the same in every plot.
CAT_COLOURS = {
    TaskCat.FWD: "#1f77b4", TaskCat.BWD: "#ff7f0e", TaskCat.RECOMPUTE: "#9467bd",
    TaskCat.H2D: "#2ca02c", TaskCat.D2H: "#d62728", TaskCat.OPTIM_CPU: "#8c564b",
    TaskCat.OPTIM_GPU: "#e377c2", TaskCat.COMM: "#17becf", TaskCat.OTHER: "#7f7f7f",
}


def timeline_figure(timeline: Timeline, *, pools: Mapping[str, int] | None = None,
                    title: str = "") -> Figure:
    """The figure: axes 0 is the Gantt chart, then one axes per pool of ``timeline.mem_events`` in
    sorted order, with a capacity line where ``pools`` (capacity in bytes per pool) names it."""
    streams = list(dict.fromkeys(r.stream for r in timeline.records))
    names = sorted(timeline.mem_events)
    fig = Figure(figsize=(14, 1.2 + 0.45 * len(streams) + 1.8 * len(names)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1 + len(names), 1, sharex=True, squeeze=False,
                        height_ratios=[max(len(streams), 1) * 0.45] + [1.8] * len(names))[:, 0]
    _gantt(axes[0], timeline, streams)
    end = timeline.makespan
    for ax, pool in zip(axes[1:], names):
        _memory(ax, pool, timeline.mem_events[pool], end, (pools or {}).get(pool))
    for ax in axes:
        for t in sorted(timeline.iteration_ends().values()):
            ax.axvline(t, color="black", linestyle=":", linewidth=0.8)
    axes[-1].set_xlabel("time (s)")
    if title:
        fig.suptitle(title)
    return fig


def plot_timeline(timeline: Timeline, path: str | Path, *, pools: Mapping[str, int] | None = None,
                  title: str = "") -> Path:
    """Write :func:`timeline_figure` as a PNG (byte-identical for identical inputs)."""
    import io

    from simhete.fileio import write_atomic

    path = Path(path)
    buf = io.BytesIO()
    fig = timeline_figure(timeline, pools=pools, title=title)
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    write_atomic(path, buf.getvalue(), "--plot")
    return path


def _gantt(ax, timeline: Timeline, streams: list[str]) -> None:
    row = {s: i for i, s in enumerate(streams)}
    bars: dict[tuple[str, TaskCat], list[tuple[float, float]]] = {}
    for r in timeline.records:
        bars.setdefault((r.stream, r.cat), []).append((r.start, r.dur))
    for (stream, cat), xranges in bars.items():
        ax.broken_barh(xranges, (row[stream] - BAR_HEIGHT / 2, BAR_HEIGHT),
                       facecolors=CAT_COLOURS[cat], edgecolor="none")
    ax.set_yticks(range(len(streams)), streams)
    ax.set_ylim(max(len(streams), 1) - 0.5, -0.5)  # first stream on top
    cats = [c for c in TaskCat if any(k[1] is c for k in bars)]
    handles = [Patch(color=CAT_COLOURS[c], label=c.value) for c in cats]
    if timeline.iteration_ends():
        handles.append(Patch(facecolor="none", edgecolor="black", linestyle=":",
                             label="iteration end"))
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    ax.set_title("streams")


def _memory(ax, pool: str, changes: tuple[tuple[float, int], ...], end: float,
            capacity: int | None) -> None:
    times = [t for t, _ in changes]
    used = [n / GIB for _, n in changes]
    if changes and end > times[-1]:                 # hold the last value to the end of the run
        times.append(end)
        used.append(used[-1])
    ax.step(times, used, where="post", color="#1f77b4", label="in use")
    if capacity is not None:
        ax.axhline(capacity / GIB, color="#d62728", linestyle="--", label="capacity")
    ax.set_ylabel(f"{pool} (GiB)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")

"""PNG of a Timeline: a Gantt chart per stream (coloured by TaskCat, iteration ends marked) and,
below it, bytes in use per memory pool over time with the pool's capacity.

A run that stopped out of memory is drawn as such: mid-run, a solid red line at the moment it
stopped, labelled with the blocked task and the bytes it asked, the pool's would-be use marked and
its largest holders listed (the unfinished iteration gets no "iteration end"); a run that never
started (the states placed at start do not fit) is one bar of what was asked, by memory class,
against the pool's capacity.

Draws on an Agg canvas without pyplot, so no display and no global figure state are involved.
One ``broken_barh`` collection per (stream, category) keeps ~10k records fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from simhete.engine.timeline import OOMReport, Timeline
from simhete.opkinds import TaskCat

GIB = 2**30
BAR_HEIGHT = 0.8
OOM_COLOUR = "#d62728"
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
    oom = timeline.oom
    if oom is not None and not timeline.records:
        return _never_started(oom, title)
    streams = list(dict.fromkeys(r.stream for r in timeline.records))
    names = sorted(timeline.mem_events)
    fig = Figure(figsize=(14, 1.2 + 0.45 * len(streams) + 1.8 * len(names)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1 + len(names), 1, sharex=True, squeeze=False,
                        height_ratios=[max(len(streams), 1) * 0.45] + [1.8] * len(names))[:, 0]
    ends = iteration_ends(timeline)
    _gantt(axes[0], timeline, streams, bool(ends), oom)
    end = max(timeline.makespan, oom.time if oom is not None else 0.0)
    for ax, pool in zip(axes[1:], names):
        _memory(ax, pool, timeline.mem_events[pool], end, (pools or {}).get(pool))
    for ax in axes:
        for t in ends:
            ax.axvline(t, color="black", linestyle=":", linewidth=0.8)
    if oom is not None:
        _oom_marks(axes[0], dict(zip(names, axes[1:])), oom)
    axes[-1].set_xlabel("time (s)")
    if title:
        fig.suptitle(title)
    return fig


def iteration_ends(timeline: Timeline) -> list[float]:
    """Times of the iteration ends drawn: every iteration's, except, in a run stopped out of
    memory, the unfinished last one (its latest finished task is not its end)."""
    ends = timeline.iteration_ends()
    if timeline.oom is not None and ends:
        ends.pop(max(ends))
    return sorted(ends.values())


def _oom_label(oom: OOMReport) -> str:
    return (f"out of memory in {oom.pool}: {oom.task} asks {oom.asked / GIB:.2f} GiB, "
            f"{oom.free / GIB:.2f} GiB free of {oom.capacity / GIB:.2f} GiB")


def _holders_text(oom: OOMReport, n: int = 5) -> str:
    return "largest holders:\n" + "\n".join(f"{b} {x / GIB:.2f} GiB" for b, x in oom.holders[:n])


def _oom_marks(gantt, pool_axes: Mapping[str, object], oom: OOMReport) -> None:
    """A solid red line where the run stopped on every axes (the Gantt legend names the blocked
    task and its request) and, on the pool that ran out, what it would have held and its holders."""
    for ax in [gantt, *pool_axes.values()]:
        ax.axvline(oom.time, color=OOM_COLOUR, linewidth=1.6)
    ax = pool_axes.get(oom.pool)
    if ax is not None:
        need = (oom.capacity - oom.free + oom.asked) / GIB
        ax.plot([oom.time], [need], marker="x", color=OOM_COLOUR, markersize=9, linestyle="none",
                label=f"{oom.task} would need")
        ax.set_ylim(top=max(ax.get_ylim()[1], need * 1.08))
        ax.text(1.01, 0.0, _holders_text(oom), transform=ax.transAxes, fontsize="x-small",
                va="bottom", ha="left", color=OOM_COLOUR)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")


def _never_started(oom: OOMReport, title: str) -> Figure:
    """One horizontal bar: what the states placed at start in ``oom.pool`` need, stacked by memory
    class (or by holder when the classes are not known), against the pool's capacity."""
    fig = Figure(figsize=(14, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    parts = list(oom.by_class) or list(oom.holders)
    left = 0.0
    for i, (name, n) in enumerate(parts):
        ax.barh(0, n / GIB, left=left, height=0.5, color=f"C{i % 10}", label=f"{name} {n / GIB:.2f} GiB")
        left += n / GIB
    ax.axvline(oom.capacity / GIB, color=OOM_COLOUR, linewidth=1.6,
               label=f"{oom.pool} capacity {oom.capacity / GIB:.2f} GiB")
    ax.set_yticks([0], [oom.pool])
    ax.set_xlim(0, max(left, oom.capacity / GIB) * 1.05)
    ax.set_xlabel("GiB")
    what = "the states placed at start" if oom.task == "(initial)" else f"task {oom.task}"
    ax.set_title(f"did not start: out of memory in {oom.pool}: {what} need {oom.asked / GIB:.2f} GiB, "
                 f"capacity {oom.capacity / GIB:.2f} GiB", color=OOM_COLOUR)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
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


def _gantt(ax, timeline: Timeline, streams: list[str], ends: bool, oom: OOMReport | None) -> None:
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
    if ends:
        handles.append(Patch(facecolor="none", edgecolor="black", linestyle=":",
                             label="iteration end"))
    if oom is not None:
        handles.append(Line2D([], [], color=OOM_COLOUR, linewidth=1.6, label=_oom_label(oom)))
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

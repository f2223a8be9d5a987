"""The steady-state window of a Timeline and what the streams do in it: the window's bounds, the
iterations whose tasks make up the steady iteration, and each stream's busy fraction of the window.

The *steady-state window* is the last iteration: from the end of the previous iteration to the end
of the last one (iteration labels > 0; iteration 0 is setup). With fewer than two such iterations
the window is the whole run, ``[0, makespan]``. This is the same rule as
:meth:`Timeline.steady_iteration_time`, whose value is the window length.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from simhete.engine.timeline import Timeline


def steady_window(timeline: Timeline) -> tuple[float, float] | None:
    """(start, end) of the steady-state window in seconds; ``None`` for an empty timeline."""
    cols = timeline.columns
    if not (len(cols.rows) if cols is not None else timeline.records):
        return None
    ends = timeline.iteration_ends()
    its = sorted(i for i in ends if i > 0)
    if len(its) >= 2:
        return ends[its[-2]], ends[its[-1]]
    return 0.0, timeline.makespan


def steady_iterations(timeline: Timeline) -> set[int] | None:
    """Iteration labels whose tasks make up the steady iteration (``None``: every record counts)."""
    cols = timeline.columns
    if cols is not None:       # the fast engine's arrays: no Record objects needed
        # the distinct labels ascending, as np.unique gives them (which loads numpy.ma, ~15 ms, on
        # first use without return_index: a sweep process needs nothing else from it)
        its = cols.derived("iterations>0", lambda: sorted(set(cols.it[cols.it > 0].tolist())))
    else:
        its = sorted({r.it for r in timeline.records if r.it > 0})
    return {its[-1]} if len(its) >= 2 else None


def stream_busy(timeline: Timeline, window: tuple[float, float]) -> dict[str, float]:
    """Per stream: length of the union of its records' intervals clipped to ``window``, divided by
    the window length. Every stream that has a record appears (0.0 if idle in the window)."""
    t0, t1 = window
    spans: dict[str, list[tuple[float, float]]] = {}
    cols = timeline.columns
    if cols is not None:
        # rows grouped by stream (streams in name order), once per structure; one lexsort by
        # (stream, a, b) orders each stream's intervals as sorted((a, b) pairs) does (stable: ties
        # keep row order, as a lexsort of the stream's rows alone)
        perm, key, bounds, names = cols.derived("streams", lambda: _stream_groups(cols))
        a_all, b_all = np.maximum(cols.start[perm], t0), np.minimum(cols.end[perm], t1)
        # an interval empty once clipped (most of them: the window is one iteration) adds 0.0 and
        # moves no reach, so it is left out of the sort and the per-stream passes (same floats)
        keep = b_all > a_all
        if not keep.all():
            a_all, b_all, key = a_all[keep], b_all[keep], key[keep]
            bounds = [0, *np.cumsum(np.bincount(key, minlength=len(names))).tolist()]
        by = np.lexsort((b_all, a_all, key))
        lengths = _union_lengths(a_all[by], b_all[by], bounds, t0)
        return {name: x / (t1 - t0) for name, x in zip(names, lengths)}
    else:
        for r in timeline.records:
            spans.setdefault(r.stream, []).append((max(r.start, t0), min(r.end, t1)))
        for v in spans.values():
            v.sort()
    out: dict[str, float] = {}
    for stream in sorted(spans):
        busy, reach = 0.0, t0
        for a, b in spans[stream]:
            a = max(a, reach)
            if b > a:
                busy += b - a
                reach = b
        out[stream] = busy / (t1 - t0)
    return out


def _stream_groups(cols: Any) -> tuple[np.ndarray, np.ndarray, list[int], list[str]]:
    """(rows ordered by stream name then row, the stream's position in name order of each of
    them, where each stream's run starts and ends, the names): the streams that have a record."""
    streams = cols.streams
    present = sorted(set(cols.stream_of.tolist()))      # not np.unique: see steady_iterations
    by_name = sorted(present, key=streams.__getitem__)
    rank = np.zeros(len(streams), dtype=np.int64)
    rank[by_name] = np.arange(len(by_name), dtype=np.int64)
    r = rank[cols.stream_of]
    counts = np.bincount(r, minlength=len(by_name)).tolist()
    bounds = [0]
    for c in counts:
        bounds.append(bounds[-1] + c)
    perm = np.argsort(r, kind="stable")
    return perm, r[perm], bounds, [streams[k] for k in by_name]


def _union_lengths(a: np.ndarray, b: np.ndarray, bounds: list[int], t0: float) -> list[float]:
    """The length of the union of the intervals ``[a, b)`` of each run ``a[lo:hi], b[lo:hi]``
    (``bounds``: consecutive run limits; a run's intervals sorted by (a, b)) from ``t0`` on, with
    the floats of :func:`stream_busy`'s loop: an interval counts ``b - max(a, reach)`` when
    positive, where ``reach`` (from ``t0``) is the largest end of the non-empty intervals before
    it, summed in order (``cumsum``). The element-wise steps run over all runs at once."""
    ends = np.maximum(np.where(b > a, b, -np.inf), t0)
    reach = np.empty_like(a)
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi > lo:
            reach[lo] = t0
            np.maximum.accumulate(ends[lo:hi - 1], out=reach[lo + 1:hi])
    start = np.maximum(a, reach)
    part = np.where(b > start, b - start, 0.0)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        out.append(float(np.cumsum(part[lo:hi])[-1]) if hi > lo else 0.0)
    return out

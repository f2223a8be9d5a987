"""Summary metrics of a Timeline: iteration time, throughput, MFU, stream busy, PCIe bytes, memory.

Every figure is derived from the flat :class:`~simhete.engine.timeline.Timeline` record type plus
what the caller knows about the workload (tokens, FLOPs per iteration) and the hardware (peak
FLOP/s, pool capacities). Definitions, formulas and units are in ``docs/reports.md``.

The *steady-state window* is the last iteration: from the end of the previous iteration to the end
of the last one (iteration labels > 0; iteration 0 is setup). With fewer than two such iterations
the window is the whole run, ``[0, makespan]``. This is the same rule as
:meth:`Timeline.steady_iteration_time`, whose value is the window length.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np

from simhete.engine.timeline import Timeline
from simhete.opkinds import OpKind
from simhete.schedule.model import Schedule

SIG_DIGITS = 6          # floats in to_dict() are rounded to this many significant digits
PCIE_DIRECTIONS = ("h2d", "d2h")


@dataclass(frozen=True, slots=True)
class PoolPeak:
    """Peak memory of one pool: bytes at the peak, capacity, and the peak's MemClass breakdown."""

    capacity_bytes: int
    peak_bytes: int
    peak_by_class_bytes: dict[str, int]


@dataclass(frozen=True, slots=True)
class Summary:
    """The figures reported for one Timeline. Rates are ``None`` when the run does not fit."""

    fits: bool
    oom: str | None
    window_start_s: float | None
    window_end_s: float | None
    iter_time_s: float | None
    tokens_per_s: float | None
    samples_per_s: float | None
    tflops_per_gpu: float | None
    tflops_total: float | None
    mfu: float | None
    stream_busy_frac: dict[str, float] | None
    pcie_bytes_per_iter: dict[str, int] | None
    memory: dict[str, PoolPeak]
    uncalibrated: tuple[str, ...]
    tokens_per_iter: int
    samples_per_iter: int
    model_flops_per_iter: float
    peak_flops_per_gpu: float
    n_gpus: int
    meta: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: field order as declared, nested keys sorted, floats rounded."""
        # what _json_safe gives, with the summary's known shapes spelled out (a sweep calls this for
        # every point: a call of _json_safe per leaf was most of its time)
        out: dict[str, Any] = {}
        for name in _SUMMARY_FIELDS:
            v = getattr(self, name)
            t = type(v)
            if t is float:                       # the common leaves first (as _json_safe does them)
                out[name] = _round(v)
            elif t is int or t is str or t is bool or v is None:
                out[name] = v
            elif name == "memory":
                out[name] = {str(p): {"capacity_bytes": _leaf(m.capacity_bytes), "peak_bytes": _leaf(m.peak_bytes),
                                      "peak_by_class_bytes": _leaves(dict(sorted(m.peak_by_class_bytes.items())))}
                             for p, m in sorted(v.items())}
            elif t is dict:                      # stream busy, PCIe bytes, meta: flat mappings
                out[name] = _leaves(v)
            elif t is tuple:                     # uncalibrated: strings
                out[name] = [x if type(x) is str else _json_safe(x) for x in v]
            else:
                out[name] = _json_safe(v)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Summary:
        """Inverse of :meth:`to_dict` (up to float rounding), e.g. to compare saved summaries."""
        kw = dict(d)
        kw["memory"] = {p: PoolPeak(**m) for p, m in d["memory"].items()}
        kw["uncalibrated"] = tuple(d["uncalibrated"])
        return cls(**kw)


_SUMMARY_FIELDS = tuple(f.name for f in fields(Summary))


def summarize(timeline: Timeline, *, tokens_per_iter: int, samples_per_iter: int,
              model_flops_per_iter: float, peak_flops_per_gpu: float, n_gpus: int,
              pool_capacity: Mapping[str, int], task_bytes: Mapping[str, int] | None = None,
              flags: tuple[str, ...] | list[str] = (),
              meta: Mapping[str, Any] | None = None) -> Summary:
    """Summarize ``timeline``.

    ``task_bytes`` maps task name to bytes moved (see :func:`copy_bytes`); with it, records on
    ``*.h2d`` / ``*.d2h`` streams of the steady iteration are summed per direction into
    ``pcie_bytes_per_iter``; without it that figure is ``None``. ``flags`` are the cost model's
    provenance flags (numbers not calibrated by measurement); they are reported sorted, once each.
    """
    if n_gpus < 1 or peak_flops_per_gpu <= 0:
        raise ValueError(f"n_gpus must be >= 1 and peak_flops_per_gpu > 0, "
                         f"got {n_gpus} and {peak_flops_per_gpu}")
    memory = _memory(timeline, pool_capacity)
    merged_meta = dict(timeline.meta)
    if timeline.engine:
        merged_meta["engine"] = timeline.engine
    merged_meta.update({k: str(v) for k, v in (meta or {}).items()})
    common = dict(memory=memory, uncalibrated=tuple(sorted(set(flags))),
                  tokens_per_iter=tokens_per_iter, samples_per_iter=samples_per_iter,
                  model_flops_per_iter=float(model_flops_per_iter),
                  peak_flops_per_gpu=float(peak_flops_per_gpu), n_gpus=n_gpus,
                  meta=dict(sorted(merged_meta.items())))
    # a run that did not fit reports no rates: its window is not needed (nor derived)
    window = steady_window(timeline) if timeline.oom is None else None
    # Timeline.steady_iteration_time() is the window's length, computed the same way (its end minus
    # its start; the makespan itself when the window starts at 0.0)
    t = window[1] - window[0] if window is not None else 0.0
    if timeline.oom is not None or window is None or t <= 0:
        return Summary(fits=timeline.oom is None,
                       oom=timeline.oom.message() if timeline.oom is not None else None,
                       window_start_s=None, window_end_s=None, iter_time_s=None,
                       tokens_per_s=None, samples_per_s=None, tflops_per_gpu=None,
                       tflops_total=None, mfu=None, stream_busy_frac=None,
                       pcie_bytes_per_iter=None, **common)
    flops_per_s = model_flops_per_iter / t
    return Summary(
        fits=True, oom=None, window_start_s=window[0], window_end_s=window[1], iter_time_s=t,
        tokens_per_s=tokens_per_iter / t, samples_per_s=samples_per_iter / t,
        tflops_per_gpu=flops_per_s / n_gpus / 1e12, tflops_total=flops_per_s / 1e12,
        mfu=flops_per_s / (n_gpus * peak_flops_per_gpu),
        stream_busy_frac=stream_busy(timeline, window),
        pcie_bytes_per_iter=None if task_bytes is None else pcie_bytes(timeline, task_bytes),
        **common)


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
    """:func:`_union_length` of each run ``a[lo:hi], b[lo:hi]`` (``bounds``: consecutive run
    limits), with the same floats: the element-wise steps over all runs at once, the running
    maximum and the in-order sum per run."""
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


def _union_length(a: np.ndarray, b: np.ndarray, t0: float) -> float:
    """The loop of :func:`stream_busy` over intervals sorted by (a, b), as array operations with the same
    floats: an interval counts ``b - max(a, reach)`` when positive, where ``reach`` (from ``t0``) is
    the largest end of the non-empty intervals before it; the sum is taken in order (``cumsum``)."""
    if not len(a):
        return 0.0
    ends = np.where(b > a, b, -np.inf)
    reach = np.empty_like(a)
    reach[0] = t0
    np.maximum.accumulate(np.maximum(ends[:-1], t0), out=reach[1:])
    start = np.maximum(a, reach)
    part = np.where(b > start, b - start, 0.0)
    return float(np.cumsum(part)[-1])


class TaskBytes:
    """PCIe bytes per task as arrays aligned with a schedule's table: ``h2d[i]`` and ``d2h[i]``
    are what task i's copy ops move (what :func:`pcie_task_bytes` maps its name to; 0 and 0 for a
    task moving nothing, which that mapping omits). Made by :func:`pcie_task_arrays`."""

    __slots__ = ("table", "h2d", "d2h")

    def __init__(self, table: Any, h2d: np.ndarray, d2h: np.ndarray) -> None:
        self.table, self.h2d, self.d2h = table, h2d, d2h


def pcie_bytes(timeline: Timeline, task_bytes: Mapping[str, int | tuple[int, int]] | TaskBytes) -> dict[str, int]:
    """Bytes moved per PCIe direction (``h2d``, ``d2h``; all GPUs summed) by the steady iteration.

    A ``task_bytes`` entry is either ``(h2d, d2h)`` bytes (what :func:`pcie_task_bytes` gives: the
    direction comes from the ops, so a pageable copy that runs on a compute stream counts too), or
    an int for a task on a ``gpuN.h2d`` / ``gpuN.d2h`` stream, whose suffix is the direction (an
    int for a task on another stream is not counted: nothing says its direction). A
    record on a copy stream with no entry is an error: counting it as zero would understate traffic.
    ``task_bytes`` may also be a :class:`TaskBytes` of the timeline's schedule (the same figures
    as arrays; a task moving nothing counts as having no entry).
    """
    its = steady_iterations(timeline)
    out = dict.fromkeys(PCIE_DIRECTIONS, 0)
    cols = timeline.columns
    if isinstance(task_bytes, TaskBytes):
        if cols is not None and task_bytes.table is cols.table:     # arrays over arrays
            def steady_rows() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
                keep = slice(None) if its is None else (cols.it == next(iter(its)) if len(its) == 1
                                                        else np.isin(cols.it, list(its)))
                rows, on = cols.rows[keep], cols.stream_of[keep]
                copy = np.array([st.rpartition(".")[2] in out for st in cols.streams], dtype=bool)
                return rows, on, copy[on]
            rows, on, on_copy = cols.derived("steady rows", steady_rows)
            up, down = task_bytes.h2d[rows], task_bytes.d2h[rows]
            missing = on_copy & (up == 0) & (down == 0)
            if missing.any():
                k = int(np.argmax(missing))
                raise ValueError(f"task_bytes has no entry for copy task {cols.table.name[int(rows[k])]!r} "
                                 f"on {cols.streams[int(on[k])]}")
            out["h2d"], out["d2h"] = int(up.sum()), int(down.sum())
            return out
        tb = task_bytes.table
        task_bytes = {n: (u, d) for n, u, d in zip(tb.name, task_bytes.h2d.tolist(), task_bytes.d2h.tolist())
                      if u or d}
    if cols is not None:       # the steady iteration's records, from the arrays
        keep = np.ones(len(cols.rows), dtype=bool) if its is None else np.isin(cols.it, list(its))
        selected = ((cols.table.name[k], cols.streams[s])
                    for k, s in zip(cols.rows[keep].tolist(), cols.stream_of[keep].tolist()))
    else:
        selected = ((r.name, r.stream) for r in timeline.records if its is None or r.it in its)
    for name, stream in selected:
        v = task_bytes.get(name)
        direction = stream.rpartition(".")[2]
        if v is None:
            if direction in out:
                raise ValueError(f"task_bytes has no entry for copy task {name!r} on {stream}")
            continue
        if isinstance(v, tuple):
            out["h2d"] += v[0]
            out["d2h"] += v[1]
        elif direction in out:       # an int has no direction: only a copy stream's suffix gives one
            out[direction] += v
    return out


def ops_pcie_bytes(ops: tuple) -> tuple[int, int]:
    """(H2D, D2H) bytes an ops tuple moves (``op.n`` bytes × ``op.count`` of its copy ops)."""
    h2d, d2h = OpKind.H2D, OpKind.D2H
    u = d = 0
    for op in ops:
        kind = op.kind      # identity first: hashing or comparing an Enum runs Python code
        if kind is h2d:
            u += op.n * op.count
        elif kind is d2h:
            d += op.n * op.count
    return u, d


def pcie_task_arrays(schedule: Schedule, palette_bytes: tuple[np.ndarray, np.ndarray] | None = None) -> TaskBytes:
    """:func:`pcie_task_bytes` as arrays aligned with the schedule's table (:class:`TaskBytes`):
    summed once per distinct ops tuple (``TaskTable.distinct_ops``), then gathered.
    ``palette_bytes``: the (H2D, D2H) int64 arrays per palette entry (:func:`ops_pcie_bytes` of
    each), when the caller has them."""
    tb = schedule.table
    palette, at = tb.distinct_ops()
    if palette_bytes is None:
        pairs = list(map(ops_pcie_bytes, palette))
        palette_bytes = (np.array([u for u, _ in pairs], dtype=np.int64),
                         np.array([d for _, d in pairs], dtype=np.int64))
    return TaskBytes(tb, palette_bytes[0][at], palette_bytes[1][at])


def pcie_task_bytes(schedule: Schedule) -> dict[str, tuple[int, int]]:
    """``task_bytes`` for :func:`summarize`: per task, (H2D, D2H) bytes of its copy ops, whatever
    stream it runs on (``op.n`` bytes × ``op.count``); tasks moving nothing omitted."""
    out: dict[str, tuple[int, int]] = {}
    tb = schedule.table
    palette, at = tb.distinct_ops()             # tasks share ops tuples: each counted once
    per = list(map(ops_pcie_bytes, palette))
    for name, k in zip(tb.name, at.tolist()):
        v = per[k]
        if v[0] or v[1]:
            out[name] = v
    return out


def copy_bytes(schedule: Schedule) -> dict[str, int]:
    """``task_bytes`` for :func:`summarize`: per task, bytes moved by its H2D/D2H ops
    (``op.n`` bytes × ``op.count``, as in :mod:`simhete.opkinds`); tasks moving nothing omitted."""
    h2d, d2h = OpKind.H2D, OpKind.D2H
    copies = (h2d, d2h)

    def moved(ops: tuple) -> int:
        n = 0
        for op in ops:
            kind = op.kind      # identity first: hashing or comparing an Enum runs Python code
            if kind is h2d or kind is d2h or (type(kind) is not OpKind and kind in copies):
                n += op.n * op.count
        return n

    out: dict[str, int] = {}
    tb = schedule.table
    palette, at = tb.distinct_ops()             # tasks share ops tuples: each counted once
    per = list(map(moved, palette))
    for name, k in zip(tb.name, at.tolist()):
        if per[k]:
            out[name] = per[k]
    return out


def _memory(timeline: Timeline, pool_capacity: Mapping[str, int]) -> dict[str, PoolPeak]:
    missing = sorted(set(timeline.peak) - set(pool_capacity))
    if missing:
        raise ValueError(f"pool_capacity has no entry for pool(s) {', '.join(missing)}")
    return {pool: PoolPeak(capacity_bytes=int(cap), peak_bytes=int(timeline.peak.get(pool, 0)),
                           peak_by_class_bytes=dict(sorted(
                               timeline.peak_by_class.get(pool, {}).items())))
            for pool, cap in sorted(pool_capacity.items())}


_ROUNDED = f"%.{SIG_DIGITS}g"       # the format spelled once (an f-string with a nested spec builds it per call)


def _round(x: float) -> float:
    return float(_ROUNDED % x)


def _leaf(x: Any) -> Any:
    """:func:`_json_safe` of ``x``, the leaves inline."""
    t = type(x)
    if t is float:
        return _round(x)
    if t is int or t is str or t is bool or x is None:
        return x
    return _json_safe(x)


def _leaves(d: Mapping[Any, Any]) -> dict[str, Any]:
    """:func:`_json_safe` of a mapping, the leaves inline."""
    out = {}
    for k, x in d.items():
        t = type(x)
        out[str(k)] = _round(x) if t is float else x if t is int or t is str or t is bool or x is None \
            else _json_safe(x)
    return out


def _json_safe(v: Any) -> Any:
    t = type(v)
    if t is str or t is int or t is bool or v is None:      # exact types first: isinstance on ABCs is slow
        return v
    if t is float:
        return _round(v)
    if t is dict:
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        return _round(v)
    if isinstance(v, Mapping):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    raise TypeError(f"not JSON-safe: {v!r}")

"""PCIe bytes: what each task's copy ops move, from a schedule (per task, or as arrays aligned with
its table), and what the steady iteration of a Timeline moves per direction (``h2d``, ``d2h``), as
:func:`simhete.report.metrics.summarize` reports it.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from simhete.engine.timeline import Timeline
from simhete.opkinds import OpKind
from simhete.report.window import steady_iterations
from simhete.schedule.model import Schedule

PCIE_DIRECTIONS = ("h2d", "d2h")


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

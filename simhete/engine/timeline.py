"""Timeline: what an engine (or the replay) returns. One flat record type; every report derives from it.

A Timeline is built either from ``Record`` objects (the SimPy engine, the replay, tests) or, by the
fast engine, from :class:`Columns`: the start and end of every finished task as arrays plus the
schedule's tasks. Records (and the ``mem_events`` tuples) are then built only when first read, so a
sweep that only needs summary figures never builds one object per task; :class:`Columns` also
answers the summary queries (makespan, iteration ends, per-stream spans) from the arrays, with the
same floats as the record-based code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from simhete.opkinds import TaskCat


@dataclass(frozen=True, slots=True)
class Record:
    """One executed task. Simulated and measured timelines share this type and join on ``name``."""

    name: str
    stream: str
    cat: TaskCat
    it: int
    block: int
    start: float
    end: float

    @property
    def dur(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class OOMReport:
    """Why a schedule can never proceed: the blocked task, what it asked and what holds the pool."""

    task: str
    pool: str
    asked: int
    free: int
    capacity: int
    holders: tuple[tuple[str, int], ...]   # (buffer, bytes), largest first, at most 10
    time: float
    by_class: tuple[tuple[str, int], ...] = ()   # (MemClass value, bytes) of what asked, largest first

    def message(self) -> str:
        gib = 2**30
        if self.task == "(initial)":   # model states alone do not fit: say which classes, not blocks
            parts = ", ".join(f"{c} {n / gib:.2f} GiB" for c, n in self.by_class) or \
                ", ".join(f"{b} {n / gib:.2f} GiB" for b, n in self.holders[:5])
            return (f"out of memory in {self.pool}: the states placed there at start need "
                    f"{self.asked / gib:.2f} GiB ({parts}), capacity {self.capacity / gib:.2f} GiB")
        held = ", ".join(f"{b} {n / gib:.2f} GiB" for b, n in self.holders[:5])
        return (f"out of memory in {self.pool} at t={self.time:.6f}s: task {self.task} asks "
                f"{self.asked / 2**30:.2f} GiB, {self.free / 2**30:.2f} GiB free of "
                f"{self.capacity / 2**30:.2f} GiB; largest holders: {held}")


_SETTERS = tuple(getattr(Record, f).__set__ for f in Record.__slots__)


@dataclass(frozen=True, eq=False)
class Columns:
    """The finished tasks of a run as arrays, in schedule task order.

    ``rows[k]`` is the schedule index of the k-th finished task, which ran on
    ``streams[stream_of[k]]`` from ``start[k]`` to ``end[k]`` and belongs to iteration ``it[k]``.

    ``memo`` (optional): a dict where what depends only on ``rows``, ``streams``, ``stream_of`` and
    ``it`` is kept (iteration groups, per-stream rows, the steady iteration's rows); the fast engine
    passes one per schedule structure, shared by every run of it that finished every task (those
    arrays are then the structure's own). The arrays are never modified.
    """

    table: Any                       # the schedule's TaskTable (name, stream, cat, it, block)
    rows: np.ndarray
    streams: tuple[str, ...]
    stream_of: np.ndarray
    it: np.ndarray
    start: np.ndarray
    end: np.ndarray
    memo: dict | None = None

    def derived(self, key: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` (a value that depends only on rows, streams, stream_of and it), kept in
        ``memo`` under ``key`` when there is one."""
        memo = self.memo
        if memo is None:
            return fn()
        got = memo.get(key)
        if got is None:
            got = memo[key] = fn()
        return got

    def records(self) -> tuple[Record, ...]:
        # Setting the slot descriptors of a bare instance builds a Record equal to Record(...)
        # (no __post_init__) at about half the cost of the frozen dataclass __init__.
        set_name, set_stream, set_cat, set_it, set_block, set_start, set_end = _SETTERS
        new, tb, out = object.__new__, self.table, []
        name, stream, cat, it, block = tb.name, tb.stream, tb.cat, tb.it, tb.block
        append = out.append
        for k, s, e in zip(self.rows.tolist(), self.start.tolist(), self.end.tolist()):
            r = new(Record)
            set_name(r, name[k])
            set_stream(r, stream[k])
            set_cat(r, cat[k])
            set_it(r, it[k])
            set_block(r, block[k])
            set_start(r, s)
            set_end(r, e)
            append(r)
        return tuple(out)

    def makespan(self) -> float:
        return float(self.end.max()) if len(self.end) else 0.0

    def iteration_ends(self) -> dict[int, float]:
        """As :meth:`Timeline.iteration_ends`: keys in order of first appearance (computed once:
        the arrays never change; a new dict per call)."""
        got = self.__dict__.get("_ends")
        if got is None:
            got = {}
            if len(self.it):
                labels, perm, starts = self.derived("iterations", self._iteration_groups)
                ends = np.maximum.reduceat(self.end[perm], starts)      # a maximum: exact in any order
                # the record-based version starts every maximum at 0.0
                got = {lab: max(0.0, e) for lab, e in zip(labels, ends.tolist())}
            self.__dict__["_ends"] = got
        return dict(got)

    def _iteration_groups(self) -> tuple[list[int], np.ndarray, np.ndarray]:
        """(labels in order of first appearance, rows grouped by label in that order, where each
        group starts)."""
        labels, first, inv = np.unique(self.it, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")            # label positions by first appearance
        pos = np.empty(len(labels), dtype=np.int64)
        pos[order] = np.arange(len(labels), dtype=np.int64)
        group = pos[inv]
        counts = np.bincount(group, minlength=len(labels))
        starts = np.zeros(len(labels), dtype=np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        return labels[order].tolist(), np.argsort(group, kind="stable"), starts

    def busy(self) -> dict[str, float]:
        """As :meth:`Timeline.busy`: per stream, ``end - start`` summed in record order."""
        out: dict[str, float] = {}
        for s, a, b in zip(self.stream_of.tolist(), self.start.tolist(), self.end.tolist()):
            name = self.streams[s]
            out[name] = out.get(name, 0.0) + (b - a)
        return out


class Timeline:
    """Result of running a Schedule.

    ``records`` are in the schedule's task order (unfinished tasks omitted when ``oom`` is set).
    ``mem_events`` per pool: (time, bytes in use after the change), in time order, one entry per
    change (ties in event order). ``peak`` per pool: the maximum bytes in use, and ``peak_by_class``
    the breakdown by MemClass value at the first moment that maximum was reached.

    ``columns`` (fast engine) holds the records as arrays and ``mem_events`` may be given as a
    function that builds them; both are then materialised on first access.
    """

    __slots__ = ("_records", "_mem_events", "peak", "peak_by_class", "oom", "engine", "meta",
                 "columns")

    def __init__(self, records: tuple[Record, ...] | None = None,
                 mem_events: Mapping[str, tuple[tuple[float, int], ...]]
                 | Callable[[], dict[str, tuple[tuple[float, int], ...]]] | None = None,
                 peak: dict[str, int] | None = None, peak_by_class: dict[str, dict[str, int]] | None = None,
                 oom: OOMReport | None = None, engine: str = "", meta: dict[str, str] | None = None,
                 *, columns: Columns | None = None) -> None:
        if (records is None) == (columns is None):
            raise TypeError("Timeline needs exactly one of records and columns")
        self._records = records
        self._mem_events = {} if mem_events is None else mem_events
        self.peak = {} if peak is None else peak
        self.peak_by_class = {} if peak_by_class is None else peak_by_class
        self.oom = oom
        self.engine = engine
        self.meta = {} if meta is None else meta
        self.columns = columns

    @property
    def records(self) -> tuple[Record, ...]:
        if self._records is None:
            self._records = self.columns.records()
        return self._records

    @property
    def mem_events(self) -> dict[str, tuple[tuple[float, int], ...]]:
        if callable(self._mem_events):
            self._mem_events = self._mem_events()
        return self._mem_events

    def _key(self) -> tuple:
        return (self.records, self.mem_events, self.peak, self.peak_by_class, self.oom,
                self.engine, self.meta)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Timeline):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        n = len(self.columns.rows) if self._records is None else len(self._records)
        return (f"Timeline({n} records, pools {sorted(self.peak)}, oom={self.oom is not None}, "
                f"engine={self.engine!r})")

    def __reduce__(self):
        return (_rebuild, (self.records, self.mem_events, self.peak, self.peak_by_class, self.oom,
                           self.engine, self.meta))

    @property
    def makespan(self) -> float:
        if self._records is None:
            return self.columns.makespan()
        return max((r.end for r in self._records), default=0.0)

    def iteration_ends(self) -> dict[int, float]:
        if self._records is None:
            return self.columns.iteration_ends()
        ends: dict[int, float] = {}
        for r in self._records:
            ends[r.it] = max(ends.get(r.it, 0.0), r.end)
        return ends

    def steady_iteration_time(self) -> float:
        """End of the last iteration minus end of the one before (the whole makespan if only one)."""
        ends = self.iteration_ends()
        its = sorted(i for i in ends if i > 0)
        if len(its) >= 2:
            return ends[its[-1]] - ends[its[-2]]
        return self.makespan

    def busy(self) -> dict[str, float]:
        """Busy seconds per stream."""
        if self._records is None:
            return self.columns.busy()
        out: dict[str, float] = {}
        for r in self._records:
            out[r.stream] = out.get(r.stream, 0.0) + r.dur
        return out


def _rebuild(*args: Any) -> Timeline:
    return Timeline(*args)


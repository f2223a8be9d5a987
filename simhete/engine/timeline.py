"""Timeline: what an engine (or the replay) returns. One flat record type; every report derives from it."""

from __future__ import annotations

from dataclasses import dataclass, field

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

    def message(self) -> str:
        held = ", ".join(f"{b} {n / 2**30:.2f} GiB" for b, n in self.holders[:5])
        return (f"out of memory in {self.pool} at t={self.time:.6f}s: task {self.task} asks "
                f"{self.asked / 2**30:.2f} GiB, {self.free / 2**30:.2f} GiB free of "
                f"{self.capacity / 2**30:.2f} GiB; largest holders: {held}")


@dataclass(frozen=True, slots=True)
class Timeline:
    """Result of running a Schedule.

    ``records`` are in the schedule's task order (unfinished tasks omitted when ``oom`` is set).
    ``mem_events`` per pool: (time, bytes in use after the change), in time order, one entry per
    change (ties in event order). ``peak`` per pool: the maximum bytes in use, and ``peak_by_class``
    the breakdown by MemClass value at the first moment that maximum was reached.
    """

    records: tuple[Record, ...]
    mem_events: dict[str, tuple[tuple[float, int], ...]]
    peak: dict[str, int]
    peak_by_class: dict[str, dict[str, int]]
    oom: OOMReport | None = None
    engine: str = ""
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def makespan(self) -> float:
        return max((r.end for r in self.records), default=0.0)

    def iteration_ends(self) -> dict[int, float]:
        ends: dict[int, float] = {}
        for r in self.records:
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
        out: dict[str, float] = {}
        for r in self.records:
            out[r.stream] = out.get(r.stream, 0.0) + r.dur
        return out

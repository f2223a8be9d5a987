"""Reference engine on SimPy: the semantics of docs/engine.md written to be read, not to be fast.

Each running task is a SimPy process that waits out its remaining work at its current rate and is
interrupted when that rate changes. One controller process settles every instant: it processes the
completions of that instant in task order, then lets every idle stream (in stream order) start the
best of its ready tasks if that task's memory fits, repeating while zero-duration tasks complete;
then it sets the rates of the running tasks and sleeps until the next completion.
"""

from __future__ import annotations

from heapq import heappop, heappush
from typing import Iterable, Sequence

import simpy

from simhete.engine import memory
from simhete.engine.inputs import check_durations, check_initial_pools, check_names, check_task
from simhete.engine.rates import advance, delay, interference_matrix, slowdown
from simhete.engine.timeline import OOMReport, Record, Timeline
from simhete.schedule import Schedule


class _Model:
    def __init__(self, schedule: Schedule, durations: list[float],
                 interference: Iterable[tuple[str, str, float]]) -> None:
        self.env = simpy.Environment(initial_time=0.0)
        self.tasks = schedule.tasks
        self.durations = durations
        self.streams = schedule.streams
        self.matrix = interference_matrix(self.streams, interference)
        stream_id = {s: k for k, s in enumerate(self.streams)}
        self.stream_of = [stream_id[t.stream] for t in self.tasks]
        self.successors: list[list[int]] = [[] for _ in self.tasks]
        self.waiting_on = [0] * len(self.tasks)          # unfinished dependencies
        index = schedule.index()
        for i, t in enumerate(self.tasks):
            check_task(t, index, schedule.pools)
            deps = dict.fromkeys(t.deps)
            self.waiting_on[i] = len(deps)
            for d in deps:
                self.successors[index[d]].append(i)
        self.needs = [memory.pool_needs(t.allocs) for t in self.tasks]
        self.ready: list[list[tuple[int, int]]] = [[] for _ in self.streams]   # heaps of (prio, index)
        self.running: list[int | None] = [None] * len(self.streams)
        self.factor = [1.0] * len(self.tasks)
        self.process: dict[int, simpy.Process] = {}
        self.finished: list[int] = []                    # completed now, not yet processed
        self.wake = self.env.event()
        self.start: list[float | None] = [None] * len(self.tasks)
        self.end: list[float | None] = [None] * len(self.tasks)
        self.oom: OOMReport | None = None
        # memory
        self.capacity = dict(schedule.pools)
        self.in_use = dict.fromkeys(self.capacity, 0)
        self.class_bytes = {p: [0] * len(memory.CLASSES) for p in self.capacity}
        self.live: dict[str, tuple[str, int, int]] = {}   # buffer -> (pool, bytes, class index)
        for a in schedule.initial:
            self._hold(a, "initial")
        self.mem_events = {p: [(0.0, self.in_use[p])] for p in self.capacity}
        self.peak = dict(self.in_use)
        self.peak_by_class = {p: memory.by_class(self.class_bytes[p]) for p in self.capacity}
        for i, t in enumerate(self.tasks):
            if self.waiting_on[i] == 0:
                heappush(self.ready[self.stream_of[i]], (t.prio, i))

    # -- memory ------------------------------------------------------------------------------
    def _hold(self, a, owner: str) -> None:
        if a.buf in self.live:
            raise memory.double_alloc(owner, a.buf)
        c = memory.CLASS_INDEX[a.cls]
        self.live[a.buf] = (a.pool, a.bytes, c)
        self.in_use[a.pool] += a.bytes
        self.class_bytes[a.pool][c] += a.bytes

    def _blocked_on(self, i: int) -> tuple[str, int] | None:
        """The first pool where task i's allocations do not fit now, with the bytes it asks there."""
        for pool, need in self.needs[i]:
            if self.in_use[pool] + need > self.capacity[pool]:
                return pool, need
        return None

    def _allocate(self, i: int) -> None:
        for a in self.tasks[i].allocs:
            self._hold(a, self.tasks[i].name)
        for pool, _ in self.needs[i]:
            used = self.in_use[pool]
            self.mem_events[pool].append((self.env.now, used))
            if used > self.peak[pool]:
                self.peak[pool] = used
                self.peak_by_class[pool] = memory.by_class(self.class_bytes[pool])

    def _release(self, i: int) -> None:
        touched: dict[str, None] = {}
        for b in self.tasks[i].frees:
            if b not in self.live:
                raise memory.free_unknown(self.tasks[i].name, b)
            pool, n, c = self.live.pop(b)
            self.in_use[pool] -= n
            self.class_bytes[pool][c] -= n
            touched[pool] = None
        for pool in touched:
            self.mem_events[pool].append((self.env.now, self.in_use[pool]))

    # -- one instant -------------------------------------------------------------------------
    def _begin(self, i: int) -> None:
        self.start[i] = self.env.now
        self.running[self.stream_of[i]] = i
        self._allocate(i)

    def _complete(self, i: int) -> None:
        self.end[i] = self.env.now
        self.running[self.stream_of[i]] = None
        self.process.pop(i, None)
        self._release(i)
        for j in self.successors[i]:
            self.waiting_on[j] -= 1
            if self.waiting_on[j] == 0:
                heappush(self.ready[self.stream_of[j]], (self.tasks[j].prio, j))

    def _settle(self) -> list[int]:
        """Completions, then dispatch, until nothing changes; returns the tasks started with work."""
        started = []
        while True:
            for i in sorted(self.finished):
                self._complete(i)
            self.finished.clear()
            for s, queue in enumerate(self.ready):
                if self.running[s] is None and queue and self._blocked_on(queue[0][1]) is None:
                    _, i = heappop(queue)
                    self._begin(i)
                    (self.finished if self.durations[i] == 0.0 else started).append(i)
            if not self.finished:
                return started

    def _set_rates(self, started: list[int]) -> None:
        busy = [s for s, i in enumerate(self.running) if i is not None]
        for s in busy:
            i = self.running[s]
            f = slowdown(self.matrix[s], busy)
            if i in started:
                self.factor[i] = f
                self.process[i] = self.env.process(self._work(i))
            elif f != self.factor[i]:
                self.factor[i] = f
                self.process[i].interrupt()

    # -- processes ---------------------------------------------------------------------------
    def _work(self, i: int):
        """A running task: wait out its remaining work at the current rate; a rate change interrupts."""
        remaining, f = self.durations[i], self.factor[i]
        while True:
            since = self.env.now
            try:
                yield self.env.timeout(delay(remaining, f))
                break
            except simpy.Interrupt:
                remaining = advance(remaining, self.env.now - since, f)
                f = self.factor[i]
        self.finished.append(i)
        if not self.wake.triggered:
            self.wake.succeed()

    def _controller(self):
        while True:
            self._set_rates(self._settle())
            if all(i is None for i in self.running):
                if any(e is None for e in self.end):
                    self._out_of_memory()
                return
            self.wake = self.env.event()
            yield self.wake

    def _out_of_memory(self) -> None:
        for queue in self.ready:
            if queue:
                i = queue[0][1]
                pool, asked = self._blocked_on(i)
                live = ((b, p, n) for b, (p, n, _) in self.live.items())
                self.oom = memory.oom_report(self.tasks[i].name, pool, asked, self.in_use[pool],
                                             self.capacity[pool], live, self.env.now)
                return
        raise memory.stuck((t.name for t, e in zip(self.tasks, self.end) if e is None), self.env.now)

    def run(self) -> Timeline:
        self.env.process(self._controller())
        self.env.run()
        records = tuple(Record(t.name, t.stream, t.cat, t.it, t.block, s, e)
                        for t, s, e in zip(self.tasks, self.start, self.end) if e is not None)
        return Timeline(records, {p: tuple(ev) for p, ev in self.mem_events.items()}, self.peak,
                        self.peak_by_class, self.oom, engine="simpy")


def simulate_simpy(schedule: Schedule, durations: Sequence[float],
                   interference: Iterable[tuple[str, str, float]] = ()) -> Timeline:
    """Run ``schedule`` with ``durations[i]`` full-speed seconds for ``schedule.tasks[i]``."""
    durs = check_durations(schedule.table.name, durations).tolist()
    check_names(schedule.table.name)
    check_initial_pools(schedule)
    oom = memory.initial_overflow(schedule)
    if oom is not None:
        return memory.empty_timeline(schedule, oom, "simpy")
    return _Model(schedule, durs, interference).run()

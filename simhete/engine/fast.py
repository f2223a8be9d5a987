"""Fast engine: the semantics of docs/engine.md as one heapq event loop, timeline-identical to SimPy.

Everything the loop touches is precomputed as integer-indexed lists: stream index per task,
successor lists, dependency counts, per-stream ready heaps keyed by the single int
``prio * n + index`` (same order as ``(prio, index)``, no tuple per push), per-task pool needs.
The completion heap holds ``(finish, index)``; with interference an entry is current only while it
equals the task's projected finish ``fin[i]`` (stale ones are skipped when popped). The float
arithmetic is the one in :mod:`simhete.engine.rates`, so start and end times equal the SimPy
engine's bit for bit.
"""

from __future__ import annotations

from heapq import heappop, heappush
from typing import Iterable, Sequence

from simhete.engine import memory
from simhete.engine.inputs import check_inputs
from simhete.engine.rates import advance, delay, interference_matrix, slowdown
from simhete.engine.timeline import Record, Timeline
from simhete.schedule import Schedule


def simulate_fast(schedule: Schedule, durations: Sequence[float],
                  interference: Iterable[tuple[str, str, float]] = ()) -> Timeline:
    """Run ``schedule`` with ``durations[i]`` full-speed seconds for ``schedule.tasks[i]``."""
    durs = check_inputs(schedule, durations)
    oom = memory.initial_overflow(schedule)
    if oom is not None:
        return memory.empty_timeline(schedule, oom, "fast")
    tasks = schedule.tasks
    n = len(tasks)
    streams = schedule.streams
    n_streams = len(streams)
    stream_id = {s: k for k, s in enumerate(streams)}
    stream_of = [stream_id[t.stream] for t in tasks]
    matrix = interference_matrix(streams, interference)
    fluid = any(x != 1.0 for row in matrix for x in row)

    index = schedule.index()
    successors: list[list[int]] = [[] for _ in range(n)]
    waiting_on = [0] * n
    for i, t in enumerate(tasks):
        deps = dict.fromkeys(t.deps)
        waiting_on[i] = len(deps)
        for d in deps:
            successors[index[d]].append(i)
    key = [t.prio * n + i for i, t in enumerate(tasks)]   # key % n == i; orders like (prio, i)

    pools = list(schedule.pools)
    pool_id = {p: k for k, p in enumerate(pools)}
    cap = [schedule.pools[p] for p in pools]
    cls_of = memory.CLASS_INDEX
    needs = [tuple((pool_id[p], b) for p, b in memory.pool_needs(t.allocs)) or None for t in tasks]
    allocs = [tuple((a.buf, pool_id[a.pool], a.bytes, cls_of[a.cls]) for a in t.allocs) for t in tasks]
    frees = [t.frees or None for t in tasks]
    in_use = [0] * len(pools)
    class_bytes = [[0] * len(memory.CLASSES) for _ in pools]
    live: dict[str, tuple[int, int, int]] = {}
    for a in schedule.initial:
        if a.buf in live:
            raise memory.double_alloc("initial", a.buf)
        p, c = pool_id[a.pool], cls_of[a.cls]
        live[a.buf] = (p, a.bytes, c)
        in_use[p] += a.bytes
        class_bytes[p][c] += a.bytes
    mem_events = [[(0.0, u)] for u in in_use]
    peak = in_use[:]
    peak_cls = [c[:] for c in class_bytes]

    ready: list[list[int]] = [[] for _ in streams]
    for i in range(n):
        if waiting_on[i] == 0:
            heappush(ready[stream_of[i]], key[i])
    running = [-1] * n_streams
    start = [0.0] * n
    end: list[float | None] = [None] * n
    events: list[tuple[float, int]] = []
    # interference state: projected finish (-1 when not running), rate factor (0 before launch),
    # remaining work and the time it was last brought up to date
    fin = [-1.0] * n
    factor = [0.0] * n
    remaining = [0.0] * n
    since = [0.0] * n
    pending: list[int] = []       # completed at t, not yet processed
    done = 0
    t = 0.0
    stream_range = range(n_streams)
    while True:
        # -- settle instant t: completions in task order, then dispatch in stream order --------
        while True:
            if pending:
                if len(pending) > 1:
                    pending.sort()
                for i in pending:
                    end[i] = t
                    running[stream_of[i]] = -1
                    fr = frees[i]
                    if fr is not None:
                        touched = []
                        for b in fr:
                            held = live.pop(b, None)
                            if held is None:
                                raise memory.free_unknown(tasks[i].name, b)
                            p, nb, c = held
                            in_use[p] -= nb
                            class_bytes[p][c] -= nb
                            if p not in touched:
                                touched.append(p)
                        for p in touched:
                            mem_events[p].append((t, in_use[p]))
                    for j in successors[i]:
                        w = waiting_on[j] - 1
                        waiting_on[j] = w
                        if w == 0:
                            heappush(ready[stream_of[j]], key[j])
                done += len(pending)
                pending = []
            for s in stream_range:
                if running[s] >= 0:
                    continue
                q = ready[s]
                if not q:
                    continue
                i = q[0] % n
                nd = needs[i]
                if nd is not None:
                    for p, b in nd:
                        if in_use[p] + b > cap[p]:
                            break
                    else:
                        nd = None
                    if nd is not None:
                        continue              # head of line blocked on memory: stream stays idle
                    for buf, p, b, c in allocs[i]:
                        if buf in live:
                            raise memory.double_alloc(tasks[i].name, buf)
                        live[buf] = (p, b, c)
                        class_bytes[p][c] += b
                    for p, b in needs[i]:
                        u = in_use[p] + b
                        in_use[p] = u
                        mem_events[p].append((t, u))
                        if u > peak[p]:
                            peak[p] = u
                            peak_cls[p] = class_bytes[p][:]
                heappop(q)
                start[i] = t
                running[s] = i
                d = durs[i]
                if d == 0.0:
                    pending.append(i)
                elif not fluid:
                    heappush(events, (t + d, i))   # == t + delay(d, 1.0)
            if not pending:
                break
        # -- rates of the running tasks, then the next instant ------------------------------------
        if fluid:
            busy = [s for s in stream_range if running[s] >= 0]
            for s in busy:
                i = running[s]
                f = slowdown(matrix[s], busy)
                if factor[i] == 0.0:
                    factor[i], remaining[i], since[i] = f, durs[i], t
                elif f != factor[i]:
                    remaining[i] = advance(remaining[i], t - since[i], factor[i])
                    factor[i], since[i] = f, t
                else:
                    continue
                ft = t + delay(remaining[i], f)
                if ft != fin[i]:
                    fin[i] = ft
                    heappush(events, (ft, i))
            while events and fin[events[0][1]] != events[0][0]:
                heappop(events)
            if not events:
                break
            t = events[0][0]
            while events and events[0][0] == t:
                ft, i = heappop(events)
                if fin[i] == ft:
                    fin[i] = -1.0
                    pending.append(i)
        else:
            if not events:
                break
            t, i = heappop(events)
            pending.append(i)
            while events and events[0][0] == t:
                pending.append(heappop(events)[1])

    oom = None
    if done < n:
        for q in ready:
            if q:
                i = q[0] % n
                for p, b in needs[i]:
                    if in_use[p] + b > cap[p]:
                        break
                held = ((buf, pools[hp], nb) for buf, (hp, nb, _) in live.items())
                oom = memory.oom_report(tasks[i].name, pools[p], b, in_use[p], cap[p], held, t)
                break
        else:
            raise memory.stuck((x.name for x, e in zip(tasks, end) if e is None), t)
    records = tuple(Record(x.name, x.stream, x.cat, x.it, x.block, s, e)
                    for x, s, e in zip(tasks, start, end) if e is not None)
    return Timeline(records, {p: tuple(ev) for p, ev in zip(pools, mem_events)},
                    dict(zip(pools, peak)),
                    {p: memory.by_class(c) for p, c in zip(pools, peak_cls)}, oom, engine="fast")

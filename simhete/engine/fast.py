"""Fast engine: the semantics of docs/engine.md as one heapq event loop, timeline-identical to SimPy.

Everything the loop touches is precomputed as integer-indexed lists: stream index per task,
successor lists, dependency counts, per-stream ready heaps keyed by the single int
``prio * n + index`` (same order as ``(prio, index)``, no tuple per push), per-task pool needs.
The completion heap holds ``(finish, index)``.

Interference: the slowdown of every stream depends only on the set of streams running a task with
work, kept as a bit mask; the factors per mask are computed once (cached). Rates are re-evaluated at
the end of an instant only when the mask differs from the last evaluation (newly started tasks get
theirs in any case). A rescheduled task's old heap entry stays and is skipped when popped: an entry
is current only while it equals the task's projected finish ``fin[i]``. The float arithmetic is
that of :mod:`simhete.engine.rates`, so start and end times equal the SimPy engine's bit for bit.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush
from typing import Iterable, Sequence

from simhete.engine import memory
from simhete.engine.inputs import bad_dep, check_alloc, check_inputs
from simhete.engine.rates import advance, interference_matrix, slowdown
from simhete.engine.records import finished_records
from simhete.engine.timeline import Timeline
from simhete.schedule import Schedule


def simulate_fast(schedule: Schedule, durations: Sequence[float],
                  interference: Iterable[tuple[str, str, float]] = ()) -> Timeline:
    """Run ``schedule`` with ``durations[i]`` full-speed seconds for ``schedule.tasks[i]``."""
    durs, index = check_inputs(schedule, durations)
    oom = memory.initial_overflow(schedule)
    if oom is not None:
        return memory.empty_timeline(schedule, oom, "fast")
    tasks = schedule.tasks
    n = len(tasks)

    # -- index the schedule -------------------------------------------------------------------
    pools = list(schedule.pools)
    pool_id = {p: k for k, p in enumerate(pools)}
    cap = [schedule.pools[p] for p in pools]
    cls_of = memory.CLASS_INDEX
    stream_id: dict[str, int] = {}
    stream_of = [0] * n
    successors: list[list[int]] = [[] for _ in range(n)]
    waiting_on = [0] * n
    key = [0] * n                       # prio * n + i: orders like (prio, i), and key % n == i
    needs: list = [None] * n            # ((pool, bytes asked), ...) or None
    allocs: list = [None] * n           # ((buf, pool, bytes, class), ...)
    frees: list = [None] * n
    for i, t in enumerate(tasks):
        s = stream_id.get(t.stream)
        if s is None:
            s = stream_id[t.stream] = len(stream_id)
        stream_of[i] = s
        key[i] = t.prio * n + i
        deps = t.deps
        if deps:
            # a dependency listed twice is counted twice and released twice: same as deduplicating
            waiting_on[i] = len(deps)
            try:
                for d in deps:
                    successors[index[d]].append(i)
            except KeyError:
                raise bad_dep(t, index) from None
        if t.allocs:
            own = []
            for a in t.allocs:
                if a.bytes < 0 or a.pool not in pool_id:
                    check_alloc(t, a, pool_id)
                own.append((a.buf, pool_id[a.pool], a.bytes, cls_of[a.cls]))
            allocs[i] = own
            if len(own) == 1:
                needs[i] = ((own[0][1], own[0][2]),)
            else:
                needs[i] = tuple((pool_id[p], b) for p, b in memory.pool_needs(t.allocs))
        if t.frees:
            frees[i] = t.frees
    streams = list(stream_id)
    n_streams = len(streams)
    matrix = interference_matrix(streams, interference)
    fluid = any(x != 1.0 for row in matrix for x in row)

    # -- memory at t = 0 --------------------------------------------------------------------------
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
        if not waiting_on[i]:
            ready[stream_of[i]].append(key[i])
    for q in ready:
        heapify(q)
    running = [-1] * n_streams
    start = [0.0] * n
    end: list[float | None] = [None] * n
    events: list[tuple[float, int]] = []
    pending: list[int] = []             # completed at t, not yet processed
    done = 0
    t = 0.0
    stream_range = range(n_streams)
    # interference state
    bit = [1 << s for s in stream_range]
    mask = 0                            # streams running a task with work
    last_mask = -1                      # mask at the last rate evaluation
    by_mask: dict[int, list[float]] = {}
    row: list[float] = []               # slowdown per stream for last_mask
    launched: list[int] = []            # started with work in this instant, finish not yet set
    fin = [-1.0] * n                    # projected finish while running, else -1
    factor = [0.0] * n
    remaining = [0.0] * n
    since = [0.0] * n

    while True:
        # -- settle instant t: completions in task order, then dispatch in stream order --------
        while True:
            if pending:
                if len(pending) > 1:
                    pending.sort()
                for i in pending:
                    end[i] = t
                    s = stream_of[i]
                    running[s] = -1
                    mask &= ~bit[s]
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
                        if not w:
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
                    blocked = False
                    for p, b in nd:
                        if in_use[p] + b > cap[p]:
                            blocked = True
                            break
                    if blocked:
                        continue            # head of line waits for memory: the stream stays idle
                    for buf, p, b, c in allocs[i]:
                        if buf in live:
                            raise memory.double_alloc(tasks[i].name, buf)
                        live[buf] = (p, b, c)
                        class_bytes[p][c] += b
                    for p, b in nd:
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
                elif fluid:
                    launched.append(i)
                    mask |= bit[s]
                else:
                    heappush(events, (t + d, i))       # == t + delay(d, 1.0)
            if not pending:
                break

        # -- next instant -----------------------------------------------------------------------
        if not fluid:
            if not events:
                break
            t, i = heappop(events)
            pending.append(i)
            while events and events[0][0] == t:
                pending.append(heappop(events)[1])
            continue
        if mask != last_mask:
            last_mask = mask
            row = by_mask.get(mask)
            if row is None:
                busy = [s for s in stream_range if mask & bit[s]]
                row = by_mask[mask] = [slowdown(matrix[s], busy) for s in stream_range]
            for s in stream_range:
                i = running[s]
                if i < 0 or i in launched:
                    continue
                f = row[s]
                if f != factor[i]:
                    remaining[i] = advance(remaining[i], t - since[i], factor[i])
                    factor[i], since[i] = f, t
                    ft = t + remaining[i] * f          # == t + delay(remaining, f)
                    if ft != fin[i]:
                        fin[i] = ft
                        heappush(events, (ft, i))
        for i in launched:
            f = row[stream_of[i]]
            factor[i], remaining[i], since[i] = f, durs[i], t
            ft = fin[i] = t + durs[i] * f              # == t + delay(duration, f)
            heappush(events, (ft, i))
        launched.clear()
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
    return Timeline(finished_records(tasks, start, end),
                    {p: tuple(ev) for p, ev in zip(pools, mem_events)}, dict(zip(pools, peak)),
                    {p: memory.by_class(c) for p, c in zip(pools, peak_cls)}, oom, engine="fast")

"""The fast engine's event loop in pure Python (used when the compiled loop was not built).

The loop of :mod:`simhete.engine._compiled` over Python lists with ``heapq``: per-stream ready heaps of
task ranks (``order[rank]`` is the task), a completion heap of ``(finish, index)``, stale entries of
rescheduled tasks skipped when popped (an entry is current only while it equals ``fin[i]``). The
interference factors of every stream depend only on the set of busy streams, kept as a bit mask;
they are cached per mask and re-evaluated only when the mask differs from the last evaluation.
Same inputs (an :class:`~simhete.engine.indexed.Indexed`) and same outputs as ``_compiled.run_loop``.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush

from simhete.engine.indexed import Indexed
from simhete.engine.status import DOUBLE_ALLOC, FREE_UNKNOWN, OK, OOM, STUCK
from simhete.engine.rates import advance, slowdown


def _lists(ix: Indexed) -> tuple:
    """The list form of ``ix`` (built once per indexed schedule). The parts that depend only on
    the structure (streams, order, ranks, successors, dependency counts, frees) are built once per
    structure and shared (``ix.memo``; the loop never writes to them); allocations and needs,
    which carry bytes, per indexed schedule."""
    if ix.lists is None:
        n = len(ix.stream_of)
        memo = ix.memo if ix.memo is not None else {}
        fixed = memo.get("pyloop lists")
        if fixed is None:
            sp, succ = ix.succ_ptr.tolist(), ix.succ.tolist()
            fp, fb = ix.f_ptr.tolist(), ix.f_buf.tolist()
            fixed = memo["pyloop lists"] = (
                ix.stream_of.tolist(), ix.order.tolist(), ix.rank.tolist(),
                [succ[sp[i]:sp[i + 1]] for i in range(n)], ix.ndeps.tolist(),
                [tuple(fb[fp[i]:fp[i + 1]]) or None for i in range(n)])
        stream_of, order, rank, successors, ndeps, frees = fixed
        ap, np_ = ix.a_ptr.tolist(), ix.nd_ptr.tolist()
        alloc = list(zip(*(x.tolist() for x in (ix.a_buf, ix.a_pool, ix.a_bytes, ix.a_cls))))
        need = list(zip(ix.nd_pool.tolist(), ix.nd_bytes.tolist()))
        ix.lists = (stream_of, order, rank, successors, ndeps,
                    [tuple(alloc[ap[i]:ap[i + 1]]) or None for i in range(n)],
                    [tuple(need[np_[i]:np_[i + 1]]) or None for i in range(n)],
                    frees)
    return ix.lists


def run_loop(ix: Indexed, durs: list[float], matrix: list[list[float]], fluid: bool) -> tuple:
    stream_of, order, rank, successors, ndeps, allocs, needs, frees = _lists(ix)
    n = len(stream_of)
    n_streams = len(ix.streams)
    cap = ix.cap.tolist()
    in_use = ix.in_use0.tolist()
    class_bytes = ix.class0.tolist()
    live_pool, live_bytes, live_cls = ix.live_pool0.tolist(), ix.live_bytes0.tolist(), ix.live_cls0.tolist()
    peak = in_use[:]
    peak_cls = [c[:] for c in class_bytes]
    ev_pool: list[int] = []
    ev_t: list[float] = []
    ev_b: list[int] = []
    waiting_on = ndeps[:]
    info = [0, 0, 0]

    ready: list[list[int]] = [[] for _ in range(n_streams)]
    for i in range(n):
        if not waiting_on[i]:
            ready[stream_of[i]].append(rank[i])
    for q in ready:
        heapify(q)
    running = [-1] * n_streams
    start = [0.0] * n
    end = [0.0] * n
    finished = [False] * n
    events: list[tuple[float, int]] = []
    pending: list[int] = []             # completed at t, not yet processed
    done = 0
    t = 0.0
    stream_range = range(n_streams)
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

    def result(status: int) -> tuple:
        return (status, t, info, start, end, finished, ev_pool, ev_t, ev_b, len(ev_t), peak,
                peak_cls, in_use, live_pool, live_bytes)

    while True:
        # -- settle instant t: completions in task order, then dispatch in stream order --------
        while True:
            if pending:
                if len(pending) > 1:
                    pending.sort()
                for i in pending:
                    end[i] = t
                    finished[i] = True
                    s = stream_of[i]
                    running[s] = -1
                    mask &= ~bit[s]
                    fr = frees[i]
                    if fr is not None:
                        touched = []
                        for b in fr:
                            p = live_pool[b]
                            if p < 0:
                                info[:2] = i, b
                                return result(FREE_UNKNOWN)
                            live_pool[b] = -1
                            nb = live_bytes[b]
                            in_use[p] -= nb
                            class_bytes[p][live_cls[b]] -= nb
                            if p not in touched:
                                touched.append(p)
                        for p in touched:
                            ev_pool.append(p)
                            ev_t.append(t)
                            ev_b.append(in_use[p])
                    for j in successors[i]:
                        w = waiting_on[j] - 1
                        waiting_on[j] = w
                        if not w:
                            heappush(ready[stream_of[j]], rank[j])
                done += len(pending)
                pending = []
            for s in stream_range:
                if running[s] >= 0:
                    continue
                q = ready[s]
                if not q:
                    continue
                i = order[q[0]]
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
                        if live_pool[buf] >= 0:
                            info[:2] = i, buf
                            return result(DOUBLE_ALLOC)
                        live_pool[buf], live_bytes[buf], live_cls[buf] = p, b, c
                        class_bytes[p][c] += b
                    for p, b in nd:
                        u = in_use[p] + b
                        in_use[p] = u
                        ev_pool.append(p)
                        ev_t.append(t)
                        ev_b.append(u)
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

    if done == n:
        return result(OK)
    for q in ready:
        if q:
            i = order[q[0]]
            for p, b in needs[i]:
                if in_use[p] + b > cap[p]:
                    break
            info[:] = i, p, b
            return result(OOM)
    return result(STUCK)

"""The fast engine's event loop compiled with numba (``pip install simhete[fast]``).

The same loop as :mod:`simhete.engine.pyloop`, over the arrays of :mod:`simhete.engine.indexed`,
with array heaps instead of ``heapq``: a ready heap of task ranks per stream (one segment of one
array each) and a completion heap of ``(finish, index)``. The float arithmetic is that of
:mod:`simhete.engine.rates` written out (``t + remaining * f``; ``remaining - dt / f`` clamped at 0;
numba does not contract them into fused multiply-adds without ``fastmath``), so times equal the
SimPy engine's bit for bit. The interference factors are re-evaluated when the set of busy streams
differs from the last evaluation, as in the Python loop (a boolean per stream rather than a bit
mask, so any number of streams works).

Returns what :mod:`simhete.engine.status` describes. Compiled on first use and cached on disk
(``cache=True``), so later processes load the machine code instead of compiling again.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from simhete.engine.status import DOUBLE_ALLOC, FREE_UNKNOWN, OK, OOM, STUCK


@njit(cache=True, inline="always")
def _ready_push(heap, lo, size, key):
    k = size
    heap[lo + k] = key
    while k > 0:
        up = (k - 1) >> 1
        if heap[lo + up] <= key:
            break
        heap[lo + k] = heap[lo + up]
        k = up
    heap[lo + k] = key


@njit(cache=True, inline="always")
def _ready_pop(heap, lo, size):
    """Remove the minimum of the heap heap[lo:lo + size] (size >= 1)."""
    size -= 1
    key = heap[lo + size]
    k = 0
    while True:
        c = 2 * k + 1
        if c >= size:
            break
        if c + 1 < size and heap[lo + c + 1] < heap[lo + c]:
            c += 1
        if key <= heap[lo + c]:
            break
        heap[lo + k] = heap[lo + c]
        k = c
    if size > 0:
        heap[lo + k] = key


@njit(cache=True, inline="always")
def _ev_less(ta, ia, tb, ib):
    return ta < tb or (ta == tb and ia < ib)


@njit(cache=True, inline="always")
def _ev_push(ht, hi, size, t, i):
    k = size
    while k > 0:
        up = (k - 1) >> 1
        if not _ev_less(t, i, ht[up], hi[up]):
            break
        ht[k] = ht[up]
        hi[k] = hi[up]
        k = up
    ht[k] = t
    hi[k] = i


@njit(cache=True, inline="always")
def _ev_pop(ht, hi, size):
    size -= 1
    t, i = ht[size], hi[size]
    k = 0
    while True:
        c = 2 * k + 1
        if c >= size:
            break
        if c + 1 < size and _ev_less(ht[c + 1], hi[c + 1], ht[c], hi[c]):
            c += 1
        if not _ev_less(ht[c], hi[c], t, i):
            break
        ht[k] = ht[c]
        hi[k] = hi[c]
        k = c
    if size > 0:
        ht[k] = t
        hi[k] = i


def run_loop(ix, durs, matrix) -> tuple:
    """Run the compiled loop on an indexed schedule; allocates its state and outputs."""
    n = len(ix.stream_of)
    in_use, class_bytes = ix.in_use0.copy(), ix.class0.copy()
    live_pool, live_bytes, live_cls = ix.live_pool0.copy(), ix.live_bytes0.copy(), ix.live_cls0.copy()
    peak, peak_cls = ix.in_use0.copy(), ix.class0.copy()
    start, end, finished = np.zeros(n), np.zeros(n), np.zeros(n, np.bool_)
    n_ev_max = len(ix.nd_pool) + len(ix.f_buf)
    ev_pool, ev_t, ev_b = np.empty(n_ev_max, np.int64), np.empty(n_ev_max), np.empty(n_ev_max, np.int64)
    info = np.zeros(3, np.int64)
    status, t, n_ev = _kernel(ix.stream_of, ix.order, ix.rank, ix.succ_ptr, ix.succ, ix.ndeps.copy(),
                              ix.a_ptr, ix.a_buf, ix.a_pool, ix.a_bytes, ix.a_cls, ix.nd_ptr, ix.nd_pool,
                              ix.nd_bytes, ix.f_ptr, ix.f_buf, durs, matrix, ix.cap, in_use, class_bytes,
                              live_pool, live_bytes, live_cls, peak, peak_cls, start, end, finished,
                              ev_pool, ev_t, ev_b, info)
    return (status, t, info, start, end, finished, ev_pool, ev_t, ev_b, n_ev, peak, peak_cls, in_use,
            live_pool, live_bytes)


@njit(cache=True, error_model="numpy")
def _kernel(stream_of, order, rank, succ_ptr, succ, waiting, a_ptr, a_buf, a_pool, a_bytes, a_cls,
            nd_ptr, nd_pool, nd_bytes, f_ptr, f_buf, durs, matrix, cap, in_use, class_bytes,
            live_pool, live_bytes, live_cls, peak, peak_cls, start, end, finished, ev_pool, ev_t,
            ev_b, info):
    """The loop; mutates the memory state and fills the outputs. Returns (status, t, n_ev)."""
    n = stream_of.shape[0]
    n_streams = matrix.shape[0]
    n_pools = cap.shape[0]
    n_ev = 0
    touched = np.empty(n_pools, np.int64)
    # ready heaps: stream s owns ready[lo[s]:lo[s] + rlen[s]]
    lo = np.zeros(n_streams + 1, np.int64)
    for i in range(n):
        lo[stream_of[i] + 1] += 1
    for s in range(n_streams):
        lo[s + 1] += lo[s]
    ready = np.empty(max(n, 1), np.int64)
    rlen = np.zeros(n_streams, np.int64)
    for i in range(n):
        if waiting[i] == 0:
            s = stream_of[i]
            _ready_push(ready, lo[s], rlen[s], rank[i])
            rlen[s] += 1
    running = np.full(n_streams, -1, np.int64)
    pending = np.empty(max(n, 1), np.int64)
    n_pending = 0
    done = 0
    t = 0.0
    # interference state
    busy = np.zeros(n_streams, np.bool_)         # streams running a task with work
    last_busy = np.zeros(n_streams, np.bool_)    # at the last rate evaluation
    evaluated = False
    row = np.ones(n_streams)                     # slowdown per stream for last_busy
    launched = np.empty(n_streams, np.int64)     # started with work in this instant
    is_launched = np.zeros(n, np.bool_)
    n_launched = 0
    fin = np.full(n, -1.0)                       # projected finish while running, else -1
    factor = np.zeros(n)
    remaining = np.zeros(n)
    since = np.zeros(n)
    # heap bound: one push per start with work, plus at most one per running stream per rate
    # evaluation, and there is at most one evaluation per instant (<= n + 1 instants)
    cap_ev = n + n_streams * (n + 1) + 1
    ht = np.empty(cap_ev)
    hi = np.empty(cap_ev, np.int64)
    n_heap = 0

    while True:
        # -- settle instant t: completions in task order, then dispatch in stream order --------
        while True:
            if n_pending > 0:
                for k in range(1, n_pending):           # insertion sort: few per instant
                    i = pending[k]
                    q = k - 1
                    while q >= 0 and pending[q] > i:
                        pending[q + 1] = pending[q]
                        q -= 1
                    pending[q + 1] = i
                for k in range(n_pending):
                    i = pending[k]
                    end[i] = t
                    finished[i] = True
                    s = stream_of[i]
                    running[s] = -1
                    busy[s] = False
                    n_touched = 0
                    for q in range(f_ptr[i], f_ptr[i + 1]):
                        b = f_buf[q]
                        p = live_pool[b]
                        if p < 0:
                            info[0] = i
                            info[1] = b
                            return FREE_UNKNOWN, t, n_ev
                        live_pool[b] = -1
                        in_use[p] -= live_bytes[b]
                        class_bytes[p, live_cls[b]] -= live_bytes[b]
                        seen = False
                        for x in range(n_touched):
                            if touched[x] == p:
                                seen = True
                        if not seen:
                            touched[n_touched] = p
                            n_touched += 1
                    for x in range(n_touched):
                        p = touched[x]
                        ev_pool[n_ev] = p
                        ev_t[n_ev] = t
                        ev_b[n_ev] = in_use[p]
                        n_ev += 1
                    for q in range(succ_ptr[i], succ_ptr[i + 1]):
                        j = succ[q]
                        waiting[j] -= 1
                        if waiting[j] == 0:
                            s = stream_of[j]
                            _ready_push(ready, lo[s], rlen[s], rank[j])
                            rlen[s] += 1
                done += n_pending
                n_pending = 0
            for s in range(n_streams):
                if running[s] >= 0 or rlen[s] == 0:
                    continue
                i = order[ready[lo[s]]]
                if nd_ptr[i + 1] > nd_ptr[i]:
                    blocked = False
                    for q in range(nd_ptr[i], nd_ptr[i + 1]):
                        p = nd_pool[q]
                        if in_use[p] + nd_bytes[q] > cap[p]:
                            blocked = True
                            break
                    if blocked:
                        continue            # head of line waits for memory: the stream stays idle
                    for q in range(a_ptr[i], a_ptr[i + 1]):
                        b = a_buf[q]
                        if live_pool[b] >= 0:
                            info[0] = i
                            info[1] = b
                            return DOUBLE_ALLOC, t, n_ev
                        live_pool[b] = a_pool[q]
                        live_bytes[b] = a_bytes[q]
                        live_cls[b] = a_cls[q]
                        class_bytes[a_pool[q], a_cls[q]] += a_bytes[q]
                    for q in range(nd_ptr[i], nd_ptr[i + 1]):
                        p = nd_pool[q]
                        u = in_use[p] + nd_bytes[q]
                        in_use[p] = u
                        ev_pool[n_ev] = p
                        ev_t[n_ev] = t
                        ev_b[n_ev] = u
                        n_ev += 1
                        if u > peak[p]:
                            peak[p] = u
                            for c in range(class_bytes.shape[1]):
                                peak_cls[p, c] = class_bytes[p, c]
                _ready_pop(ready, lo[s], rlen[s])
                rlen[s] -= 1
                start[i] = t
                running[s] = i
                if durs[i] == 0.0:
                    pending[n_pending] = i
                    n_pending += 1
                else:
                    launched[n_launched] = i
                    n_launched += 1
                    is_launched[i] = True
                    busy[s] = True
            if n_pending == 0:
                break

        # -- rates of the running tasks, then the next instant ----------------------------------
        changed = not evaluated
        for s in range(n_streams):
            if busy[s] != last_busy[s]:
                changed = True
        if changed:
            evaluated = True
            for s in range(n_streams):
                last_busy[s] = busy[s]
            for s in range(n_streams):
                f = 1.0
                for a in range(n_streams):
                    if busy[a] and matrix[s, a] > f:
                        f = matrix[s, a]
                row[s] = f
            for s in range(n_streams):
                i = running[s]
                if i < 0 or is_launched[i]:
                    continue
                f = row[s]
                if f != factor[i]:
                    r = remaining[i] - (t - since[i]) / factor[i]      # rates.advance
                    remaining[i] = r if r > 0.0 else 0.0
                    factor[i] = f
                    since[i] = t
                    ft = t + remaining[i] * f                      # t + rates.delay
                    if ft != fin[i]:
                        fin[i] = ft
                        _ev_push(ht, hi, n_heap, ft, i)
                        n_heap += 1
        for k in range(n_launched):
            i = launched[k]
            is_launched[i] = False
            f = row[stream_of[i]]
            factor[i] = f
            remaining[i] = durs[i]
            since[i] = t
            ft = t + durs[i] * f                                   # t + rates.delay
            fin[i] = ft
            _ev_push(ht, hi, n_heap, ft, i)
            n_heap += 1
        n_launched = 0
        while n_heap > 0 and fin[hi[0]] != ht[0]:                 # stale: rescheduled since
            _ev_pop(ht, hi, n_heap)
            n_heap -= 1
        if n_heap == 0:
            break
        t = ht[0]
        while n_heap > 0 and ht[0] == t:
            i = hi[0]
            _ev_pop(ht, hi, n_heap)
            n_heap -= 1
            if fin[i] == t:
                fin[i] = -1.0
                pending[n_pending] = i
                n_pending += 1

    status = OK
    if done < n:
        status = STUCK
        for s in range(n_streams):
            if rlen[s] > 0:
                i = order[ready[lo[s]]]
                for q in range(nd_ptr[i], nd_ptr[i + 1]):
                    p = nd_pool[q]
                    if in_use[p] + nd_bytes[q] > cap[p]:
                        info[0] = i
                        info[1] = p
                        info[2] = nd_bytes[q]
                        break
                status = OOM
                break
    return status, t, n_ev

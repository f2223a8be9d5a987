# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The fast engine's compiled event loop (Cython, built when simhete is installed): :func:`run_loop`.

The loop runs the semantics of the SimPy reference (:mod:`simhete.engine.simpy_engine`) over the
arrays of :mod:`simhete.engine.indexed`: a ready heap of task ranks per stream (one segment of one
array each) and a completion heap of ``(finish, index)``, stale entries of rescheduled tasks skipped
when popped. The float arithmetic is that of
:mod:`simhete.engine.rates` written out (``t + remaining * f``; ``remaining - dt / f`` clamped at
0), and the build turns off contraction into fused multiply-adds (``-ffp-contract=off``), so times
equal the SimPy engine's bit for bit. The interference factors are re-evaluated when the set of
busy streams differs from the last evaluation (they depend only on that set).

Unlike a JIT it costs a process nothing to load (a shared library, no compiler at run time), so
every run uses it when it is built. :func:`run_loop` returns what :mod:`simhete.engine.status`
describes.
"""

from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free

import numpy as np

from simhete.engine.status import DOUBLE_ALLOC, FREE_UNKNOWN, OK, OOM, STUCK

cdef int64_t _OK = OK, _OOM = OOM, _DOUBLE_ALLOC = DOUBLE_ALLOC, _FREE_UNKNOWN = FREE_UNKNOWN
cdef int64_t _STUCK = STUCK


cdef inline void _ready_push(int64_t* heap, int64_t size, int64_t key) noexcept nogil:
    cdef int64_t k = size, up
    heap[k] = key
    while k > 0:
        up = (k - 1) >> 1
        if heap[up] <= key:
            break
        heap[k] = heap[up]
        k = up
    heap[k] = key


cdef inline void _ready_pop(int64_t* heap, int64_t size) noexcept nogil:
    """Remove the minimum of the heap heap[0:size] (size >= 1)."""
    cdef int64_t key, k = 0, c
    size -= 1
    key = heap[size]
    while True:
        c = 2 * k + 1
        if c >= size:
            break
        if c + 1 < size and heap[c + 1] < heap[c]:
            c += 1
        if key <= heap[c]:
            break
        heap[k] = heap[c]
        k = c
    if size > 0:
        heap[k] = key


cdef inline bint _ev_less(double ta, int64_t ia, double tb, int64_t ib) noexcept nogil:
    return ta < tb or (ta == tb and ia < ib)


cdef inline void _ev_push(double* ht, int64_t* hi, int64_t size, double t, int64_t i) noexcept nogil:
    cdef int64_t k = size, up
    while k > 0:
        up = (k - 1) >> 1
        if not _ev_less(t, i, ht[up], hi[up]):
            break
        ht[k] = ht[up]
        hi[k] = hi[up]
        k = up
    ht[k] = t
    hi[k] = i


cdef inline void _ev_pop(double* ht, int64_t* hi, int64_t size) noexcept nogil:
    cdef int64_t k = 0, c, i
    cdef double t
    size -= 1
    t, i = ht[size], hi[size]
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
    """Run the loop on an indexed schedule (:class:`~simhete.engine.indexed.Indexed`) with full-speed
    durations ``durs`` and the stream-by-stream slowdown ``matrix``; allocates its state and outputs."""
    n = len(ix.stream_of)
    in_use, class_bytes = ix.in_use0.copy(), ix.class0.copy()
    live_pool, live_bytes, live_cls = ix.live_pool0.copy(), ix.live_bytes0.copy(), ix.live_cls0.copy()
    peak, peak_cls = ix.in_use0.copy(), ix.class0.copy()
    start, end, finished = np.zeros(n), np.zeros(n), np.zeros(n, np.uint8)
    n_ev_max = len(ix.nd_pool) + len(ix.f_buf)
    ev_pool, ev_t, ev_b = np.empty(n_ev_max, np.int64), np.empty(n_ev_max), np.empty(n_ev_max, np.int64)
    info = np.zeros(3, np.int64)
    status, t, n_ev = _kernel(ix.stream_of, ix.order, ix.rank, ix.succ_ptr, ix.succ, ix.ndeps.copy(),
                              ix.a_ptr, ix.a_buf, ix.a_pool, ix.a_bytes, ix.a_cls, ix.nd_ptr, ix.nd_pool,
                              ix.nd_bytes, ix.f_ptr, ix.f_buf, durs, matrix, ix.cap, in_use, class_bytes,
                              live_pool, live_bytes, live_cls, peak, peak_cls, start, end, finished,
                              ev_pool, ev_t, ev_b, info)
    return (status, t, info, start, end, finished.view(np.bool_), ev_pool, ev_t, ev_b, n_ev, peak,
            peak_cls, in_use, live_pool, live_bytes)


cdef tuple _kernel(const int64_t[::1] stream_of, const int64_t[::1] order, const int64_t[::1] rank,
                   const int64_t[::1] succ_ptr, const int64_t[::1] succ, int64_t[::1] waiting,
                   const int64_t[::1] a_ptr, const int64_t[::1] a_buf, const int64_t[::1] a_pool,
                   const int64_t[::1] a_bytes, const int64_t[::1] a_cls, const int64_t[::1] nd_ptr,
                   const int64_t[::1] nd_pool, const int64_t[::1] nd_bytes, const int64_t[::1] f_ptr,
                   const int64_t[::1] f_buf, const double[::1] durs, const double[:, ::1] matrix,
                   const int64_t[::1] cap, int64_t[::1] in_use, int64_t[:, ::1] class_bytes,
                   int64_t[::1] live_pool, int64_t[::1] live_bytes, int64_t[::1] live_cls,
                   int64_t[::1] peak, int64_t[:, ::1] peak_cls, double[::1] start, double[::1] end,
                   unsigned char[::1] finished, int64_t[::1] ev_pool, double[::1] ev_t,
                   int64_t[::1] ev_b, int64_t[::1] info):
    """The loop; mutates the memory state and fills the outputs. Returns (status, t, n_ev)."""
    cdef int64_t n = stream_of.shape[0]
    cdef int64_t n_streams = matrix.shape[0]
    cdef int64_t n_pools = cap.shape[0]
    cdef int64_t n_cls = class_bytes.shape[1]
    # heap bound: one push per start with work, plus at most one per running stream per rate
    # evaluation, and there is at most one evaluation per instant (<= n + 1 instants)
    cdef int64_t cap_ev = n + n_streams * (n + 1) + 1
    cdef int64_t nn = n if n > 0 else 1
    # one block of int64 work space and one of doubles (no Python objects inside the loop)
    cdef int64_t* iw = <int64_t*> malloc(sizeof(int64_t) * (n_pools + 6 * n_streams + 1 + 2 * nn + cap_ev + nn))
    cdef double* dw = <double*> malloc(sizeof(double) * (n_streams + 4 * nn + cap_ev))
    if iw == NULL or dw == NULL:
        free(iw)
        free(dw)
        raise MemoryError()
    cdef int64_t* touched = iw
    cdef int64_t* lo = touched + n_pools              # stream s owns ready[lo[s]:lo[s] + rlen[s]]
    cdef int64_t* ready = lo + (n_streams + 1)
    cdef int64_t* rlen = ready + nn
    cdef int64_t* running = rlen + n_streams
    cdef int64_t* pending = running + n_streams
    cdef int64_t* launched = pending + nn             # started with work in this instant
    cdef int64_t* hi = launched + n_streams
    cdef int64_t* busy = hi + cap_ev                  # streams running a task with work
    cdef int64_t* last_busy = busy + n_streams        # at the last rate evaluation
    cdef int64_t* is_launched = last_busy + n_streams
    cdef double* row = dw                             # slowdown per stream for last_busy
    cdef double* fin = row + n_streams                # projected finish while running, else -1
    cdef double* factor = fin + nn
    cdef double* remaining = factor + nn
    cdef double* since = remaining + nn
    cdef double* ht = since + nn
    cdef int64_t i, j, s, k, q, x, p, b, c, a, u, n_touched, status = _OK
    cdef int64_t n_pending = 0, done = 0, n_launched = 0, n_heap = 0, n_ev = 0
    cdef double t = 0.0, f, r, ft
    cdef bint seen, blocked, changed, evaluated = False
    try:
        with nogil:
            for s in range(n_streams + 1):
                lo[s] = 0
            for i in range(n):
                lo[stream_of[i] + 1] += 1
            for s in range(n_streams):
                lo[s + 1] += lo[s]
                rlen[s] = 0
                running[s] = -1
                busy[s] = 0
                last_busy[s] = 0
                row[s] = 1.0
            for i in range(n):
                is_launched[i] = 0
                fin[i] = -1.0
                factor[i] = 0.0
                remaining[i] = 0.0
                since[i] = 0.0
            for i in range(n):
                if waiting[i] == 0:
                    s = stream_of[i]
                    _ready_push(ready + lo[s], rlen[s], rank[i])
                    rlen[s] += 1

            while True:
                # -- settle instant t: completions in task order, then dispatch in stream order ----
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
                            finished[i] = 1
                            s = stream_of[i]
                            running[s] = -1
                            busy[s] = 0
                            n_touched = 0
                            for q in range(f_ptr[i], f_ptr[i + 1]):
                                b = f_buf[q]
                                p = live_pool[b]
                                if p < 0:
                                    info[0] = i
                                    info[1] = b
                                    status = _FREE_UNKNOWN
                                    break
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
                            if status != _OK:
                                break
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
                                    _ready_push(ready + lo[s], rlen[s], rank[j])
                                    rlen[s] += 1
                        if status != _OK:
                            break
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
                                continue        # head of line waits for memory: the stream stays idle
                            for q in range(a_ptr[i], a_ptr[i + 1]):
                                b = a_buf[q]
                                if live_pool[b] >= 0:
                                    info[0] = i
                                    info[1] = b
                                    status = _DOUBLE_ALLOC
                                    break
                                live_pool[b] = a_pool[q]
                                live_bytes[b] = a_bytes[q]
                                live_cls[b] = a_cls[q]
                                class_bytes[a_pool[q], a_cls[q]] += a_bytes[q]
                            if status != _OK:
                                break
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
                                    for c in range(n_cls):
                                        peak_cls[p, c] = class_bytes[p, c]
                        _ready_pop(ready + lo[s], rlen[s])
                        rlen[s] -= 1
                        start[i] = t
                        running[s] = i
                        if durs[i] == 0.0:
                            pending[n_pending] = i
                            n_pending += 1
                        else:
                            launched[n_launched] = i
                            n_launched += 1
                            is_launched[i] = 1
                            busy[s] = 1
                    if status != _OK or n_pending == 0:
                        break
                if status != _OK:
                    break

                # -- rates of the running tasks, then the next instant ------------------------------
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
                    is_launched[i] = 0
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

            if status == _OK and done < n:
                status = _STUCK
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
                        status = _OOM
                        break
    finally:
        free(iw)
        free(dw)
    return status, t, n_ev


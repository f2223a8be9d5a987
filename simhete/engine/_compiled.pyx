# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The fast engine's compiled event loop (Cython, built when simhete is installed): :func:`run_loop`.

The loop runs the semantics of the SimPy reference (:mod:`simhete.engine.simpy_engine`) over the
arrays of :mod:`simhete.engine.indexed`: a ready heap of task ranks per stream (one segment of one
array each); at most one task runs per stream, so the next instant is the earliest projected finish
among the streams. It derives what the indexing leaves to it: the bytes each task asks per pool
(pools in order of first appearance among its allocations) and the memory at ``t = 0``. The float
arithmetic is that of :mod:`simhete.engine.rates` written out (``t + remaining * f``;
``remaining - dt / f`` clamped at 0), and the build turns off contraction into fused multiply-adds
(``-ffp-contract=off``), so times equal the SimPy engine's bit for bit. The interference factors
are re-evaluated when the set of busy streams differs from the last evaluation (they depend only on
that set).

Unlike a JIT it costs a process nothing to load (a shared library, no compiler at run time), so
every run uses it when it is built.
"""

from libc.stdint cimport int64_t

import numpy as np

from simhete.engine.memory import CLASSES

cdef enum:          # how the loop ended (STATUS: its name for Python) and what ``info`` holds then
    OK              # every task ran
    OOM             # (blocked head task, first pool where it does not fit, bytes it asks there)
    DOUBLE_ALLOC    # (task, buffer it allocates that is still live)
    FREE_UNKNOWN    # (task, buffer it frees that is not live)
    STUCK           # nothing runs, nothing is ready, tasks remain: a dependency cycle
STATUS = ("ok", "oom", "double alloc", "free unknown", "stuck")


cdef inline void _push(int64_t* heap, int64_t size, int64_t key) noexcept nogil:
    """Add ``key`` to the min-heap ``heap[0:size]``."""
    cdef int64_t at = size, up
    while at > 0:
        up = (at - 1) >> 1
        if heap[up] <= key:
            break
        heap[at] = heap[up]
        at = up
    heap[at] = key


cdef inline void _pop(int64_t* heap, int64_t size) noexcept nogil:
    """Remove the smallest key of the min-heap ``heap[0:size]`` (``size >= 1``)."""
    cdef int64_t key = heap[size - 1], at = 0, c
    size -= 1
    while True:
        c = 2 * at + 1
        if c >= size:
            break
        if c + 1 < size and heap[c + 1] < heap[c]:
            c += 1
        if key <= heap[c]:
            break
        heap[at] = heap[c]
        at = c
    heap[at] = key


def run_loop(ix, const double[::1] durs, const double[:, ::1] matrix) -> dict:
    """Run the indexed schedule ``ix`` (:class:`~simhete.engine.indexed.Indexed`) with full-speed
    durations ``durs`` and the stream-by-stream slowdown ``matrix``.

    Returns a dict: ``status`` (a ``STATUS`` name), ``t`` (when the loop ended) and ``info`` (see
    the enum); per task ``start``, ``end`` and whether it ``finished``; the memory events in order,
    ``n_ev`` of them (``ev_pool``, ``ev_t``, ``ev_bytes``: the pool and time, the bytes in use
    after; one per pool at ``t = 0`` first); per pool its ``peak``, the peak's class breakdown
    ``peak_cls`` and the bytes ``in_use`` at the end; per buffer its pool (``live_pool``, ``-1``:
    not live) and ``live_bytes``.
    """
    st = ix.st
    cdef const int64_t[::1] stream_of = st.stream_of, order = st.order, rank = st.rank, ndeps = st.ndeps
    cdef const int64_t[::1] succ_ptr = st.succ_ptr, succ = st.succ, f_ptr = st.f_ptr, f_buf = st.f_buf
    cdef const int64_t[::1] a_ptr = st.a_ptr, a_buf = st.a_buf, a_pool = st.a_pool, a_cls = st.a_cls
    cdef const int64_t[::1] init_buf = st.init_buf, init_pool = st.init_pool, init_cls = st.init_cls
    cdef const int64_t[::1] a_bytes = ix.a_bytes, init_bytes = ix.init_bytes, cap = ix.cap
    cdef int64_t n = stream_of.shape[0], n_streams = matrix.shape[0], n_pools = cap.shape[0]
    cdef int64_t n_cls = len(CLASSES), n_alloc = a_buf.shape[0], n_buf = len(st.buffers)
    # at most one event per pool at t = 0, per (task, pool) asked and per buffer freed
    cdef int64_t n_ev_max = n_pools + n_alloc + f_buf.shape[0]
    i64 = np.int64
    # outputs, returned by name (the loop writes them through the memoryviews below)
    out = {"start": np.zeros(n), "end": np.zeros(n), "finished": np.zeros(n, np.uint8),
           "peak": np.zeros(n_pools, i64), "peak_cls": np.zeros((n_pools, n_cls), i64),
           "in_use": np.zeros(n_pools, i64), "live_pool": np.empty(n_buf, i64), "live_bytes": np.zeros(n_buf, i64),
           "ev_pool": np.empty(n_ev_max, i64), "ev_t": np.empty(n_ev_max), "ev_bytes": np.empty(n_ev_max, i64)}
    cdef double[::1] start = out["start"], end = out["end"], ev_t = out["ev_t"]
    cdef unsigned char[::1] finished = out["finished"]
    cdef int64_t[::1] peak = out["peak"], in_use = out["in_use"], ev_pool = out["ev_pool"], ev_b = out["ev_bytes"]
    cdef int64_t[::1] live_pool = out["live_pool"], live_bytes = out["live_bytes"]
    cdef int64_t[:, ::1] peak_cls = out["peak_cls"]
    cdef int64_t[3] info = [0, 0, 0]
    # work space: one block of int64 and one of doubles, carved below and set where read before
    # written (acquiring a memoryview costs about a microsecond, a run of 700 tasks about a hundred)
    cdef int64_t[::1] iw = np.empty(4 * n + 2 + 2 * n_alloc + 4 * n_streams + n_pools + n_buf + n_pools * n_cls, i64)
    cdef double[::1] dw = np.empty(5 * n_streams)
    cdef int64_t* waiting = &iw[0]                  # unfinished dependencies per task
    cdef int64_t* nd_ptr = waiting + n              # bytes asked per (task, pool) in CSR form
    cdef int64_t* nd_pool = nd_ptr + n + 1
    cdef int64_t* nd_bytes = nd_pool + n_alloc
    cdef int64_t* lo = nd_bytes + n_alloc           # stream s's ready heap of ranks: [lo[s], lo[s] + rlen[s])
    cdef int64_t* rlen = lo + n_streams + 1
    cdef int64_t* ready = rlen + n_streams
    cdef int64_t* running = ready + n               # the task on each stream, -1: idle
    cdef int64_t* was_busy = running + n_streams    # running a task at the last rate evaluation
    cdef int64_t* pending = was_busy + n_streams    # completed at t, not yet processed
    cdef int64_t* touched = pending + n             # pools a completing task frees in
    cdef int64_t* live_cls = touched + n_pools      # class of each live buffer
    cdef int64_t* class_bytes = live_cls + n_buf    # bytes in use per pool and class: [p * n_cls + c]
    # the running task of each stream: its slowdown (0: not set yet), remaining full-speed work,
    # when that was last brought up to date, projected finish; and the stream's current slowdown
    cdef double* factor = &dw[0]
    cdef double* remaining = factor + n_streams
    cdef double* since = remaining + n_streams
    cdef double* fin = since + n_streams
    cdef double* row = fin + n_streams
    cdef const double* slow = &matrix[0, 0]         # matrix[v, a] is slow[v * n_streams + a] (flat is faster)
    cdef int64_t i, j, s, k, q, x, m, p, b, c, a, n_touched, status = OK
    cdef int64_t n_pending = 0, done = 0, n_ev = 0
    cdef double t = 0.0, t_next, f, r
    cdef bint blocked, changed, evaluated = False
    with nogil:
        for b in range(n_buf):
            live_pool[b] = -1
        for s in range(n_streams + 1):
            lo[s] = 0
        for k in range(n_pools * n_cls):
            class_bytes[k] = 0
        for s in range(n_streams):
            rlen[s] = 0
            running[s] = -1
            was_busy[s] = 0
            row[s] = 1.0
        nd_ptr[0] = 0
        # -- memory at t = 0 (one event per pool), the bytes asked per pool, the ready heaps --------
        for k in range(init_buf.shape[0]):
            b, p, c = init_buf[k], init_pool[k], init_cls[k]
            live_pool[b], live_bytes[b], live_cls[b] = p, init_bytes[k], c
            in_use[p] += init_bytes[k]
            class_bytes[p * n_cls + c] += init_bytes[k]
        for p in range(n_pools):
            peak[p] = in_use[p]
            for c in range(n_cls):
                peak_cls[p, c] = class_bytes[p * n_cls + c]
            ev_pool[n_ev], ev_t[n_ev], ev_b[n_ev] = p, 0.0, in_use[p]
            n_ev += 1
        for i in range(n):
            m = nd_ptr[i]
            for q in range(a_ptr[i], a_ptr[i + 1]):
                x = nd_ptr[i]
                while x < m and nd_pool[x] != a_pool[q]:
                    x += 1
                if x == m:                      # the task's first allocation in this pool
                    nd_pool[m], nd_bytes[m] = a_pool[q], 0
                    m += 1
                nd_bytes[x] += a_bytes[q]
            nd_ptr[i + 1] = m
        for i in range(n):
            waiting[i] = ndeps[i]
            lo[stream_of[i] + 1] += 1
        for s in range(n_streams):
            lo[s + 1] += lo[s]
        for i in range(n):
            if waiting[i] == 0:
                s = stream_of[i]
                _push(ready + lo[s], rlen[s], rank[i])
                rlen[s] += 1

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
                        finished[i] = 1
                        running[stream_of[i]] = -1
                        n_touched = 0
                        for q in range(f_ptr[i], f_ptr[i + 1]):
                            b = f_buf[q]
                            p = live_pool[b]
                            if p < 0:
                                info[0], info[1] = i, b
                                status = FREE_UNKNOWN
                                break
                            live_pool[b] = -1
                            in_use[p] -= live_bytes[b]
                            class_bytes[p * n_cls + live_cls[b]] -= live_bytes[b]
                            x = 0
                            while x < n_touched and touched[x] != p:
                                x += 1
                            if x == n_touched:              # the first buffer it frees in this pool
                                touched[n_touched] = p
                                n_touched += 1
                        if status != OK:
                            break
                        for x in range(n_touched):
                            p = touched[x]
                            ev_pool[n_ev], ev_t[n_ev], ev_b[n_ev] = p, t, in_use[p]
                            n_ev += 1
                        for q in range(succ_ptr[i], succ_ptr[i + 1]):
                            j = succ[q]
                            waiting[j] -= 1
                            if waiting[j] == 0:
                                s = stream_of[j]
                                _push(ready + lo[s], rlen[s], rank[j])
                                rlen[s] += 1
                    if status != OK:
                        break
                    done += n_pending
                    n_pending = 0
                for s in range(n_streams):
                    if running[s] >= 0 or rlen[s] == 0:
                        continue
                    i = order[ready[lo[s]]]
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
                            info[0], info[1] = i, b
                            status = DOUBLE_ALLOC
                            break
                        live_pool[b], live_bytes[b], live_cls[b] = a_pool[q], a_bytes[q], a_cls[q]
                        class_bytes[a_pool[q] * n_cls + a_cls[q]] += a_bytes[q]
                    if status != OK:
                        break
                    for q in range(nd_ptr[i], nd_ptr[i + 1]):
                        p = nd_pool[q]
                        in_use[p] += nd_bytes[q]
                        ev_pool[n_ev], ev_t[n_ev], ev_b[n_ev] = p, t, in_use[p]
                        n_ev += 1
                        if in_use[p] > peak[p]:
                            peak[p] = in_use[p]
                            for c in range(n_cls):
                                peak_cls[p, c] = class_bytes[p * n_cls + c]
                    _pop(ready + lo[s], rlen[s])
                    rlen[s] -= 1
                    start[i] = t
                    running[s] = i
                    factor[s] = 0.0
                    if durs[i] == 0.0:
                        pending[n_pending] = i
                        n_pending += 1
                if status != OK or n_pending == 0:
                    break
            if status != OK:
                break

            # -- rates of the running tasks (all with work now), then the next instant -------------
            changed = not evaluated
            for s in range(n_streams):
                if (running[s] >= 0) != was_busy[s]:
                    changed = True
            if changed:
                evaluated = True
                for s in range(n_streams):
                    was_busy[s] = running[s] >= 0
                for s in range(n_streams):
                    f = 1.0
                    for a in range(n_streams):
                        if was_busy[a] and slow[s * n_streams + a] > f:
                            f = slow[s * n_streams + a]
                    row[s] = f
            t_next = -1.0                           # the earliest projected finish (-1: none runs)
            for s in range(n_streams):
                i = running[s]
                if i < 0:
                    continue
                if factor[s] == 0.0:                # started in this instant: all its work remains
                    factor[s], remaining[s], since[s] = row[s], durs[i], t
                    fin[s] = t + durs[i] * row[s]                               # t + rates.delay
                elif row[s] != factor[s]:           # the busy streams changed
                    r = remaining[s] - (t - since[s]) / factor[s]              # rates.advance
                    remaining[s] = r if r > 0.0 else 0.0
                    factor[s], since[s] = row[s], t
                    fin[s] = t + remaining[s] * row[s]                          # t + rates.delay
                if t_next < 0.0 or fin[s] < t_next:
                    t_next = fin[s]
            if t_next < 0.0:
                break
            t = t_next
            for s in range(n_streams):
                if running[s] >= 0 and fin[s] == t:
                    pending[n_pending] = running[s]
                    n_pending += 1

        if status == OK and done < n:
            status = STUCK
            for s in range(n_streams):
                if rlen[s] > 0:
                    i = order[ready[lo[s]]]
                    for q in range(nd_ptr[i], nd_ptr[i + 1]):
                        p = nd_pool[q]
                        if in_use[p] + nd_bytes[q] > cap[p]:
                            info[0], info[1], info[2] = i, p, nd_bytes[q]
                            break
                    status = OOM
                    break
    out["status"], out["t"], out["info"], out["n_ev"] = STATUS[status], t, info, n_ev
    return out

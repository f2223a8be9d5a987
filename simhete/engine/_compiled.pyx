# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The fast engine's compiled parts (Cython, built when simhete is installed): the event loop
(:func:`run_loop`) and the indexing of a new schedule structure (:func:`structure`).

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


def structure(list names, list stream_names, list prio, list it_col, list deps, list frees, flat,
              list n_alloc_col, tuple initial, pools, tuple classes):
    """The structure indexing of :func:`simhete.engine.indexed._structure` for a schedule that
    passes every static check, in one pass per column with no interpreter in between.

    ``flat``: the allocations in task order (a sequence of Allocs), ``n_alloc_col`` how many each
    task makes, ``initial`` the initial buffers, ``classes`` the memory classes in index order
    (``memory.CLASSES``). Returns ``None`` as soon as anything is off — a duplicate name, a
    dependency that is not a task, an unknown pool, an initial buffer listed twice, initial buffers
    that overflow a pool, an allocation whose class is not one of ``classes`` — and the Python
    indexing then finds and reports it as the reference does. Otherwise the tuple
    ``(streams, buffers, initial_keys, arrays)``, ``arrays`` a dict of the
    StructureIndex's int64 arrays; numbering and ordering as the Python indexing's (tests compare them).
    """
    cdef Py_ssize_t n = len(names), n_flat = len(flat), n_init = len(initial)
    cdef Py_ssize_t n_pools = len(pools), n_cls = len(classes)
    cdef Py_ssize_t i, k, q, e, lo_, hi_, g, n_groups, n_dep_total = 0, n_free_total = 0
    cdef int64_t p, b, c, row
    if len(stream_names) != n or len(prio) != n or len(it_col) != n or len(deps) != n \
            or len(frees) != n or len(n_alloc_col) != n:
        return None
    # names -> rows (a duplicate name: the Python indexing reports it)
    cdef dict index = {}
    for i in range(n):
        index[names[i]] = i
    if len(index) != n:
        return None
    cdef dict pool_id = {}
    cdef list pool_names = list(pools)
    for k in range(n_pools):
        pool_id[pool_names[k]] = k
    # streams in order of first appearance
    cdef dict stream_id = {}
    cdef list streams = []
    i64 = np.int64
    stream_of = np.empty(n, i64)
    it = np.empty(n, i64)
    pr = np.empty(n, i64)
    ndeps = np.empty(n, i64)
    a_ptr = np.zeros(n + 1, i64)
    f_ptr = np.zeros(n + 1, i64)
    cdef int64_t[::1] v_stream = stream_of, v_it = it, v_pr = pr, v_ndeps = ndeps
    cdef int64_t[::1] v_aptr = a_ptr, v_fptr = f_ptr
    for i in range(n):
        s = stream_names[i]
        got = stream_id.get(s)
        if got is None:
            got = stream_id[s] = len(streams)
            streams.append(s)
        v_stream[i] = got
        v_it[i] = it_col[i]
        v_pr[i] = prio[i]
        k = len(deps[i])
        v_ndeps[i] = k
        n_dep_total += k
        v_aptr[i + 1] = v_aptr[i] + <int64_t> n_alloc_col[i]
        v_fptr[i + 1] = v_fptr[i] + len(frees[i])
    if v_aptr[n] != n_flat:
        return None
    # successors in CSR form: per parent, its children in task order (a counting sort)
    parent = np.empty(n_dep_total, i64)
    succ_ptr = np.zeros(n + 1, i64)
    succ = np.empty(n_dep_total, i64)
    cdef int64_t[::1] v_parent = parent, v_sptr = succ_ptr, v_succ = succ
    e = 0
    for i in range(n):
        for x in deps[i]:
            got = index.get(x)
            if got is None:
                return None
            row = got
            v_parent[e] = row
            v_sptr[row + 1] += 1
            e += 1
    for i in range(n):
        v_sptr[i + 1] += v_sptr[i]
    fill = succ_ptr[:-1].copy()
    cdef int64_t[::1] v_fill = fill
    e = 0
    for i in range(n):
        for k in range(v_ndeps[i]):
            row = v_parent[e]
            v_succ[v_fill[row]] = i
            v_fill[row] += 1
            e += 1
    # allocations: buffers numbered by first appearance among allocated, freed, initial names
    cdef dict buf_id = {}
    cdef list buffers = []
    a_buf = np.empty(n_flat, i64)
    a_pool = np.empty(n_flat, i64)
    a_cls = np.empty(n_flat, i64)
    cdef int64_t[::1] v_abuf = a_buf, v_apool = a_pool, v_acls = a_cls
    for q in range(n_flat):
        a = flat[q]
        name, pool, cls = a.buf, a.pool, a.cls
        got = pool_id.get(pool)
        if got is None:
            return None
        v_apool[q] = got
        for c in range(n_cls + 1):
            if c == n_cls:
                return None
            if classes[c] is cls:
                break
        v_acls[q] = c
        got = buf_id.get(name)
        if got is None:
            got = buf_id[name] = len(buffers)
            buffers.append(name)
        v_abuf[q] = got
    n_free_total = v_fptr[n]
    f_buf = np.empty(n_free_total, i64)
    cdef int64_t[::1] v_fbuf = f_buf
    e = 0
    for i in range(n):
        for x in frees[i]:
            got = buf_id.get(x)
            if got is None:
                got = buf_id[x] = len(buffers)
                buffers.append(x)
            v_fbuf[e] = got
            e += 1
    cdef list initial_keys = []
    init_buf = np.empty(n_init, i64)
    init_pool = np.empty(n_init, i64)
    init_cls = np.empty(n_init, i64)
    cdef int64_t[::1] v_ibuf = init_buf, v_ipool = init_pool, v_icls = init_cls
    held = [0] * n_pools
    for q in range(n_init):
        a = initial[q]
        name, pool, cls = a.buf, a.pool, a.cls
        got = pool_id.get(pool)
        if got is None:
            return None
        p = got
        held[p] += a.bytes
        for c in range(n_cls + 1):
            if c == n_cls:
                return None
            if classes[c] is cls:
                break
        got = buf_id.get(name)
        if got is None:
            got = buf_id[name] = len(buffers)
            buffers.append(name)
        v_ibuf[q], v_ipool[q], v_icls[q] = got, p, c
        initial_keys.append((name, pool, cls))
    for k in range(n_pools):
        if held[k] > pools[pool_names[k]]:
            return None
    cdef Py_ssize_t nb = len(buffers)
    live_pool0 = np.full(nb, -1, i64)
    live_cls0 = np.zeros(nb, i64)
    cdef int64_t[::1] v_lpool = live_pool0, v_lcls = live_cls0
    for q in range(n_init):
        b = v_ibuf[q]
        if v_lpool[b] >= 0:
            return None                 # an initial buffer listed twice
        v_lpool[b] = v_ipool[q]
        v_lcls[b] = v_icls[q]
    # needs: per task, its pools in order of first appearance among its allocations; the
    # allocations grouped by (task, pool) in that order, each group in allocation order
    nd_ptr = np.zeros(n + 1, i64)
    nd_pool_full = np.empty(n_flat, i64)
    nd_perm = np.empty(n_flat, i64)
    nd_starts_full = np.empty(n_flat, i64)
    cdef int64_t[::1] v_ndptr = nd_ptr, v_ndpool = nd_pool_full, v_perm = nd_perm, v_starts = nd_starts_full
    cdef Py_ssize_t pos = 0, q2
    cdef bint first
    n_groups = 0
    for i in range(n):
        lo_, hi_ = v_aptr[i], v_aptr[i + 1]
        for q in range(lo_, hi_):
            p = v_apool[q]
            first = True
            for q2 in range(lo_, q):
                if v_apool[q2] == p:
                    first = False
                    break
            if not first:
                continue
            v_ndpool[n_groups] = p
            v_starts[n_groups] = pos
            n_groups += 1
            for q2 in range(q, hi_):
                if v_apool[q2] == p:
                    v_perm[pos] = q2
                    pos += 1
        v_ndptr[i + 1] = n_groups
    order = np.argsort(pr, kind="stable")
    rank = np.empty(n, i64)
    rank[order] = np.arange(n, dtype=i64)
    arrays = dict(stream_of=stream_of, it=it, order=order, rank=rank, succ_ptr=succ_ptr, succ=succ,
                  ndeps=ndeps, a_ptr=a_ptr, a_buf=a_buf, a_pool=a_pool, a_cls=a_cls, nd_ptr=nd_ptr,
                  nd_pool=nd_pool_full[:n_groups].copy(), nd_perm=nd_perm,
                  nd_starts=nd_starts_full[:n_groups].copy(), f_ptr=f_ptr, f_buf=f_buf,
                  live_pool0=live_pool0, live_cls0=live_cls0, init_buf=init_buf, init_pool=init_pool,
                  init_cls=init_cls)
    return tuple(streams), tuple(buffers), initial_keys, arrays


"""A Schedule as flat integer arrays, built once per Schedule object and kept on it.

Schedules are immutable, so a sweep that re-prices one schedule under many hardware profiles (new
durations, same tasks) pays for this indexing once: the Indexed form is kept in the schedule's
``derived`` and dies with it. Every static check the engines make on a schedule happens here, in
the order the SimPy reference makes them (docs/engine.md, Errors); a schedule that fails a check
keeps nothing, so the same error is raised on every call.

Reuse per *structure*: a schedule whose table was bound from a
:class:`~simhete.schedule.structure.Structure` (every policy's) shares that structure with every
other point bound from it (a sweep point that differs from an earlier one only in sizes), so what
indexing derives from the structure alone (:class:`StructureIndex`: names, streams, priorities,
dependencies, frees, allocated buffers/pools/classes) is kept on it (``structure.derived``) and a
new schedule of it computes only the byte-dependent arrays. A schedule made from Task objects (the
text form, tests) is indexed on its own. The schedule is read through its column-wise table
(``schedule.table``), never Task by Task.

Layout (``n`` tasks, ``S`` streams, ``P`` pools, ``C`` memory classes), all numpy arrays:

- ``stream_of[i]``, ``it[i]`` (iteration label); ``order`` lists tasks by ``(prio, index)`` and ``rank[i]`` is task ``i``'s
  position in it, so a ready heap of ranks pops the best task;
- successors in CSR form (``succ_ptr``, ``succ``), one entry per listed dependency (a dependency
  listed twice is counted and released twice: same result as deduplicating), ``ndeps[i]``;
- allocations (``a_ptr``; ``a_buf``, ``a_pool``, ``a_bytes``, ``a_cls``), buffers numbered by name;
- needs per task (``nd_ptr``; ``nd_pool``, ``nd_bytes``): bytes asked per pool, pools in order of
  first appearance among the task's allocations;
- frees (``f_ptr``; ``f_buf``);
- memory at ``t = 0`` (``in_use0``, ``class0[P, C]``, ``live_pool0``/``live_bytes0``/``live_cls0``
  per buffer, pool ``-1`` when not live).
"""

from __future__ import annotations

from itertools import chain
from operator import attrgetter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simhete import cache
from simhete.engine import memory
from simhete.engine.inputs import bad_dep, check_alloc
from simhete.engine.rates import interference_matrix
from simhete.engine.timeline import OOMReport
from simhete.errors import SimheteError
from simhete.schedule import Schedule


@dataclass(eq=False)
class Indexed:
    oom: OOMReport | None                # initial buffers already overflow a pool: nothing to run
    pools: tuple[str, ...] = ()
    streams: tuple[str, ...] = ()
    buffers: tuple[str, ...] = ()
    cap: np.ndarray | None = None
    stream_of: np.ndarray | None = None
    it: np.ndarray | None = None
    order: np.ndarray | None = None
    rank: np.ndarray | None = None
    succ_ptr: np.ndarray | None = None
    succ: np.ndarray | None = None
    ndeps: np.ndarray | None = None
    a_ptr: np.ndarray | None = None
    a_buf: np.ndarray | None = None
    a_pool: np.ndarray | None = None
    a_bytes: np.ndarray | None = None
    a_cls: np.ndarray | None = None
    nd_ptr: np.ndarray | None = None
    nd_pool: np.ndarray | None = None
    nd_bytes: np.ndarray | None = None
    f_ptr: np.ndarray | None = None
    f_buf: np.ndarray | None = None
    in_use0: np.ndarray | None = None
    class0: np.ndarray | None = None
    live_pool0: np.ndarray | None = None
    live_bytes0: np.ndarray | None = None
    live_cls0: np.ndarray | None = None
    matrices: dict = field(default_factory=dict)     # interference rules -> (matrix, fluid)
    memo: dict | None = None                         # the structure index's (StructureIndex.memo)

    def interference(self, rules: tuple) -> tuple[np.ndarray, bool]:
        """The stream-by-stream slowdown matrix for ``rules`` and whether any factor is not 1."""
        got = self.matrices.get(rules)
        if got is None:
            got = self.matrices[rules] = _matrix(self.streams, rules)
        return got


def _matrix(streams: tuple, rules: tuple) -> tuple[np.ndarray, bool]:
    try:
        got = cache.MATRICES.get((streams, rules))
    except TypeError:                  # a rule that is not hashable: not kept
        got, key = None, None
    else:
        key = (streams, rules)
    if got is None:
        m = np.array(interference_matrix(streams, rules), dtype=np.float64).reshape(len(streams), len(streams))
        got = (m, bool((m != 1.0).any()))
        if key is not None:
            cache.MATRICES.keep(key, got)
    return got


def indexed(schedule: Schedule, rules: tuple = ()) -> Indexed:
    """The indexed form of ``schedule``, made on first call and kept on it (``schedule.derived``).
    ``rules`` are validated first, as the reference engine does."""
    derived = schedule.derived
    got = derived.get("engine.indexed")
    if got is None:
        got = derived["engine.indexed"] = _build(schedule, rules)
    return got


@dataclass(eq=False)
class StructureIndex:
    """What indexing derives from a schedule's *structure* alone — names, streams, priorities,
    iteration labels, dependencies, frees, which buffers each task allocates in which pool with
    which class, the initial buffers' names, pools and classes, the pool names.

    Sweep points that differ only in sizes (micro-batch, sequence length, hardware) are one
    :class:`~simhete.schedule.structure.Structure` bound to new sizes: their indexing reuses the
    arrays here (kept on that structure) and computes only what depends on bytes (allocation
    sizes, needs per pool, memory at ``t = 0``). Only structures that passed every static check
    are kept.
    """

    pools: tuple
    initial: list                     # (buf, pool, cls) per initial buffer
    initial_src: tuple                # the initial tuple it was derived from (identity: a quick yes)
    # derived arrays (shared by every Indexed of this structure; the loops never write to them)
    streams: tuple
    buffers: tuple
    matrices: dict
    stream_of: np.ndarray
    it: np.ndarray
    order: np.ndarray
    rank: np.ndarray
    succ_ptr: np.ndarray
    succ: np.ndarray
    ndeps: np.ndarray
    a_ptr: np.ndarray
    a_buf: np.ndarray
    a_pool: np.ndarray
    a_cls: np.ndarray
    nd_ptr: np.ndarray
    nd_pool: np.ndarray
    nd_perm: np.ndarray               # allocations sorted by their group (task, pool) in nd_pool's order
    nd_starts: np.ndarray             # where each group starts among them
    f_ptr: np.ndarray
    f_buf: np.ndarray
    live_pool0: np.ndarray
    live_cls0: np.ndarray
    init_buf: np.ndarray              # buffer id, pool id and class id of each initial buffer
    init_pool: np.ndarray
    init_cls: np.ndarray
    init_state: tuple | None = None   # (initial tuple, _initial_state of it): memory at t = 0
    # what depends on the structure alone and is derived on demand, shared by every schedule of it:
    # what reports derive from rows / streams / iterations of a run that finished every task
    # (timeline.Columns.memo)
    memo: dict = field(default_factory=dict)

    def same_memory_layout(self, schedule: Schedule) -> bool:
        """Whether ``schedule``'s pool names and initial buffers' names, pools and classes are
        those this index was made with (a structure's tables may differ there)."""
        return tuple(schedule.pools) == self.pools and (
            schedule.initial is self.initial_src or list(map(_INITIAL, schedule.initial)) == self.initial)


_BYTES = attrgetter("bytes")
_INITIAL = attrgetter("buf", "pool", "cls")


def _build(schedule: Schedule, rules: tuple) -> Indexed:
    # The schedule's table (one list per Task field) is read column by column: no attribute reads
    # of Task objects.
    early = _early_overflow(schedule)
    if early is not None:
        return early
    tb = schedule.table
    own = tb.structure
    if own is not None:
        # a table bound from a structure: the structure's index, when made, serves every table
        # bound from it; pools and initial buffers are the schedule's own, checked
        st = own.derived.get("engine.index")
        if st is not None and st.same_memory_layout(schedule):
            return _reuse(st, schedule, tb.alloc_bytes_array(), rules)
        # the structure's allocations in task order: the table's buffers, pools and classes (their
        # bytes are the build's; the table's own are alloc_bytes_array), with no Alloc made
        flat, n_alloc_col = own.flat, np.diff(np.array(own.a_ptr, dtype=np.int64)).tolist()
        a_bytes = tb.alloc_bytes_array()
    else:
        flat, n_alloc_col = list(chain.from_iterable(tb.allocs)), None
        a_bytes = np.fromiter(map(_BYTES, flat), np.int64, len(flat))
    st = _structure(schedule, flat, a_bytes, n_alloc_col)
    if not isinstance(st, StructureIndex):
        return st                     # initial buffers overflow: nothing to run
    if own is not None:
        own.derived["engine.index"] = st
    return _sized(st, schedule, a_bytes, rules)


def _reuse(st: StructureIndex, schedule: Schedule, a_bytes: Any, rules: tuple) -> Indexed:
    """A schedule of a structure that passed every check: only the size-dependent checks remain,
    in the reference's order (initial buffers overflowing a pool, then a negative allocation)."""
    init = _initial_state(st, schedule)
    cap = np.array([schedule.pools[p] for p in st.pools], dtype=np.int64)
    if (init[1] > cap).any():
        return Indexed(memory.initial_overflow(schedule))
    a_bytes = np.asarray(a_bytes, dtype=np.int64)
    if len(a_bytes) and a_bytes.min() < 0:
        _raise_first_error(schedule.tasks, schedule.index(), {p: k for k, p in enumerate(schedule.pools)})
    return _sized(st, schedule, a_bytes, rules, init, cap)


def _initial_state(st: StructureIndex, schedule: Schedule) -> tuple:
    """(class0, in_use0, live_bytes0): memory at ``t = 0`` of ``schedule``'s initial buffers (of
    structure ``st``). Points of one structure often share their initial buffers (the same tuple
    object), so the state is kept per structure for the tuple it was derived from."""
    initial = schedule.initial
    got = st.init_state
    if got is not None and got[0] is initial:
        return got[1]
    i64 = np.int64
    init_bytes = np.fromiter(map(_BYTES, initial), i64, len(initial))
    class0 = np.zeros((len(st.pools), len(memory.CLASSES)), dtype=i64)
    np.add.at(class0, (st.init_pool, st.init_cls), init_bytes)
    live_bytes = np.zeros(len(st.buffers), dtype=i64)
    live_bytes[st.init_buf] = init_bytes
    state = (class0, class0.sum(axis=1), live_bytes)
    st.init_state = (initial, state)       # holds the tuple it compares by ``is``
    return state


def _early_overflow(schedule: Schedule) -> Indexed | None:
    """The reference engine's first checks need no indexing: unique task names, known pools of the
    initial buffers, then the initial buffers against the pools. A schedule that passes the first
    two and fails the third (a sweep point whose model states alone exceed a GPU) is answered
    here, without indexing its structure; ``None`` for every other schedule, which
    :func:`_structure` checks in full (a duplicate name or unknown pool is reported from there, in
    the reference's order)."""
    pools = schedule.pools
    held = dict.fromkeys(pools, 0)
    for a in schedule.initial:
        if a.pool not in held:
            return None
        held[a.pool] += a.bytes
    if all(held[p] <= c for p, c in pools.items()):
        return None
    if not _unique_names(schedule.table):
        return None
    return Indexed(memory.initial_overflow(schedule))


def _unique_names(tb: Any) -> bool:
    """Whether the table's task names are distinct: a property of its structure, kept on it."""
    own = tb.structure
    got = None if own is None else own.derived.get("engine.unique_names")
    if got is None:
        got = len(set(tb.name)) == len(tb.name)
        if own is not None:
            own.derived["engine.unique_names"] = got
    return got


def _initial_overflow(schedule: Schedule) -> OOMReport | None:
    held = dict.fromkeys(schedule.pools, 0)
    for a in schedule.initial:
        held[a.pool] += a.bytes
    if any(held[p] > c for p, c in schedule.pools.items()):
        return memory.initial_overflow(schedule)
    return None


def _structure(schedule: Schedule, flat: Any, a_bytes: np.ndarray,
               n_alloc_col: list | None = None) -> StructureIndex | Indexed:
    """Index the structure, making every static check in the reference engine's order (an Indexed
    with an OOM report when the initial buffers already overflow a pool). ``flat``: the
    allocations in task order (their buffers, pools and classes are read), ``a_bytes`` their
    bytes (int64), ``n_alloc_col`` how many each task makes (``None``: counted from the table)."""
    tb = schedule.table
    names = tb.name
    n = len(names)
    index = dict(zip(names, range(n)))
    if len(index) != n:
        dup = next(name for k, name in enumerate(names) if index[name] != k)
        raise SimheteError(f"duplicate task name {dup}")
    for a in schedule.initial:
        if a.pool not in schedule.pools:
            raise SimheteError(f"initial buffer {a.buf}: unknown pool {a.pool!r}")
    oom = _initial_overflow(schedule)
    if oom is not None:
        return Indexed(oom)
    pools = tuple(schedule.pools)
    stream_names = tb.stream
    streams = tuple(dict.fromkeys(stream_names))

    i64 = np.int64
    n_pools = len(pools)
    pool_id = {p: k for k, p in enumerate(pools)}
    stream_id = {s: k for k, s in enumerate(streams)}
    # one flat sequence per kind of item, in task order; per-task counts become CSR pointers
    deps = tb.deps
    ndeps = np.fromiter(map(len, deps), i64, n)
    a_pools = [a.pool for a in flat]
    a_pool = list(map(pool_id.get, a_pools))
    try:
        parent = np.fromiter(map(index.__getitem__, chain.from_iterable(deps)), i64, int(ndeps.sum()))
    except KeyError:
        parent = None
    if parent is None or None in a_pool or (len(a_bytes) and a_bytes.min() < 0):
        _raise_first_error(schedule.tasks, index, pool_id)
    frees = tb.frees
    f_names = list(chain.from_iterable(frees))
    a_names = [a.buf for a in flat]
    bufs = dict.fromkeys(a_names + f_names + [a.buf for a in schedule.initial])
    buf_id = dict(zip(bufs, range(len(bufs))))
    if n_alloc_col is None:
        n_alloc_col = list(map(len, tb.allocs))
    n_alloc = np.array(n_alloc_col, dtype=i64)
    a_pool = np.array(a_pool, dtype=i64)
    # needs: bytes per (task, pool), pools in order of first appearance among the task's allocs
    # (a task's allocs are contiguous, so ordering groups by first alloc keeps tasks in order)
    key = np.repeat(np.arange(n, dtype=i64), n_alloc) * n_pools + a_pool
    groups, first, member = _groups(key)
    by_first = np.argsort(first, kind="stable")
    # allocations grouped in nd_pool's order (group g of nd_pool is groups[by_first[g]]), stably
    pos_of_group = np.empty(len(groups), dtype=i64)
    pos_of_group[by_first] = np.arange(len(groups), dtype=i64)
    nd_perm = np.argsort(pos_of_group[member], kind="stable")
    nd_starts = _ptr(np.bincount(pos_of_group[member], minlength=len(groups)))[:-1]

    # who holds what at t = 0 (the bytes are the schedule's: see _sized)
    cls_of = memory.CLASS_INDEX
    nb = len(buf_id)
    live_pool, live_cls = [-1] * nb, [0] * nb
    init_buf, init_pool, init_cls = [], [], []
    for a in schedule.initial:
        b = buf_id[a.buf]
        if live_pool[b] >= 0:
            raise memory.double_alloc("initial", a.buf)
        p, c = pool_id[a.pool], cls_of[a.cls]
        live_pool[b], live_cls[b] = p, c
        init_buf.append(b)
        init_pool.append(p)
        init_cls.append(c)

    order = np.argsort(np.fromiter(tb.prio, i64, n), kind="stable")
    rank = np.empty(n, dtype=i64)
    rank[order] = np.arange(n, dtype=i64)
    flat_cls = [a.cls for a in flat]
    initial = list(map(_INITIAL, schedule.initial))
    stream_of = np.fromiter(map(stream_id.__getitem__, stream_names), i64, n)
    it = np.fromiter(tb.it, i64, n)
    succ_ptr = _ptr(np.bincount(parent, minlength=n))
    succ = np.repeat(np.arange(n, dtype=i64), ndeps)[np.argsort(parent, kind="stable")]
    a_buf = np.fromiter(map(buf_id.__getitem__, a_names), i64, len(a_names))
    cls_id = {c._name_: k for k, c in enumerate(memory.CLASSES)}    # str keys: an Enum's hash is slow
    a_cls = np.fromiter(map(cls_id.__getitem__, [c._name_ for c in flat_cls]), i64, len(flat))
    nd_ptr = _ptr(np.bincount(groups // n_pools, minlength=n))
    f_ptr = _ptr(np.fromiter(map(len, frees), i64, n))
    f_buf = np.fromiter(map(buf_id.__getitem__, f_names), i64, len(f_names))
    return StructureIndex(
        pools=pools, initial=initial, initial_src=schedule.initial,
        streams=streams, buffers=tuple(buf_id), matrices={},
        stream_of=stream_of, it=it, order=order, rank=rank, succ_ptr=succ_ptr, succ=succ,
        ndeps=ndeps, a_ptr=_ptr(n_alloc), a_buf=a_buf, a_pool=a_pool, a_cls=a_cls,
        nd_ptr=nd_ptr, nd_pool=(groups % n_pools)[by_first], nd_perm=nd_perm, nd_starts=nd_starts,
        f_ptr=f_ptr, f_buf=f_buf,
        live_pool0=np.array(live_pool, i64), live_cls0=np.array(live_cls, i64),
        init_buf=np.array(init_buf, i64), init_pool=np.array(init_pool, i64),
        init_cls=np.array(init_cls, i64))


def _sized(st: StructureIndex, schedule: Schedule, a_bytes: Any, rules: tuple, init: tuple | None = None,
           cap: np.ndarray | None = None) -> Indexed:
    """The Indexed form of ``schedule`` (of structure ``st``): the structure's arrays plus what
    depends on bytes (``init``, ``cap``: :func:`_initial_state` and the capacities, when known)."""
    i64 = np.int64
    ix = Indexed(None, st.pools, st.streams, st.buffers)
    ix.matrices, ix.memo = st.matrices, st.memo
    ix.interference(rules)
    ix.cap = cap if cap is not None else np.array([schedule.pools[p] for p in st.pools], dtype=i64)
    for f in ("stream_of", "it", "order", "rank", "succ_ptr", "succ", "ndeps", "a_ptr", "a_buf",
              "a_pool", "a_cls", "nd_ptr", "nd_pool", "f_ptr", "f_buf", "live_pool0", "live_cls0"):
        setattr(ix, f, getattr(st, f))
    ix.a_bytes = a_bytes = np.asarray(a_bytes, dtype=i64)
    # bytes asked per (task, pool) group, in nd_pool's order: the allocations sorted by group, summed
    # per run of equal groups (integer sums; every group has an allocation)
    ix.nd_bytes = np.add.reduceat(a_bytes[st.nd_perm], st.nd_starts) if len(a_bytes) else np.zeros(0, i64)
    ix.class0, ix.in_use0, ix.live_bytes0 = init if init is not None else _initial_state(st, schedule)
    return ix


def _groups(key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(key, return_index=True, return_inverse=True)`` (the distinct values ascending,
    the first position of each, each element's group), by one stable argsort."""
    perm = np.argsort(key, kind="stable")
    sk = key[perm]
    new = np.empty(len(sk), dtype=bool)
    new[:1] = True
    np.not_equal(sk[1:], sk[:-1], out=new[1:])
    member = np.empty(len(sk), dtype=np.int64)
    member[perm] = np.cumsum(new) - 1
    return sk[new], perm[new], member


def _ptr(counts) -> np.ndarray:
    """CSR pointers: ``ptr[i]:ptr[i + 1]`` are item i's entries."""
    ptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr


def _raise_first_error(tasks, index: dict[str, int], pool_id: dict[str, int]) -> None:
    """Raise the error the reference engine reports first: tasks in order, dependencies first."""
    for t in tasks:
        if any(d not in index for d in t.deps):
            raise bad_dep(t, index)
        for a in t.allocs:
            check_alloc(t, a, pool_id)
    raise AssertionError("no bad dependency or allocation found")   # unreachable by construction

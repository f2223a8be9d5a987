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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simhete import cache
from simhete.engine import memory
from simhete.engine.rates import interference_matrix
from simhete.engine.structure_index import ALLOC_BYTES, StructureIndex, index_structure, raise_first_error
from simhete.engine.timeline import OOMReport
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
        a_bytes = np.fromiter(map(ALLOC_BYTES, flat), np.int64, len(flat))
    st = index_structure(schedule, flat, a_bytes, n_alloc_col)
    if not isinstance(st, StructureIndex):
        return Indexed(st)            # initial buffers overflow: nothing to run
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
        raise_first_error(schedule.tasks, schedule.index(), {p: k for k, p in enumerate(schedule.pools)})
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
    init_bytes = np.fromiter(map(ALLOC_BYTES, initial), i64, len(initial))
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
    :func:`~simhete.engine.structure_index.index_structure` checks in full (a duplicate name or
    unknown pool is reported from there, in the reference's order)."""
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

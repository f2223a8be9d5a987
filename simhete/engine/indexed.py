"""A Schedule as flat integer arrays for the compiled loop, made with every static check of the SimPy
reference, in its order (:mod:`simhete.engine.inputs`).

What indexing derives is kept where it belongs:

- :class:`StructureIndex`: what depends on the schedule's *structure* alone (task names numbered,
  streams, priorities, iteration labels, dependencies, frees, which buffer each allocation makes in
  which pool and class, the initial buffers' names, pools and classes). Sweep points that differ
  only in sizes (micro-batch, sequence length, hardware) are one
  :class:`~simhete.schedule.structure.Structure` bound to new sizes (every policy's schedule is),
  so it is kept on that structure (``structure.derived["engine.index"]``) and serves every
  schedule bound from it whose pools and initial buffers' names, pools and classes are the same.
  Only indexes that passed every check are kept. A schedule made from Task objects (the text form,
  tests) has no structure to share and is indexed on its own.
- :class:`Indexed`: that plus what depends on bytes (allocation and initial buffer sizes,
  capacities), kept on the schedule (``schedule.derived["engine.indexed"]``): re-pricing one
  schedule with new durations (a hardware sweep) indexes it once. It dies with the schedule; a copy
  or an unpickled schedule starts without it. A schedule that fails a check keeps nothing, so the
  same error is raised on every call.

The loop derives the rest itself (the bytes each task asks per pool, the memory at ``t = 0``).
Tables are read column by column (``schedule.table``), never Task by Task, and a bound table's
allocation bytes are its int64 array (``TaskTable.alloc_bytes_array``): no Alloc object is made.

Layout (``n`` tasks), int64 numpy arrays: ``stream_of[i]``, ``it[i]`` (iteration label);
``order`` lists the tasks by ``(prio, index)`` and ``rank[i]`` is task ``i``'s position in it, so a
ready heap of ranks pops the best task; successors in CSR form (``succ_ptr``, ``succ``: one entry per listed dependency, so a
dependency listed twice is counted and released twice, the same result as deduplicating) and
``ndeps[i]``; allocations (``a_ptr``; ``a_buf``, ``a_pool``, ``a_cls``, ``a_bytes``), buffers
numbered by name; frees (``f_ptr``; ``f_buf``); initial buffers (``init_buf``, ``init_pool``,
``init_cls``, ``init_bytes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter
from typing import Any

import numpy as np

from simhete import cache
from simhete.engine import memory
from simhete.engine.inputs import check_initial_pools, check_names, check_task
from simhete.engine.rates import interference_matrix
from simhete.engine.timeline import OOMReport
from simhete.schedule import Schedule

_BYTES = attrgetter("bytes")
_INITIAL = attrgetter("buf", "pool", "cls")


@dataclass(eq=False)
class StructureIndex:
    """What indexing derives from a schedule's structure alone (module docstring); the arrays are
    shared by every schedule of the structure and the loop never writes to them."""

    pools: tuple[str, ...]
    initial: list                     # (buf, pool, cls) per initial buffer
    initial_src: tuple                # the initial tuple it was made from (identity: a quick yes)
    streams: tuple[str, ...]
    buffers: tuple[str, ...]
    stream_of: np.ndarray
    it: np.ndarray
    order: np.ndarray                 # the tasks by (prio, index); rank[i]: task i's position in it
    rank: np.ndarray
    succ_ptr: np.ndarray
    succ: np.ndarray
    ndeps: np.ndarray
    a_ptr: np.ndarray
    a_buf: np.ndarray
    a_pool: np.ndarray
    a_cls: np.ndarray
    f_ptr: np.ndarray
    f_buf: np.ndarray
    init_buf: np.ndarray
    init_pool: np.ndarray
    init_cls: np.ndarray
    # what reports derive from the rows, streams and iterations of a run that finished every task
    # (timeline.Columns.memo), shared by every schedule of the structure
    memo: dict = field(default_factory=dict)

    def same_memory_layout(self, schedule: Schedule) -> bool:
        """Whether ``schedule``'s pool names and initial buffers' names, pools and classes are
        those this index was made with (a structure's tables may differ there)."""
        return tuple(schedule.pools) == self.pools and (
            schedule.initial is self.initial_src or list(map(_INITIAL, schedule.initial)) == self.initial)


@dataclass(eq=False)
class Indexed:
    """One schedule's indexed form: its structure's index and its bytes; only ``oom`` where the
    initial buffers already overflow a pool (nothing runs)."""

    oom: OOMReport | None
    st: StructureIndex | None = None
    a_bytes: np.ndarray | None = None
    init_bytes: np.ndarray | None = None
    cap: np.ndarray | None = None     # per pool, in st.pools order


def indexed(schedule: Schedule, rules: tuple = ()) -> Indexed:
    """The indexed form of ``schedule``, made on first call and kept on it (``schedule.derived``).
    ``rules`` (interference) are checked where the reference engine checks them."""
    derived = schedule.derived
    got = derived.get("engine.indexed")
    if got is None:
        got = derived["engine.indexed"] = _index(schedule, rules)
    return got


def _index(schedule: Schedule, rules: tuple) -> Indexed:
    tb = schedule.table
    own = tb.structure
    st = None if own is None else own.derived.get("engine.index")
    if st is not None and not st.same_memory_layout(schedule):
        st = None
    if st is None:     # a kept index passed these checks
        _check_names(tb)
        check_initial_pools(schedule)
    # a sweep point whose model states alone exceed a GPU is answered here, before any indexing
    oom = memory.initial_overflow(schedule)
    if oom is not None:
        return Indexed(oom)
    streams = st.streams if st is not None else tuple(dict.fromkeys(tb.stream))
    slowdown_matrix(streams, rules)      # the rules are checked here, as the reference does
    a_bytes = tb.alloc_bytes_array()
    if len(a_bytes) and a_bytes.min() < 0:
        _raise_first_error(schedule)
    if st is None:
        st = _index_structure(schedule, streams)
        if own is not None:
            own.derived["engine.index"] = st
    initial = schedule.initial
    return Indexed(None, st, a_bytes, np.fromiter(map(_BYTES, initial), np.int64, len(initial)),
                   np.fromiter(schedule.pools.values(), np.int64, len(st.pools)))


def _check_names(tb: Any) -> None:
    """:func:`~simhete.engine.inputs.check_names`: a property of the table's structure, so made
    once per structure (a structure none of whose points fits is never indexed)."""
    own = tb.structure
    if own is None or not own.derived.get("engine.unique_names"):
        check_names(tb.name)
        if own is not None:
            own.derived["engine.unique_names"] = True


def _raise_first_error(schedule: Schedule) -> None:
    """Raise the error the reference engine reports first among the tasks: in task order, a bad
    dependency or allocation (:func:`~simhete.engine.inputs.check_task`)."""
    index = schedule.index()
    for t in schedule.tasks:
        check_task(t, index, schedule.pools)
    raise AssertionError("no bad dependency or allocation found")   # unreachable by construction


def _index_structure(schedule: Schedule, streams: tuple) -> StructureIndex:
    """The structure's index; the first bad dependency or allocation pool is raised (in the
    reference's order), then an initial buffer listed twice."""
    i64 = np.int64
    tb = schedule.table
    names, own = tb.name, tb.structure
    n = len(names)
    if own is not None:   # the structure's allocations: their buffers, pools and classes are the table's
        flat, a_ptr = own.flat, np.array(own.a_ptr, dtype=i64)
    else:
        flat, a_ptr = list(chain.from_iterable(tb.allocs)), _ptr(np.fromiter(map(len, tb.allocs), i64, n))
    pools = tuple(schedule.pools)
    pool_id = dict(zip(pools, range(len(pools))))
    a_pool = list(map(pool_id.get, [a.pool for a in flat]))
    index = dict(zip(names, range(n)))
    ndeps = np.fromiter(map(len, tb.deps), i64, n)
    try:
        parent = np.fromiter(map(index.__getitem__, chain.from_iterable(tb.deps)), i64, int(ndeps.sum()))
    except KeyError:
        parent = None
    if parent is None or None in a_pool:
        _raise_first_error(schedule)
    initial = list(map(_INITIAL, schedule.initial))
    seen: set[str] = set()
    for b, _, _ in initial:
        if b in seen:
            raise memory.double_alloc("initial", b)
        seen.add(b)
    a_names, f_names = [a.buf for a in flat], list(chain.from_iterable(tb.frees))
    buffers = tuple(dict.fromkeys(a_names + f_names + [b for b, _, _ in initial]))
    buf_id = dict(zip(buffers, range(len(buffers))))
    stream_id = dict(zip(streams, range(len(streams))))
    cls_id = {c._name_: k for k, c in enumerate(memory.CLASSES)}    # str keys: an Enum's hash is slow
    order = np.argsort(np.fromiter(tb.prio, i64, n), kind="stable")
    rank = np.empty(n, dtype=i64)
    rank[order] = np.arange(n, dtype=i64)
    return StructureIndex(
        pools=pools, initial=initial, initial_src=schedule.initial, streams=streams, buffers=buffers,
        stream_of=_ids(stream_id, tb.stream), it=np.fromiter(tb.it, i64, n), order=order, rank=rank,
        succ_ptr=_ptr(np.bincount(parent, minlength=n)),
        succ=np.repeat(np.arange(n, dtype=i64), ndeps)[np.argsort(parent, kind="stable")], ndeps=ndeps,
        a_ptr=a_ptr, a_buf=_ids(buf_id, a_names), a_pool=np.array(a_pool, dtype=i64),
        a_cls=_ids(cls_id, [a.cls._name_ for a in flat]),
        f_ptr=_ptr(np.fromiter(map(len, tb.frees), i64, n)), f_buf=_ids(buf_id, f_names),
        init_buf=_ids(buf_id, [b for b, _, _ in initial]), init_pool=_ids(pool_id, [p for _, p, _ in initial]),
        init_cls=_ids(cls_id, [c._name_ for _, _, c in initial]))


def _ids(ids: dict, keys: list) -> np.ndarray:
    """``ids[k]`` for every ``k`` in ``keys``, as an int64 array."""
    return np.fromiter(map(ids.__getitem__, keys), np.int64, len(keys))


def _ptr(counts: np.ndarray) -> np.ndarray:
    """CSR pointers: ``ptr[i]:ptr[i + 1]`` are item i's entries."""
    ptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr


def slowdown_matrix(streams: tuple, rules: tuple) -> np.ndarray:
    """The stream-by-stream slowdown matrix of ``rules``
    (:func:`~simhete.engine.rates.interference_matrix`, which checks them), kept by content in
    :mod:`simhete.cache`."""
    key = (streams, rules)
    try:
        got = cache.MATRICES.get(key)
    except TypeError:                  # a rule that is not hashable: not kept
        got = key = None
    if got is None:
        got = np.array(interference_matrix(streams, rules), dtype=np.float64).reshape(len(streams), len(streams))
        if key is not None:
            cache.MATRICES.keep(key, got)
    return got

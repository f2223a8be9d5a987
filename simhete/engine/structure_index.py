"""What indexing derives from a schedule's *structure* alone, made once per structure.

Sweep points that differ only in sizes (micro-batch, sequence length, hardware) are one
:class:`~simhete.schedule.structure.Structure` bound to new sizes (every policy's schedule is):
:func:`index_structure` makes the size-independent arrays of such a schedule — names numbered,
streams, priorities, dependencies in CSR form, frees, which buffer each allocation makes in which
pool and class, the initial buffers' layout — making every static check of the SimPy reference
engine in its order, and :mod:`simhete.engine.indexed` keeps the result on the structure and adds
what depends on bytes for each schedule bound from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter
from typing import Any

import numpy as np

from simhete.engine import memory
from simhete.engine.inputs import check_task
from simhete.engine.timeline import OOMReport
from simhete.errors import SimheteError
from simhete.schedule import Schedule


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


ALLOC_BYTES = attrgetter("bytes")
_INITIAL = attrgetter("buf", "pool", "cls")



def _initial_overflow(schedule: Schedule) -> OOMReport | None:
    held = dict.fromkeys(schedule.pools, 0)
    for a in schedule.initial:
        held[a.pool] += a.bytes
    if any(held[p] > c for p, c in schedule.pools.items()):
        return memory.initial_overflow(schedule)
    return None


def index_structure(schedule: Schedule, flat: Any, a_bytes: np.ndarray,
                    n_alloc_col: list | None = None) -> StructureIndex | OOMReport:
    """Index the structure, making every static check in the reference engine's order (an Indexed
    OOM report when the initial buffers already overflow a pool). ``flat``: the
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
        return oom
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
        raise_first_error(schedule.tasks, index, pool_id)
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


def raise_first_error(tasks, index: dict[str, int], pool_id: dict[str, int]) -> None:
    """Raise the error the reference engine reports first: tasks in order, dependencies first."""
    for t in tasks:
        check_task(t, index, pool_id)
    raise AssertionError("no bad dependency or allocation found")   # unreachable by construction

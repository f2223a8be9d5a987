"""A Schedule as flat integer arrays, built once per Schedule object and cached.

Schedules are immutable, so a sweep that re-prices one schedule under many hardware profiles (new
durations, same tasks) pays for this indexing once. Every static check the engines make on a
schedule happens here, in the order the SimPy reference makes them (docs/engine.md, Errors); a
schedule that fails a check is not cached, so the same error is raised on every call.

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

from collections import OrderedDict
from itertools import chain
from dataclasses import dataclass, field

import numpy as np

from simhete.engine import memory
from simhete.engine.inputs import bad_dep, check_alloc
from simhete.engine.rates import interference_matrix
from simhete.engine.timeline import OOMReport
from simhete.errors import SimheteError
from simhete.schedule import Schedule

CACHE_SIZE = 8          # schedules kept indexed (LRU); a sweep point re-priced many times hits one


@dataclass(eq=False)
class Indexed:
    schedule: Schedule
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
    lists: tuple | None = None                       # list form for the pure-Python loop

    def interference(self, rules: tuple) -> tuple[np.ndarray, bool]:
        """The stream-by-stream slowdown matrix for ``rules`` and whether any factor is not 1."""
        got = self.matrices.get(rules)
        if got is None:
            m = np.array(interference_matrix(self.streams, rules), dtype=np.float64).reshape(
                len(self.streams), len(self.streams))
            got = self.matrices[rules] = (m, bool((m != 1.0).any()))
        return got


_CACHE: OrderedDict[int, Indexed] = OrderedDict()


def indexed(schedule: Schedule, rules: tuple = ()) -> Indexed:
    """The cached indexed form of ``schedule`` (the entry keeps the schedule alive, so its id is
    not reused while cached). ``rules`` are validated first, as the reference engine does."""
    got = _CACHE.get(id(schedule))
    if got is not None and got.schedule is schedule:
        _CACHE.move_to_end(id(schedule))
        return got
    got = _build(schedule, rules)
    _CACHE[id(schedule)] = got
    if len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return got


def _build(schedule: Schedule, rules: tuple) -> Indexed:
    # The schedule's table (one list per Task field; a policy's Builder fills it as it adds tasks)
    # is read column by column: no attribute reads of Task objects.
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
    held = dict.fromkeys(schedule.pools, 0)
    for a in schedule.initial:
        held[a.pool] += a.bytes
    if any(held[p] > c for p, c in schedule.pools.items()):
        return Indexed(schedule, memory.initial_overflow(schedule))
    pools = tuple(schedule.pools)
    stream_names = tb.stream
    streams = tuple(dict.fromkeys(stream_names))
    ix = Indexed(schedule, None, pools, streams)
    ix.interference(rules)

    i64 = np.int64
    n_pools = len(pools)
    pool_id = {p: k for k, p in enumerate(pools)}
    stream_id = {s: k for k, s in enumerate(streams)}
    # one flat sequence per kind of item, in task order; per-task counts become CSR pointers
    deps = tb.deps
    ndeps = np.fromiter(map(len, deps), i64, n)
    allocs = tb.allocs
    flat = list(chain.from_iterable(allocs))
    a_pool = list(map(pool_id.get, [a.pool for a in flat]))
    a_bytes = [a.bytes for a in flat]
    try:
        parent = np.fromiter(map(index.__getitem__, chain.from_iterable(deps)), i64, int(ndeps.sum()))
    except KeyError:
        parent = None
    if parent is None or None in a_pool or (a_bytes and min(a_bytes) < 0):
        _raise_first_error(schedule.tasks, index, pool_id)
    frees = tb.frees
    f_names = list(chain.from_iterable(frees))
    a_names = [a.buf for a in flat]
    bufs = dict.fromkeys(a_names + f_names + [a.buf for a in schedule.initial])
    buf_id = dict(zip(bufs, range(len(bufs))))
    n_alloc = np.fromiter(map(len, allocs), i64, n)
    a_pool, a_bytes = np.array(a_pool, dtype=i64), np.array(a_bytes, dtype=i64)
    # needs: bytes per (task, pool), pools in order of first appearance among the task's allocs
    # (a task's allocs are contiguous, so ordering groups by first alloc keeps tasks in order)
    key = np.repeat(np.arange(n, dtype=i64), n_alloc) * n_pools + a_pool
    groups, first, member = np.unique(key, return_index=True, return_inverse=True)
    need = np.zeros(len(groups), dtype=i64)
    np.add.at(need, member, a_bytes)
    by_first = np.argsort(first, kind="stable")

    # memory at t = 0
    cls_of = memory.CLASS_INDEX
    nb = len(buf_id)
    live_pool, live_bytes, live_cls = [-1] * nb, [0] * nb, [0] * nb
    in_use = [0] * n_pools
    class0 = np.zeros((n_pools, len(memory.CLASSES)), dtype=i64)
    for a in schedule.initial:
        b = buf_id[a.buf]
        if live_pool[b] >= 0:
            raise memory.double_alloc("initial", a.buf)
        p, c = pool_id[a.pool], cls_of[a.cls]
        live_pool[b], live_bytes[b], live_cls[b] = p, a.bytes, c
        in_use[p] += a.bytes
        class0[p, c] += a.bytes

    ix.buffers = tuple(buf_id)
    ix.cap = np.array([schedule.pools[p] for p in pools], dtype=i64)
    ix.stream_of = np.fromiter(map(stream_id.__getitem__, stream_names), i64, n)
    ix.it = np.fromiter(tb.it, i64, n)
    ix.order = np.argsort(np.fromiter(tb.prio, i64, n), kind="stable")
    ix.rank = np.empty(n, dtype=i64)
    ix.rank[ix.order] = np.arange(n, dtype=i64)
    ix.ndeps = ndeps
    ix.succ = np.repeat(np.arange(n, dtype=i64), ndeps)[np.argsort(parent, kind="stable")]
    ix.succ_ptr = _ptr(np.bincount(parent, minlength=n))
    ix.a_ptr, ix.a_pool, ix.a_bytes = _ptr(n_alloc), a_pool, a_bytes
    ix.a_buf = np.fromiter(map(buf_id.__getitem__, a_names), i64, len(a_names))
    cls_id = {c._name_: k for k, c in enumerate(memory.CLASSES)}    # str keys: an Enum's hash is slow
    ix.a_cls = np.fromiter(map(cls_id.__getitem__, [a.cls._name_ for a in flat]), i64, len(flat))
    ix.nd_ptr = _ptr(np.bincount(groups // n_pools, minlength=n))
    ix.nd_pool, ix.nd_bytes = (groups % n_pools)[by_first], need[by_first]
    ix.f_ptr = _ptr(np.fromiter(map(len, frees), i64, n))
    ix.f_buf = np.fromiter(map(buf_id.__getitem__, f_names), i64, len(f_names))
    ix.in_use0, ix.class0 = np.array(in_use, dtype=i64), class0
    ix.live_pool0, ix.live_bytes0 = np.array(live_pool, i64), np.array(live_bytes, i64)
    ix.live_cls0 = np.array(live_cls, i64)
    return ix


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

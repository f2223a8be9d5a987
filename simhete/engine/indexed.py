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
    tasks = schedule.tasks
    n = len(tasks)
    names = [t.name for t in tasks]
    index = dict(zip(names, range(n)))
    if len(index) != n:
        dup = next(t.name for k, t in enumerate(tasks) if index[t.name] != k)
        raise SimheteError(f"duplicate task name {dup}")
    for a in schedule.initial:
        if a.pool not in schedule.pools:
            raise SimheteError(f"initial buffer {a.buf}: unknown pool {a.pool!r}")
    oom = memory.initial_overflow(schedule)
    if oom is not None:
        return Indexed(schedule, oom)
    pools = tuple(schedule.pools)
    streams = tuple(dict.fromkeys(t.stream for t in tasks))
    ix = Indexed(schedule, None, pools, streams)
    ix.interference(rules)

    pool_id = {p: k for k, p in enumerate(pools)}
    stream_id = {s: k for k, s in enumerate(streams)}
    cls_of = memory.CLASS_INDEX
    buf_id: dict[str, int] = {}
    parent: list[int] = []              # one entry per dependency edge
    child: list[int] = []
    ndeps = [0] * n
    a_ptr, a_buf, a_pool, a_bytes, a_cls = [0] * (n + 1), [], [], [], []
    nd_ptr, nd_pool, nd_bytes = [0] * (n + 1), [], []
    f_ptr, f_buf = [0] * (n + 1), []
    for i, t in enumerate(tasks):
        deps = t.deps
        if deps:
            ndeps[i] = len(deps)
            try:
                parent.extend([index[d] for d in deps])
            except KeyError:
                raise bad_dep(t, index) from None
            child.extend([i] * len(deps))
        if t.allocs:
            need: dict[int, int] = {}
            for a in t.allocs:
                p = pool_id.get(a.pool)
                if p is None or a.bytes < 0:
                    check_alloc(t, a, pool_id)
                b = buf_id.setdefault(a.buf, len(buf_id))
                a_buf.append(b)
                a_pool.append(p)
                a_bytes.append(a.bytes)
                a_cls.append(cls_of[a.cls])
                need[p] = need.get(p, 0) + a.bytes
            nd_pool.extend(need)
            nd_bytes.extend(need.values())
        if t.frees:
            f_buf.extend([buf_id.setdefault(b, len(buf_id)) for b in t.frees])
        a_ptr[i + 1], nd_ptr[i + 1], f_ptr[i + 1] = len(a_buf), len(nd_pool), len(f_buf)

    # memory at t = 0
    for a in schedule.initial:
        buf_id.setdefault(a.buf, len(buf_id))
    nb = len(buf_id)
    live_pool, live_bytes, live_cls = [-1] * nb, [0] * nb, [0] * nb
    in_use = [0] * len(pools)
    class0 = np.zeros((len(pools), len(memory.CLASSES)), dtype=np.int64)
    for a in schedule.initial:
        b = buf_id[a.buf]
        if live_pool[b] >= 0:
            raise memory.double_alloc("initial", a.buf)
        p, c = pool_id[a.pool], cls_of[a.cls]
        live_pool[b], live_bytes[b], live_cls[b] = p, a.bytes, c
        in_use[p] += a.bytes
        class0[p, c] += a.bytes

    i64, i32 = np.int64, np.int32
    parent_a = np.array(parent, dtype=i64)
    by_parent = np.argsort(parent_a, kind="stable")
    ix.buffers = tuple(buf_id)
    ix.cap = np.array([schedule.pools[p] for p in pools], dtype=i64)
    ix.stream_of = np.array([stream_id[t.stream] for t in tasks], dtype=i64)
    ix.it = np.array([t.it for t in tasks], dtype=i64)
    ix.order = np.argsort(np.array([t.prio for t in tasks], dtype=i64), kind="stable").astype(i64)
    ix.rank = np.empty(n, dtype=i64)
    ix.rank[ix.order] = np.arange(n, dtype=i64)
    ix.succ = np.array(child, dtype=i64)[by_parent]
    ix.succ_ptr = np.zeros(n + 1, dtype=i64)
    np.cumsum(np.bincount(parent_a, minlength=n), out=ix.succ_ptr[1:])
    ix.ndeps = np.array(ndeps, dtype=i64)
    ix.a_ptr, ix.a_buf, ix.a_pool = np.array(a_ptr, i64), np.array(a_buf, i64), np.array(a_pool, i64)
    ix.a_bytes, ix.a_cls = np.array(a_bytes, i64), np.array(a_cls, i64)
    ix.nd_ptr, ix.nd_pool, ix.nd_bytes = np.array(nd_ptr, i64), np.array(nd_pool, i64), np.array(nd_bytes, i64)
    ix.f_ptr, ix.f_buf = np.array(f_ptr, i64), np.array(f_buf, i64)
    ix.in_use0, ix.class0 = np.array(in_use, dtype=i64), class0
    ix.live_pool0, ix.live_bytes0 = np.array(live_pool, i64), np.array(live_bytes, i64)
    ix.live_cls0 = np.array(live_cls, i64)
    return ix

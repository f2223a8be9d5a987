"""A policy's schedule for a point: its structure built once per structure key, bound to the point.

Sweep points that differ only in micro-batch, sequence length or hardware sizes have schedules of
one *structure* (simhete/schedule/structure.py): the same tasks, streams, priorities,
dependencies, frees and buffers, with other op shapes, allocation bytes and pool capacities. A
policy that says which points share a structure (``Policy.structure_key``; ``None``: every point
is built) gets its schedule from :func:`build_schedule`: the first point of a key is built, and
its structure kept (:data:`simhete.cache.POLICY_STRUCTURES`, by content: the policy's class and
key); every later point of the key is that structure bound to the point's size table
(:func:`simhete.policy.sizes.size_table`), with the point's capacities and the initial buffers a
real process holds on its hardware (policy/process_memory.py). No policy has code of its own here.

Points whose key *and* sizes are equal (knob values that alias, e.g. bucket sizes giving one
partition: the same workload build arguments, capacities and initial buffers) get the very
Schedule object of the earlier point, so the engine re-prices it on its warm path (what it derived
is kept on the schedule). :data:`VERIFY` makes every bound point also build afresh and compare
(slow; for tests).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable, Mapping

from simhete import cache
from simhete.errors import SimheteError
from simhete.opkinds import PROCESS_CLASSES
from simhete.policy.base import Context, Policy
from simhete.policy.process_memory import process_memory
from simhete.policy.sizes import size_table
from simhete.schedule import Schedule

REUSE_KEPT = 8           # bound schedules kept per structure for points of equal sizes
VERIFY = False           # bind and also build afresh, raising if they differ (tests)


class KeptStructure:
    """A structure key's structure and what its schedules share: the initial buffers of the
    model states (the process-memory buffers follow the hardware, which the key leaves out), the
    iterations and the metadata; and the schedules bound so far, by sizes, capacities, initial
    buffers and metadata."""

    __slots__ = ("structure", "ideal", "iterations", "meta", "bound")

    def __init__(self, sched: Schedule) -> None:
        self.structure = sched.table.structure
        self.ideal = tuple(a for a in sched.initial if a.cls not in PROCESS_CLASSES)
        self.iterations, self.meta = sched.iterations, dict(sched.meta)
        self.bound: OrderedDict[tuple, Schedule] = OrderedDict()

    def remember(self, key: tuple | None, sched: Schedule) -> Schedule:
        if key is not None:
            self.bound[key] = sched
            if len(self.bound) > REUSE_KEPT:
                self.bound.popitem(last=False)
        return sched

    def schedule(self, policy: Policy, ctx: Context, meta: Mapping[str, str] | None = None) -> Schedule:
        """The structure bound to ``ctx``: its size table, capacities and process buffers, with
        ``meta`` (default: the first build's metadata)."""
        pools = ctx.pools()
        process = tuple(process_memory(ctx, policy.k, policy.name, self.ideal))
        meta = self.meta if meta is None else dict(meta)
        sizes = size_table(ctx)
        key = _bound_key(sizes, pools, process, meta)
        got = self.bound.get(key)
        if got is not None:
            self.bound.move_to_end(key)
            return got
        return self.remember(key, Schedule.from_table(self.structure.bind(sizes), pools, self.ideal + process,
                                                      self.iterations, meta))


def _bound_key(sizes, pools: Mapping[str, int], process: tuple, meta: Mapping[str, str]) -> tuple | None:
    """The key of a bound schedule among its structure's: sizes, capacities, the process buffers
    (the initial buffers beyond the structure's fixed :attr:`KeptStructure.ideal`) and metadata."""
    return (sizes.key, tuple(pools.items()), process, tuple(meta.items())) if sizes.key is not None else None


def build_schedule(policy: Policy, ctx: Context) -> Schedule:
    """``policy.build(ctx)``, through its kept structure when the policy gives a structure key."""
    return keyed_schedule(policy, ctx, policy.structure_key(ctx), lambda: policy.build(ctx))


def keyed_schedule(policy: Policy, ctx: Context, key: Hashable | None, build: Callable[[], Schedule],
                   meta: Mapping[str, str] | None = None) -> Schedule:
    """``build()`` (a schedule of ``policy`` for ``ctx``), or, when a structure was kept for
    ``key`` (a structure key: equal keys give schedules of one structure), that structure bound to
    ``ctx`` with metadata ``meta`` (default: the kept build's). ``None``: always build. A policy
    with several schedules per point (AutoHete's candidates, one per plan) keys each."""
    if key is None:
        return build()
    key = (type(policy), key)
    kept = cache.POLICY_STRUCTURES.recall(key)
    if kept is None:
        sched = build()
        kept = cache.POLICY_STRUCTURES.keep(key, KeptStructure(sched))
        process = tuple(a for a in sched.initial if a.cls in PROCESS_CLASSES)
        return kept.remember(_bound_key(size_table(ctx), sched.pools, process, sched.meta), sched)
    sched = kept.schedule(policy, ctx, meta)
    if VERIFY:
        fresh = build()
        if not same_schedule(sched, fresh):
            raise SimheteError(f"policy {policy.name}: the structure bound to this point differs from a fresh build")
    return sched


def same_schedule(a: Schedule, b: Schedule) -> bool:
    """Equal schedules and equal table columns (what tests and :data:`VERIFY` compare)."""
    ta, tb = a.table, b.table
    return a == b and all(getattr(ta, f) == getattr(tb, f) for f in ta.FIELDS) \
        and ta.alloc_bytes() == tb.alloc_bytes()

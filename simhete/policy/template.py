"""Structural templates: build a policy's schedule once per structure, re-size it for each point.

Sweep points that differ only in micro-batch, sequence length or hardware sizes give schedules of
one *structure* — the same tasks, names, streams, priorities, dependencies, frees and buffers — with
new op shapes, new allocation bytes and new pool capacities. A policy that can say which points
share a structure (``Policy.structure_key``; ``None`` opts out) gets its schedule from
:func:`build_schedule`: the first point of a key is built in full and becomes the key's
:class:`Template`; every later point of that key is the template *resized*: the ops column and the
allocation bytes are recomputed from the point's blocks through what the build marked as
size-dependent (``Builder.add(..., sized=...)``, codes below), everything else is the template's own
column objects (so the engine indexes the structure once per shape), the pool capacities are the
point's. A template checks when it is made that its recipe reproduces its own build exactly;
``tests/test_template.py`` checks that a resized template equals a fresh build for every policy
that opts in, on the shipped scenarios and over drawn sizes. Setting :data:`VERIFY` makes every
resize also build afresh and compare (slow; for tests).

Points whose key *and* sizes are equal (knob values that alias, e.g. bucket sizes giving one
partition: the same workload build arguments, capacities and initial buffers) get the very
Schedule object of the earlier point, so the engine re-prices it on its warm path (what it derived
is kept on the schedule).
"""

from __future__ import annotations

from collections import OrderedDict
from itertools import accumulate, chain
from operator import attrgetter, is_, itemgetter
from typing import Any, Callable

import numpy as np

from simhete.errors import SimheteError
from simhete.opkinds import PROCESS_CLASSES, OpKind
from simhete.policy.base import Context, Policy, shared_ops
from simhete.policy.process_memory import process_memory
from simhete.schedule import Schedule
from simhete.schedule.model import Palette, TableShape

# How a size-dependent cell is derived from its block (a workload BlockWork); see Builder.add.
OPS_CODES: dict[str, Callable[[Any], tuple]] = {
    "fwd": lambda b: b.fwd_ops,
    "bwd": lambda b: b.bwd_ops,
    "rec": lambda b: b.recompute_ops,
    "act.d2h": lambda b: shared_ops(OpKind.D2H, b.act_bytes, True),
    "act.h2d": lambda b: shared_ops(OpKind.H2D, b.act_bytes, True),
    "act.d2h.pageable": lambda b: shared_ops(OpKind.D2H, b.act_bytes, False),
    "act.h2d.pageable": lambda b: shared_ops(OpKind.H2D, b.act_bytes, False),
}
BYTES_CODES: dict[str, Callable[[Any], int]] = {
    "act": lambda b: b.act_bytes,
    "ckpt": lambda b: b.ckpt_bytes,
    "ract": lambda b: b.recompute_bytes,      # what a recompute allocates beyond the checkpoint
    "ws": lambda b: b.workspace_bytes,
}

TEMPLATES_KEPT = 64      # templates per process (LRU); a sweep visits its structures in turn
REUSE_KEPT = 8           # resized schedules kept per template for points of equal sizes
PALETTES_KEPT = 16       # palettes kept per template (one per workload: micro-batch, sequence length)
VERIFY = False           # resize and also build afresh, raising if they differ (tests)


def _per_block(wl: Any, kind: str, code: str) -> Any:
    """A size code's value for each block of workload ``wl``: a Palette of ops tuples (``kind``
    "ops") or an int64 array of bytes ("bytes"). Kept on the workload (shared by every template
    that a point of its micro-batch and sequence length resizes)."""
    blocks = wl.blocks
    return wl.keep(("template.per_block", kind, code), lambda: (
        Palette(map(OPS_CODES[code], blocks)) if kind == "ops"
        else np.fromiter(map(BYTES_CODES[code], blocks), np.int64, len(blocks))))


def _gatherer(idx: list[int]) -> Callable[[list], list]:
    """``lambda seq: list(map(seq.__getitem__, idx))``, the gather done by one C-level
    ``itemgetter`` call (half the time for a 690-task table: a sweep resizes at every point)."""
    if len(idx) == 1:
        (i,) = idx
        return lambda seq: [seq[i]]
    if not idx:
        return lambda seq: []
    get = itemgetter(*idx)
    return lambda seq: list(get(seq))


class Template:
    """A built schedule plus what it takes to re-size it (see the module docstring)."""

    def __init__(self, sched: Schedule, ctx: Context, policy: Policy | None = None) -> None:
        tb = sched.table
        sized = tb.sized
        if sized is None:
            raise SimheteError("a structural template needs a schedule made by a Builder")
        allocs = tb.allocs
        a_ptr = list(accumulate(map(len, allocs), initial=0))
        flat = tuple(chain.from_iterable(allocs))
        tb.shape = TableShape(flat, a_ptr)
        self.table = tb
        self.initial, self.iterations, self.meta = sched.initial, sched.iterations, dict(sched.meta)
        # the process-memory buffers (policy/process_memory.py) follow the hardware profile, which
        # the structure key leaves out: resize makes them again for the new context
        self.policy = policy
        self.ideal = tuple(a for a in sched.initial if a.cls not in PROCESS_CLASSES)
        self.n_blocks = len(ctx.blocks)
        self.base_bytes = np.fromiter(map(attrgetter("bytes"), flat), np.int64, len(flat))
        tb._bytes_array = self.base_bytes      # the table's own bytes as an array: the engine reads them so
        # bytes: per code, the flat allocation positions and the block positions they take from.
        # One pass over the marked rows, the rest as array operations (a new structure's set-up).
        i64 = np.int64
        n_rows = len(allocs)
        rows, ps, row_ops, row_allocs = zip(*sized) if sized else ((), (), (), ())
        rows_a = np.fromiter(rows, i64, len(rows))
        ps_a = np.fromiter(ps, i64, len(ps))
        n_codes = np.fromiter(map(len, row_allocs), i64, len(row_allocs))
        ptr = np.fromiter(a_ptr, i64, n_rows + 1)
        bad = np.flatnonzero(n_codes != ptr[rows_a + 1] - ptr[rows_a])
        if len(bad):
            row = rows[int(bad[0])]
            raise SimheteError(f"task {tb.name[row]}: {len(row_allocs[int(bad[0])])} size codes for "
                               f"{a_ptr[row + 1] - a_ptr[row]} allocations")
        codes = list(chain.from_iterable(row_allocs))               # one per allocation of a marked row
        first = np.repeat(np.cumsum(n_codes) - n_codes, n_codes)
        pos_all = np.repeat(ptr[rows_a], n_codes) + (np.arange(len(codes), dtype=i64) - first)
        blk_all = np.repeat(ps_a, n_codes)
        code_ids = {c: k for k, c in enumerate(dict.fromkeys(codes))}        # first-use order
        cid = np.fromiter(map(code_ids.__getitem__, codes), i64, len(codes))
        self.byte_cells = {c: (pos_all[cid == k], blk_all[cid == k]) for c, k in code_ids.items() if c is not None}
        # ops: each task takes one entry of a palette = the template's fixed ops tuples (first-use
        # order), then one entry per (ops code, block) recomputed per point
        ops_col = tb.ops
        self.ops_codes = [c for c in dict.fromkeys(row_ops) if c is not None]
        code_pos = {c: k for k, c in enumerate(self.ops_codes)}
        code_pos[None] = -1
        cp = np.fromiter(map(code_pos.__getitem__, row_ops), i64, len(row_ops))
        marked = cp >= 0
        sized_at = np.full(n_rows, -1, dtype=i64)            # per row: code position * blocks + block, or -1
        sized_at[rows_a[marked]] = cp[marked] * self.n_blocks + ps_a[marked]
        fixed_rows = np.flatnonzero(sized_at < 0).tolist()
        ids = list(map(id, map(ops_col.__getitem__, fixed_rows)))
        k_of = dict(zip(dict.fromkeys(ids), range(len(ids))))              # id -> palette entry
        palette = list(dict(zip(ids, map(ops_col.__getitem__, fixed_rows))).values())   # same order
        self.fixed = Palette(palette)
        src = sized_at + len(palette)
        src[fixed_rows] = np.fromiter(map(k_of.__getitem__, ids), i64, len(ids))
        self.ops_src = src.tolist()
        self._gather_ops = _gatherer(self.ops_src)
        # the palette entries the tasks use (ascending), and each task's position among them
        used = np.zeros(len(palette) + len(self.ops_codes) * self.n_blocks, dtype=bool)
        used[src] = True
        self.used_at = (np.cumsum(used) - 1)[src]
        self.used_pick = np.flatnonzero(used)
        self.used = self.used_pick.tolist()
        self._gather_used = _gatherer(self.used)
        self.reused: OrderedDict[tuple, Schedule] = OrderedDict()
        self.palettes: dict[tuple, Palette] = {}      # workload key -> the palette of its points
        ops, by, _, _ = self._cells(ctx)
        if ops != tb.ops or not np.array_equal(by, self.base_bytes):
            raise SimheteError(f"policy {sched.meta.get('policy', '?')}: the size codes it marked do not "
                               "reproduce its own schedule (a Builder.add(sized=...) names the wrong code)")

    def _cells(self, ctx: Context) -> tuple[list, np.ndarray, list, tuple]:
        """The ops column, the flat allocation bytes (int64), the used palette for ``ctx``'s
        blocks and the palettes it is gathered from (the template's fixed tuples, then the
        workload's per ops code)."""
        wl = ctx.workload
        blocks = wl.blocks
        if len(blocks) != self.n_blocks:
            raise SimheteError(f"structure key matched a model of {len(blocks)} blocks, template has "
                               f"{self.n_blocks}")
        palette = list(self.fixed)
        parts = [self.fixed]
        for code in self.ops_codes:
            part = _per_block(wl, "ops", code)
            palette.extend(part)
            parts.append(part)
        by = self.base_bytes.copy()
        for code, (pos, blk) in self.byte_cells.items():
            by[pos] = _per_block(wl, "bytes", code)[blk]
        return self._gather_ops(palette), by, self._gather_used(palette), tuple(parts)

    def _palette(self, wl: Any, used: list, parts: tuple) -> Palette:
        """``used`` (a point's distinct ops) as a :class:`Palette`: the one made before for this
        workload when it lists the very same tuple objects, so what is derived from it (prices per
        profile) serves every schedule of this template and workload."""
        key = wl.key
        got = self.palettes.get(key) if key else None
        if got is not None and len(got) == len(used) and all(map(is_, got, used)):
            return got
        got = Palette(used, (parts, self.used_pick))
        if key:
            if len(self.palettes) >= PALETTES_KEPT:
                self.palettes.clear()
            self.palettes[key] = got
        return got

    def resize(self, ctx: Context) -> Schedule:
        """The schedule of this structure for ``ctx``: new ops, allocation bytes and capacities."""
        pools = ctx.pools()
        initial = self.initial if self.policy is None else \
            self.ideal + tuple(process_memory(ctx, self.policy.k, self.policy.name, self.ideal))
        # the workload's build arguments stand for its sizes (a workload made otherwise has no key)
        key = (ctx.workload.key, tuple(pools.items()), initial) if ctx.workload.key else None
        got = self.reused.get(key)
        if got is not None:
            self.reused.move_to_end(key)
            return got
        ops, by, used, parts = self._cells(ctx)
        palette = self._palette(ctx.workload, used, parts)
        sched = Schedule.from_table(self.table.resized(ops, by, (palette, self.used_at)), pools, initial,
                                    self.iterations, self.meta)
        if key is not None:
            self.reused[key] = sched
        if len(self.reused) > REUSE_KEPT:
            self.reused.popitem(last=False)
        return sched


_TEMPLATES: OrderedDict[tuple, Template] = OrderedDict()


def build_schedule(policy: Policy, ctx: Context) -> Schedule:
    """``policy.build(ctx)``, through the policy's structural template when it has a key."""
    key = policy.structure_key(ctx)
    if key is None:
        return policy.build(ctx)
    key = (type(policy), key)
    t = _TEMPLATES.get(key)
    if t is None:
        sched = policy.build(ctx)
        t = Template(sched, ctx, policy)
        _TEMPLATES[key] = t
        if len(_TEMPLATES) > TEMPLATES_KEPT:
            _TEMPLATES.popitem(last=False)
        if ctx.workload.key:
            t.reused[(ctx.workload.key, tuple(sched.pools.items()), sched.initial)] = sched
        return sched
    _TEMPLATES.move_to_end(key)
    sched = t.resize(ctx)
    if VERIFY:
        fresh = policy.build(ctx)
        if not same_schedule(sched, fresh):
            raise SimheteError(f"policy {policy.name}: the resized template differs from a fresh build")
    return sched


def same_schedule(a: Schedule, b: Schedule) -> bool:
    """Equal schedules and equal table columns (what tests and :data:`VERIFY` compare)."""
    ta, tb = a.table, b.table
    return a == b and all(getattr(ta, f) == getattr(tb, f) for f in ta.FIELDS) \
        and ta.alloc_bytes() == tb.alloc_bytes()


def clear() -> None:
    """Forget every template (tests, benchmarks)."""
    _TEMPLATES.clear()

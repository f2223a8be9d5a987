"""A schedule is a structure plus a size table.

A policy's schedule for one point (a model, micro-batch, sequence length and machine) has two
parts. Most of it does not depend on the micro-batch or the sequence length: which tasks run on
which stream, in which order, after which others, which buffers each allocates in which pool with
which class, which it frees. What does depend on them sits in a few cells: the ops of a block's
forward, backward or recompute, the bytes of its activations, checkpoint or workspace, the copies
that move them. A :class:`Structure` is the first part with each such cell a reference
(:class:`SizeRef`: a size *code* and a block position) instead of a value. A *size table* (an
object with the attributes of :class:`Sizes`: every code's value per block, for one workload)
binds the references (:meth:`Structure.bind`), and the bound :class:`TaskTable` is the schedule's
table. Re-sizing a schedule for a new micro-batch or sequence length is binding the new workload's
size table to the same structure: the same for every policy, with no per-policy code
(tests/test_structure.py checks that binding equals building, for every policy).

What binding derives from a structure and one size table (the distinct ops, kept on a
:class:`Palette` priced once per profile) and what later layers derive from the structure alone
(the engine's index of it) are kept on the structure (``derived``) and die with it.
"""

from __future__ import annotations

from itertools import accumulate, chain
from operator import attrgetter, is_, itemgetter
from typing import Callable, Hashable, NamedTuple, Protocol

import numpy as np

from simhete.errors import SimheteError
from simhete.schedule.model import Palette, TaskTable

PALETTES_KEPT = 16       # palettes kept per structure (one per size table: micro-batch, sequence length)


class SizeRef(NamedTuple):
    """A size-dependent cell: the value of size code ``code`` for the block at position ``block``
    of the workload's blocks (the codes are the policies' vocabulary: simhete.policy.sizes)."""

    code: str
    block: int


class Sizes(Protocol):
    """A size table: every size code's value per block, for one workload."""

    key: Hashable | None           # equal keys: equal tables (None: not known)
    n_blocks: int

    def ops(self, code: str) -> Palette:
        """The ops tuple of ``code`` for each block."""

    def bytes(self, code: str) -> np.ndarray:
        """The bytes (int64) of ``code`` for each block."""


def _gatherer(idx: list[int]) -> Callable[[list], list]:
    """``lambda seq: list(map(seq.__getitem__, idx))``, the gather done by one C-level
    ``itemgetter`` call (half the time for a 690-task table: a sweep binds at every point)."""
    if len(idx) == 1:
        (i,) = idx
        return lambda seq: [seq[i]]
    if not idx:
        return lambda seq: []
    get = itemgetter(*idx)
    return lambda seq: list(get(seq))


class Structure:
    """The size-independent part of a schedule's tasks, and where its size-dependent cells are.

    Columns (one entry per task, :class:`TaskTable` field order): ``name``, ``stream``, ``cat``,
    ``deps``, ``prio``, ``frees``, ``it``, ``block``, ``action``, ``at``. Allocations: ``flat``, the
    tasks' Alloc objects in task order (their buffers, pools, classes and ``persist`` flags are the
    structure's; the bytes of a referenced cell are the size table's), task ``i``'s being
    ``flat[a_ptr[i]:a_ptr[i + 1]]``. Ops: task ``i``'s are a fixed tuple or a reference
    (:meth:`ops_ref`); an allocation's bytes are fixed or a reference (:meth:`bytes_ref`).
    Immutable once made; every table bound from it shares its column objects."""

    COLUMNS = ("name", "stream", "cat", "deps", "prio", "frees", "it", "block", "action", "at")

    __slots__ = COLUMNS + ("flat", "a_ptr", "n_blocks", "fixed_bytes", "byte_cells", "fixed", "ops_codes",
                           "ops_src", "_gather_ops", "used_at", "used_pick", "_gather_used", "derived")

    @classmethod
    def of_rows(cls, rows: list[tuple], refs: list[tuple], n_blocks: int) -> "Structure":
        """The structure of ``rows`` (one tuple of Task fields per task, TaskTable.FIELDS order)
        whose cells listed in ``refs`` depend on sizes: ``(row, block position, ops code,
        alloc codes)``, the ops of task ``row`` being code ``ops code`` of the block (``None``:
        fixed) and its j-th allocation's bytes code ``alloc codes[j]`` (``None``: fixed). The
        rows' own values of referenced cells are what :meth:`bind` replaces (the ops are not
        kept; the bytes stay in ``fixed_bytes`` and ``flat``, overwritten in every bound table)."""
        self = object.__new__(cls)
        cols = list(zip(*rows)) if rows else [()] * 12
        (self.name, self.stream, self.cat, ops_col, self.deps, self.prio, allocs, self.frees, self.it,
         self.block, self.action, self.at) = map(list, cols)
        self.n_blocks = n_blocks
        self.derived = {}
        n = len(ops_col)
        a_ptr = list(accumulate(map(len, allocs), initial=0))
        self.flat = flat = tuple(chain.from_iterable(allocs))
        self.a_ptr = a_ptr
        self.fixed_bytes = np.fromiter(map(attrgetter("bytes"), flat), np.int64, len(flat))
        # bytes: per code, the flat allocation positions and the block positions they take from,
        # one pass over the referencing rows and the rest as array operations
        i64 = np.int64
        r_rows, r_blk, r_ops, r_allocs = zip(*refs) if refs else ((), (), (), ())
        rows_a = np.fromiter(r_rows, i64, len(r_rows))
        blk_a = np.fromiter(r_blk, i64, len(r_blk))
        if len(blk_a) and (blk_a.min() < 0 or blk_a.max() >= n_blocks):
            raise SimheteError(f"task {self.name[int(rows_a[0])]}: a size reference to block outside 0..{n_blocks - 1}")
        n_codes = np.fromiter(map(len, r_allocs), i64, len(r_allocs))
        ptr = np.fromiter(a_ptr, i64, n + 1)
        bad = np.flatnonzero(n_codes != ptr[rows_a + 1] - ptr[rows_a])
        if len(bad):
            row = r_rows[int(bad[0])]
            raise SimheteError(f"task {self.name[row]}: {len(r_allocs[int(bad[0])])} size codes for "
                               f"{a_ptr[row + 1] - a_ptr[row]} allocations")
        codes = list(chain.from_iterable(r_allocs))           # one per allocation of a referencing row
        first = np.repeat(np.cumsum(n_codes) - n_codes, n_codes)
        pos_all = np.repeat(ptr[rows_a], n_codes) + (np.arange(len(codes), dtype=i64) - first)
        blk_all = np.repeat(blk_a, n_codes)
        code_ids = {c: k for k, c in enumerate(dict.fromkeys(codes))}        # first-use order
        cid = np.fromiter(map(code_ids.__getitem__, codes), i64, len(codes))
        self.byte_cells = {c: (pos_all[cid == k], blk_all[cid == k]) for c, k in code_ids.items() if c is not None}
        # ops: each task takes one entry of a palette = the structure's fixed ops tuples (first-use
        # order), then one entry per (ops code, block) of the size table
        self.ops_codes = [c for c in dict.fromkeys(r_ops) if c is not None]
        code_pos = {c: k for k, c in enumerate(self.ops_codes)}
        code_pos[None] = -1
        cp = np.fromiter(map(code_pos.__getitem__, r_ops), i64, len(r_ops))
        marked = cp >= 0
        sized_at = np.full(n, -1, dtype=i64)            # per row: code position * blocks + block, or -1
        sized_at[rows_a[marked]] = cp[marked] * n_blocks + blk_a[marked]
        fixed_rows = np.flatnonzero(sized_at < 0).tolist()
        ids = list(map(id, map(ops_col.__getitem__, fixed_rows)))
        k_of = dict(zip(dict.fromkeys(ids), range(len(ids))))              # id -> palette entry
        self.fixed = Palette(dict(zip(ids, map(ops_col.__getitem__, fixed_rows))).values())   # same order
        src = sized_at + len(self.fixed)
        src[fixed_rows] = np.fromiter(map(k_of.__getitem__, ids), i64, len(ids))
        self.ops_src = src.tolist()
        self._gather_ops = _gatherer(self.ops_src)
        # the palette entries the tasks use (ascending), and each task's position among them
        used = np.zeros(len(self.fixed) + len(self.ops_codes) * n_blocks, dtype=bool)
        used[src] = True
        self.used_at = (np.cumsum(used) - 1)[src]
        self.used_pick = np.flatnonzero(used)
        self._gather_used = _gatherer(self.used_pick.tolist())
        return self

    def __len__(self) -> int:
        return len(self.name)

    def ops_ref(self, i: int) -> SizeRef | None:
        """The reference task ``i``'s ops are bound from, or ``None`` when they are fixed."""
        k = self.ops_src[i] - len(self.fixed)
        return None if k < 0 else SizeRef(self.ops_codes[k // self.n_blocks], k % self.n_blocks)

    def bytes_ref(self, q: int) -> SizeRef | None:
        """The reference allocation ``q`` (in ``flat``) takes its bytes from, or ``None``."""
        for code, (pos, blk) in self.byte_cells.items():
            hit = np.flatnonzero(pos == q)
            if len(hit):
                return SizeRef(code, int(blk[hit[0]]))
        return None

    def bind(self, sizes: Sizes | None) -> TaskTable:
        """The table of this structure with its references bound to ``sizes`` (``None``: a
        structure without references)."""
        if sizes is None:
            if self.ops_codes or self.byte_cells:
                raise SimheteError("a structure with size references needs a size table to bind")
        elif sizes.n_blocks != self.n_blocks and (self.ops_codes or self.byte_cells):
            raise SimheteError(f"a size table of {sizes.n_blocks} blocks bound to a structure of {self.n_blocks}")
        palette = list(self.fixed)
        parts = [self.fixed]
        for code in self.ops_codes:
            part = sizes.ops(code)
            palette.extend(part)
            parts.append(part)
        by = self.fixed_bytes
        if self.byte_cells:
            by = by.copy()
            for code, (pos, blk) in self.byte_cells.items():
                by[pos] = sizes.bytes(code)[blk]
        used = self._gather_used(palette)
        return TaskTable.bound(self, self._gather_ops(palette), by,
                               (self._palette(sizes, used, parts), self.used_at))

    def _palette(self, sizes: Sizes | None, used: list, parts: list) -> Palette:
        """``used`` (a table's distinct ops) as a :class:`Palette`: the one made before for this
        size table when it lists the very same tuple objects, so what is derived from it (prices
        per profile) serves every table of this structure bound to that size table."""
        key = sizes.key if sizes is not None else ()
        kept = self.derived.setdefault("structure.palettes", {})
        got = kept.get(key) if key is not None else None
        if got is not None and len(got) == len(used) and all(map(is_, got, used)):
            return got
        got = Palette(used, (tuple(parts), self.used_pick))
        if key is not None:
            if len(kept) >= PALETTES_KEPT:
                kept.clear()
            kept[key] = got
        return got


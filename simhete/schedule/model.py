"""The Schedule: the plain-data contract between policy/, engine/ and replay/.

A :class:`Task` runs on one exclusive stream, after all its ``deps`` finish. Ready tasks on a stream
are served in ascending ``prio`` (smaller runs first), ties broken by position in
``Schedule.tasks``. At its start a task allocates ``allocs`` (it waits until all of them fit in
their pools); at its end it frees the buffers named in ``frees``. Buffers in
``Schedule.initial`` are resident from time 0 (model states that live across iterations).

A policy's task carries its :class:`~simhete.opkinds.Action` (what it does: forward, H2D of
weights, CPU Adam, ...) and its :class:`~simhete.opkinds.At` (iteration, target, micro-step,
rank); its name is derived from the two (``Action.task_name``), its ``cat`` is the action's category.
Task names are stable and are the join key between simulated and measured timelines, e.g.
``it1.F.b12``, ``it1.H2D.w.b13``, ``it2.ADAM.cpu.b3``. A task read from the text form (or built
by hand) has a name and a category but no action.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

from simhete.opkinds import Action, At, MemClass, OpKind, TaskCat

NAME_RE = re.compile(r"^[A-Za-z0-9_.:\-\[\]@#]+$")
STREAM_RE = re.compile(r"^(gpu\d+\.(compute|h2d|d2h|comm)|cpu\.optim|nvlink|nvme)$")


@dataclass(frozen=True, slots=True)
class Op:
    """One priced unit of work; see :mod:`simhete.opkinds` for shape conventions.

    ``count``: how many times the op runs. ``batched``: the ``count`` runs are one kernel launch
    over a batch (a GEMM's per-head products as ``torch.matmul`` of 4-D tensors runs them: one
    cuBLAS strided-batched GEMM, ``cublasGemmStridedBatchedEx``, whose tiles of every batch entry
    share the waves), not ``count`` separate launches (e.g. the two equal input projections of a
    SwiGLU MLP)."""

    kind: OpKind
    shape: tuple[int, ...] = ()
    n: int = 0
    dtype: str = "bf16"
    pinned: bool = True
    count: int = 1
    batched: bool = False
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        # ops are dictionary keys on the hot path (cost-model caches); hash once, not per lookup
        object.__setattr__(self, "_hash", hash((self.kind, self.shape, self.n, self.dtype, self.pinned,
                                                 self.count, self.batched)))

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple:
        # string hashes differ between processes: rebuild (and re-hash) on unpickling
        return (Op, (self.kind, self.shape, self.n, self.dtype, self.pinned, self.count, self.batched))

    @property
    def flops(self) -> float:
        """Floating-point operations of this op (count included); 0 for non-compute ops."""
        if self.kind is OpKind.GEMM:
            m, n, k = self.shape
            return 2.0 * m * n * k * self.count  # 2·M·N·K: one multiply and one add per MAC
        if self.kind in (OpKind.ATTN_FWD, OpKind.ATTN_BWD):
            b, h, sq, skv, d, causal = self.shape
            # QK^T and PV: 2 GEMMs of 2·sq·skv·d each per head (FlashAttention paper, §3.1 / App. B);
            # causal masking halves the useful work. Backward recomputes nothing here: 2.5× forward
            # (5 GEMM-sized products: dV, dP, dS->dQ, dK, plus recomputed S) as in FlashAttention-2.
            f = 4.0 * b * h * sq * skv * d * (0.5 if causal else 1.0)
            return f * (2.5 if self.kind is OpKind.ATTN_BWD else 1.0) * self.count
        return 0.0


@dataclass(frozen=True, slots=True)
class Alloc:
    """A buffer of ``bytes`` in ``pool`` (``gpu0``, ``gpu1``, ..., ``cpu``) holding ``cls``.

    ``persist`` marks a buffer allocated by a task that legitimately outlives the simulated window
    (for example a chunk still cached on the GPU at the end); the checker does not report it.
    """

    buf: str
    pool: str
    bytes: int
    cls: MemClass
    persist: bool = False


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    stream: str
    cat: TaskCat
    ops: tuple[Op, ...] = ()
    deps: tuple[str, ...] = ()
    prio: int = 0
    allocs: tuple[Alloc, ...] = ()
    frees: tuple[str, ...] = ()
    it: int = 0
    block: int = -1
    action: Action | None = None      # what it does (policies' tasks); its name is action.task_name(at)
    at: At | None = None


# Positional constructors for builders of large schedules: the same objects as ``Task(...)`` /
# ``Alloc(...)``, set through the slots' own descriptors (a frozen dataclass's ``__init__`` calls
# ``object.__setattr__`` once per field, about twice as slow). No conversion: pass exact types.
_new = object.__new__
_T = tuple(getattr(Task, f).__set__ for f in Task.__dataclass_fields__)
_A = tuple(getattr(Alloc, f).__set__ for f in Alloc.__dataclass_fields__)
assert len(_T) == 12 and len(_A) == 5, "new_task/new_alloc must list every field"


def new_task(name: str, stream: str, cat: TaskCat, ops: tuple[Op, ...], deps: tuple[str, ...], prio: int,
             allocs: tuple[Alloc, ...], frees: tuple[str, ...], it: int, block: int,
             action: Action | None = None, at: At | None = None, _s=_T, _new=_new, _cls=Task) -> Task:
    o = _new(_cls)
    _s[0](o, name); _s[1](o, stream); _s[2](o, cat); _s[3](o, ops); _s[4](o, deps)
    _s[5](o, prio); _s[6](o, allocs); _s[7](o, frees); _s[8](o, it); _s[9](o, block)
    _s[10](o, action); _s[11](o, at)
    return o


def new_alloc(buf: str, pool: str, bytes: int, cls: MemClass, persist: bool = False,
              _s=_A, _new=_new, _cls=Alloc) -> Alloc:
    o = _new(_cls)
    _s[0](o, buf); _s[1](o, pool); _s[2](o, bytes); _s[3](o, cls); _s[4](o, persist)
    return o


class Palette(list):
    """The distinct ops tuples of a table (:meth:`TaskTable.distinct_ops`), and in ``derived``
    what other layers derive from these tuples alone (their prices on a profile: ``simhete.sim``),
    kept with the palette: tables that share a palette object (the tables of one structure bound
    to one size table) share it. ``parts``: ``None``, or ``(palettes, pick)`` when this palette is
    entries ``pick`` of those palettes concatenated (a bound table's: its structure's fixed tuples
    and the size table's per-block ones), so what is derived per entry can be derived per part and
    gathered. Not to be modified."""

    __slots__ = ("derived", "parts")

    def __init__(self, items: Any = (), parts: tuple | None = None) -> None:
        super().__init__(items)
        self.derived: dict = {}
        self.parts = parts


class TaskTable:
    """The tasks of a Schedule column-wise: one list per :class:`Task` field, in task order.

    ``name[i]``, ``stream[i]``, ``cat[i]``, ``ops[i]``, ``deps[i]``, ``prio[i]``, ``allocs[i]``,
    ``frees[i]``, ``it[i]``, ``block[i]``, ``action[i]`` and ``at[i]`` are the fields of ``schedule.tasks[i]`` (the same
    objects: tuples of ops, dependency names, Allocs and freed buffer names). The engine, the cost
    model and the report read a schedule through its table, so they never walk 700 Task objects
    attribute by attribute; :class:`~simhete.policy.base.Builder` fills one as tasks are added and
    the Task objects are then made only if someone reads ``schedule.tasks``. The lists are never
    modified once the table belongs to a Schedule.

    A table bound from a :class:`~simhete.schedule.structure.Structure` (every policy's, through
    the Builder) shares the structure's column objects, holds its allocation bytes as one flat
    array and makes its ``allocs`` tuples only when that column is first read; :meth:`alloc_bytes`
    gives the flat bytes of any table. ``structure`` is that Structure (``None`` for a table made
    from Task objects or rows).
    """

    FIELDS = ("name", "stream", "cat", "ops", "deps", "prio", "allocs", "frees", "it", "block", "action", "at")
    __slots__ = ("name", "stream", "cat", "ops", "deps", "prio", "_allocs", "frees", "it", "block", "action", "at",
                 "structure", "_bytes", "_bytes_array", "_distinct")

    def __init__(self) -> None:
        for f in self.FIELDS:
            setattr(self, f, [])
        self.structure = self._bytes = self._bytes_array = self._distinct = None

    def distinct_ops(self) -> tuple[Palette, Any]:
        """The ops column as ``(palette, at)``: ``ops[i] is palette[at[i]]``. Tasks share ops tuples,
        so a per-task figure that depends only on the ops (a price, bytes moved) is computed once
        per palette entry and gathered (``at``: a numpy integer array). Made on first call (one
        entry per distinct tuple object, in first-use order) unless the table was bound from a
        structure, which knows it (and may list a tuple more than once); not to be modified."""
        d = self._distinct
        if d is None:
            ops = self.ops
            ids = list(map(id, ops))
            pos = dict(zip(dict.fromkeys(ids), range(len(ids))))     # first-use order
            palette = Palette(dict(zip(ids, ops)).values())         # same order: keys keep first insertion
            d = self._distinct = (palette, np.fromiter(map(pos.__getitem__, ids), np.intp, len(ids)))
        return d

    @property
    def allocs(self) -> list:
        a = self._allocs
        if a is None:       # a bound table: the structure's allocations with this table's bytes
            st, by = self.structure, self.alloc_bytes()
            new = [new_alloc(x.buf, x.pool, n, x.cls, x.persist) for x, n in zip(st.flat, by)]
            p = st.a_ptr
            a = self._allocs = [tuple(new[p[i]:p[i + 1]]) for i in range(len(p) - 1)]
        return a

    @allocs.setter
    def allocs(self, value: list) -> None:
        self._allocs = value

    def alloc_bytes(self) -> list[int]:
        """The bytes of every allocation, in task order (flattened ``allocs``)."""
        by = self._bytes
        if by is None:
            if self._bytes_array is not None:    # a bound table: its bytes as Python ints
                by = self._bytes = self._bytes_array.tolist()
            else:
                by = [a.bytes for row in self._allocs for a in row]
        return by

    def alloc_bytes_array(self) -> Any:
        """:meth:`alloc_bytes` as an int64 numpy array (a bound table holds it already)."""
        arr = self._bytes_array
        if arr is None:
            arr = np.array(self.alloc_bytes(), dtype=np.int64)
            if self._allocs is None:
                self._bytes_array = arr
        return arr

    @classmethod
    def of(cls, tasks: tuple[Task, ...]) -> "TaskTable":
        """The table of existing Task objects."""
        t = cls()
        for f in cls.FIELDS:
            setattr(t, f, [getattr(x, f) for x in tasks])
        return t

    @classmethod
    def of_rows(cls, rows: list[tuple]) -> "TaskTable":
        """The table of ``rows``, one tuple of Task fields (``FIELDS`` order) per task."""
        t = cls()
        if rows:
            for f, col in zip(cls.FIELDS, zip(*rows)):
                setattr(t, f, list(col))
        return t

    @classmethod
    def bound(cls, structure: Any, ops: list, alloc_bytes: Any, distinct: tuple | None = None) -> "TaskTable":
        """The table of ``structure`` (:class:`~simhete.schedule.structure.Structure`) with ``ops``
        and allocation bytes (flat, task order; an int64 numpy array): every other column is the
        structure's own list object. ``distinct``: the ops as :meth:`distinct_ops` gives them."""
        t = object.__new__(cls)
        t._distinct = distinct
        t.name, t.stream, t.cat, t.ops, t.deps, t.prio = (structure.name, structure.stream, structure.cat, ops,
                                                          structure.deps, structure.prio)
        t.frees, t.it, t.block, t.action, t.at = structure.frees, structure.it, structure.block, structure.action, \
            structure.at
        t._allocs, t._bytes, t._bytes_array, t.structure = None, None, alloc_bytes, structure
        return t

    def __len__(self) -> int:
        return len(self.name)

    def tasks(self) -> tuple[Task, ...]:
        """The Task objects (equal to ``Task(...)`` of each row)."""
        return tuple(map(new_task, self.name, self.stream, self.cat, self.ops, self.deps, self.prio,
                         self.allocs, self.frees, self.it, self.block, self.action, self.at))


@dataclass(frozen=True, slots=True)
class Schedule:
    """Tasks, pool capacities, initial buffers, iteration count and free-form metadata.

    ``table`` is the same tasks column-wise (:class:`TaskTable`). A schedule made by
    :meth:`from_table` (policies, through the Builder) holds only the table and makes its Task
    objects on the first read of ``tasks``; one made from Task objects makes its table on the first
    read of ``table``. Either way both views are equal and the schedule is immutable; the table is
    not part of equality, the repr or ``dataclasses.replace`` (a replaced schedule makes its own).
    """

    tasks: tuple[Task, ...]
    pools: Mapping[str, int]                 # capacity in bytes per memory pool
    initial: tuple[Alloc, ...] = ()          # resident at time 0
    iterations: int = 1
    meta: Mapping[str, str] = field(default_factory=dict)
    _table: TaskTable | None = field(default=None, init=False, repr=False, compare=False)
    _derived: dict | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pools", MappingProxyType(dict(self.pools)))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    @classmethod
    def from_table(cls, table: TaskTable, pools: Mapping[str, int], initial: tuple[Alloc, ...] = (),
                   iterations: int = 1, meta: Mapping[str, str] | None = None) -> "Schedule":
        """A schedule whose Task objects are made from ``table`` when ``tasks`` is first read."""
        s = object.__new__(cls)
        _set = object.__setattr__
        _set(s, "pools", MappingProxyType(dict(pools)))
        _set(s, "initial", tuple(initial))
        _set(s, "iterations", iterations)
        _set(s, "meta", MappingProxyType(dict(meta or {})))
        _set(s, "_table", table)
        _set(s, "_derived", None)
        return s

    @property
    def derived(self) -> dict:
        """Data derived from this schedule alone, kept on it by the layers that derive it (keys
        name their owner, e.g. ``"engine.indexed"``); made empty on first read."""
        d = self._derived
        if d is None:
            d = {}
            object.__setattr__(self, "_derived", d)
        return d

    def __getstate__(self) -> list:
        return [self.tasks, self.pools, self.initial, self.iterations, self.meta, self._table, None]

    def __setstate__(self, state: list) -> None:
        for name, value in zip(("tasks", "pools", "initial", "iterations", "meta", "_table", "_derived"), state):
            object.__setattr__(self, name, value)

    @property
    def table(self) -> TaskTable:
        """The tasks column-wise (made from ``tasks`` on first read when not built that way)."""
        t = self._table
        if t is None:
            t = TaskTable.of(self.tasks)
            object.__setattr__(self, "_table", t)
        return t

    @property
    def n_tasks(self) -> int:
        return len(self.table)

    @property
    def streams(self) -> tuple[str, ...]:
        """Streams in order of first use."""
        return tuple(dict.fromkeys(self.table.stream))

    def index(self) -> dict[str, int]:
        names = self.table.name
        return dict(zip(names, range(len(names))))      # a repeated name maps to its last task

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return (self.tasks == other.tasks and dict(self.pools) == dict(other.pools)
                and self.initial == other.initial and self.iterations == other.iterations
                and dict(self.meta) == dict(other.meta))

    __hash__ = None  # type: ignore[assignment]


class _LazyTasks:
    """``Schedule.tasks`` for schedules made by :meth:`Schedule.from_table`: the slot is filled from
    the table on first read (a data descriptor wrapping the slot's own)."""

    def __init__(self, slot) -> None:
        self.slot = slot

    def __get__(self, obj, cls=None):
        if obj is None:
            return self
        try:
            return self.slot.__get__(obj, cls)
        except AttributeError:
            tasks = obj._table.tasks()
            self.slot.__set__(obj, tasks)
            return tasks

    def __set__(self, obj, value) -> None:
        self.slot.__set__(obj, value)

    def __delete__(self, obj) -> None:
        self.slot.__delete__(obj)


Schedule.tasks = _LazyTasks(Schedule.__dict__["tasks"])

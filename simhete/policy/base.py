"""What every policy shares: the build context, the Policy base class (its docstring says what a
new policy provides), the candidates a policy may offer, and a Schedule builder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Hashable, Iterable

from simhete import cache
from simhete.config import Strict, validate
from simhete.errors import SimheteError
from simhete.opkinds import Action, At, MemClass, OpKind, state_buffer
from simhete.schedule import Alloc, Op, Schedule, Task
from simhete.schedule.model import TaskTable, new_alloc
from simhete.schedule.structure import Structure


@dataclass(frozen=True)
class Context:
    """Everything a policy may read: the resolved scenario."""

    scenario: Any            # simhete.scenario.Scenario
    spec: Any                # simhete.workload.ModelSpec
    workload: Any            # simhete.workload.Workload
    profile: Any             # simhete.hw.profile.HardwareProfile
    cost: Any                # simhete.hw.cost.CostModel
    n_gpus: int
    iterations: int

    @property
    def blocks(self) -> tuple[Any, ...]:
        return self.workload.blocks

    @property
    def grad_accum(self) -> int:
        """Micro-steps of forward and backward per optimizer step (``train.grad_accum``)."""
        return self.scenario.data.train.grad_accum

    @property
    def gpu_capacity(self) -> int:
        g = self.profile.gpu
        return g.memory_bytes - g.reserved_bytes.value

    @property
    def cpu_capacity(self) -> int:
        return self.profile.host.memory_bytes

    def pools(self) -> dict[str, int]:
        # On a CUDA GPU the pool is the whole memory: the reserve (gpu.reserved_bytes) is held by
        # the cuda_context buffers every policy adds (policy/process_memory.py); a policy's own
        # decisions use gpu_capacity (memory less that reserve), so both agree on what is usable.
        gpu = self.profile.gpu.memory_bytes if self.profile.device_type == "cuda" else self.gpu_capacity
        pools = {f"gpu{g}": gpu for g in range(self.n_gpus)}
        pools["cpu"] = self.cpu_capacity
        if self.profile.device_type == "cpu":
            # the CPU acting as the device: "device" and host memory are one RAM, so the host pool
            # gets what the device budget leaves and the two never add up to more than exists
            pools["cpu"] = max(0, self.cpu_capacity - self.n_gpus * self.profile.gpu.memory_bytes)
        return pools


@dataclass(frozen=True)
class Candidates:
    """Several schedules a policy offers for one context (:meth:`Policy.candidates`).

    :func:`simhete.search.candidates.choose_schedule` runs each on the engine and keeps the one
    with the least steady iteration time among those that do not run out of memory (the first of
    equals); when none fits, it takes ``otherwise()``. ``schedules`` may be a generator (each is
    built when its turn comes)."""

    schedules: Iterable[Schedule]
    otherwise: Callable[[], Schedule]


class Policy:
    """A training system as a function from (model, hardware, knobs) to a Schedule.

    A new policy is a subclass, decorated ``@register("its-name")``
    (:mod:`simhete.policy.registry`, the one table every command reads), that provides:

    ``Knobs``
        A :class:`~simhete.config.Strict` pydantic model: the scenario's ``knobs:`` mapping,
        validated (a bad value is a one-line ConfigError naming ``knobs.<field>``). Subclass
        :class:`~simhete.policy.training.ActivationKnobs` to take the shared activation and
        host-memory knobs (``checkpointing``, ``activations``, ``pin_memory``, ``process_rss`` ...);
        a field's docstring is its documentation. The instance is ``self.k``.
    ``build(ctx) -> Schedule``
        The whole answer, read from ``ctx`` (:class:`Context`) alone: the workload's blocks with
        their sizes and ops, the pools (``ctx.pools()``), GPUs, iterations, accumulation. Add tasks
        with a ``Builder(size_table(ctx))`` (:class:`Builder`,
        :func:`~simhete.policy.sizes.size_table`; the training helpers emit the common parts:
        :func:`~simhete.policy.training.forward_backward`, :func:`model_states`,
        :class:`~simhete.policy.dataparallel.DataParallel`), add what a real process holds
        (:func:`~simhete.policy.process_memory.process_memory`) to the initial buffers, and
        return ``b.build(ctx.pools(), initial, ctx.iterations, {"policy": self.name, ...})``.
        The same context must give the same schedule (results are deterministic).

    and sets, where the default is wrong for it:

    ``multi_gpu`` (False)
        ``build`` handles ``n_gpus > 1``; if not, such a scenario is a one-line error and
        ``compare``/``plan`` leave the policy out.
    ``accumulates`` (True)
        ``build`` handles ``train.grad_accum > 1``; if not, ``compare``/``plan`` leave it out
        there, and ``build`` must refuse it with a ConfigError.
    ``pure_precision`` (a reason)
        Why it cannot train with ``train.precision: pure``; ``""`` if it can.

    Optionally:

    ``candidates(ctx) -> Candidates | None``
        Several schedules to choose from when the policy's own model cannot tell which is best:
        simhete.search simulates them and keeps the fastest that fits (:class:`Candidates`;
        AutoHete offers its MILP plan and special cases). ``None`` (default): ``build`` is the
        answer.
    ``decisions(ctx)``
        Opt in to structure reuse for sweep speed (below): a point whose structure was built
        before is that structure bound to the point's size table, not a new build.

    A policy must not run or import the engine, ``simhete.sim`` or ``simhete.search``
    (tests/test_layering.py), and must not price anything itself: durations come from the cost
    model applied to the ops of its tasks (it may *ask* ``ctx.cost``, as a solver does). A shipped
    policy is also listed in ``registry.SHIPPED``. docs/adding-a-policy.md walks through a
    complete example.
    """

    name: ClassVar[str] = ""              # set by @register
    Knobs: ClassVar[type[Strict]] = Strict
    multi_gpu: ClassVar[bool] = False     # whether build() handles n_gpus > 1
    accumulates: ClassVar[bool] = True    # whether build() handles train.grad_accum > 1
    pure_precision: ClassVar[str] = "its optimizer keeps fp32 master weights and Adam state"
    """Why the policy cannot train with ``train.precision: pure`` (16-bit weights updated in place,
    16-bit Adam state); empty if it can."""

    @classmethod
    def knobs(cls, raw: dict[str, Any], file: str | None = None) -> Strict:
        return validate(cls.Knobs, raw, file, prefix="knobs")

    def __init__(self, knobs: Strict) -> None:
        self.k = knobs

    def build(self, ctx: Context) -> Schedule:
        raise NotImplementedError

    def candidates(self, ctx: Context) -> Candidates | None:
        """Several schedules to choose from by simulating them, or ``None`` (the default: the
        policy has one answer, :meth:`build`)."""
        return None

    def decisions(self, ctx: Context) -> Hashable | None:
        """What ``build`` decides from sizes — the micro-batch, the sequence length, the
        capacities — beyond the cells the training skeleton marks as size-dependent (ops and
        allocation bytes of a block's activations, ``Builder.add(..., sized=...)``): a hashable
        value (a window, a partition, a placement), ``()`` when it decides nothing from them.
        ``None`` (the default) says ``build`` may read sizes anywhere: every point is built afresh.
        A policy that returns a value opts in to structural reuse (:meth:`structure_key`)."""
        return None

    def structure_key(self, ctx: Context) -> Hashable | None:
        """A key for the *structure* of ``build(ctx)``, or ``None`` (always build).

        Two contexts with equal keys must give schedules that differ only in the size-marked
        cells and the pool capacities: one structure, bound to each context's size table
        (:mod:`simhete.policy.structures` builds the first and binds the others). The key is every
        knob, the context's
        structural values (:func:`context_key`: the model, hence every weight size, dtype, GPUs,
        iterations, accumulation), the training skeleton's size decisions (which blocks have a
        workspace) and the policy's own :meth:`decisions`; ``None`` when those are ``None``.
        ``tests/test_structure.py`` checks, for every policy that opts in, that binding equals a
        fresh build, on the shipped scenarios and over drawn sizes and knobs."""
        return self.key_with(ctx, self.decisions(ctx))

    def key_with(self, ctx: Context, decisions: Hashable | None) -> Hashable | None:
        """The structure key of a schedule of ``ctx`` given ``decisions`` (what the build decided
        from sizes; ``None``: no key): every knob, the context's structural values and the
        training skeleton's size decisions with them."""
        if decisions is None:
            return None
        from simhete.policy.training import size_decisions     # training builds on this module
        return knob_key(self.k), context_key(ctx), size_decisions(ctx), decisions


def knob_key(knobs: Strict, exclude: Iterable[str] = ()) -> tuple:
    """The knob values as a hashable tuple, fields in declaration order (lists as tuples)."""
    skip = set(exclude)
    return tuple((f, tuple(v) if isinstance(v, list) else v) for f, v in knobs.model_dump().items()
                 if f not in skip)


def context_key(ctx: Context) -> tuple:
    """What a training policy's structure depends on in the context, sizes aside: the model
    (hence every weight-related size), dtype, optimizer dtype (train.precision: model-state sizes
    and the Adam ops), GPUs, iterations, accumulation and the pool names."""
    wl = ctx.workload
    return (wl.spec, wl.dtype, wl.optim_dtype, ctx.n_gpus, ctx.iterations, ctx.grad_accum, tuple(ctx.pools()))


class Builder:
    """Accumulates tasks in order; ``add`` returns the task name so callers can chain deps.

    A task is given by its :class:`~simhete.opkinds.Action` and :class:`~simhete.opkinds.At`: its
    name is ``action.task_name(at)`` and its category ``action.cat`` (policies never spell names).

    ``add`` keeps each task as one tuple of its fields; :meth:`build` makes of them a
    :class:`~simhete.schedule.structure.Structure` (the columns, with every cell marked ``sized``
    a reference into the size table ``sizes``, :func:`simhete.policy.sizes.size_table`) and the
    Schedule it returns holds the structure bound to ``sizes``: the engine, the cost model and the
    report read that table directly, so a sweep point makes no Task objects unless something reads
    ``schedule.tasks`` (replay, the text form, the checker, records). The same structure bound to
    another workload's size table is that workload's schedule (simhete/policy/structures.py)."""

    def __init__(self, sizes: Any = None) -> None:
        self.sizes = sizes                # the size table marked cells are bound to (policy/sizes.py)
        self._rows: list[tuple] = []      # one tuple of Task fields per task (TaskTable.FIELDS order)
        self._sized: list[tuple] = []     # (row, block position, ops code, alloc codes): see add

    @property
    def tasks(self) -> tuple[Task, ...]:
        """The tasks added so far."""
        return TaskTable.of_rows(self._rows).tasks()

    def add(self, action: Action, at: At, stream: str, ops: tuple[Op, ...] = (),
            deps: Iterable[str] = (), prio: int = 0, allocs: Iterable[Alloc] = (),
            frees: Iterable[str] = (), it: int = 0, block: int = -1, sized: tuple | None = None) -> str:
        """Add the task ``action`` at ``at``; returns its name. ``it``: the iteration it is
        counted in (``Task.it``). ``sized``: which of this task's cells depend on sizes (micro-batch,
        sequence length), ``(p, ops_code, alloc_codes)`` where ``p`` is the block's position in
        ``ctx.blocks``, ``ops_code`` names how ``ops`` follows from that block
        (:data:`simhete.policy.sizes.OPS_CODES`; ``None``: fixed) and ``alloc_codes`` has one entry
        per allocation naming how its bytes follow (:data:`simhete.policy.sizes.BYTES_CODES`;
        ``None``: fixed). Such a cell is a reference in the structure: the values given here must
        be what the code gives (:meth:`build` checks)."""
        if sized is not None:
            self._sized.append((len(self._rows), *sized))
        if type(deps) is not tuple or not all(deps):     # a tuple of names is kept as it is
            deps = tuple(filter(None, deps))             # (dep_names, inlined: called per task)
        name = action.task_name(at)
        self._rows.append((name, stream, action.cat, ops if type(ops) is tuple else tuple(ops), deps, prio,
                           allocs if type(allocs) is tuple else tuple(allocs),
                           frees if type(frees) is tuple else tuple(frees), it, block, action, at))
        return name

    def add_row(self, row: tuple, sized: tuple | None = None) -> str:
        """:meth:`add` for callers that pass the stored row itself — ``(name, stream, cat, ops,
        deps, prio, allocs, frees, it, block, action, at)`` with ``name`` = ``action.task_name(at)``,
        ``cat`` = ``action.cat``, ``ops``, ``deps``, ``allocs`` and ``frees`` tuples and no empty
        dependency name, as :meth:`add` would store it — skipping its conversions (a schedule's
        forward and backward are most of its tasks; tests/test_actions.py checks every name)."""
        if sized is not None:
            self._sized.append((len(self._rows), *sized))
        self._rows.append(row)
        return row[0]

    def join(self, action: Action, at: At, stream: str, deps: Iterable[str], prio: int, it: int) -> list[str]:
        """One zero-duration task (``action``: a join, ``Action.STEP_JOIN`` or
        ``Action.BACKWARD_JOIN``) that waits for ``deps``, for many tasks that all wait for the
        same set: M tasks × N deps become M + N edges (a step of many CPU Adam tasks after many
        gradient copies would otherwise be quadratic). Returns the deps to use: ``[name]``, or
        ``deps`` unchanged when there is at most one."""
        deps = list(deps)
        if len(deps) <= 1:
            return deps
        return [self.add(action, at, stream, (), deps, prio, it=it)]

    def build(self, pools: dict[str, int], initial: Iterable[Alloc], iterations: int,
              meta: dict[str, str]) -> Schedule:
        """The Schedule of the tasks added: their structure bound to :attr:`sizes`. Raises when
        a marked cell's value is not what its code gives (a ``sized`` naming the wrong code)."""
        rows, refs = self._rows, self._sized
        self._rows, self._sized = [], []
        sizes = self.sizes
        if refs and sizes is None:
            raise SimheteError(f"policy {meta.get('policy', '?')}: task {rows[refs[0][0]][0]} marks size-dependent "
                               "cells, but its Builder has no size table: use Builder(size_table(ctx)) "
                               "(simhete.policy.sizes)")
        st = Structure.of_rows(rows, refs, sizes.n_blocks if sizes is not None else 0)
        table = st.bind(sizes)
        if refs and (table.ops != [r[3] for r in rows]
                     or table.alloc_bytes_array().tolist() != [a.bytes for r in rows for a in r[6]]):
            bad = next((r[0] for r, ops in zip(rows, table.ops) if ops != r[3]), None) or next(
                r[0] for r, got in zip(rows, table.allocs) if got != r[6])
            raise SimheteError(f"policy {meta.get('policy', '?')}: task {bad}: the size codes it marked do not "
                               "give the values it built (a Builder.add(sized=...) names the wrong code)")
        return Schedule.from_table(table, pools, tuple(initial), iterations, meta)


def dep_names(deps: Iterable[str] | None) -> tuple[str, ...]:
    """Dependency names as :meth:`Builder.add` stores them: a tuple, empty names (no task)
    dropped; for rows given to :meth:`Builder.add_row`."""
    if type(deps) is tuple and all(deps):
        return deps
    return tuple(filter(None, deps)) if deps else ()


def shared_op(kind: OpKind, n: int, pinned: bool = True, dtype: str = "bf16") -> Op:
    """``Op(kind, n=n, pinned=pinned, dtype=dtype)``, shared: equal ops are one object (an Op
    hashes its fields when built, and a schedule of a 13B model builds hundreds of identical
    copies and optimizer steps). The key holds every argument, so the shared op equals the one
    the call would have built."""
    if type(n) is not int or type(pinned) is not bool or type(dtype) is not str:
        return Op(kind, n=n, pinned=pinned, dtype=dtype)      # 5 == 5.0 == True: share exact types only
    key = (kind._name_, n, pinned, dtype)   # the name, not the member: an Enum's hash runs Python code
    op = cache.SHARED_OPS.get(key)
    if op is None:
        op = cache.SHARED_OPS.keep(key, Op(kind, n=n, pinned=pinned, dtype=dtype))
    return op


def shared_ops(kind: OpKind, n: int, pinned: bool = True, dtype: str = "bf16") -> tuple[Op]:
    """``(shared_op(kind, n, pinned, dtype),)``, itself shared: a task whose ops are this one op
    (a copy, an optimizer step) gets the same tuple object as every equal task, so a table's
    distinct ops (``TaskTable.distinct_ops``) list it once and it is priced once per schedule."""
    if type(n) is not int or type(pinned) is not bool or type(dtype) is not str:
        return (shared_op(kind, n, pinned, dtype),)
    key = (kind._name_, n, pinned, dtype)
    ops = cache.SHARED_ONE.get(key)
    if ops is None:
        ops = cache.SHARED_ONE.keep(key, (shared_op(kind, n, pinned, dtype),))
    return ops


def host_fp32_bytes(blk: Any) -> int:
    """fp32 master weights (or fp32 gradients) of a block whose optimizer runs in host memory.

    An offloaded optimizer keeps its own fp32 copy of the parameters and an fp32 gradient buffer
    in host memory whatever the working precision: with fp32 training the GPU still holds the
    working weights, so the host copy is a second one (DeepSpeed ZeRO-Offload's
    ``single_partition_of_fp32_groups`` is a separate fp32 tensor; replay measured 16 B/param of
    host memory for fp32 ZeRO-Offload: 4 master + 4 gradients + 8 Adam m, v). For bf16/fp16 this
    equals the workload's ``master_bytes`` / ``grad32_bytes`` (4 B/param).
    """
    return 4 * blk.params


def model_states(ctx: Context, pool_of: dict[MemClass, str], gpu: int = 0,
                 exclude: Iterable[MemClass] = (), blocks: Iterable[int] | None = None) -> list[Alloc]:
    """Initial buffers for persistent model states of each block, placed per class.

    Mixed-precision Adam keeps per parameter 2 B of 16-bit weights, 2 B of 16-bit grads, 4 B of
    fp32 master weights and 8 B of Adam m and v (Rajbhandari et al. 2020, ZeRO, §3.1). fp32 master
    weights and fp32 gradients placed in host memory are sized by :func:`host_fp32_bytes` (a
    separate host copy also when the working precision is fp32). The buffers depend only on the
    workload's blocks and the arguments, so they are kept on the workload
    (:meth:`~simhete.workload.Workload.keep`; Allocs are immutable: shared between builds).
    """
    exclude, blocks = frozenset(exclude), None if blocks is None else frozenset(blocks)
    wl = ctx.workload
    return list(wl.keep(("policy.model_states", tuple(pool_of.items()), gpu, exclude, blocks),
                        lambda: _model_states(wl.blocks, pool_of, gpu, exclude, blocks)))


def _model_states(ctx_blocks: tuple, pool_of: dict[MemClass, str], gpu: int, exclude: Iterable[MemClass],
                  blocks: Iterable[int] | None) -> list[Alloc]:
    on_host = {cls for cls, pool in pool_of.items() if pool == "cpu"}
    sizes = {
        MemClass.WEIGHTS: lambda b: b.weight_bytes,
        MemClass.MASTER: lambda b: host_fp32_bytes(b) if MemClass.MASTER in on_host else b.master_bytes,
        MemClass.OPTIM: lambda b: b.optim_bytes,
        MemClass.GRADS32: lambda b: host_fp32_bytes(b) if MemClass.GRADS32 in on_host else b.grad32_bytes,
    }
    skip = set(exclude)
    # per class, once: (GPU of its buffers or None, pool, size of a block)
    plan = [(cls, gpu if pool == "gpu" else None, f"gpu{gpu}" if pool == "gpu" else pool, sizes[cls])
            for cls, pool in pool_of.items() if cls not in skip and cls in sizes]
    out = []
    chosen = set(blocks) if blocks is not None else None
    for b in ctx_blocks:
        if chosen is not None and b.index not in chosen:
            continue
        for cls, on_gpu, pool_name, size in plan:
            n = size(b)
            if n:
                out.append(new_alloc(state_buffer(cls, b.name, on_gpu), pool_name, n, cls))
    return out

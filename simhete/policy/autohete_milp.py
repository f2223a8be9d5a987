"""AutoHete's planner: a MILP over per-block decisions, priced by the simulator's own cost model.

Per block i three binaries: ``x`` checkpoint (recompute in backward; transformer blocks only),
``y`` 16-bit weights offloaded (homed in host memory, fetched for forward and for backward;
transformer blocks only), ``z`` optimizer offloaded (fp32 master, Adam m, v and fp32 gradients in
host memory, Adam on the CPU). Minimise the predicted iteration time ``T`` subject to:

- every stream's work per iteration fits in ``T`` (with AutoHete's cross-iteration priority
  scheduling the streams overlap, so the busiest stream bounds the iteration):
  compute  Σ F + B + x·R + (1−z)·AdamGPU
  h2d      Σ 2y·W↑ + (z AND NOT y)·W↑           (fetches; updated weights back)
  d2h      Σ z·G↓ + (y AND NOT z)·W↓            (gradients out; GPU-updated weights home)
  cpu      Σ z·AdamCPU
  comm     Σ (1−z)·AllReduce(G) + z·ReduceScatter(G) + (2y + (z AND NOT y))·AllGather(W)   (N > 1)
- the chain that ends the iteration: block j's next forward cannot start before its gradient
  has gone D2H, the CPU has stepped it and its weights are back, which begins when B_j ends; the
  compute still ahead of F_j by then is Σ_{k<j} (B_k + F_k), so
  T ≥ compute + z_j·(G↓_j + AdamCPU_j + W↑_j) − Σ_{k<j} (B_k + F_k);
- GPU memory at every backward step j (the peak of an iteration is there): resident weights of
  blocks not offloaded, GPU optimizer states, two fetch buffers if any block is offloaded,
  activations still held by blocks before j, the whole of block j's activations (and the next
  swapped block's, fetched one ahead), workspace, and the 16-bit gradients held for GPU Adam
  (with accumulation every block's, from micro-step 2 on) — at most ``(1 − headroom)`` ×
  capacity; copies still in flight (activations waiting for their D2H, a previous micro-step's
  gradient copies) are left to the headroom;
- host memory: exactly what the schedule places there (:func:`host_homes`: one 16-bit weight
  home per block with y or z, CPU optimizer states and fp32 gradients, accumulation buffers) plus
  the swapped activations at their peak (:func:`swap_host_bytes`) — within the host pool.

Times come from :meth:`CostModel.task_seconds` of the very ops the schedule will contain
(``seconds`` in :mod:`simhete.policy.layout`), so the MILP and the engine price identically; what
the MILP leaves out is the ordering detail (pipeline fill, queueing behind other blocks) — see
``docs/policies.md`` for the measured gap. Solved with ``scipy.optimize.milp`` (HiGHS).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from simhete.opkinds import MemClass, OpKind
from simhete.policy.base import Context, model_states
from simhete.policy.dataparallel import shard
from simhete.policy.layout import seconds
from simhete.policy.process_memory import figures
from simhete.policy.training import accum_steps
from simhete.schedule import Alloc, Op


@dataclass(frozen=True)
class Plan:
    """Per block index: checkpoint, weights offloaded, optimizer offloaded; the MILP's predicted
    iteration time (seconds) and the per-stream loads it predicts."""

    checkpoint: dict[int, bool]
    offload_param: dict[int, bool]
    offload_optimizer: dict[int, bool]
    predicted_s: float
    loads: dict[str, float]


@dataclass
class SolveLog:
    """What a build's solves spent and what their time limit cut short (filled by :func:`solve`)."""

    seconds: float = 0.0                               # wall time inside HiGHS, all solves together
    cut: list[str] = field(default_factory=list)       # one line per solve its time limit stopped


@dataclass(frozen=True)
class BlockCosts:
    F: float
    B: float
    adam_gpu: float
    adam_cpu: float
    w_up: float
    w_down: float
    g_down: float
    ar: float
    rs: float
    ag: float
    act_up: float
    act_down: float


def block_costs(ctx: Context, pinned: bool) -> dict[int, BlockCosts]:
    n = ctx.n_gpus
    out = {}
    for blk in ctx.blocks:
        def s(*ops: Op) -> float:
            return seconds(ctx.cost, ops)
        coll = (lambda kind, nb: s(Op(kind, (n,), n=nb))) if n > 1 else (lambda kind, nb: 0.0)
        out[blk.index] = BlockCosts(
            F=s(*blk.fwd_ops), B=s(*blk.bwd_ops),
            adam_gpu=s(Op(OpKind.ADAM_GPU, n=blk.params, dtype="fp32")) if blk.params else 0.0,
            adam_cpu=s(Op(OpKind.ADAM_CPU, n=blk.params, dtype="fp32")) if blk.params else 0.0,
            w_up=s(Op(OpKind.H2D, n=shard(blk.weight_bytes, n, 0), pinned=pinned)),
            w_down=s(Op(OpKind.D2H, n=shard(blk.weight_bytes, n, 0), pinned=pinned)),
            g_down=s(Op(OpKind.D2H, n=shard(blk.grad_bytes, n, 0), pinned=pinned)),
            ar=coll(OpKind.ALLREDUCE, blk.grad_bytes), rs=coll(OpKind.REDUCE_SCATTER, blk.grad_bytes),
            ag=coll(OpKind.ALLGATHER, blk.weight_bytes),
            act_up=s(Op(OpKind.H2D, n=blk.act_bytes, pinned=pinned)),
            act_down=s(Op(OpKind.D2H, n=blk.act_bytes, pinned=pinned)))
    return out


Form = tuple[float, dict[tuple[str, int], float]]
"""A linear form over the plan's variables: constant + Σ coef·var, var = (name, position of the
block in ``ctx.blocks``) with name x, y, z, p (= y AND z) or ("u", 0) (= any y)."""


def host_homes(ctx: Context, op: dict[int, bool], oo: dict[int, bool]) -> list[Alloc]:
    """What the schedule keeps in host memory for the whole run, per block index: the 16-bit
    weight home of a block whose weights are offloaded (y) *or* whose optimizer is (z; the CPU
    Adam writes the updated weights there) — one home, whatever the reason; fp32 master, Adam m, v
    and fp32 gradients of a CPU-optimised block; with gradient accumulation (k > 1) its 16-bit host
    accumulation buffer (``gacc.*``, DeepSpeed's). The schedule's initial host allocations *are*
    this list, and the MILP's host row is derived from it (:func:`memory_rows`), so the two agree
    by construction. Every buffer's name ends with ``.<block name>``."""
    by = {blk.index: blk for blk in ctx.blocks}
    host_w = {i for i in by if op[i] or oo[i]}
    cpu_opt = {i for i in by if by[i].params and oo[i]}
    out = model_states(ctx, {MemClass.WEIGHTS: "cpu"}, blocks=host_w)
    out += model_states(ctx, {MemClass.MASTER: "cpu", MemClass.OPTIM: "cpu", MemClass.GRADS32: "cpu"},
                        blocks=cpu_opt)
    if accum_steps(ctx) > 1:
        out += [Alloc(f"gacc.{by[i].name}", "cpu", by[i].grad_bytes, MemClass.GRADS)
                for i in sorted(cpu_opt) if by[i].grad_bytes]
    return out


def swap_host_bytes(ctx: Context, swap: frozenset[int]) -> int:
    """Host bytes of swapped activations (``cact.*``) at their peak: every GPU's copy of every
    swapped block of one micro-step. A micro-step's forward cannot start before the previous
    micro-step's (or iteration's) last backward, which needs every swapped block's H2D, which
    frees its host copy — so at most one micro-step's copies are ever live. Within a micro-step
    they are all live at once when every swapped block's D2H starts before the first of their
    H2Ds ends (the D2Hs run in forward order at higher priority than anything the backward
    queues): that is the schedule's ordinary case, and otherwise this is an upper bound."""
    by = {blk.index: blk for blk in ctx.blocks}
    return ctx.n_gpus * sum(by[i].act_bytes for i in swap)


def process_figures(ctx: Context) -> tuple[int, int, int]:
    """What the process holds beyond the placed states (policy/process_memory.py ``figures``):
    host bytes held whatever the plan, the construction peak, the context on each GPU — from the
    scenario's AutoHete knobs."""
    from simhete.policy.registry import get_policy
    cls = get_policy("autohete")
    return figures(ctx, cls.knobs(ctx.scenario.data.knobs, ctx.scenario.file), cls.name)


def memory_rows(ctx: Context, swap: frozenset[int] = frozenset()) -> tuple[list[Form], Form]:
    """The MILP's memory model: one GPU form per backward step j (bytes on each GPU while block
    j's backward runs, less the CUDA context: rows are held to ``gpu_capacity``) and the host form
    (bytes in host memory at its peak, with the process's fixed host bytes; the construction peak,
    a constant, is a separate check in :func:`solve`)."""
    blocks = ctx.blocks
    trans = {blk.index for blk in blocks if blk.name.startswith("b")}
    ga = accum_steps(ctx)
    # GPU memory at each backward step j
    wmax = max((blk.weight_bytes for blk in blocks if blk.index in trans), default=0)
    base: dict[tuple[str, int], float] = {("u", 0): 2.0 * wmax}
    const = 0.0
    for k, blk in enumerate(blocks):
        const += blk.weight_bytes + blk.master_bytes + blk.optim_bytes
        base[("y", k)] = -blk.weight_bytes
        base[("z", k)] = -(blk.master_bytes + blk.optim_bytes)
    gpu: list[Form] = []
    for j in range(len(blocks)):
        r = dict(base)
        cj = const
        for k, blk in enumerate(blocks[:j]):      # activations held by earlier blocks
            if blk.index in swap:
                continue
            cj += blk.act_bytes
            r[("x", k)] = r.get(("x", k), 0.0) - (blk.act_bytes - blk.ckpt_bytes)
        bj = blocks[j]
        cj += bj.act_bytes + bj.workspace_bytes + bj.grad_bytes
        over = bj.ckpt_bytes + bj.recompute_bytes - bj.act_bytes    # a per-op selective checkpoint's
        if over:                                                     # kept outputs besides (train.recompute op)
            r[("x", j)] = r.get(("x", j), 0.0) + over
        if j > 0 and blocks[j - 1].index in swap:   # the next backward's activations, fetched one ahead
            cj += blocks[j - 1].act_bytes
        # 16-bit gradients held for GPU Adam: of the blocks whose backward has run — and with
        # accumulation (micro-step 2 on) of every block, kept from micro-step 1
        for k, blk in enumerate(blocks):
            if k == j or (k < j and ga == 1):
                continue
            cj += blk.grad_bytes
            r[("z", k)] = r.get(("z", k), 0.0) - blk.grad_bytes
        gpu.append((cj, r))
    # host memory: host_homes per block for each (y, z), as h00 + (h10−h00)·y + (h01−h00)·z +
    # (h11−h10−h01+h00)·(y AND z) — exact for binaries; plus the swapped activations' peak
    pos = {blk.name: k for k, blk in enumerate(blocks)}
    h = {}
    for yz in ((0, 0), (1, 0), (0, 1), (1, 1)):
        per = [0] * len(blocks)
        for a in host_homes(ctx, {blk.index: bool(yz[0]) for blk in blocks},
                            {blk.index: bool(yz[1]) for blk in blocks}):
            per[pos[a.buf.rsplit(".", 1)[1]]] += a.bytes
        h[yz] = per
    host: dict[tuple[str, int], float] = {}
    for k in range(len(blocks)):
        for v, a in (("y", h[1, 0][k] - h[0, 0][k]), ("z", h[0, 1][k] - h[0, 0][k]),
                     ("p", h[1, 1][k] - h[1, 0][k] - h[0, 1][k] + h[0, 0][k])):
            if a:
                host[(v, k)] = float(a)
    return gpu, (float(sum(h[0, 0]) + swap_host_bytes(ctx, swap) + process_figures(ctx)[0]), host)


def predicted_memory(ctx: Context, plan: Plan, swap: frozenset[int] = frozenset()) -> tuple[float, float]:
    """The MILP's memory model evaluated for a plan: (bytes on each GPU at its peak backward step,
    with the CUDA context; bytes in host memory, the larger of the steady state and the
    construction peak)."""
    val = {}
    for k, blk in enumerate(ctx.blocks):
        i = blk.index
        y, z = plan.offload_param[i], plan.offload_optimizer[i]
        val |= {("x", k): plan.checkpoint[i], ("y", k): y, ("z", k): z, ("p", k): y and z}
    val[("u", 0)] = any(plan.offload_param.values())
    gpu, host = memory_rows(ctx, swap)

    def ev(f: Form) -> float:
        return f[0] + sum(a * val[v] for v, a in f[1].items())
    _, build, context = process_figures(ctx)
    return max(ev(f) for f in gpu) + context, max(ev(host), float(build))


def solve(ctx: Context, *, pinned: bool, headroom: float, fixed: dict[str, dict[int, bool]],
          time_limit: float, swap: frozenset[int] = frozenset(),
          mem: tuple[list[Form], Form] | None = None, log: SolveLog | None = None,
          costs: dict[int, BlockCosts] | None = None) -> Plan | None:
    """Solve the MILP of ``ctx`` once: ``Milp(ctx, ...).solve(fixed, time_limit, log)``."""
    return Milp(ctx, pinned=pinned, headroom=headroom, swap=swap, mem=mem, costs=costs).solve(fixed, time_limit, log)


class Milp:
    """The MILP of one context, built once: its constraint matrix, row bounds, cost vector, the
    variables' own bounds and the memory forms. A point solves it several times (the plan, then
    each special case with some decisions pinned): pinning a decision changes only its variable's
    bounds, so every solve shares what is built here.

    Blocks in ``swap`` have their activations swapped to the host (a user's choice, not planned):
    not checkpointed, nothing held on the GPU between their forward and backward, their D2H and
    H2D added to the copy streams. ``mem`` is ``memory_rows(ctx, swap)`` and ``costs``
    ``block_costs(ctx, pinned)`` when the caller has them already (the rows are quadratic in the
    blocks)."""

    def __init__(self, ctx: Context, *, pinned: bool, headroom: float, swap: frozenset[int] = frozenset(),
                 mem: tuple[list[Form], Form] | None = None, costs: dict[int, BlockCosts] | None = None) -> None:
        blocks = ctx.blocks
        nb = len(blocks)
        c = costs if costs is not None else block_costs(ctx, pinned)
        trans = {blk.index for blk in blocks if blk.name.startswith("b")}
        idx = [blk.index for blk in blocks]
        # variable layout: x[nb], y[nb], z[nb], v[nb] (z and not y), q[nb] (y and not z),
        # p[nb] (y and z), u (any y), T
        X, Y, Z, V, Q, P = (k * nb for k in range(6))
        U, T = 6 * nb, 6 * nb + 1
        nv = 6 * nb + 2
        lb, ub = np.zeros(nv), np.ones(nv)
        ub[T] = np.inf
        integ = np.zeros(nv)
        integ[:3 * nb] = 1
        integ[U] = 1
        for k, blk in enumerate(blocks):
            if blk.index not in trans:
                ub[X + k] = ub[Y + k] = 0
            if blk.index in swap:
                ub[X + k] = 0
            if not blk.params:
                ub[Z + k] = 0
        # the constraint matrix is sparse (a memory row has ~2 nb nonzeros, most rows 2-3): built as
        # coordinates, a dense one is rows x (6 nb + 2) floats (6 GB at 4,096 blocks)
        ci: list[np.ndarray] = []
        va: list[np.ndarray] = []
        lo: list[float] = []
        hi: list[float] = []

        def row(coef: dict[int, float], low: float = -np.inf, high: float = np.inf) -> None:
            ci.append(np.fromiter(coef.keys(), dtype=np.int64, count=len(coef)))
            va.append(np.fromiter(coef.values(), dtype=float, count=len(coef)))
            lo.append(low)
            hi.append(high)

        for k in range(nb):
            row({V + k: 1, Z + k: -1, Y + k: 1}, low=0)        # v ≥ z − y
            row({Q + k: 1, Y + k: -1, Z + k: 1}, low=0)        # q ≥ y − z
            row({U: 1, Y + k: -1}, low=0)                      # u ≥ y
        comp_const = sum(c[i].F + c[i].B + c[i].adam_gpu for i in idx)
        comp = {X + k: c[i].F for k, i in enumerate(idx)} | {Z + k: -c[i].adam_gpu for k, i in enumerate(idx)}
        # T ≥ compute
        row({T: 1} | {j: -a for j, a in comp.items()}, low=comp_const)
        row({T: 1} | {Y + k: -2 * c[i].w_up for k, i in enumerate(idx)} | {V + k: -c[i].w_up for k, i in enumerate(idx)},
            low=sum(c[i].act_up for i in swap))
        row({T: 1} | {Z + k: -c[i].g_down for k, i in enumerate(idx)} | {Q + k: -c[i].w_down for k, i in enumerate(idx)},
            low=sum(c[i].act_down for i in swap))
        row({T: 1} | {Z + k: -c[i].adam_cpu for k, i in enumerate(idx)}, low=0)
        if ctx.n_gpus > 1:
            r = {T: 1.0}
            for k, i in enumerate(idx):
                r[Z + k] = -(c[i].rs - c[i].ar)
                r[Y + k] = -2 * c[i].ag
                r[V + k] = -c[i].ag
            row(r, low=sum(c[i].ar for i in idx))
        ahead = 0.0
        for k, i in enumerate(idx):    # the end-of-iteration chain of each CPU-updated block
            chain = c[i].g_down + c[i].adam_cpu + c[i].w_up
            r = {T: 1.0} | {j: -a for j, a in comp.items()}
            r[Z + k] = r.get(Z + k, 0.0) - chain
            row(r, low=comp_const - ahead)
            ahead += c[i].B + c[i].F

        for k in range(nb):                                    # p = y AND z exactly (y, z binary)
            row({P + k: 1, Y + k: -1, Z + k: -1}, low=-1)      # p ≥ y + z − 1
            row({P + k: 1, Y + k: -1}, high=0)                 # p ≤ y
            row({P + k: 1, Z + k: -1}, high=0)                 # p ≤ z
        # memory: the linear forms of memory_rows over the variables (name, k), each also as a
        # dense vector over the variables (for the check in :meth:`solve`)
        col = {"x": X, "y": Y, "z": Z, "p": P}
        gpu_rows, host_row = mem if mem is not None else memory_rows(ctx, swap)
        self.builds = process_figures(ctx)[1] <= ctx.pools()["cpu"]     # else the model does not even build
        cap = ctx.gpu_capacity * (1.0 - headroom)
        hcap = ctx.pools()["cpu"]
        forms = []
        for (const, coef), limit in [(r, cap) for r in gpu_rows] + [(host_row, hcap)]:
            row({(U if v == "u" else col[v] + k): a for (v, k), a in coef.items()}, high=limit - const)
            d = np.zeros(nv)
            np.add.at(d, ci[-1], va[-1])
            forms.append((const, d, limit))

        cost = np.zeros(nv)
        cost[T] = 1.0
        cost[:3 * nb] = 1e-6 * comp_const / nb   # prefer fewer offloads and checkpoints among equal-time plans
        ri = np.repeat(np.arange(len(ci)), [len(c) for c in ci])
        self.ctx, self.costs, self.swap, self.nb, self.idx = ctx, c, swap, nb, idx
        self.lb, self.ub, self.integ, self.cost, self.forms = lb, ub, integ, cost, forms
        self.matrix = (np.concatenate(va), (ri, np.concatenate(ci))), (len(lo), nv)
        self.lo, self.hi = lo, hi

    def solve(self, fixed: dict[str, dict[int, bool]], time_limit: float, log: SolveLog | None = None) -> Plan | None:
        """The best plan with ``fixed[var][block]`` pinned (var in checkpoint, offload_param,
        offload_optimizer); ``None`` if no plan fits (decided without the solver when a memory
        form's least value is over its limit). ``log``, if given, adds the seconds spent in HiGHS,
        and a line when ``time_limit`` stopped HiGHS before it had proven its plan optimal (or
        found one): the plan then depends on the machine's speed."""
        if not self.builds:
            return None
        nb, idx = self.nb, self.idx
        X, Y, Z = 0, nb, 2 * nb
        lb, ub = self.lb.copy(), self.ub.copy()
        for k, i in enumerate(idx):
            for var, off in (("checkpoint", X), ("offload_param", Y), ("offload_optimizer", Z)):
                if i in fixed.get(var, {}):
                    lb[off + k] = ub[off + k] = float(fixed[var][i])
        # No plan fits when a memory form — or the sum of the host form and a GPU form (every block's
        # states live on one side or the other) — is, at its least within the variables' bounds, over
        # its limit (e.g. the model states alone overflow GPU and host memory): decided here without
        # the solver. Exact: the least value over the bounds is at most the value of any plan.
        ubf = np.where(np.isinf(ub), 0.0, ub)     # T, the only unbounded variable, has no memory

        def least(const: float, dense: np.ndarray) -> float:
            return const + float(np.sum(np.where(dense > 0, dense * lb, dense * ubf)))
        hconst, hdense, hcap = self.forms[-1]
        if least(hconst, hdense) > hcap * (1 + 1e-12):
            return None
        for const, d, limit in self.forms[:-1]:
            if least(const, d) > limit * (1 + 1e-12):
                return None
            if least(const + hconst, d + hdense) > (limit + hcap) * (1 + 1e-12):
                return None

        # scipy.optimize costs a process ~0.3-0.6 s to import: only a point of this policy that solves pays it
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import csr_array

        if type(self.matrix) is tuple:          # the coordinates, made a matrix on the first solve
            self.matrix = LinearConstraint(csr_array(*self.matrix), self.lo, self.hi)
        t0 = time.monotonic()
        res = milp(self.cost, constraints=self.matrix, integrality=self.integ, bounds=Bounds(lb, ub),
                   options={"time_limit": max(time_limit, 1e-3), "disp": False})
        if log is not None:
            log.seconds += time.monotonic() - t0
            if res.status == 1:        # HiGHS: "Time limit reached" (the only limit set)
                log.cut.append("AutoHete's MILP stopped at solver_time_limit "
                               + ("with a plan not proven optimal" if res.x is not None else "before finding a plan"))
        if res.x is None:
            return None
        x = np.round(res.x).astype(int)
        ck = {i: bool(x[X + k]) for k, i in enumerate(idx)}
        op = {i: bool(x[Y + k]) for k, i in enumerate(idx)}
        oo = {i: bool(x[Z + k]) for k, i in enumerate(idx)}
        loads = predict(self.ctx, self.costs, ck, op, oo, self.swap)
        return Plan(ck, op, oo, max(loads.values()), loads)


def predict(ctx: Context, c: dict[int, BlockCosts], ck: dict[int, bool], op: dict[int, bool],
            oo: dict[int, bool], swap: frozenset[int] = frozenset()) -> dict[str, float]:
    """The MILP's time terms evaluated for a plan: per stream load and the worst end chain."""
    idx = [blk.index for blk in ctx.blocks]
    comp = sum(c[i].F + c[i].B + ck[i] * c[i].F + (not oo[i]) * c[i].adam_gpu for i in idx)
    loads = {
        "compute": comp,
        "h2d": sum(2 * op[i] * c[i].w_up + (oo[i] and not op[i]) * c[i].w_up + (i in swap) * c[i].act_up
                   for i in idx),
        "d2h": sum(oo[i] * c[i].g_down + (op[i] and not oo[i]) * c[i].w_down + (i in swap) * c[i].act_down
                   for i in idx),
        "cpu": sum(oo[i] * c[i].adam_cpu for i in idx),
    }
    if ctx.n_gpus > 1:
        loads["comm"] = sum((c[i].rs if oo[i] else c[i].ar) + (2 * op[i] + (oo[i] and not op[i])) * c[i].ag
                            for i in idx)
    ahead, chain = 0.0, comp
    for i in idx:
        if oo[i]:
            chain = max(chain, comp + c[i].g_down + c[i].adam_cpu + c[i].w_up - ahead)
        ahead += c[i].B + c[i].F
    loads["chain"] = chain
    return loads

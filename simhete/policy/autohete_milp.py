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

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np

from simhete import cache
from simhete.opkinds import OpKind
from simhete.policy.autohete_memory import MemoryForms, memory_forms, process_figures
from simhete.policy.base import Context
from simhete.policy.dataparallel import shard
from simhete.policy.layout import seconds
from simhete.schedule import Op


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

    def s(*ops: Op) -> float:
        return seconds(ctx.cost, ops)
    coll = (lambda kind, nb: s(Op(kind, (n,), n=nb))) if n > 1 else (lambda kind, nb: 0.0)
    out = {}
    last, got = None, None
    for blk in ctx.blocks:
        # a block like the one before (a transformer's, whose op tuples are shared) costs the same
        # (compared, not hashed: a tuple of ops hashes op by op)
        key = (blk.fwd_ops, blk.bwd_ops, blk.params, blk.weight_bytes, blk.grad_bytes, blk.act_bytes)
        if key != last:
            last, got = key, BlockCosts(
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
        out[blk.index] = got
    return out


def solve(ctx: Context, *, pinned: bool, headroom: float, fixed: dict[str, dict[int, bool]],
          time_limit: float, swap: frozenset[int] = frozenset(),
          mem: MemoryForms | None = None, log: SolveLog | None = None,
          costs: dict[int, BlockCosts] | None = None) -> Plan | None:
    """Solve the MILP of ``ctx`` once: ``Milp(ctx, ...).solve(fixed, time_limit, log)``."""
    return Milp(ctx, pinned=pinned, headroom=headroom, swap=swap, mem=mem, costs=costs).solve(fixed, time_limit, log)


NO_PLAN: tuple = ()     # a solve's answer when no plan fits (a solution has 6 entries per block and 2 more)


class Milp:
    """The MILP of one context, built once: its constraint matrix, row bounds, cost vector, the
    variables' own bounds and the memory forms. A point solves it several times (the plan, then
    each special case with some decisions pinned): pinning a decision changes only its variable's
    bounds, so every solve shares what is built here.

    Blocks in ``swap`` have their activations swapped to the host (a user's choice, not planned):
    not checkpointed, nothing held on the GPU between their forward and backward, their D2H and
    H2D added to the copy streams. ``mem`` is ``memory_forms(ctx, swap)`` and ``costs``
    ``block_costs(ctx, pinned)`` when the caller has them already.

    Built with array operations (the chain and memory rows hold ~2 nb coefficients each, so the
    matrix has ~4 nb² nonzeros): row by row and coefficient by coefficient it is the problem the
    module docstring states, in that order."""

    def __init__(self, ctx: Context, *, pinned: bool, headroom: float, swap: frozenset[int] = frozenset(),
                 mem: MemoryForms | None = None, costs: dict[int, BlockCosts] | None = None) -> None:
        blocks = ctx.blocks
        nb = len(blocks)
        c = costs if costs is not None else block_costs(ctx, pinned)
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
        trans = np.array([blk.name.startswith("b") for blk in blocks], dtype=bool)
        swapped = np.array([blk.index in swap for blk in blocks], dtype=bool)
        ub[X:Y][~trans | swapped] = 0
        ub[Y:Z][~trans] = 0
        ub[Z:V][np.array([not blk.params for blk in blocks], dtype=bool)] = 0

        def per(f: str) -> np.ndarray:
            return np.array([getattr(c[i], f) for i in idx], dtype=float)
        F, B, adam_gpu, adam_cpu = per("F"), per("B"), per("adam_gpu"), per("adam_cpu")
        w_up, w_down, g_down = per("w_up"), per("w_down"), per("g_down")
        ks = np.arange(nb)
        # the constraint matrix is sparse: built as coordinates (row, column, value), in blocks of
        # rows; ``rows`` counts the rows so far
        ri: list[np.ndarray] = []
        ci: list[np.ndarray] = []
        va: list[np.ndarray] = []
        lo: list[np.ndarray] = []
        hi: list[np.ndarray] = []
        rows = 0

        def block(cols: np.ndarray, vals: np.ndarray, low: np.ndarray | float = -np.inf,
                  high: np.ndarray | float = np.inf) -> None:
            """Rows of coefficients ``vals`` at columns ``cols`` (one row, or one per row of a 2-D
            ``cols``), within ``low`` and ``high``."""
            nonlocal rows
            cols = np.atleast_2d(cols)
            n = cols.shape[0]
            ri.append(np.repeat(np.arange(rows, rows + n), cols.shape[1]))
            ci.append(cols.ravel())
            va.append(np.broadcast_to(np.asarray(vals, dtype=float), cols.shape).ravel())
            lo.append(np.broadcast_to(np.asarray(low, dtype=float), (n,)))
            hi.append(np.broadcast_to(np.asarray(high, dtype=float), (n,)))
            rows += n

        def per_block(spec: list[tuple[list[tuple], float, float]]) -> None:
            """Block after block, one row per entry (terms, low, high) of ``spec``: coefficient a
            at column c + k (or at c itself, if c is U) for each (c, a) of its terms."""
            nonlocal rows
            for r, (terms, low, high) in enumerate(spec):
                for c0, a in terms:
                    ri.append(rows + len(spec) * ks + r)
                    ci.append(np.full(nb, c0) if c0 == U else c0 + ks)
                    va.append(np.full(nb, float(a)))
            lo.append(np.tile([low for _, low, _ in spec], nb))
            hi.append(np.tile([high for _, _, high in spec], nb))
            rows += len(spec) * nb

        inf = np.inf
        per_block([([(V, 1), (Z, -1), (Y, 1)], 0, inf),      # v ≥ z − y
                   ([(Q, 1), (Y, -1), (Z, 1)], 0, inf),      # q ≥ y − z
                   ([(U, 1), (Y, -1)], 0, inf)])             # u ≥ y
        comp_const = sum(c[i].F + c[i].B + c[i].adam_gpu for i in idx)
        # T ≥ compute: T − Σ x·F + Σ z·AdamGPU ≥ Σ (F + B + AdamGPU)
        comp_cols = np.concatenate([[T], X + ks, Z + ks])
        comp_vals = np.concatenate([[1.0], -F, adam_gpu])
        block(comp_cols, comp_vals, low=comp_const)
        block(np.concatenate([[T], Y + ks, V + ks]), np.concatenate([[1.0], -(2 * w_up), -w_up]),
              low=sum(c[i].act_up for i in swap))
        block(np.concatenate([[T], Z + ks, Q + ks]), np.concatenate([[1.0], -g_down, -w_down]),
              low=sum(c[i].act_down for i in swap))
        block(np.concatenate([[T], Z + ks]), np.concatenate([[1.0], -adam_cpu]), low=0)
        if ctx.n_gpus > 1:
            ar, rs, ag = per("ar"), per("rs"), per("ag")
            block(np.concatenate([[T], Z + ks, Y + ks, V + ks]),
                  np.concatenate([[1.0], -(rs - ar), -(2 * ag), -ag]), low=sum(c[i].ar for i in idx))
        # the end-of-iteration chain of each CPU-updated block j: the compute row with z_j's
        # coefficient less the chain, bounded by the compute still ahead of F_j
        ahead, lows = 0.0, []
        for i in idx:
            lows.append(comp_const - ahead)
            ahead += c[i].B + c[i].F
        chain_vals = np.tile(comp_vals, (nb, 1))
        chain_vals[ks, 1 + nb + ks] -= g_down + adam_cpu + w_up
        block(np.tile(comp_cols, (nb, 1)), chain_vals, low=np.array(lows))
        per_block([([(P, 1), (Y, -1), (Z, -1)], -1, inf),  # p = y AND z exactly (y, z binary): p ≥ y + z − 1,
                   ([(P, 1), (Y, -1)], -inf, 0),             # p ≤ y,
                   ([(P, 1), (Z, -1)], -inf, 0)])            # p ≤ z
        # memory: the forms of memory_forms, their columns x, y, z, p, u mapped to the variables
        m = mem if mem is not None else memory_forms(ctx, swap)
        self.builds = process_figures(ctx)[1] <= ctx.pools()["cpu"]     # else the model does not even build
        cap = ctx.gpu_capacity * (1.0 - headroom)
        hcap = ctx.pools()["cpu"]
        var = np.concatenate([np.arange(3 * nb), P + ks, [U]])
        fr, fc = np.nonzero(m.gpu_named)
        ri.append(rows + fr)
        ci.append(var[fc])
        va.append(m.gpu[fr, fc])
        lo.append(np.full(nb, -np.inf))
        hi.append(cap - m.gpu_const)
        rows += nb
        hc = np.flatnonzero(m.host_named)
        block(var[hc], m.host[hc], high=hcap - m.host_const)
        # for the check in :meth:`solve`: the constant, coefficients over the variables and limit
        # of the host form, each GPU form, and each GPU form plus the host form (every block's
        # states live on one side or the other)
        self.form_const = np.concatenate([[m.host_const], m.gpu_const, m.gpu_const + m.host_const])
        self.form_coef = np.zeros((2 * nb + 1, nv))
        self.form_coef[:, var] = np.vstack([m.host, m.gpu, m.gpu + m.host])
        self.form_limit = np.concatenate([[hcap], np.full(nb, cap), np.full(nb, cap + hcap)])

        cost = np.zeros(nv)
        cost[T] = 1.0
        cost[:3 * nb] = 1e-6 * comp_const / nb   # prefer fewer offloads and checkpoints among equal-time plans
        self.ctx, self.costs, self.swap, self.nb, self.idx = ctx, c, swap, nb, idx
        self.pos = {i: k for k, i in enumerate(idx)}
        self.lb, self.ub, self.integ, self.cost = lb, ub, integ, cost
        self.coords = (np.concatenate(va), (np.concatenate(ri), np.concatenate(ci))), (rows, nv)
        self.lo, self.hi = np.concatenate(lo), np.concatenate(hi)
        self.matrix = None                  # the constraint matrix, made on the first solve
        self.digest = None                  # the problem's content, all but the variables' bounds
        self.predicted: dict[tuple, Plan] = {}   # the plan of each solution met (solves often agree)

    def content(self, lb: np.ndarray, ub: np.ndarray) -> bytes:
        """A digest of the whole problem with these variable bounds: equal digests are equal
        problems (objective, constraints, integrality, bounds), whose optimum HiGHS finds alike."""
        h = self.digest
        if h is None:
            (data, (ri, cols)), shape = self.coords
            h = self.digest = hashlib.blake2b(repr(shape).encode(), digest_size=16)
            for a in (self.cost, self.integ, data, ri, cols, np.asarray(self.lo), np.asarray(self.hi)):
                h.update(a.tobytes())
        h = h.copy()
        h.update(lb.tobytes())
        h.update(ub.tobytes())
        return h.digest()

    def solve(self, fixed: dict[str, dict[int, bool]], time_limit: float, log: SolveLog | None = None) -> Plan | None:
        """The best plan with ``fixed[var][block]`` pinned (var in checkpoint, offload_param,
        offload_optimizer); ``None`` if no plan fits (decided without the solver when a memory
        form's least value is over its limit). ``log``, if given, adds the seconds spent in HiGHS,
        and a line when ``time_limit`` stopped HiGHS before it had proven its plan optimal (or
        found one): the plan then depends on the machine's speed."""
        if not self.builds:
            return None
        nb, pos = self.nb, self.pos
        lb, ub = self.lb.copy(), self.ub.copy()
        for var, off in (("checkpoint", 0), ("offload_param", nb), ("offload_optimizer", 2 * nb)):
            pins = [(off + pos[i], float(v)) for i, v in fixed.get(var, {}).items() if i in pos]
            if pins:
                at, val = zip(*pins)
                lb[list(at)] = ub[list(at)] = val
        # No plan fits when a memory form — or the sum of the host form and a GPU form (every block's
        # states live on one side or the other) — is, at its least within the variables' bounds, over
        # its limit (e.g. the model states alone overflow GPU and host memory): decided here without
        # the solver. Exact: the least value over the bounds is at most the value of any plan (and
        # every term is a whole number of bytes, so the sums are exact).
        ubf = np.where(np.isinf(ub), 0.0, ub)     # T, the only unbounded variable, has no memory
        d = self.form_coef
        least = self.form_const + np.sum(np.where(d > 0, d * lb, d * ubf), axis=1)
        if np.any(least > self.form_limit * (1 + 1e-12)):
            return None

        # A sweep meets one problem many times (points that differ in what the MILP does not see,
        # e.g. accumulation 2 vs 4, or special cases whose pins coincide): what HiGHS proved (an
        # optimum, or that nothing fits) is kept by the problem's content (simhete.cache); an
        # answer its time limit cut short is not kept
        key = self.content(lb, ub)
        x = cache.MILP_SOLUTIONS.recall(key)
        if x is None:
            x, proven = self._highs(lb, ub, time_limit, log)
            if proven:
                cache.MILP_SOLUTIONS.keep(key, x)
        if x == NO_PLAN:
            return None
        plan = self.predicted.get(x[:3 * nb])
        if plan is None:
            idx = self.idx
            ck = {i: bool(x[k]) for k, i in enumerate(idx)}
            op = {i: bool(x[nb + k]) for k, i in enumerate(idx)}
            oo = {i: bool(x[2 * nb + k]) for k, i in enumerate(idx)}
            loads = predict(self.ctx, self.costs, ck, op, oo, self.swap)
            plan = self.predicted[x[:3 * nb]] = Plan(ck, op, oo, max(loads.values()), loads)
        return plan

    def _highs(self, lb: np.ndarray, ub: np.ndarray, time_limit: float, log: SolveLog | None) -> tuple[tuple, bool]:
        """HiGHS's answer — its solution rounded to integers, or :data:`NO_PLAN` when it gave
        none — and whether HiGHS proved it (optimal, or no plan fits)."""
        # scipy.optimize costs a process ~0.3-0.6 s to import: only a point of this policy that solves pays it
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import csr_array

        if self.matrix is None:
            self.matrix = LinearConstraint(csr_array(*self.coords), self.lo, self.hi)
        t0 = time.monotonic()
        res = milp(self.cost, constraints=self.matrix, integrality=self.integ, bounds=Bounds(lb, ub),
                   options={"time_limit": max(time_limit, 1e-3), "disp": False})
        if log is not None:
            log.seconds += time.monotonic() - t0
            if res.status == 1:        # HiGHS: "Time limit reached" (the only limit set)
                log.cut.append("AutoHete's MILP stopped at solver_time_limit "
                               + ("with a plan not proven optimal" if res.x is not None else "before finding a plan"))
        x = NO_PLAN if res.x is None else tuple(np.round(res.x).astype(int).tolist())
        return x, res.status in (0, 2)        # HiGHS: optimal, or proven infeasible


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

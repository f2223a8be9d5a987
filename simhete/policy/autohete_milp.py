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
  activations still held by blocks before j, the whole of block j's activations, workspace, and
  the 16-bit gradients held for GPU Adam — at most ``(1 − headroom)`` × capacity;
- host memory: offloaded optimizer states, fp32 gradients and 16-bit weight homes fit.

Times come from :meth:`CostModel.task_seconds` of the very ops the schedule will contain
(``seconds`` in :mod:`simhete.policy.layout`), so the MILP and the engine price identically; what
the MILP leaves out is the ordering detail (pipeline fill, queueing behind other blocks) — see
``docs/policies.md`` for the measured gap. Solved with ``scipy.optimize.milp`` (HiGHS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from simhete.opkinds import OpKind
from simhete.policy.base import Context, host_fp32_bytes
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


def solve(ctx: Context, *, pinned: bool, headroom: float, fixed: dict[str, dict[int, bool]],
          time_limit: float, swap: frozenset[int] = frozenset()) -> Plan | None:
    """Solve the MILP; ``fixed[var][block]`` pins a decision (var in checkpoint, offload_param,
    offload_optimizer). Blocks in ``swap`` have their activations swapped to the host (a user's
    choice, not planned): not checkpointed, nothing held on the GPU between their forward and
    backward, their D2H and H2D added to the copy streams. ``None`` if no plan fits."""
    blocks = ctx.blocks
    nb = len(blocks)
    c = block_costs(ctx, pinned)
    trans = {blk.index for blk in blocks if blk.name.startswith("b")}
    idx = [blk.index for blk in blocks]
    # variable layout: x[nb], y[nb], z[nb], v[nb] (z and not y), q[nb] (y and not z), u, T
    X, Y, Z, V, Q = (k * nb for k in range(5))
    U, T = 5 * nb, 5 * nb + 1
    nv = 5 * nb + 2
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
        for var, off in (("checkpoint", X), ("offload_param", Y), ("offload_optimizer", Z)):
            if blk.index in fixed.get(var, {}):
                lb[off + k] = ub[off + k] = float(fixed[var][blk.index])
    rows: list[np.ndarray] = []
    lo: list[float] = []
    hi: list[float] = []

    def row(coef: dict[int, float], low: float = -np.inf, high: float = np.inf) -> None:
        r = np.zeros(nv)
        for j, a in coef.items():
            r[j] += a
        rows.append(r)
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

    # GPU memory at each backward step j
    cap = ctx.gpu_capacity * (1.0 - headroom)
    wmax = max((blk.weight_bytes for blk in blocks if blk.index in trans), default=0)
    base = {U: 2.0 * wmax}
    const = 0.0
    for k, blk in enumerate(blocks):
        const += blk.weight_bytes + blk.master_bytes + blk.optim_bytes
        base[Y + k] = base.get(Y + k, 0.0) - blk.weight_bytes
        base[Z + k] = base.get(Z + k, 0.0) - (blk.master_bytes + blk.optim_bytes)
    for j in range(nb):
        r = dict(base)
        cj = const
        for k, blk in enumerate(blocks[:j]):      # activations held by earlier blocks
            if blk.index in swap:
                continue
            cj += blk.act_bytes
            r[X + k] = r.get(X + k, 0.0) - (blk.act_bytes - blk.ckpt_bytes)
        bj = blocks[j]
        cj += bj.act_bytes + bj.workspace_bytes + bj.grad_bytes
        for k, blk in enumerate(blocks[j + 1:], start=j + 1):   # grads held for GPU Adam
            cj += blk.grad_bytes
            r[Z + k] = r.get(Z + k, 0.0) - blk.grad_bytes
        row(r, high=cap - cj)
    # host memory: offloaded optimizer states and fp32 grads, 16-bit homes of y or z blocks
    r = {}
    for k, blk in enumerate(blocks):
        r[Z + k] = 2 * host_fp32_bytes(blk) + blk.optim_bytes + blk.weight_bytes   # master + grads32
        r[Y + k] = blk.weight_bytes
    row(r, high=ctx.cpu_capacity)

    cost = np.zeros(nv)
    cost[T] = 1.0
    eps = 1e-6 * comp_const / nb   # prefer fewer offloads and checkpoints among equal-time plans
    cost[:3 * nb] = eps
    res = milp(cost, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=integ,
               bounds=Bounds(lb, ub), options={"time_limit": time_limit, "disp": False})
    if res.x is None:
        return None
    x = np.round(res.x).astype(int)
    ck = {i: bool(x[X + k]) for k, i in enumerate(idx)}
    op = {i: bool(x[Y + k]) for k, i in enumerate(idx)}
    oo = {i: bool(x[Z + k]) for k, i in enumerate(idx)}
    loads = predict(ctx, c, ck, op, oo, swap)
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

"""AutoHete's memory model: what a plan places in GPU and host memory, as linear forms over the
MILP's per-block decisions (:mod:`simhete.policy.autohete_milp`), and the same model evaluated for
a given plan. The host form is derived from :func:`host_homes`, the very list the schedule places
in host memory, so the two agree by construction (tests/test_autohete.py checks both forms
against the engine's peaks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simhete.opkinds import MemClass
from simhete.policy.base import Context, model_states
from simhete.policy.process_memory import figures
from simhete.policy.training import accum_steps
from simhete.schedule import Alloc

if TYPE_CHECKING:
    from simhete.policy.autohete_milp import Plan

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
    a constant, is a separate check in :class:`~simhete.policy.autohete_milp.Milp`)."""
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

"""AutoHete's memory model: what a plan places in GPU and host memory, as linear forms over the
MILP's per-block decisions (:mod:`simhete.policy.autohete_milp`), and the same model evaluated for
a given plan. The host form is derived from :func:`host_homes`, the very list the schedule places
in host memory, so the two agree by construction (tests/test_autohete.py checks both forms
against the engine's peaks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from simhete.opkinds import MemClass
from simhete.policy.base import Context, model_states
from simhete.policy.process_memory import figures
from simhete.policy.training import accum_steps
from simhete.schedule import Alloc

if TYPE_CHECKING:
    from simhete.policy.autohete_milp import Plan


def host_homes(ctx: Context, op: dict[int, bool], oo: dict[int, bool]) -> list[Alloc]:
    """What the schedule keeps in host memory for the whole run, per block index: the 16-bit
    weight home of a block whose weights are offloaded (y) *or* whose optimizer is (z; the CPU
    Adam writes the updated weights there) — one home, whatever the reason; fp32 master, Adam m, v
    and fp32 gradients of a CPU-optimised block; with gradient accumulation (k > 1) its 16-bit host
    accumulation buffer (``gacc.*``, DeepSpeed's). The schedule's initial host allocations *are*
    this list, and the MILP's host form is derived from it (:func:`memory_forms`), so the two agree
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


@dataclass(frozen=True)
class MemoryForms:
    """The memory model as linear forms over the plan's variables, in the column layout
    x, y, z, p (one column per block each, in ``ctx.blocks`` order; p = y AND z) and u (= any y):
    ``4 nb + 1`` columns. GPU form j — bytes on each GPU while block j's backward runs, less the
    CUDA context (held to ``gpu_capacity``) — is ``gpu_const[j] + gpu[j] @ v``; the host form —
    bytes in host memory at its peak, with the process's fixed host bytes — is
    ``host_const + host @ v``. ``gpu_named``/``host_named`` mark the coefficients the model names
    (a zero one among them, e.g. a block whose checkpoint is all its activations): the MILP's
    rows hold exactly those. All bytes are integers, so every sum of them is exact."""

    gpu_const: np.ndarray       # (nb,)
    gpu: np.ndarray             # (nb, 4 nb + 1)
    gpu_named: np.ndarray       # (nb, 4 nb + 1) bool
    host_const: float
    host: np.ndarray            # (4 nb + 1,)
    host_named: np.ndarray      # (4 nb + 1,) bool


def memory_forms(ctx: Context, swap: frozenset[int] = frozenset()) -> MemoryForms:
    """The MILP's memory model (the construction peak, a constant, is a separate check in
    :class:`~simhete.policy.autohete_milp.Milp`). GPU form j: every block's 16-bit weights less
    ``y``, its fp32 master and Adam states less ``z``, two fetch buffers of the largest block's
    weights if any ``y`` (u); the activations held by the blocks before j (less what a
    checkpoint drops, ``x``; nothing for a swapped block), block j's activations, workspace and
    gradients (and a per-op selective checkpoint's kept outputs besides, ``x_j``), the next
    swapped block's activations fetched one ahead; the 16-bit gradients held for GPU Adam (less
    ``z``) of the blocks whose backward has run — and with accumulation (micro-step 2 on) of
    every block, kept from micro-step 1. Host form: :func:`host_homes` per block for each (y, z),
    as h00 + (h10−h00)·y + (h01−h00)·z + (h11−h10−h01+h00)·p — exact for binaries — plus the
    swapped activations' peak and the process's fixed host bytes."""
    blocks = ctx.blocks
    nb = len(blocks)
    X, Y, Z, P, U = 0, nb, 2 * nb, 3 * nb, 4 * nb

    def col(f: str) -> np.ndarray:
        return np.array([getattr(blk, f) for blk in blocks], dtype=np.int64)
    w, g, act, ckpt = col("weight_bytes"), col("grad_bytes"), col("act_bytes"), col("ckpt_bytes")
    states = col("master_bytes") + col("optim_bytes")
    over = ckpt + col("recompute_bytes") - act            # a per-op selective checkpoint's kept outputs
    swapped = np.array([blk.index in swap for blk in blocks], dtype=bool)
    held = np.where(swapped, 0, act)                        # what a block holds until its backward
    ga = accum_steps(ctx)
    j, k = np.arange(nb)[:, None], np.arange(nb)[None, :]
    before = k < j
    # the 16-bit gradients held at step j: every other block's with accumulation, else the later ones'
    grads = (k != j) if ga > 1 else (k > j)
    wmax = max((blk.weight_bytes for blk in blocks if blk.name.startswith("b")), default=0)

    coef = np.zeros((nb, 4 * nb + 1), dtype=np.int64)
    named = np.zeros((nb, 4 * nb + 1), dtype=bool)
    xs = before & ~swapped[None, :]
    coef[:, X:Y] = np.where(xs, ckpt - act, 0)
    coef[:, X:Y][np.diag_indices(nb)] = over
    named[:, X:Y] = xs | (np.eye(nb, dtype=bool) & (over != 0)[None, :])
    coef[:, Y:Z] = -w
    coef[:, Z:P] = -states - np.where(grads, g, 0)
    coef[:, U] = 2 * wmax
    named[:, Y:P] = named[:, U] = True
    const = (int(np.sum(w + states)) + np.concatenate(([0], np.cumsum(held)[:-1]))
             + act + col("workspace_bytes") + g + np.concatenate(([0], np.where(swapped[:-1], act[:-1], 0)))
             + np.where(grads, g, 0).sum(axis=1))

    pos = {blk.name: n for n, blk in enumerate(blocks)}
    h = {}
    for yz in ((0, 0), (1, 0), (0, 1), (1, 1)):
        per = [0] * nb
        for a in host_homes(ctx, {blk.index: bool(yz[0]) for blk in blocks},
                            {blk.index: bool(yz[1]) for blk in blocks}):
            per[pos[a.buf.rsplit(".", 1)[1]]] += a.bytes
        h[yz] = np.array(per, dtype=np.int64)
    host = np.zeros(4 * nb + 1, dtype=np.int64)
    host[Y:Z], host[Z:P] = h[1, 0] - h[0, 0], h[0, 1] - h[0, 0]
    host[P:U] = h[1, 1] - h[1, 0] - h[0, 1] + h[0, 0]
    host_const = float(int(np.sum(h[0, 0])) + swap_host_bytes(ctx, swap) + process_figures(ctx)[0])
    return MemoryForms(const.astype(float), coef.astype(float), named, host_const, host.astype(float), host != 0)


def predicted_memory(ctx: Context, plan: Plan, swap: frozenset[int] = frozenset()) -> tuple[float, float]:
    """The MILP's memory model evaluated for a plan: (bytes on each GPU at its peak backward step,
    with the CUDA context; bytes in host memory, the larger of the steady state and the
    construction peak)."""
    idx = [blk.index for blk in ctx.blocks]
    y = [plan.offload_param[i] for i in idx]
    z = [plan.offload_optimizer[i] for i in idx]
    val = np.array([plan.checkpoint[i] for i in idx] + y + z + [a and b for a, b in zip(y, z)] + [any(y)], dtype=float)
    m = memory_forms(ctx, swap)
    _, build, context = process_figures(ctx)
    return float(np.max(m.gpu_const + m.gpu @ val)) + context, max(m.host_const + float(m.host @ val), float(build))

"""Forward/backward of one iteration on one GPU, shared by every training policy.

Per block (``embed``, ``b0`` … ``b{L-1}``, ``head``) the compute stream runs F in order, then
(R and) B in reverse order. What each policy adds around that skeleton — where weights come
from, where gradients go, who runs the optimizer — enters through dependency lists and the
returned task names.

Activation modes per block (a knob shared by several policies):

- ``keep``: F allocates the block's saved activations; B frees them.
- ``recompute``: F keeps only the block input (checkpoint); R re-runs the forward just before B
  and allocates the rest (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost").
- ``swap``: F keeps everything; a D2H copies it to host memory and frees the GPU copy; an H2D
  brings it back one block ahead of its backward (Capuchin/SwapAdvisor-style swapping).

Priorities: smaller runs first. A task's priority is the position in the iteration of the
compute task that needs it, so every stream serves its queue in the order the GPU will consume
it; iteration ``k`` adds ``k * PRIO_IT``.

Gradient accumulation (``train.grad_accum`` = k, DeepSpeed ``gradient_accumulation_steps``): an
iteration is k micro-steps of forward and backward, then one optimizer step. Micro-step m > 1
names its tasks ``it{i}.m{m}.…`` (micro-step 1 keeps the plain names) and shifts its priorities
by (m − 1)·4·(blocks) in the compute band and (m − 1)·(blocks + 1) in the gradient band, so every
stream serves micro-steps in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Literal

from pydantic import Field, model_validator

from simhete.config import Strict
from simhete.opkinds import Action, At, MemClass, OpKind
from simhete.policy.base import Builder, Context, dep_names, shared_ops
from simhete.policy.process_memory import PROCESS_RSS_DEFAULT
from simhete.schedule.model import new_alloc

PRIO_IT = 1_000_000
GRAD_BAND = PRIO_IT // 4     # gradients leaving the GPU: it·PRIO_IT + GRAD_BAND + …
ActMode = Literal["keep", "recompute", "swap"]


class ActivationKnobs(Strict):
    """Activation memory knobs shared by every training policy."""

    checkpointing: Literal["none", "full", "every"] = "none"
    """``full``: recompute every transformer block; ``every``: one block in each ``checkpoint_every``."""
    checkpoint_every: int = Field(2, ge=1)
    activations: list[ActMode] | None = None
    """Per transformer block: keep, recompute or swap. Overrides ``checkpointing`` when given."""
    pin_memory: bool = True
    """Pinned host buffers (DeepSpeed ``pin_memory``). Pageable copies block the host and do not
    overlap compute, as CUDA behaves: they are placed on the compute stream at pageable bandwidth."""
    pin_backend: Literal["torch", "native"] = "torch"
    """Who pins DeepSpeed's host buffers (``DS_PIN_MEMORY_BACKEND``, default ``torch``): ``torch`` —
    PyTorch's pinned caching allocator, which rounds every block up to a power of two
    (``pinned_rounding``); ``native`` — DeepSpeed's DeepNVMe locked tensors of the exact size."""
    process_rss: float = Field(PROCESS_RSS_DEFAULT, ge=0)
    """Resident host memory of one training process (Python, torch, CUDA libraries), bytes per
    rank (``process_baseline``; default: the measurement in pytorch/pytorch#12873)."""
    model_load: Literal["auto", "full", "zero-init"] = "auto"
    """How the model is built in host memory: ``full`` — every rank materialises the whole model
    in its working dtype (Hugging Face ``from_pretrained`` without ``zero.Init``); ``zero-init`` —
    partitioned while built (``deepspeed.zero.Init``); ``auto`` — ``zero-init`` for
    ``zero-infinity`` (Transformers enables it under a ZeRO-3 config), else ``full``."""

    @model_validator(mode="after")
    def _consistent(self) -> "ActivationKnobs":
        if self.activations is not None and self.checkpointing != "none":
            raise ValueError("give either checkpointing or a per-block activations list, not both")
        return self


def size_decisions(ctx: Context) -> tuple[bool, ...]:
    """What :func:`forward_backward` decides from sizes: which blocks have a workspace buffer (part
    of the structure key of a policy built on it, see ``Policy.structure_key``)."""
    return tuple(map(bool, map(_WORKSPACE, ctx.blocks)))     # a sweep asks at every point


_WORKSPACE = attrgetter("workspace_bytes")


def act_modes(ctx: Context, k: ActivationKnobs) -> dict[int, ActMode]:
    """Activation mode per block index; embedding and head always keep."""
    blocks = [b for b in ctx.blocks if b.name.startswith("b")]
    if k.activations is not None and len(k.activations) != len(blocks):
        from simhete.errors import ConfigError
        raise ConfigError(ctx.scenario.file, "knobs.activations", f"{len(k.activations)} entries",
                          allowed=f"one entry per transformer block ({len(blocks)})")
    modes: dict[int, ActMode] = {b.index: "keep" for b in ctx.blocks}
    for j, b in enumerate(blocks):
        if k.activations is not None:
            modes[b.index] = k.activations[j]
        elif k.checkpointing == "full" or (k.checkpointing == "every" and j % k.checkpoint_every == 0):
            modes[b.index] = "recompute"
    return modes


def tname(it: int, what: str, blk: str, gpu: int = 0, n_gpus: int = 1, m: int = 1) -> str:
    """Stable buffer name in the tasks' naming scheme, e.g. ``it1.w.f.b12``; on multi-GPU runs
    ``it1.w.f.b12@g3``; micro-step m > 1 of a gradient-accumulating iteration ``it1.m2.w.f.b12``.
    (Task names are derived from their action: ``Action.task_name``.)"""
    return f"it{it}." + (f"m{m}." if m > 1 else "") + f"{what}.{blk}" + (f"@g{gpu}" if n_gpus > 1 else "")


# The compute action of each phase letter of a use trace (``("F", blk)``, ``("B", blk)``)
PHASE = {"F": Action.FORWARD, "R": Action.RECOMPUTE, "B": Action.BACKWARD}


def hook_reduce_waits(blocks: tuple, buckets: list[list[int]]) -> dict[int, int]:
    """Without ``overlap_comm`` DeepSpeed reduces gradient bucket j from the backward hook of the
    first gradient of bucket j+1, on the compute stream (stage_1_and_2.py and stage3.py:
    ``reduce_independent_p_g_buckets_and_remove_grads``): bucket j -> the block whose recompute or
    backward waits for that reduction (the one after bucket j+1's first block, in backward order).
    The last bucket goes out after the backward."""
    order = [blk.index for blk in reversed(blocks)]
    pos = {i: p for p, i in enumerate(order)}
    out: dict[int, int] = {}
    for j in range(len(buckets) - 1):
        p = pos[buckets[j + 1][0]] + 1
        if p < len(order):
            out[j] = order[p]
    return out


def accum_steps(ctx: Context) -> int:
    """Micro-steps per iteration (``train.grad_accum``), checked against the priority bands: the
    compute band holds k·4·(blocks) priorities and the gradient band k·(blocks + 1)."""
    k = ctx.grad_accum
    nb = len(ctx.blocks)
    most = GRAD_BAND // (4 * nb)
    if k > most:
        from simhete.errors import ConfigError
        raise ConfigError(ctx.scenario.file, "train.grad_accum", k,
                          allowed=f"at most {most} micro-steps for a model of {nb} blocks")
    return k


def grad_prio(it: int, j: int, nb: int, m: int = 1) -> int:
    """Priority of the j-th gradient transfer (0 ≤ j ≤ nb) of micro-step m."""
    return it * PRIO_IT + GRAD_BAND + (m - 1) * (nb + 1) + j


def copy_stream(gpu: int, direction: str, pinned: bool) -> str:
    """Pinned copies use the copy engine's stream; pageable ones serialise with compute."""
    return f"gpu{gpu}.{direction}" if pinned else f"gpu{gpu}.compute"


def fwd_prio(it: int, idx: int, m: int = 1, n_blocks: int = 0) -> int:
    return it * PRIO_IT + (m - 1) * 4 * n_blocks + 2 * idx


def bwd_prio(it: int, idx: int, n_blocks: int, m: int = 1) -> int:
    return it * PRIO_IT + (m - 1) * 4 * n_blocks + 2 * n_blocks + 2 * (n_blocks - 1 - idx)


@dataclass
class IterTasks:
    F: dict[int, str] = field(default_factory=dict)
    B: dict[int, str] = field(default_factory=dict)
    R: dict[int, str] = field(default_factory=dict)
    grads: dict[int, str] = field(default_factory=dict)   # gradient buffer per block (on the GPU)
    first_F: str = ""
    last_B: str = ""


class _BlockPlan:
    """What :func:`forward_backward` emits for one block at one (iteration, micro-step, GPU) that
    does not depend on the caller's dependencies, frees or activation mode: the task and buffer
    names, and the allocations of fixed kind (their bytes are the block's). Kept per workload by
    :func:`_plan`, so every structure built on one workload (a sweep's bucket sizes, checkpointing,
    delayed update) shares the strings and the immutable Allocs instead of making them again."""

    __slots__ = ("index", "pos", "name", "fwd_ops", "bwd_ops", "rec_ops", "act_bytes", "grad_bytes", "act", "F",
                 "F_keep", "F_ckpt", "F_frees", "R", "ract", "R_allocs", "B", "grad", "B_grad", "B_view", "B_none",
                 "ws_B", "keep_frees", "ckpt_frees", "at", "swap_out", "swap_in", "cact", "sact")

    def __init__(self, blk: Any, p: int, head: str, tail: str, pool: str, grad_pool: str, at: At) -> None:
        ACT, BUF = MemClass.ACTIVATIONS, MemClass.BUFFERS
        bn = blk.name
        self.index, self.pos, self.name = blk.index, p, bn
        self.fwd_ops, self.bwd_ops, self.rec_ops = blk.fwd_ops, blk.bwd_ops, blk.recompute_ops
        self.act_bytes, self.grad_bytes = blk.act_bytes, blk.grad_bytes
        self.act = act = f"{head}act.{bn}{tail}"
        self.at = at
        self.F = Action.FORWARD.task_name(at)
        self.R = Action.RECOMPUTE.task_name(at)
        self.ract = ract = f"{head}ract.{bn}{tail}"
        self.B = Action.BACKWARD.task_name(at)
        self.swap_out, self.swap_in = Action.ACT_D2H.task_name(at), Action.ACT_H2D.task_name(at)
        self.cact, self.sact = f"{head}cact.{bn}{tail}", f"{head}sact.{bn}{tail}"
        self.grad = grad = f"{head}grad.{bn}{tail}"
        self.R_allocs = (new_alloc(ract, pool, blk.recompute_bytes, ACT),)
        grad_alloc = new_alloc(grad, grad_pool, blk.grad_bytes, MemClass.GRADS)
        view = new_alloc(grad, grad_pool, 0, MemClass.GRADS)      # a view into a buffer held elsewhere
        keep = new_alloc(act, pool, blk.act_bytes, ACT)
        ckpt = new_alloc(act, pool, blk.ckpt_bytes, ACT)
        if blk.workspace_bytes:
            ws_f, self.ws_B = f"{head}ws.F.{bn}{tail}", f"{head}ws.B.{bn}{tail}"
            ws_fa = new_alloc(ws_f, pool, blk.workspace_bytes, BUF)
            ws_ba = new_alloc(self.ws_B, pool, blk.workspace_bytes, BUF)
            # (allocations, sized) of F by mode, and of B with and without a gradient buffer
            self.F_keep, self.F_ckpt = ((keep, ws_fa), (p, "fwd", ("act", "ws"))), ((ckpt, ws_fa), (p, "fwd", ("ckpt", "ws")))
            self.F_frees = (ws_f,)
            self.B_grad, self.B_none = ((grad_alloc, ws_ba), (p, "bwd", (None, "ws"))), ((ws_ba,), (p, "bwd", ("ws",)))
            self.B_view = ((view, ws_ba), (p, "bwd", (None, "ws")))
            ws_b = (self.ws_B,)
        else:
            self.ws_B = None
            self.F_keep, self.F_ckpt = ((keep,), (p, "fwd", ("act",))), ((ckpt,), (p, "fwd", ("ckpt",)))
            self.F_frees = ()
            self.B_grad, self.B_none = ((grad_alloc,), (p, "bwd", (None,))), ((), (p, "bwd", ()))
            self.B_view = ((view,), (p, "bwd", (None,)))
            ws_b = ()
        # B's frees when the caller adds none: the activations (and the recompute's), the workspace
        self.keep_frees, self.ckpt_frees = (act, *ws_b), (act, ract, *ws_b)


def _plan(wl: Any, it: int, m: int, gpu: int, multi: bool, grad_pool: str | None) -> tuple[_BlockPlan, ...]:
    """The :class:`_BlockPlan` of every block of workload ``wl``, in block order, kept on the
    workload (:meth:`~simhete.workload.Workload.keep`) when the arguments have exact types."""
    def make() -> tuple[_BlockPlan, ...]:
        head = f"it{it}." + (f"m{m}." if m > 1 else "")       # tname(it, what, blk, gpu, n, m), split
        tail = f"@g{gpu}" if multi else ""
        pool = f"gpu{gpu}"
        rank = gpu if multi else -1
        return tuple(_BlockPlan(blk, p, head, tail, pool, grad_pool or pool, At(it, blk.name, m, rank))
                     for p, blk in enumerate(wl.blocks))
    if type(it) is int and type(m) is int and type(gpu) is int:     # True == 1 but names differ
        return wl.keep(("training.plan", it, m, gpu, multi, grad_pool), make)
    return make()


def forward_backward(b: Builder, ctx: Context, it: int, modes: dict[int, ActMode], *,
                     gpu: int = 0, start_deps: list[str] = (),
                     fwd_weight_deps: dict[int, list[str]] | None = None,
                     bwd_weight_deps: dict[int, list[str]] | None = None,
                     pinned: bool = True, grad_pool: str | None = None,
                     fwd_frees: dict[int, list[str]] | None = None,
                     bwd_frees: dict[int, list[str]] | None = None,
                     grad_buffers: bool | set[int] = True, m: int = 1, grad_views: bool = False) -> IterTasks:
    """Emit one iteration's forward and backward for ``gpu``; return the task names.

    ``fwd_weight_deps[i]`` / ``bwd_weight_deps[i]``: tasks that must finish before block i's
    forward / recompute+backward may use its weights. B allocates the block's 16-bit gradient
    buffer (named in the result) in ``grad_pool`` (default the GPU); the policy frees it.
    ``fwd_frees[i]`` / ``bwd_frees[i]``: extra buffers (fetched weights) that block i's F / B
    releases when it ends. ``grad_buffers=False``: gradients overwrite their parameters in place
    (PatrickStar's chunk reuse), or they accumulate into the buffer an earlier micro-step
    allocated, so B allocates no gradient buffer; a set: only those blocks' B allocate one.
    ``m``: the micro-step (names, priorities). ``grad_views``: the gradient buffers B allocates
    are views into a buffer the policy holds (DeepSpeed ZeRO-1/2's contiguous ipg bucket,
    :func:`simhete.policy.dataparallel.ipg_buffer`): they name the block's gradients, own no bytes.

    The names and fixed allocations come from the workload's kept :func:`_plan`; the rows go to
    ``b.add_row`` with exact types (tuples, no empty names), as ``b.add`` would store them.
    """
    comp = f"gpu{gpu}.compute"
    pool = f"gpu{gpu}"
    blocks = ctx.blocks
    nb = len(blocks)
    plan = _plan(ctx.workload, it, m, gpu, ctx.n_gpus > 1, grad_pool)
    fw = fwd_weight_deps or {}
    bw = bwd_weight_deps or {}
    ff = fwd_frees or {}
    bf = bwd_frees or {}
    ACT = MemClass.ACTIVATIONS
    FORWARD, BACKWARD, RECOMPUTE = Action.FORWARD, Action.BACKWARD, Action.RECOMPUTE
    FWD, BWD, RCAT = FORWARD.cat, BACKWARD.cat, RECOMPUTE.cat
    row = b.add_row
    F, B, R, grads_out = {}, {}, {}, {}
    out = IterTasks(F, B, R, grads_out)
    prev: tuple[str, ...] = dep_names(start_deps)
    base_f = fwd_prio(it, 0, m, nb)
    # Cells that depend on sizes (micro-batch, sequence length) are marked: references into the
    # size table (policy/sizes.py), ops and allocation bytes that follow from the block's activations
    d2h_code, h2d_code = ("act.d2h", "act.h2d") if pinned else ("act.d2h.pageable", "act.h2d.pageable")
    for e in plan:
        i = e.index
        mode = modes[i]
        allocs, sized = e.F_ckpt if mode == "recompute" else e.F_keep
        extra = ff.get(i)
        frees = tuple(extra) + e.F_frees if extra else e.F_frees
        extra = fw.get(i)
        fp = base_f + 2 * i                                   # fwd_prio(it, i, m, nb)
        f = row((e.F, comp, FWD, e.fwd_ops, prev + dep_names(extra) if extra else prev, fp, allocs, frees, it, i,
                 FORWARD, e.at), sized)
        F[i] = f
        prev = (f,)
        if mode == "swap":
            row((e.swap_out, copy_stream(gpu, "d2h", pinned), Action.ACT_D2H.cat,
                 shared_ops(OpKind.D2H, e.act_bytes, pinned), prev, fp + 1,
                 (new_alloc(e.cact, "cpu", e.act_bytes, ACT),), (e.act,), it, i, Action.ACT_D2H, e.at),
                (e.pos, d2h_code, ("act",)))
    out.first_F = F[blocks[0].index]

    last_F = F[blocks[-1].index]
    prev = (last_F,)
    base_b = bwd_prio(it, 0, nb, m)                           # bwd_prio(it, i, nb, m) = base_b - 2 * i
    gb_all = isinstance(grad_buffers, bool)
    for pos in range(nb - 1, -1, -1):
        e = plan[pos]
        i, mode = e.index, modes[e.index]
        bp = base_b - 2 * i
        extra = bw.get(i)
        deps = prev + dep_names(extra) if extra else prev
        if mode == "recompute":
            r = row((e.R, comp, RCAT, e.rec_ops, deps, bp, e.R_allocs, (), it, i, RECOMPUTE, e.at),
                    (pos, "rec", ("ract",)))
            R[i] = r
            deps = (r,)
            frees = e.ckpt_frees
        elif mode == "swap":
            # bring activations back while the previous backward block computes (one block ahead)
            ahead = B[plan[pos + 2].index] if pos + 2 < nb else last_F
            sact = e.sact
            h = row((e.swap_in, copy_stream(gpu, "h2d", pinned), Action.ACT_H2D.cat,
                     shared_ops(OpKind.H2D, e.act_bytes, pinned), (e.swap_out, ahead), bp,
                     (new_alloc(sact, pool, e.act_bytes, ACT),), (e.cact,), it, i, Action.ACT_H2D, e.at),
                    (pos, h2d_code, ("act",)))
            deps = deps + (h,)
            frees = (sact, e.ws_B) if e.ws_B else (sact,)
        else:
            frees = e.keep_frees
        grads = e.grad_bytes and (grad_buffers if gb_all else i in grad_buffers)
        allocs, sized = (e.B_view if grad_views else e.B_grad) if grads else e.B_none
        extra = bf.get(i)
        if extra:       # the caller's frees go before the workspace's
            extra = tuple(extra)
            frees = frees[:-1] + extra + frees[-1:] if e.ws_B else frees + extra
        bt = row((e.B, comp, BWD, e.bwd_ops, deps, bp + 1, allocs, frees, it, i, BACKWARD, e.at), sized)
        B[i] = bt
        if grads:
            grads_out[i] = e.grad
        prev = (bt,)
    out.last_B = prev[0]
    return out

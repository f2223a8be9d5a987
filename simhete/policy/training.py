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
from typing import Literal

from pydantic import Field, model_validator

from simhete.config import Strict
from simhete.opkinds import MemClass, OpKind, TaskCat
from simhete.policy.base import Builder, Context, shared_ops
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
    """Stable task name, e.g. ``it1.F.b12``; on multi-GPU runs ``it1.F.b12@g3``; micro-step m > 1
    of a gradient-accumulating iteration ``it1.m2.F.b12``."""
    return f"it{it}." + (f"m{m}." if m > 1 else "") + f"{what}.{blk}" + (f"@g{gpu}" if n_gpus > 1 else "")


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


def forward_backward(b: Builder, ctx: Context, it: int, modes: dict[int, ActMode], *,
                     gpu: int = 0, start_deps: list[str] = (),
                     fwd_weight_deps: dict[int, list[str]] | None = None,
                     bwd_weight_deps: dict[int, list[str]] | None = None,
                     pinned: bool = True, grad_pool: str | None = None,
                     fwd_frees: dict[int, list[str]] | None = None,
                     bwd_frees: dict[int, list[str]] | None = None,
                     grad_buffers: bool | set[int] = True, m: int = 1) -> IterTasks:
    """Emit one iteration's forward and backward for ``gpu``; return the task names.

    ``fwd_weight_deps[i]`` / ``bwd_weight_deps[i]``: tasks that must finish before block i's
    forward / recompute+backward may use its weights. B allocates the block's 16-bit gradient
    buffer (named in the result) in ``grad_pool`` (default the GPU); the policy frees it.
    ``fwd_frees[i]`` / ``bwd_frees[i]``: extra buffers (fetched weights) that block i's F / B
    releases when it ends. ``grad_buffers=False``: gradients overwrite their parameters in place
    (PatrickStar's chunk reuse), or they accumulate into the buffer an earlier micro-step
    allocated, so B allocates no gradient buffer; a set: only those blocks' B allocate one.
    ``m``: the micro-step (names, priorities).
    """
    pool = f"gpu{gpu}"
    comp = f"gpu{gpu}.compute"
    blocks = ctx.blocks
    nb = len(blocks)
    fw = fwd_weight_deps or {}
    bw = bwd_weight_deps or {}
    ff = fwd_frees or {}
    bf = bwd_frees or {}
    # every name is tname(it, what, blk, gpu, n, m) = head + what + "." + blk + tail
    head = tname(it, "", "", gpu, 1, m)[:-1]
    tail = f"@g{gpu}" if ctx.n_gpus > 1 else ""
    ACT, BUF, GRADS = MemClass.ACTIVATIONS, MemClass.BUFFERS, MemClass.GRADS
    add = b.add
    out = IterTasks()
    prev: tuple[str, ...] = tuple(start_deps)
    base_f = fwd_prio(it, 0, m, nb)
    # Cells that depend on sizes (micro-batch, sequence length) are marked for structural
    # templates (policy/template.py): ops and allocation bytes derived from the block's activations
    d2h_code, h2d_code = ("act.d2h", "act.h2d") if pinned else ("act.d2h.pageable", "act.h2d.pageable")
    for p, blk in enumerate(blocks):
        i, mode, bn = blk.index, modes[blk.index], blk.name
        act = f"{head}act.{bn}{tail}"
        keep = blk.ckpt_bytes if mode == "recompute" else blk.act_bytes
        allocs = [new_alloc(act, pool, keep, ACT)]
        frees = list(ff.get(i, ()))
        if blk.workspace_bytes:
            ws = f"{head}ws.F.{bn}{tail}"
            allocs.append(new_alloc(ws, pool, blk.workspace_bytes, BUF))
            frees.append(ws)
            sized = (p, "fwd", ("ckpt" if mode == "recompute" else "act", "ws"))
        else:
            sized = (p, "fwd", ("ckpt" if mode == "recompute" else "act",))
        fp = base_f + 2 * i                                   # fwd_prio(it, i, m, nb)
        f = add(f"{head}F.{bn}{tail}", comp, TaskCat.FWD, blk.fwd_ops, deps=prev + tuple(fw.get(i, ())),
                prio=fp, allocs=allocs, frees=frees, it=it, block=i, sized=sized)
        out.F[i] = f
        prev = (f,)
        if mode == "swap":
            b.add(f"{head}D2H.act.{bn}{tail}", copy_stream(gpu, "d2h", pinned), TaskCat.D2H,
                  shared_ops(OpKind.D2H, blk.act_bytes, pinned), deps=prev, prio=fp + 1,
                  allocs=(new_alloc(f"{head}cact.{bn}{tail}", "cpu", blk.act_bytes, ACT),),
                  frees=(act,), it=it, block=i, sized=(p, d2h_code, ("act",)))
    out.first_F = out.F[blocks[0].index]

    prev = (out.F[blocks[-1].index],)
    bwd_order = list(reversed(blocks))
    for pos, blk in enumerate(bwd_order):
        i, mode, bn = blk.index, modes[blk.index], blk.name
        p = nb - 1 - pos                                      # position in ctx.blocks
        act = f"{head}act.{bn}{tail}"
        bp = bwd_prio(it, i, nb, m)
        deps = prev + tuple(bw.get(i, ()))
        frees = [act]
        if mode == "recompute":
            ract = f"{head}ract.{bn}{tail}"
            r = add(f"{head}R.{bn}{tail}", comp, TaskCat.RECOMPUTE, blk.fwd_ops, deps=deps,
                    prio=bp, allocs=(new_alloc(ract, pool, blk.act_bytes - blk.ckpt_bytes, ACT),),
                    it=it, block=i, sized=(p, "fwd", ("ract",)))
            out.R[i] = r
            deps = (r,)
            frees.append(ract)
        elif mode == "swap":
            # bring activations back while the previous backward block computes (one block ahead)
            ahead = out.B[bwd_order[pos - 2].index] if pos >= 2 else out.F[blocks[-1].index]
            sact = f"{head}sact.{bn}{tail}"
            h = add(f"{head}H2D.act.{bn}{tail}", copy_stream(gpu, "h2d", pinned), TaskCat.H2D,
                    shared_ops(OpKind.H2D, blk.act_bytes, pinned),
                    deps=(f"{head}D2H.act.{bn}{tail}", ahead), prio=bp,
                    allocs=(new_alloc(sact, pool, blk.act_bytes, ACT),),
                    frees=(f"{head}cact.{bn}{tail}",), it=it, block=i, sized=(p, h2d_code, ("act",)))
            deps = deps + (h,)
            frees = [sact]
        grad = f"{head}grad.{bn}{tail}"
        grads = blk.grad_bytes and (grad_buffers if isinstance(grad_buffers, bool) else i in grad_buffers)
        allocs = [new_alloc(grad, grad_pool or pool, blk.grad_bytes, GRADS)] if grads else []
        frees += bf.get(i, ())
        if blk.workspace_bytes:
            ws = f"{head}ws.B.{bn}{tail}"
            allocs.append(new_alloc(ws, pool, blk.workspace_bytes, BUF))
            frees.append(ws)
            sized = (p, "bwd", (None, "ws") if grads else ("ws",))
        else:
            sized = (p, "bwd", (None,) if grads else ())
        bt = add(f"{head}B.{bn}{tail}", comp, TaskCat.BWD, blk.bwd_ops, deps=deps, prio=bp + 1,
                 allocs=allocs, frees=frees, it=it, block=i, sized=sized)
        out.B[i] = bt
        if grads:
            out.grads[i] = grad
        prev = (bt,)
    out.last_B = prev[0]
    return out

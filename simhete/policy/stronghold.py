"""``stronghold``: StrongHold (Sun et al., "STRONGHOLD: Fast and Affordable Billion-Scale Deep
Learning Model Training", SC'22).

Only a working window of ``window_size`` (w) transformer blocks' 16-bit weights is on the GPU; the
rest live in host memory. The window slides forward through the forward pass (after block p runs
it is evicted and block p+w is prefetched) and backward through the backward pass (after block p's
backward, block p−w is prefetched). Blocks are updated where their gradients are when they leave
the window: the w blocks that end the backward inside the window (b0 … b{w−1}), the embedding and
the head keep fp32 master weights and Adam states on the GPU and step there after the backward;
every other block's gradients go D2H right after its backward and the CPU updates it (Adam on the
CPU overlapped with the rest of the backward), its new weights waiting in host memory until the
next forward fetches them. A GPU-updated block that the forward window evicts is copied D2H first
(its host copy is stale). The next forward of a block waits only for that block's update.

With ``window_size`` ≥ the number of blocks nothing moves and the schedule is gpu-only's.
Unset, ``window_size`` is the largest window whose static memory estimate fits the GPU.
With N GPUs the offloaded blocks are sharded (each GPU moves 1/N over its link, NVLink all-gather
and reduce-scatter) and GPU-updated blocks' gradients are all-reduced.
"""

from __future__ import annotations

from pydantic import Field

from simhete.opkinds import MemClass, OpKind, TaskCat
from simhete.policy.base import Builder, Context, Policy, model_states
from simhete.policy.dataparallel import DataParallel, shard
from simhete.policy.layout import activation_peak
from simhete.policy.process_memory import process_memory
from simhete.policy.registry import register
from simhete.policy.training import (PRIO_IT, ActivationKnobs, accum_steps, act_modes, bwd_prio, copy_stream,
                                     forward_backward, fwd_prio, grad_prio, tname)
from simhete.schedule import Alloc, Op, Schedule


class StrongHoldKnobs(ActivationKnobs):
    window_size: int | None = Field(None, ge=1)
    """Transformer blocks whose weights are on the GPU at once (StrongHold's working window).
    Unset: the largest window that fits by a static memory estimate."""


def auto_window(ctx: Context, k: StrongHoldKnobs) -> int:
    """Largest w whose static GPU memory estimate fits: resident embed/head states, the window's
    16-bit weights, GPU optimizer states and gradients of the w blocks updated on the GPU, and the
    activation peak. At least 1."""
    modes = act_modes(ctx, k)
    trans = [blk for blk in ctx.blocks if blk.name.startswith("b")]
    ends = [blk for blk in ctx.blocks if not blk.name.startswith("b")]
    fixed = sum(blk.weight_bytes + blk.master_bytes + blk.optim_bytes + blk.grad_bytes for blk in ends)
    fixed += activation_peak(ctx.blocks, modes) + max(blk.grad_bytes for blk in trans)
    per = max(blk.weight_bytes + blk.master_bytes + blk.optim_bytes + blk.grad_bytes for blk in trans)
    w = (ctx.gpu_capacity - fixed) // per if per else len(trans)
    return int(max(1, min(len(trans), w)))


@register("stronghold")
class StrongHold(Policy):
    Knobs = StrongHoldKnobs
    multi_gpu = True

    def build(self, ctx: Context) -> Schedule:
        k = self.k
        b = Builder()
        dp = DataParallel(b, ctx, k.pin_memory)
        n = ctx.n_gpus
        modes = act_modes(ctx, k)
        trans = [blk for blk in ctx.blocks if blk.name.startswith("b")]
        L = len(trans)
        w = min(L, k.window_size if k.window_size is not None else auto_window(ctx, k))
        nb = len(ctx.blocks)
        pos = {blk.index: p for p, blk in enumerate(trans)}
        on_cpu = {blk.index for blk in trans[w:]}          # updated by the CPU
        evict_fwd = {blk.index for blk in trans[:L - w]}   # leave the window during the forward
        gpu_upd = [blk for blk in ctx.blocks if blk.index not in on_cpu and blk.params]

        initial = []
        for g in dp.gpus:
            initial += model_states(ctx, {MemClass.WEIGHTS: "gpu"}, gpu=g,
                                    blocks={blk.index for blk in ctx.blocks if pos.get(blk.index, 0) < w})
            initial += model_states(ctx, {MemClass.MASTER: "gpu", MemClass.OPTIM: "gpu"}, gpu=g,
                                    blocks={blk.index for blk in gpu_upd})
        initial += model_states(ctx, {MemClass.WEIGHTS: "cpu"}, blocks=on_cpu | evict_fwd)
        initial += model_states(ctx, {MemClass.MASTER: "cpu", MemClass.OPTIM: "cpu", MemClass.GRADS32: "cpu"},
                                blocks=on_cpu)
        cur = {g: {blk.index: f"weights.g{g}.{blk.name}" for blk in trans[:w]} for g in dp.gpus}
        updated: dict[int, dict[int, str]] = {}   # block -> gpu -> task after which its update is done
        cpu_adam: dict[int, str] = {}
        last_B: dict[int, str] = {}
        ga = accum_steps(ctx)
        if ga > 1:   # 16-bit host accumulation buffers of the CPU-updated blocks (as DeepSpeed's)
            initial += [Alloc(f"gacc.{blk.name}", "cpu", blk.grad_bytes, MemClass.GRADS)
                        for blk in trans[w:] if blk.grad_bytes]
        for it in range(1, ctx.iterations + 1):
            prev_out: dict[int, dict[int, str]] = {}
            for m in range(1, ga + 1):
                dp.m = m
                t = self._micro(b, ctx, dp, it, m, w, modes, cur, updated if m == 1 else {},
                                cpu_adam if m == 1 else {}, last_B)
                for blk in reversed(trans[w:]):         # CPU-updated blocks' gradients leave at once
                    i = blk.index
                    deps = {g: [t[g].B[i]] for g in dp.gpus}
                    frees = {g: [t[g].grads[i]] for g in dp.gpus}
                    prio = grad_prio(it, nb - i, nb, m)
                    prev_out[i] = dp.from_gpu(it, "D2H.g", blk.name, blk.grad_bytes, deps, prio, i, frees=frees) \
                        if m == 1 else dp.accumulate(it, "D2H.g", blk.name, blk.grad_bytes, deps, prev_out[i], prio,
                                                     i, frees=frees)
                if m == 1:
                    grads = {g: t[g].grads for g in dp.gpus}
                last_B = {g: t[g].last_B for g in dp.gpus}
            dp.m = 1
            for blk in reversed(trans[w:]):             # CPU updates, overlapped with the backward
                i = blk.index
                cpu_adam[i] = b.add(tname(it, "ADAM.cpu", blk.name), "cpu.optim", TaskCat.OPTIM_CPU,
                                    (Op(OpKind.ADAM_CPU, n=blk.params, dtype="fp32"),),
                                    deps=sorted(prev_out[i].values()), prio=fwd_prio(it + 1, i), it=it, block=i)
            for blk in gpu_upd:                          # GPU updates after the backward, as gpu-only
                i = blk.index
                ar = dp.collective(OpKind.ALLREDUCE, it, "AR.g", blk.name, blk.grad_bytes,
                                   {g: [t[g].B[i]] for g in dp.gpus}, grad_prio(it, nb - i, nb), i)
                updated[i] = {g: b.add(tname(it, "ADAM.gpu", blk.name, g, n), f"gpu{g}.compute", TaskCat.OPTIM_GPU,
                                       (Op(OpKind.ADAM_GPU, n=blk.params, dtype="fp32"),),
                                       deps=[t[g].last_B] + ([ar[g]] if ar else []),
                                       prio=it * PRIO_IT + PRIO_IT // 2 + i, frees=[grads[g][i]], it=it, block=i)
                              for g in dp.gpus}
        initial = list(initial) + process_memory(ctx, self.k, self.name, initial)   # what a real process holds
        return b.build(ctx.pools(), initial, ctx.iterations, {"policy": self.name, "window_size": str(w)})

    def _micro(self, b: Builder, ctx: Context, dp: DataParallel, it: int, m: int, w: int, modes: dict,
               cur: dict[int, dict[int, str]], updated: dict[int, dict[int, str]], cpu_adam: dict[int, str],
               last_B: dict[int, str]) -> dict:
        """One micro-step's sliding windows and forward/backward on every GPU. ``updated`` /
        ``cpu_adam``: the previous step's updates the forward waits for (micro-step 1 only);
        ``cur`` (block -> gpu -> buffer holding its weights) is updated in place."""
        k = self.k
        n, nb = ctx.n_gpus, len(ctx.blocks)
        trans = [blk for blk in ctx.blocks if blk.name.startswith("b")]
        L = len(trans)
        on_cpu = {blk.index for blk in trans[w:]}
        evict_fwd = {blk.index for blk in trans[:L - w]}
        fdeps = {g: {i: [u[g]] for i, u in updated.items() if i not in on_cpu} for g in dp.gpus}
        bdeps = {g: {} for g in dp.gpus}
        ffrees = {g: {} for g in dp.gpus}
        bfrees = {g: {} for g in dp.gpus}
        evicted: dict[int, dict[int, str]] = {}   # block -> gpu -> task whose end frees its slot
        for p, blk in enumerate(trans):            # forward window
            i = blk.index
            if p >= w:
                old = trans[p - w]
                trig = {g: [evicted[old.index][g]] + ([cpu_adam[i]] if i in cpu_adam else []) for g in dp.gpus}
                buf = {g: dp.name(it, "w.f", blk.name, g) for g in dp.gpus}
                ready = dp.to_gpu(it, "H2D.wf", blk.name, blk.weight_bytes, trig, fwd_prio(it, i, m, nb), i,
                                  allocs={g: [Alloc(buf[g], f"gpu{g}", blk.weight_bytes, MemClass.WEIGHTS)]
                                          for g in dp.gpus})
                for g in dp.gpus:
                    fdeps[g].setdefault(i, []).append(ready[g])
                    cur[g][i] = buf[g]
            F = {g: tname(it, "F", blk.name, g, n, m) for g in dp.gpus}
            if i in evict_fwd:
                if i in on_cpu or m > 1:   # host copy current (no update since micro-step 1's copy)
                    evicted[i] = F
                    for g in dp.gpus:
                        ffrees[g].setdefault(i, []).append(cur[g][i])
                else:   # updated on the GPU: its host copy is stale, copy it home first
                    evicted[i] = {g: b.add(dp.name(it, "D2H.w", blk.name, g), copy_stream(g, "d2h", k.pin_memory),
                                           TaskCat.D2H,
                                           (Op(OpKind.D2H, n=shard(blk.weight_bytes, n, g), pinned=k.pin_memory),),
                                           deps=[F[g]], prio=fwd_prio(it, i, m, nb) + 1, frees=[cur[g][i]], it=it,
                                           block=i) for g in dp.gpus}
        for p in range(L - 1, -1, -1):              # backward window
            blk = trans[p]
            i = blk.index
            if i in evict_fwd:
                src = trans[p + w]
                trig = {g: [tname(it, "B", src.name, g, n, m)] for g in dp.gpus}
                buf = {g: dp.name(it, "w.b", blk.name, g) for g in dp.gpus}
                # a GPU-updated block stays in the window into the next iteration (persist)
                ready = dp.to_gpu(it, "H2D.wb", blk.name, blk.weight_bytes, trig, bwd_prio(it, i, nb, m), i,
                                  allocs={g: [Alloc(buf[g], f"gpu{g}", blk.weight_bytes, MemClass.WEIGHTS,
                                                    persist=i not in on_cpu)] for g in dp.gpus})
                for g in dp.gpus:
                    bdeps[g].setdefault(i, []).append(ready[g])
                    cur[g][i] = buf[g]
            if i in on_cpu:
                for g in dp.gpus:
                    bfrees[g].setdefault(i, []).append(cur[g].pop(i))
        return {g: forward_backward(b, ctx, it, modes, gpu=g, start_deps=[last_B[g]] if g in last_B else [],
                                    fwd_weight_deps=fdeps[g], bwd_weight_deps=bdeps[g], fwd_frees=ffrees[g],
                                    bwd_frees=bfrees[g], pinned=k.pin_memory, m=m,
                                    grad_buffers=True if m == 1 else on_cpu)
                for g in dp.gpus}

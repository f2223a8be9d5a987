"""``stronghold``: StrongHold (Sun et al., "STRONGHOLD: Fast and Affordable Billion-Scale Deep
Learning Model Training", SC'22; code: the SC'22 artifact github.com/strongh2/sc22-ae, ``SHv0/``).

Only a working window of ``window_size`` (w) transformer blocks' 16-bit weights is on the GPU; the
rest live in host memory. The window slides forward through the forward pass (after block p runs
it is evicted and block p+w is prefetched) and backward through the backward pass (after block p's
backward, block p−w is prefetched). Blocks are updated where their gradients are when they leave
the window: the w blocks that end the backward inside the window (b0 … b{w−1}), the embedding and
the head keep fp32 master weights and Adam states on the GPU and step there after the backward;
every other block is updated by the CPU while the backward continues.

What the artifact's code does, and this schedule with it (``SHv0/megatron/training.py``):

- Every eviction copies the block's weights to its pinned host copy (``GL_ParallelTransformerLayer
  .cpu`` copies each parameter into the host cache, changed or not; ``model/transformer.py``), and
  the forward of block p+w waits for that copy of block p (the forward post-hook attaches it to
  p+w's futures): ``D2H.w`` in the forward, ``D2H.w2`` in the backward.
- The GPU holds min(2w, L) preallocated cache units, each a block's parameters and gradients
  (``ParallelTransformer.__init__`` fills a deque of that length, ``model/transformer.py``); a
  block's weights on the GPU live in a unit. Here: one ``cache.g<N>`` buffer of min(2w, L) blocks'
  16-bit weights for the whole run, and the window's weight buffers (the fetches' and the first
  window's) are 0-byte markers of which block holds a unit. Gradient buffers stay as the backward
  allocates them (the units' gradient slots are not counted beyond those).
- After block p's backward (p ≥ w) one thread-pool task moves its weights and gradients to the host
  and, in the last micro-step, runs its CPU Adam (``_layer_to_cpu_and_gather_grads_and_optimizer_
  update``); that future is attached to block p−w, whose backward hook waits for it
  (``_backward_post_hook`` → ``_append_offloading_futs(layers[p−w])``, ``_layer_waiting_futs``). So
  block p−w's recompute/backward waits for block p's copies and CPU Adam, and every CPU update is
  done before the backward ends: no CPU update overlaps the next iteration (unlike AutoHete).

With ``window_size`` ≥ the number of blocks nothing moves and the schedule is gpu-only's.
Unset, ``window_size`` is the largest window whose static memory estimate fits the GPU.
With N GPUs the offloaded blocks are sharded (each GPU moves 1/N over its link, NVLink all-gather
and reduce-scatter) and GPU-updated blocks' gradients are all-reduced — a deviation: the artifact's
multi-GPU mode is Megatron tensor parallelism (``examples/pretrain_gpt_8gpus_tp_offloading.sh``),
which simhete cannot express. No iteration-wide sync precedes the updates: the artifact's runs are
fp32 (no ``--fp16``), and in fp16 each layer's CPU optimizer checks only its own gradients for inf
(``GL_CPU_Float16OptimizerWithFloat16Params.step``, clipping disabled there). The artifact steps
b1 … b{w−1} right after their own backward on a side stream; here after the whole backward.
"""

from __future__ import annotations

import dataclasses

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
    """Largest w whose static GPU memory estimate fits: resident embed/head states, the 2w cache
    units' 16-bit weights, GPU optimizer states and gradients of the w blocks updated on the GPU,
    and the activation peak. At least 1."""
    modes = act_modes(ctx, k)
    trans = [blk for blk in ctx.blocks if blk.name.startswith("b")]
    ends = [blk for blk in ctx.blocks if not blk.name.startswith("b")]
    fixed = sum(blk.weight_bytes + blk.master_bytes + blk.optim_bytes + blk.grad_bytes for blk in ends)
    fixed += activation_peak(ctx.blocks, modes) + max(blk.grad_bytes for blk in trans)
    per = max(2 * blk.weight_bytes + blk.master_bytes + blk.optim_bytes + blk.grad_bytes for blk in trans)
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
        units = min(2 * w, L)   # SHv0 model/transformer.py: min(2w, L) cache units on the GPU
        for g in dp.gpus:
            initial.append(Alloc(f"cache.g{g}", f"gpu{g}", units * max(blk.weight_bytes for blk in trans),
                                 MemClass.WEIGHTS))
            initial += model_states(ctx, {MemClass.WEIGHTS: "gpu"}, gpu=g,
                                    blocks={blk.index for blk in ctx.blocks if blk.index not in pos})
            initial += [dataclasses.replace(a, bytes=0)   # in a cache unit
                        for a in model_states(ctx, {MemClass.WEIGHTS: "gpu"}, gpu=g,
                                              blocks={blk.index for blk in trans[:w]})]
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
        wback: dict[int, dict[int, str]] = {}     # block -> gpu -> the last micro-step's D2H.w2
        if ga > 1:   # 16-bit host accumulation buffers of the CPU-updated blocks (as DeepSpeed's)
            initial += [Alloc(f"gacc.{blk.name}", "cpu", blk.grad_bytes, MemClass.GRADS)
                        for blk in trans[w:] if blk.grad_bytes]
        for it in range(1, ctx.iterations + 1):
            prev_out: dict[int, dict[int, str]] = {}
            for m in range(1, ga + 1):
                dp.m = m
                t = self._micro(b, ctx, dp, it, m, w, modes, cur, updated if m == 1 else {},
                                cpu_adam if m == 1 else {}, last_B, m == ga, wback)
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
                i = blk.index                           # (after the weights' and gradients' copies)
                cpu_adam[i] = b.add(tname(it, "ADAM.cpu", blk.name), "cpu.optim", TaskCat.OPTIM_CPU,
                                    (Op(OpKind.ADAM_CPU, n=blk.params, dtype="fp32"),),
                                    deps=sorted(prev_out[i].values()) + sorted(wback[i].values()),
                                    prio=fwd_prio(it + 1, i), it=it, block=i)
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
               last_B: dict[int, str], last: bool, wback: dict[int, dict[int, str]]) -> dict:
        """One micro-step's sliding windows and forward/backward on every GPU. ``updated`` /
        ``cpu_adam``: the previous step's updates the forward waits for (micro-step 1 only);
        ``cur`` (block -> gpu -> buffer holding its weights) is updated in place; ``last``: the
        step's last micro-step (the CPU Adam runs in it); ``wback`` (block -> gpu -> D2H.w2) is
        filled with the backward's weight copies."""
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
                                  allocs={g: [Alloc(buf[g], f"gpu{g}", 0, MemClass.WEIGHTS)]   # a cache unit
                                          for g in dp.gpus})
                for g in dp.gpus:
                    fdeps[g].setdefault(i, []).append(ready[g])
                    cur[g][i] = buf[g]
            F = {g: tname(it, "F", blk.name, g, n, m) for g in dp.gpus}
            if i in evict_fwd:   # every eviction copies the weights home, current or not
                # (GL_ParallelTransformerLayer.cpu copies each parameter into its pinned host cache);
                # the slot is free, and p+w's fetch may start, once the copy is done
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
                                  allocs={g: [Alloc(buf[g], f"gpu{g}", 0, MemClass.WEIGHTS,   # a cache unit
                                                    persist=i not in on_cpu)] for g in dp.gpus})
                for g in dp.gpus:
                    bdeps[g].setdefault(i, []).append(ready[g])
                    cur[g][i] = buf[g]
            if i in on_cpu:   # leaves the window: its weights go home after its backward (D2H.w2) …
                wback[i] = {g: b.add(dp.name(it, "D2H.w2", blk.name, g), copy_stream(g, "d2h", k.pin_memory),
                                     TaskCat.D2H,
                                     (Op(OpKind.D2H, n=shard(blk.weight_bytes, n, g), pinned=k.pin_memory),),
                                     deps=[tname(it, "B", blk.name, g, n, m)], prio=grad_prio(it, nb - i, nb, m),
                                     frees=[cur[g].pop(i)], it=it, block=i) for g in dp.gpus}
            if p >= w:        # … and block p−w's backward waits for block p's copies and (in the last
                back = trans[p - w].index   # micro-step) its CPU Adam: one thread-pool future in
                for g in dp.gpus:           # StrongHold, waited for by p−w's backward hook
                    bdeps[g].setdefault(back, []).extend(
                        [tname(it, "ADAM.cpu", blk.name)] if last else
                        [dp.name(it, "D2H.g", blk.name, g), wback[i][g]])
        return {g: forward_backward(b, ctx, it, modes, gpu=g, start_deps=[last_B[g]] if g in last_B else [],
                                    fwd_weight_deps=fdeps[g], bwd_weight_deps=bdeps[g], fwd_frees=ffrees[g],
                                    bwd_frees=bfrees[g], pinned=k.pin_memory, m=m,
                                    grad_buffers=True if m == 1 else on_cpu)
                for g in dp.gpus}

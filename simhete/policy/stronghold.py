"""``stronghold``: StrongHold (Sun et al., "STRONGHOLD: Fast and Affordable Billion-Scale Deep
Learning Model Training", SC'22; code: the SC'22 artifact github.com/strongh2/sc22-ae, ``SHv0/``).

Only a working window of ``window_size`` (w) transformer blocks' weights is on the GPU; the rest
live in host memory. The window slides forward through the forward pass (after block p runs
it is evicted and block p+w is prefetched) and backward through the backward pass (after block p's
backward, block p−w is prefetched). Blocks are updated where their gradients are when they leave
the window: the w blocks that end the backward inside the window (b0 … b{w−1}), the embedding and
the head keep their optimizer states on the GPU and step there; every other block is updated by
the CPU while the backward continues.

What the artifact's code does, and this schedule with it (``SHv0/megatron/training.py``,
``model/transformer.py``, ``optimizer/__init__.py``; its hooks are ``register_full_backward_hook``
hooks of torch 1.10, which run once a block's backward is done):

- The GPU holds min(2w, L) preallocated cache units, each a copy of one block's parameters and of
  their ``.grad`` (``ParallelTransformer.__init__``; ``GL_ParallelTransformerLayer.__init__`` gives
  every parameter a pinned gradient of its dtype): ``cache.g<N>`` (weights) and ``cache_grads.g<N>``
  (gradient slots) for the whole run; the window's weight buffers are 0-byte markers of which block
  holds a unit. The forward pre-hook sets ``param.grad = None``, so each block's backward allocates
  a fresh gradient on top of the slots.
- Forward: the pre-hook of block p−w waits for its futures (among them the copy home of block
  p−2w) and submits block p's fetch into a free unit. Every eviction copies the block's weights to
  its pinned host copy (``GL_ParallelTransformerLayer.cpu`` copies each parameter, changed or not),
  and block p+w's forward waits for that copy of block p: ``D2H.w``.
- Backward: the hook on block p−1 is block p's "post" hook (``_backward_post_hook`` redirects to
  the layer behind): for p ≥ w it submits one thread-pool task that copies block p's weights and
  gradients home (``D2H.w2``, ``D2H.g``; the copy replaces the unit's gradient slot with the fresh
  gradient, so the fresh one is held until then) and, in the last micro-step, runs its CPU Adam
  (``_layer_to_cpu_and_gather_grads_and_optimizer_update``). The future is attached to block p−w
  and waited for by its ``_backward_pre_hook``, i.e. before the next block's recompute/backward. So
  every CPU update is done before the backward ends: no CPU update overlaps the next iteration
  (unlike AutoHete). For 1 ≤ p < w it submits block p's own GPU optimizer step and
  ``zero_grad(set_to_none)`` (``_layer_gather_grads_and_optimizer_update``), which frees block p's
  fresh gradient; b0, the embedding and the head share the default optimizer, stepped after the
  backward (``train_step``).
- Host memory: every block keeps pinned copies of its parameters and gradients (the parameters'
  dtype); the CPU-updated blocks' Adam m and v (fp32). In fp32 the CPU Adam updates those pinned
  copies in place (``GL_CPU_FP32Optimizer``, no master); with 16-bit weights
  ``GL_CPU_Float16OptimizerWithFloat16Params`` adds an fp32 master and fp32 gradients.

With ``window_size`` ≥ the number of blocks nothing moves: gpu-only's compute, each block stepped
as soon as the next backward is done, and the cache units' gradient slots on top.
Unset, ``window_size`` is the largest window whose static memory estimate fits the GPU.
With N GPUs the offloaded blocks are sharded (each GPU moves 1/N over its link, NVLink all-gather
and reduce-scatter) and GPU-updated blocks' gradients are all-reduced — a deviation: the artifact's
multi-GPU mode is Megatron tensor parallelism (``examples/pretrain_gpt_8gpus_tp_offloading.sh``),
which simhete cannot express. No iteration-wide sync precedes the updates: the artifact's runs are
fp32 (no ``--fp16``), and in fp16 each layer's CPU optimizer checks only its own gradients for inf
(``GL_CPU_Float16OptimizerWithFloat16Params.step``, clipping disabled there). The thread pool's
12 workers (``--gl-ray-max-concurrency``) are not a limit here: its tasks start when submitted.
"""

from __future__ import annotations

import dataclasses

from pydantic import Field

from simhete.opkinds import Action, At, MemClass, OpKind, at
from simhete.policy.base import Builder, Context, Policy, model_states
from simhete.policy.dataparallel import DataParallel, shard
from simhete.policy.layout import activation_peak
from simhete.policy.process_memory import process_memory
from simhete.policy.registry import register
from simhete.policy.sizes import size_table
from simhete.policy.training import (PRIO_IT, ActivationKnobs, accum_steps, act_modes, bwd_prio, copy_stream,
                                     forward_backward, fwd_prio, grad_prio)
from simhete.schedule import Alloc, Op, Schedule


class StrongHoldKnobs(ActivationKnobs):
    window_size: int | None = Field(None, ge=1)
    """Transformer blocks whose weights are on the GPU at once (StrongHold's working window).
    Unset: the largest window that fits by a static memory estimate."""


def auto_window(ctx: Context, k: StrongHoldKnobs) -> int:
    """Largest w whose static GPU memory estimate fits: resident embed/head states, the 2w cache
    units (each a block's weights and its gradient slot), GPU optimizer states of the w blocks
    updated on the GPU, the activation peak and two blocks' fresh gradients (block p's waits for
    its copy while block p−1's backward allocates its own). At least 1."""
    modes = act_modes(ctx, k)
    trans = [blk for blk in ctx.blocks if blk.name.startswith("b")]
    ends = [blk for blk in ctx.blocks if not blk.name.startswith("b")]
    fixed = sum(blk.weight_bytes + blk.master_bytes + blk.optim_bytes + blk.grad_bytes for blk in ends)
    fixed += activation_peak(ctx.blocks, modes) + 2 * max(blk.grad_bytes for blk in trans)
    per = max(2 * (blk.weight_bytes + blk.grad_bytes) + blk.master_bytes + blk.optim_bytes for blk in trans)
    w = (ctx.gpu_capacity - fixed) // per if per else len(trans)
    return int(max(1, min(len(trans), w)))


@register("stronghold")
class StrongHold(Policy):
    Knobs = StrongHoldKnobs
    multi_gpu = True

    def decisions(self, ctx: Context) -> tuple:
        """The window, where it is taken from the memory estimate (``window_size`` unset)."""
        return () if self.k.window_size is not None else (auto_window(ctx, self.k),)

    def build(self, ctx: Context) -> Schedule:
        k = self.k
        b = Builder(size_table(ctx))
        dp = DataParallel(b, ctx, k.pin_memory)
        n = ctx.n_gpus
        modes = act_modes(ctx, k)
        trans = [blk for blk in ctx.blocks if blk.name.startswith("b")]
        L = len(trans)
        w = min(L, k.window_size if k.window_size is not None else auto_window(ctx, k))
        nb = len(ctx.blocks)
        pos = {blk.index: p for p, blk in enumerate(trans)}
        on_cpu = {blk.index for blk in trans[w:]}          # updated by the CPU
        gpu_upd = [blk for blk in ctx.blocks if blk.index not in on_cpu and blk.params]

        initial = []
        # SHv0 model/transformer.py, ParallelTransformer.__init__: min(2w, L) cache units on the GPU,
        # each a copy of one block's parameters AND of its ``.grad`` (GL_ParallelTransformerLayer
        # .__init__ gives every parameter a pinned zero gradient, so each unit also holds a gradient
        # tensor of the parameter's dtype). A block on the GPU lives in a unit; a unit's gradient
        # slot is never the one the backward writes (the forward pre-hook sets ``param.grad = None``,
        # so autograd allocates a fresh gradient; ``GL_ParallelTransformerLayer.cpu`` then keeps that
        # fresh tensor as the unit's slot and drops the old one): the slots stay allocated all run.
        units = min(2 * w, L)
        for g in dp.gpus:
            initial.append(Alloc(f"cache.g{g}", f"gpu{g}", units * max(blk.weight_bytes for blk in trans),
                                 MemClass.WEIGHTS))
            initial.append(Alloc(f"cache_grads.g{g}", f"gpu{g}", units * max(blk.grad_bytes for blk in trans),
                                 MemClass.GRADS))
            initial += model_states(ctx, {MemClass.WEIGHTS: "gpu"}, gpu=g,
                                    blocks={blk.index for blk in ctx.blocks if blk.index not in pos})
            initial += [dataclasses.replace(a, bytes=0)   # in a cache unit
                        for a in model_states(ctx, {MemClass.WEIGHTS: "gpu"}, gpu=g,
                                              blocks={blk.index for blk in trans[:w]})]
            initial += model_states(ctx, {MemClass.MASTER: "gpu", MemClass.OPTIM: "gpu"}, gpu=g,
                                    blocks={blk.index for blk in gpu_upd})
        # Host side (GL_ParallelTransformerLayer.__init__): every transformer block, in the window or
        # not, keeps a pinned host copy of each parameter and of its gradient (``_gl_cpu_version_items``,
        # the parameter's dtype); cpu() copies into them, cuda() out of them.
        every = {blk.index for blk in trans}
        initial += model_states(ctx, {MemClass.WEIGHTS: "cpu"}, blocks=every)
        initial += [Alloc(f"grads.{blk.name}", "cpu", blk.grad_bytes, MemClass.GRADS)
                    for blk in trans if blk.grad_bytes]
        # The CPU-updated blocks' optimizer (gl_get_megatron_optimizer → GL_DeepSpeedCPUAdam.step):
        # Adam m and v in host memory (fp32). In fp32 training (GL_CPU_FP32Optimizer) it updates
        # ``p.data`` — the pinned host copy above — with ``p.grad`` — the pinned gradient above — so
        # there is no further master or fp32 gradient; with 16-bit weights
        # (GL_CPU_Float16OptimizerWithFloat16Params.add_param_groups) an fp32 master clone and fp32
        # main gradients come on top.
        mixed = any(blk.master_bytes for blk in trans)
        initial += model_states(ctx, {MemClass.OPTIM: "cpu"} | (
            {MemClass.MASTER: "cpu", MemClass.GRADS32: "cpu"} if mixed else {}), blocks=on_cpu)
        cur = {g: {blk.index: f"weights.g{g}.{blk.name}" for blk in trans[:w]} for g in dp.gpus}
        updated: dict[int, dict[int, str]] = {}   # block -> gpu -> task after which its update is done
        cpu_adam: dict[int, str] = {}
        last_B: dict[int, str] = {}
        ga = accum_steps(ctx)
        wback: dict[int, dict[int, str]] = {}     # block -> gpu -> the last micro-step's D2H.w2
        # (with gradient accumulation the CPU-updated blocks' gradients accumulate in those pinned
        # gradient copies: no further host buffer)
        for it in range(1, ctx.iterations + 1):
            prev_out: dict[int, dict[int, str]] = {}
            for m in range(1, ga + 1):
                dp.m = m
                t = self._micro(b, ctx, dp, it, m, w, modes, cur, updated if m == 1 else {},
                                cpu_adam if m == 1 else {}, last_B, m == ga, wback)
                for blk in reversed(trans[w:]):         # CPU-updated blocks' gradients leave one block
                    i = blk.index                       # later (the hook on b{p−1} moves b{p}, see _micro)
                    deps = {g: [t[g].B[trans[pos[i] - 1].index]] for g in dp.gpus}
                    frees = {g: [t[g].grads[i]] for g in dp.gpus}
                    prio = grad_prio(it, nb - i, nb, m)
                    prev_out[i] = dp.from_gpu(it, blk.name, blk.grad_bytes, deps, prio, i, frees=frees) \
                        if m == 1 else dp.accumulate(it, blk.name, blk.grad_bytes, deps, prev_out[i], prio,
                                                     i, frees=frees)
                if m == 1:
                    grads = {g: t[g].grads for g in dp.gpus}
                last_B = {g: t[g].last_B for g in dp.gpus}
            dp.m = 1
            for blk in reversed(trans[w:]):             # CPU updates, overlapped with the backward
                i = blk.index                           # (after the weights' and gradients' copies)
                cpu_adam[i] = b.add(Action.ADAM_CPU, At(it, blk.name), "cpu.optim",
                                    (Op(OpKind.ADAM_CPU, n=blk.params, dtype="fp32"),),
                                    deps=sorted(prev_out[i].values()) + sorted(wback[i].values()),
                                    prio=fwd_prio(it + 1, i), it=it, block=i)
            for blk in gpu_upd:
                # b1 … b{w−1} each have their own GPU optimizer (gl_get_megatron_optimizer, SHv0
                # optimizer/__init__.py) stepped as soon as the block's gradients are complete: the
                # backward hook of b{p−1} (_backward_post_hook, "redirect to the behind of the layer")
                # submits _layer_gather_grads_and_optimizer_update(p), whose layer_update is step() then
                # zero_grad(set_to_none) — the fresh gradient is freed there. b0, the embedding and the
                # final norm share the "default" optimizer, stepped by optimizer.step() after the
                # backward (training.py train_step), as gpu-only.
                i = blk.index
                early = i in pos and 0 < pos[i] < w
                ar = dp.collective(OpKind.ALLREDUCE, Action.GRADS_ALLREDUCE, it, blk.name, blk.grad_bytes,
                                   {g: [t[g].B[i]] for g in dp.gpus}, grad_prio(it, nb - i, nb), i)
                if early:
                    nxt = trans[pos[i] - 1].index
                    after = {g: t[g].B[nxt] for g in dp.gpus}
                    prio = bwd_prio(it, nxt, nb, ga) + 1      # right behind that backward
                else:
                    after = {g: t[g].last_B for g in dp.gpus}
                    prio = it * PRIO_IT + PRIO_IT // 2 + i
                updated[i] = {g: b.add(Action.ADAM_GPU, at(it, blk.name, g, n), f"gpu{g}.compute",
                                       (Op(OpKind.ADAM_GPU, n=blk.params, dtype="fp32"),),
                                       deps=[after[g]] + ([ar[g]] if ar else []),
                                       prio=prio, frees=[grads[g][i]], it=it, block=i)
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
        by_index = {blk.index: blk for blk in ctx.blocks}
        for p, blk in enumerate(trans):            # forward window
            i = blk.index
            if p >= w:
                # _forward_pre_hook of b{p−w} first waits for its own futures (among them the copy home
                # of b{p−2w}, which b{p−2w}'s post-hook attached to it), then submits b{p}'s cuda(): the
                # fetch starts as b{p−w}'s forward does (when the task before it has ended), into one of
                # the 2w units (never short: at most b{p−w} … b{p} and b{p−2w} … hold one then)
                before = by_index[trans[p - w].index - 1]
                trig = {g: [Action.FORWARD.task_name(at(it, before.name, g, n, m))]
                        + ([evicted[trans[p - 2 * w].index][g]] if p >= 2 * w else [])
                        + ([cpu_adam[i]] if i in cpu_adam else []) for g in dp.gpus}
                buf = {g: dp.buffer(it, "w.f", blk.name, g) for g in dp.gpus}
                ready = dp.to_gpu(it, Action.WEIGHTS_H2D_FWD, blk.name, blk.weight_bytes, trig, fwd_prio(it, i, m, nb), i,
                                  allocs={g: [Alloc(buf[g], f"gpu{g}", 0, MemClass.WEIGHTS)]   # a cache unit
                                          for g in dp.gpus})
                for g in dp.gpus:
                    fdeps[g].setdefault(i, []).append(ready[g])
                    cur[g][i] = buf[g]
            F = {g: Action.FORWARD.task_name(at(it, blk.name, g, n, m)) for g in dp.gpus}
            if i in evict_fwd:   # every eviction copies the weights home, current or not
                # (GL_ParallelTransformerLayer.cpu copies each parameter into its pinned host cache);
                # the slot is free, and p+w's fetch may start, once the copy is done
                evicted[i] = {g: b.add(Action.WEIGHTS_D2H, dp.at(it, blk.name, g), copy_stream(g, "d2h", k.pin_memory),
                                       (Op(OpKind.D2H, n=shard(blk.weight_bytes, n, g), pinned=k.pin_memory),),
                                       deps=[F[g]], prio=fwd_prio(it, i, m, nb) + 1, frees=[cur[g][i]], it=it,
                                       block=i) for g in dp.gpus}
        for p in range(L - 1, -1, -1):              # backward window
            blk = trans[p]
            i = blk.index
            if i in evict_fwd:
                src = trans[p + w]
                trig = {g: [Action.BACKWARD.task_name(at(it, src.name, g, n, m))] for g in dp.gpus}
                buf = {g: dp.buffer(it, "w.b", blk.name, g) for g in dp.gpus}
                # a GPU-updated block stays in the window into the next iteration (persist)
                ready = dp.to_gpu(it, Action.WEIGHTS_H2D_BWD, blk.name, blk.weight_bytes, trig, bwd_prio(it, i, nb, m), i,
                                  allocs={g: [Alloc(buf[g], f"gpu{g}", 0, MemClass.WEIGHTS,   # a cache unit
                                                    persist=i not in on_cpu)] for g in dp.gpus})
                for g in dp.gpus:
                    bdeps[g].setdefault(i, []).append(ready[g])
                    cur[g][i] = buf[g]
            if i in on_cpu:   # leaves the window: its weights go home (D2H.w2) once b{p−1}'s backward
                # is done: the full-backward hook registered on b{p−1} is b{p}'s "post" hook
                # (_backward_post_hook redirects to layer p), which submits b{p}'s cpu() copy
                prev_b = trans[p - 1].name
                wback[i] = {g: b.add(Action.WEIGHTS_WRITEBACK, dp.at(it, blk.name, g),
                                     copy_stream(g, "d2h", k.pin_memory),
                                     (Op(OpKind.D2H, n=shard(blk.weight_bytes, n, g), pinned=k.pin_memory),),
                                     deps=[Action.BACKWARD.task_name(at(it, prev_b, g, n, m))],
                                     prio=grad_prio(it, nb - i, nb, m),
                                     frees=[cur[g].pop(i)], it=it, block=i) for g in dp.gpus}
            if p >= w:        # … and the block after b{p−w} in the backward waits for block p's copies
                # and (in the last micro-step) its CPU Adam: one thread-pool future, attached to b{p−w}
                # and waited for by b{p−w}'s _backward_pre_hook — a full backward hook
                # (register_full_backward_hook, torch 1.10), so it runs once b{p−w}'s backward is done
                # and holds the autograd thread before the next block's recompute/backward
                back = trans[p - w].index - 1
                for g in dp.gpus:
                    bdeps[g].setdefault(back, []).extend(
                        [Action.ADAM_CPU.task_name(At(it, blk.name))] if last else
                        [dp.task(Action.GRADS_D2H, it, blk.name, g), wback[i][g]])
        return {g: forward_backward(b, ctx, it, modes, gpu=g, start_deps=[last_B[g]] if g in last_B else [],
                                    fwd_weight_deps=fdeps[g], bwd_weight_deps=bdeps[g], fwd_frees=ffrees[g],
                                    bwd_frees=bfrees[g], pinned=k.pin_memory, m=m,
                                    grad_buffers=True if m == 1 else on_cpu)
                for g in dp.gpus}

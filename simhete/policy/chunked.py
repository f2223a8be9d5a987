"""``chunked``: chunk-based heterogeneous memory management — PatrickStar (Fang et al., "Parallel
Training of Pre-trained Models via Chunk-based Dynamic Memory Management", IEEE TPDS 2022; code
github.com/Tencent/PatrickStar) and Colossal-AI Gemini (its successor, colossalai/zero/gemini/).

Model data (per parameter, read from both codes):

- the 16-bit parameters are packed into chunks of ``chunk_size`` elements in creation (= use)
  order; a parameter's gradient is written into its own place in that chunk, so there is no
  gradient buffer (PatrickStar ``INSIDE.md``; Gemini ``GeminiDDP.grad_handle`` with
  ``reuse_fp16_chunk`` = master weights without gradient accumulation);
- the fp32 master copy and Adam m, v live in chunks of the same layout ("OS chunks", 12 B/param):
  PatrickStar ``ChunkType.PARAM_FP32 / MOMENTUM / VARIANCE``; Gemini's ``fp32_param`` chunk group
  with ``HybridAdam`` state created beside it. CPU Adam reads the 16-bit gradient itself
  (PatrickStar ``FP16Adam.fp16_chunk_adam_ops``: the fp16 grad chunk is copied into one
  chunk-sized read buffer and passed to the DeepSpeed CPU-Adam kernel; Gemini
  ``GeminiOptimizer._set_grad_ptr``: ``grad`` is the 16-bit chunk's payload): no fp32 gradients;
- with N GPUs everything is sharded: PatrickStar groups N chunks and rank r owns the r-th
  (``client.access_dist`` / ``release_dist``), Gemini splits each chunk into N shards
  (``Chunk.shard_size``); a rank keeps only its share of the 16-bit chunks and of the OS chunks,
  so the model data of one rank is 14 B/param / N. Here a chunk group has ``chunk_size × N``
  elements and each GPU owns ``chunk_size`` of them.

Before a group is used its shards are all-gathered on every GPU (a full group buffer); after the
last use of a run of steps the gathered copy is released (``release_dist`` frees the remote
chunks; Gemini ``release_chunk``) and, after the backward, the gradients are reduce-scattered
into the owner's shard (``torch.distributed.reduce_scatter`` in ``release_dist``; Gemini
``Chunk.reduce``). With one GPU nothing is gathered.

``placement_policy: static`` (Gemini's default, ``StaticPlacementPolicy``): chunk shards are
created on the GPU unless parameters are offloaded (``GeminiDDP.__init__``: ``cpu_offload = not
(static and offload_param_frac == 0)``), so with no offload a rank holds 14 B/param / N on the GPU
and no model data in host memory. ``offload_optim_frac``: that fraction of the OS chunks (here the
last ones) lives on the CPU; their 16-bit shard (holding the gradients) goes to the host after
the reduce-scatter and the updated parameters come back after the CPU step
(``setup_grads_device``, ``grad_handle``). ``offload_param_frac`` (only with
``shard_param_frac`` = ``offload_optim_frac`` = 1, as Gemini enforces): that fraction of the
16-bit shards (the last ones) lives in host memory and is fetched for each use. ``shard_param_frac``:
the first 1 − fraction of the chunks stay gathered on every GPU after their first use (Gemini's
``keep_gathered_chunk_mem``; their optimizer states are on the GPU).

``placement_policy: auto`` (PatrickStar's scheme, Gemini ``AutoPlacementPolicy``): every chunk
starts in host memory (PatrickStar creates chunks on the CPU, ``PreprocessCtx``; Gemini
``cpu_offload=True``); a GPU's shards are fetched when needed and cached under a budget: the
first (warm-up) iteration, which has no trace yet, keeps chunk memory under a fixed
``warmup_cuda_cap_ratio`` × capacity (Gemini ``AutoPlacementPolicy.evict_tensors``: capacity ×
(1 − ``warmup_non_model_data_ratio`` = 0.8); PatrickStar ``MemTracer.available_chunk_mem``:
``warmup_gpu_chunk_mem_ratio`` × 0.8 of capacity); later iterations use the traced non-model memory:
``steady_cuda_cap_ratio`` × capacity − the next period's non-model peak; room for the gathered
groups of a step is kept free. When a shard must come in and the budget is full, the cached
shard whose next use is furthest away is moved out (``LatestAccessChunkEvictionPolicy``).
Hybrid Adam: OS chunks go to the GPU in the margin ``gpu_margin_mem_ratio`` × (the steady
capacity − the non-model peak − this rank's 16-bit chunks and gather buffers) at 12 B per element
(PatrickStar ``MemTracer.update_margin_mem``; Gemini ``_maybe_move_fp32_params``), the first
chunks first; such a chunk's 16-bit shard stays on the GPU (here from the first iteration).

A chunk whose OS is on the CPU goes D2H as soon as its gradients are complete and the CPU steps
it after the backward; its new parameters wait in host memory for the next fetch. The optimizer
step is synchronous: the next forward starts when it is done. ``max_prefetch`` chunk groups may
be brought (fetched or gathered) ahead of need (Gemini's knob; 0 = on demand).
Simplifications: tensors are packed contiguously and may straddle chunks (PatrickStar starts a
new chunk instead), so chunk counts are ⌈params / chunk_size⌉; the one-chunk read/write staging
buffers of PatrickStar's optimizer are not counted.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, bisect_right
from typing import Callable

from simhete.errors import ConfigError
from simhete.opkinds import Action, At, MemClass, OpKind, at
from simhete.policy.base import Builder, Context, Policy, shared_ops
from simhete.policy.chunks import ChunkedKnobs, geometry
from simhete.policy.dataparallel import DataParallel, shard
from simhete.policy.process_memory import process_memory
from simhete.policy.registry import register
from simhete.policy.sizes import size_table
from simhete.policy.training import PHASE, PRIO_IT, act_modes, bwd_prio, copy_stream, forward_backward, fwd_prio
from simhete.schedule import Alloc, Op, Schedule


def refuse_accumulation(ctx: Context) -> None:
    if ctx.grad_accum > 1:
        raise ConfigError(ctx.scenario.file, "train.grad_accum", ctx.grad_accum,
                          allowed="1 with chunked: a gradient overwrites its parameter in the chunk, so "
                                  "micro-steps cannot accumulate (Gemini's separate gradient chunks, "
                                  "enable_gradient_accumulation, are not modelled)")


@register("chunked")
class Chunked(Policy):
    Knobs = ChunkedKnobs
    multi_gpu = True
    pure_precision = ("PatrickStar and ColossalAI Gemini (master_weights=True, its default) keep "
                      "fp32 master chunks and fp32 Adam state")
    accumulates = False

    def decisions(self, ctx: Context) -> tuple:
        """``static``: none (the fractions place the chunks). ``auto``: the OS chunks the GPU
        margin takes, and how many chunk shards each step's budget holds: :meth:`build` moves a
        shard out while one more would exceed its step's budget, so these counts are all it
        decides from the sizes."""
        refuse_accumulation(ctx)          # before the geometry: such a point has no schedule
        if self.k.placement_policy == "static":
            return ()
        g = geometry(ctx, self.k)

        def held(budget: float) -> int:     # (m + 1)·payload > budget ⟺ m + 1 > ⌊budget / payload⌋
            return max(0, min(g.nchunks + 1, math.floor(budget / g.sbytes)))

        return (g.n_os, held(g.budget(self.k, 1, 0)),
                tuple(held(g.budget(self.k, 2, u)) for u in range(len(g.trace))))

    def build(self, ctx: Context) -> Schedule:
        k = self.k
        file = ctx.scenario.file
        refuse_accumulation(ctx)
        static = k.placement_policy == "static"
        if static and k.offload_param_frac > 0 and (k.shard_param_frac != 1 or k.offload_optim_frac != 1):
            # Gemini's StaticPlacementPolicy warns and ignores it in this case
            raise ConfigError(file, "knobs.offload_param_frac", k.offload_param_frac,
                              allowed="0 unless shard_param_frac and offload_optim_frac are 1 (Gemini ignores it "
                                      "otherwise)")
        b = Builder(size_table(ctx))
        dp = DataParallel(b, ctx, k.pin_memory)
        n, nb = ctx.n_gpus, len(ctx.blocks)
        modes = act_modes(ctx, k)
        g_ = geometry(ctx, k)
        e, nchunks, elems, sh, sbytes, extra = g_.e, g_.nchunks, g_.elems, g_.sh, g_.sbytes, g_.extra
        trace, need, last_use, used_at, first_blk = g_.trace, g_.need, g_.last_use, g_.used_at, g_.first_blk
        n_os, home_gpu, keep, gpu_os, fixed = g_.n_os, g_.home_gpu, g_.keep, g_.gpu_os, g_.fixed

        initial: list[Alloc] = []
        for c in range(nchunks):
            if c in home_gpu:
                initial += [Alloc(f"chunk.g{g}.c{c}", f"gpu{g}", sh[c][g], MemClass.WEIGHTS) for g in dp.gpus]
            if c not in home_gpu or c not in gpu_os:
                # every rank's 16-bit shard in host memory: chunks created on the CPU (auto), or
                # the shard that carries the gradients to a CPU-updated OS chunk (static)
                initial.append(Alloc(f"chunk.c{c}", "cpu", elems[c] * e, MemClass.WEIGHTS))
            if c not in gpu_os:
                initial += [Alloc(f"master.c{c}", "cpu", 4 * elems[c], MemClass.MASTER),
                            Alloc(f"optim.c{c}", "cpu", 8 * elems[c], MemClass.OPTIM)]
            else:
                for g in dp.gpus:
                    initial += [Alloc(f"master.g{g}.c{c}", f"gpu{g}", shard(4 * elems[c], n, g), MemClass.MASTER),
                                Alloc(f"optim.g{g}.c{c}", f"gpu{g}", shard(8 * elems[c], n, g), MemClass.OPTIM)]

        def budget(it: int, u: int) -> float:
            return 0.0 if static else g_.budget(k, it, u)

        def next_use(c: int, u: int) -> int:
            # the first step after u that needs c, else its first use in the next iteration
            # (a bisection of its steps: a scan of the trace per eviction candidate was quadratic)
            at = used_at[c]
            i = bisect_right(at, u)
            return at[i] if i < len(at) else len(trace) + at[0]

        def copy(it: int, action: Action, variant: str, c: int, direction: str, deps: dict[int, list[str]],
                 prio: int, block: int, allocs: dict[int, list[Alloc]] | None = None,
                 frees: dict[int, list[str]] | None = None) -> dict[int, str]:
            """Each GPU copies its own shard of chunk group c over its own link (``action`` on
            target ``chunk``)."""
            kind = OpKind.H2D if direction == "h2d" else OpKind.D2H
            return {g: b.add(action, dp.at(it, "chunk", g, variant), copy_stream(g, direction, k.pin_memory),
                             shared_ops(kind, sh[c][g], k.pin_memory), deps=deps.get(g, []), prio=prio,
                             allocs=(allocs or {}).get(g, ()), frees=(frees or {}).get(g, ()), it=it, block=block)
                    for g in dp.gpus}

        farthest = FarthestNextUse(next_use, fixed)
        # chunk -> gpu -> buffer of the GPU's shard; home-GPU shards are there from the start
        resident: dict[int, dict[int, str]] = {c: {g: f"chunk.g{g}.c{c}" for g in dp.gpus} for c in sorted(home_gpu)}
        ready: dict[int, dict[int, str]] = {}      # chunk -> gpu -> task after which its shard is usable
        gathered: dict[int, dict[int, str]] = {}   # chunk -> gpu -> gathered buffer (n > 1)
        gready: dict[int, dict[int, str]] = {}     # chunk -> gpu -> the all-gather
        step_done: list[str] = []
        last_B: dict[int, str] = {}
        for it in range(1, ctx.iterations + 1):
            # the compute task of trace step u on GPU g (named once per iteration: asked for often)
            names = [[PHASE[phase].task_name(at(it, blk.name, g, n)) for g in dp.gpus] for phase, blk in trace]

            def compute(u: int, g: int) -> str:
                return names[u][g]

            count: dict[tuple[Action, int], int] = {}

            def unique(action: Action, c: int) -> str:
                """The variant naming this iteration's next ``action`` of chunk group c: ``3``,
                then ``3r2``, ``3r3``, ..."""
                key = (action, c)
                count[key] = count.get(key, 0) + 1
                return str(c) if count[key] == 1 else f"{c}r{count[key]}"

            fdeps = {g: {} for g in dp.gpus}
            bdeps = {g: {} for g in dp.gpus}
            ffrees = {g: {} for g in dp.gpus}
            bfrees = {g: {} for g in dp.gpus}
            brings: list[int] = []                  # step of each fetch or gather, in order (max_prefetch)
            start_deps = {g: ([last_B[g]] if g in last_B else []) + step_done for g in dp.gpus}
            grads_out: list[str] = []
            grad_ready: dict[int, dict[int, str]] = {}
            step_tasks: list[str] = []

            def trigger(u: int) -> dict[int, list[str]]:
                brings.append(u)
                tu = brings[max(0, len(brings) - 1 - k.max_prefetch)]
                return {g: [compute(tu - 1, g)] if tu else list(start_deps[g]) for g in dp.gpus}

            farthest.reset(resident)
            for u, (phase, blk) in enumerate(trace):
                prio = fwd_prio(it, blk.index) if phase == "F" else bwd_prio(it, blk.index, nb)
                need_u = set(need[u])
                for c in need[u]:
                    fetched = c not in resident
                    if fetched:                     # fetch this GPU's shard
                        evicts: dict[int, list[str]] = {g: [] for g in dp.gpus}
                        while (len(resident) + 1) * sbytes > budget(it, u):
                            r = farthest.victim(u, need_u, resident)
                            if r is None:
                                break
                            # a move: the GPU copy is freed when this GPU's shard is home
                            out = copy(it, Action.CHUNK_D2H, unique(Action.CHUNK_D2H, r), r, "d2h",
                                       {g: [ready[r][g]] + self._last(r, u, used_at, compute, g) for g in dp.gpus},
                                       fwd_prio(it, blk.index), blk.index, frees={g: [resident[r][g]] for g in dp.gpus})
                            for g in dp.gpus:
                                evicts[g].append(out[g])
                            del resident[r]
                        trig = trigger(u)
                        var = unique(Action.CHUNK_H2D, c)
                        buf = {g: dp.buffer(it, "buf." + Action.CHUNK_H2D.what(var), "chunk", g) for g in dp.gpus}
                        ready[c] = copy(it, Action.CHUNK_H2D, var, c, "h2d",
                                        {g: trig[g] + evicts[g] for g in dp.gpus}, prio,
                                        blk.index, allocs={g: [Alloc(buf[g], f"gpu{g}", sbytes, MemClass.WEIGHTS,
                                                                     persist=True)] for g in dp.gpus})
                        resident[c] = buf
                    farthest.used(c, u)
                    if n > 1 and c not in gathered:     # all-gather the group on every GPU
                        # after a fetch it waits for every GPU's shard; else it is brought like a fetch
                        trig = {g: [] for g in dp.gpus} if fetched else trigger(u)
                        every = sorted({ready[c][g] for g in dp.gpus if c in ready} | {d for g in dp.gpus for d in trig[g]})
                        var = unique(Action.CHUNK_AG, c)
                        gbuf = {g: dp.buffer(it, "buf." + Action.CHUNK_AG.what(var), "chunk", g) for g in dp.gpus}
                        gready[c] = {g: b.add(Action.CHUNK_AG, dp.at(it, "chunk", g, var), f"gpu{g}.comm",
                                              (Op(OpKind.ALLGATHER, (n,), n=elems[c] * e),), deps=every, prio=prio,
                                              allocs=[Alloc(gbuf[g], f"gpu{g}", extra, MemClass.WEIGHTS,
                                                            persist=True)], it=it, block=blk.index)
                                     for g in dp.gpus}
                        gathered[c] = gbuf
                deps = fdeps if phase == "F" else bdeps
                for g in dp.gpus:
                    deps[g].setdefault(blk.index, []).extend(
                        [ready[c][g] for c in need[u] if c in ready] + [gready[c][g] for c in need[u] if c in gready])
                nxt = need[u + 1] if u + 1 < len(trace) and trace[u + 1][0] == phase else []
                for c in need[u]:
                    if last_use[c] == u:            # gradients complete
                        if n > 1:                   # reduce-scatter into the owner's shard
                            kind = OpKind.ALLREDUCE if c in keep else OpKind.REDUCE_SCATTER
                            fr = [] if c in keep else [gathered[c]]
                            rs = {g: b.add(Action.GRADS_REDUCE_SCATTER, at(it, f"c{c}", g, n), f"gpu{g}.comm",
                                           (Op(kind, (n,), n=elems[c] * e),),
                                           deps=[compute(u, h) for h in dp.gpus],
                                           prio=it * PRIO_IT + PRIO_IT // 4 + c,
                                           frees=[gathered[c][g]] if fr else [], it=it, block=blk.index)
                                  for g in dp.gpus}
                            if c not in keep:
                                del gathered[c], gready[c]
                            grad_ready[c] = rs
                            if not k.async_reduce and u + 1 < len(trace):
                                # the hook returns after the reduction (the compute stream waits
                                # for the collective): the next backward waits for it
                                for g in dp.gpus:
                                    bdeps[g].setdefault(trace[u + 1][1].index, []).append(rs[g])
                        else:
                            grad_ready[c] = {g: compute(u, g) for g in dp.gpus}
                        if c in gpu_os:
                            continue
                        # the chunk's shard goes home with its gradients for the CPU step
                        out = copy(it, Action.CHUNK_GRADS_D2H, str(c), c, "d2h",
                                   {g: [grad_ready[c][g]] for g in dp.gpus},
                                   it * PRIO_IT + PRIO_IT // 4 + c, blk.index,
                                   frees={g: [resident[c][g]] for g in dp.gpus} if c not in fixed else None)
                        grads_out += out.values()
                        if c not in fixed:
                            del resident[c]
                            ready.pop(c, None)
                    elif n > 1 and c not in keep and c not in nxt:
                        # end of a run of uses: the gathered copy is released by this step
                        frees = ffrees if phase == "F" else bfrees
                        for g in dp.gpus:
                            frees[g].setdefault(blk.index, []).append(gathered[c][g])
                        del gathered[c], gready[c]
            t = {g: forward_backward(b, ctx, it, modes, gpu=g, start_deps=start_deps[g], fwd_weight_deps=fdeps[g],
                                     bwd_weight_deps=bdeps[g], pinned=k.pin_memory, grad_buffers=False,
                                     fwd_frees=ffrees[g], bwd_frees=bfrees[g])
                 for g in dp.gpus}
            ends = [t[g].last_B for g in dp.gpus]
            # synchronous reduce: backward() returns, and the step starts, after the hooks of the last
            # step's chunks have reduced them
            tail = [c for c in range(nchunks) if last_use[c] == len(trace) - 1]
            bwd_end = {g: b.join(Action.BACKWARD_JOIN, at(it, "", g, n), f"gpu{g}.compute",
                                 [t[g].last_B] + [grad_ready[c][g] for c in tail], it * PRIO_IT + PRIO_IT // 2, it)
                       if not k.async_reduce and n > 1 else [] for g in dp.gpus}
            if any(c not in gpu_os for c in range(nchunks)):   # CPU chunks wait for every gradient
                cpu_deps = b.join(Action.STEP_JOIN, At(it, "grads"), "cpu.optim", sorted(grads_out) + ends,
                                  fwd_prio(it + 1, 0) - 1, it)
            for c in range(nchunks):                  # the optimizer step, after the backward
                fb = first_blk[c]
                if c not in gpu_os:
                    a = b.add(Action.ADAM_CPU, At(it, f"c{c}"), "cpu.optim",
                              (Op(OpKind.ADAM_CPU, n=elems[c], dtype="fp32"),), deps=cpu_deps,
                              prio=fwd_prio(it + 1, fb), it=it, block=fb)
                    step_tasks.append(a)
                    if c in fixed:   # updated parameters back into the GPU shard
                        ready[c] = copy(it, Action.CHUNK_WEIGHTS_H2D, str(c), c, "h2d", {g: [a] for g in dp.gpus},
                                        fwd_prio(it + 1, fb), fb)
                        step_tasks += ready[c].values()
                    continue
                adam = {g: b.add(Action.ADAM_GPU, at(it, f"c{c}", g, n), f"gpu{g}.compute",
                                 (Op(OpKind.ADAM_GPU, n=shard(elems[c], n, g), dtype="fp32"),),
                                 deps=[t[g].last_B, grad_ready[c][g]] + bwd_end[g], prio=it * PRIO_IT + PRIO_IT // 2 + fb,
                                 it=it, block=fb) for g in dp.gpus}
                step_tasks += adam.values()
                if c in resident:   # the 16-bit shard is rewritten from the fp32 master in place
                    ready[c] = adam
            step_done = sorted(step_tasks)
            last_B = {g: t[g].last_B for g in dp.gpus}
        meta = {"policy": self.name, "chunks": str(nchunks), "os_chunks_on_gpu": str(n_os),
                "gpu_home_chunks": str(len(home_gpu)), "gathered_chunks": str(len(keep))}
        initial = list(initial) + process_memory(ctx, self.k, self.name, initial)   # what a real process holds
        return b.build(ctx.pools(), initial, ctx.iterations, meta)

    @staticmethod
    def _last(r: int, u: int, used_at: dict[int, list[int]], compute, g: int) -> list[str]:
        """The compute task of chunk r's most recent use before step u in this iteration, if any
        (``used_at[r]``: the steps that need r, ascending)."""
        at = used_at.get(r, [])
        i = bisect_left(at, u)
        return [compute(at[i - 1], g)] if i else []


class FarthestNextUse:
    """Belady's eviction choice at trace step ``u``: among the resident chunks that step ``u``
    does not need and that are not ``fixed``, the one whose next use is farthest, ties to the
    higher chunk — ``max(candidates, key=lambda r: (next_use(r, u), r))`` — kept as a lazy
    max-heap instead of a scan of every resident chunk per eviction (a quarter of a build on the
    13B sweep grid, and quadratic in the chunks). An entry is a chunk's next use as of its latest
    use (:meth:`used`) or of the iteration's start (:meth:`reset`); it is current while the chunk
    stays resident and unused since, i.e. while it still equals ``next_use(r, u)``, which
    :meth:`victim` checks as it pops (a newer entry supersedes the others)."""

    def __init__(self, next_use: Callable[[int, int], int], fixed: set[int]) -> None:
        self.next_use, self.fixed = next_use, fixed
        self.heap: list[tuple[int, int]] = []     # (-next use, -chunk): the max on top

    def reset(self, resident: dict) -> None:
        """A new iteration (steps count from 0 again): every resident chunk's first use."""
        self.heap = [(-self.next_use(r, -1), -r) for r in resident if r not in self.fixed]
        heapq.heapify(self.heap)

    def used(self, c: int, u: int) -> None:
        """Chunk ``c`` (resident) is used at step ``u``."""
        if c not in self.fixed:
            heapq.heappush(self.heap, (-self.next_use(c, u), -c))

    def victim(self, u: int, need: set[int], resident: dict) -> int | None:
        """The chunk to evict at step ``u`` (``need``: the chunks step ``u`` uses), or None."""
        heap, kept, got = self.heap, [], None
        while heap:
            key, r = heapq.heappop(heap)
            r = -r
            if r not in resident or -key != self.next_use(r, u):
                continue                      # superseded (used since, or evicted)
            if r in need:
                kept.append((key, -r))        # current, but needed now: a candidate again later
                continue
            got = r
            break
        for e in kept:
            heapq.heappush(heap, e)
        return got

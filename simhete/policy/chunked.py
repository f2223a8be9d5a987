"""``chunked``: chunk-based heterogeneous memory management — PatrickStar (Fang et al., "Parallel
Training of Pre-trained Models via Chunk-based Dynamic Memory Management", IEEE TPDS 2022) and
Colossal-AI Gemini (its successor; ``GeminiPlugin`` docs).

Parameters are packed into fixed-size chunks of ``chunk_size`` elements in creation (= use) order,
so moving a chunk prefetches the next parameters and uses the link at full size; a gradient
overwrites its parameter in the chunk (no separate gradient buffer). fp32 master weights and
Adam states of a chunk ("OS chunk") live on the CPU unless the chunk is chosen for the GPU; a
chunk whose OS is on the GPU stays on the GPU and is updated there, the others are updated by
the CPU ("hybrid Adam").

``placement_policy: auto`` (PatrickStar's and Gemini's default): all chunks start in host memory;
the first (warm-up) iteration keeps chunk memory on the GPU under ``warmup_cuda_cap_ratio`` ×
(capacity − non-model memory in use); later iterations use the traced non-model memory:
``steady_cuda_cap_ratio`` × capacity − the next period's non-model peak. When a chunk must come
in and the budget is full, the resident chunk whose next use is furthest away is moved out
(Belady's rule, as PatrickStar's eviction). After the warm-up, Gemini places OS chunks on the GPU
in the margin: ``gpu_margin_mem_ratio`` of the memory left after the non-model peak and one step's
chunks (here this placement holds from the first iteration).
``placement_policy: static`` (newer Gemini): the first ``1 − offload_param_frac`` of the chunks stay
on the GPU, the rest are fetched for each use and moved out after it; the first
``1 − offload_optim_frac`` of the OS chunks live on the GPU.

A chunk whose OS is on the CPU goes D2H as soon as its gradients are complete (after the backward
of its first block) and the CPU steps it after the backward; its new parameters wait in host
memory for the next fetch. The optimizer step is synchronous: the next forward starts when it is
done. ``max_prefetch`` chunks may be fetched ahead of need (Gemini's knob; 0 = on demand).
With N GPUs a chunk becomes a communication group of N chunks (each GPU owns one, fetches it over
its own link and all-gathers; gradients are reduce-scattered), as PatrickStar does.
Simplification: tensors are packed contiguously and may straddle chunks (PatrickStar starts a new
chunk instead), so chunk counts are ⌈params / chunk_size⌉.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from simhete.errors import ConfigError
from simhete.opkinds import MemClass, OpKind, TaskCat
from simhete.policy.base import Builder, Context, Policy
from simhete.policy.dataparallel import DataParallel, shard
from simhete.policy.layout import nonmodel_by_step, owners, uses
from simhete.policy.process_memory import process_memory
from simhete.policy.registry import register
from simhete.policy.training import (PRIO_IT, ActivationKnobs, act_modes, bwd_prio, forward_backward,
                                     fwd_prio, tname)
from simhete.schedule import Alloc, Op, Schedule

OS_BYTES = 12   # fp32 master + Adam m + v per element (Rajbhandari et al. 2020, ZeRO §3.1)


# Chunk bookkeeping (use order, next use, eviction) grows with the square of the chunk count:
# measured here, 200 chunks build and simulate in 3 s, 1,000 in 37 s, 4,000 did not finish in 5
# minutes. Real chunk sizes give a few hundred per model (a 13B model in PatrickStar's default
# 64 MB chunks: ~400), so a smaller chunk_size is refused with the smallest one allowed.
MAX_CHUNKS = 1024


class ChunkedKnobs(ActivationKnobs):
    chunk_size: int = Field(32 * 2**20, gt=0)
    """Elements per chunk (default 32 Mi elements = 64 MB of 16-bit parameters)."""
    placement_policy: Literal["auto", "static"] = "auto"
    gpu_margin_mem_ratio: float = Field(0.0, ge=0, le=1)
    """auto: fraction of the GPU margin given to OS chunks updated on the GPU (Gemini default 0)."""
    warmup_cuda_cap_ratio: float = Field(0.95, gt=0, le=1)
    steady_cuda_cap_ratio: float = Field(0.9, gt=0, le=1)
    offload_param_frac: float = Field(0.0, ge=0, le=1)
    """static: fraction of parameter chunks (the last ones) kept in host memory."""
    offload_optim_frac: float = Field(0.0, ge=0, le=1)
    """static: fraction of OS chunks (the last ones) on the CPU."""
    max_prefetch: int = Field(0, ge=0)
    """Chunks fetched ahead of the step that needs them."""


@register("chunked")
class Chunked(Policy):
    Knobs = ChunkedKnobs
    multi_gpu = True
    accumulates = False

    def build(self, ctx: Context) -> Schedule:
        k = self.k
        if ctx.grad_accum > 1:
            raise ConfigError(ctx.scenario.file, "train.grad_accum", ctx.grad_accum,
                              allowed="1 with chunked: a gradient overwrites its parameter in the chunk, so "
                                      "micro-steps cannot accumulate (Gemini's separate gradient chunks, "
                                      "enable_gradient_accumulation, are not modelled)")
        b = Builder()
        dp = DataParallel(b, ctx, k.pin_memory)
        n, nb = ctx.n_gpus, len(ctx.blocks)
        modes = act_modes(ctx, k)
        by = {blk.index: blk for blk in ctx.blocks}
        e = next(blk.weight_bytes // blk.params for blk in ctx.blocks if blk.params)
        S = k.chunk_size * n                          # elements per chunk (group) across the GPUs
        start, pos = {}, 0
        for blk in ctx.blocks:
            start[blk.index] = pos
            pos += blk.params
        total = pos
        nchunks = math.ceil(total / S)
        if nchunks > MAX_CHUNKS:
            raise ConfigError(ctx.scenario.file, "knobs.chunk_size", k.chunk_size,
                              allowed=f"at least {math.ceil(total / MAX_CHUNKS / n)} elements for this model "
                                      f"({nchunks} chunks; at most {MAX_CHUNKS} are simulated — PatrickStar and "
                                      "Gemini chunks are tens of MB, a few hundred per model)")
        elems = [min(S, total - c * S) for c in range(nchunks)]
        cbytes = S * e                                # a chunk's GPU buffer (full size)
        chunks_of = {i: list(range(start[i] // S, (start[i] + by[i].params - 1) // S + 1)) if by[i].params else []
                     for i in by}
        trace = uses(ctx.blocks)
        need = [sorted({c for o in owners(blk) for c in chunks_of[o]}) for _, blk in trace]
        last_use = {c: u for u, cs in enumerate(need) for c in cs}
        first_blk = {c: next(i for i in by if c in chunks_of[i]) for c in range(nchunks)}
        nonmodel = nonmodel_by_step(ctx.blocks, modes)
        cap = ctx.gpu_capacity

        if k.placement_policy == "static":
            n_os = round((1 - k.offload_optim_frac) * nchunks)
            pinned = set(range(max(n_os, round((1 - k.offload_param_frac) * nchunks))))
        else:
            margin = k.steady_cuda_cap_ratio * cap - max(nonmodel) - max(len(cs) for cs in need) * cbytes
            n_os = min(nchunks, max(0, int(k.gpu_margin_mem_ratio * margin // (cbytes + OS_BYTES * k.chunk_size))))
            pinned = set(range(n_os))
        gpu_os = set(range(n_os))
        os_gpu_bytes = sum(shard(OS_BYTES * elems[c], n, 0) for c in gpu_os)

        initial = [Alloc(f"chunk.c{c}", "cpu", elems[c] * e, MemClass.WEIGHTS) for c in range(nchunks)]
        for c in range(nchunks):
            if c not in gpu_os:
                initial += [Alloc(f"master.c{c}", "cpu", 4 * elems[c], MemClass.MASTER),
                            Alloc(f"optim.c{c}", "cpu", 8 * elems[c], MemClass.OPTIM),
                            Alloc(f"grads32.c{c}", "cpu", 4 * elems[c], MemClass.GRADS32)]
            else:
                for g in dp.gpus:
                    initial += [Alloc(f"master.g{g}.c{c}", f"gpu{g}", shard(4 * elems[c], n, g), MemClass.MASTER),
                                Alloc(f"optim.g{g}.c{c}", f"gpu{g}", shard(8 * elems[c], n, g), MemClass.OPTIM)]

        def budget(it: int, u: int) -> float:
            if k.placement_policy == "static":
                return 0.0
            if it == 1:
                return k.warmup_cuda_cap_ratio * (cap - nonmodel[u]) - os_gpu_bytes
            return k.steady_cuda_cap_ratio * cap - max(nonmodel[u:u + 2]) - os_gpu_bytes

        def next_use(c: int, u: int) -> int:
            later = [w for w in range(u + 1, len(trace)) if c in need[w]]
            return later[0] if later else len(trace) + min(w for w, cs in enumerate(need) if c in cs)

        resident: dict[int, dict[int, str]] = {}   # chunk -> gpu -> buffer
        ready: dict[int, dict[int, str]] = {}      # chunk -> gpu -> task after which it is usable
        step_done: list[str] = []
        last_B: dict[int, str] = {}
        for it in range(1, ctx.iterations + 1):
            def compute(u: int, g: int) -> str:
                return tname(it, trace[u][0], trace[u][1].name, g, n)

            count: dict[str, int] = {}

            def unique(what: str) -> str:
                count[what] = count.get(what, 0) + 1
                return what if count[what] == 1 else f"{what}r{count[what]}"

            fdeps = {g: {} for g in dp.gpus}
            bdeps = {g: {} for g in dp.gpus}
            fetches: list[int] = []                 # step of each fetch, in order (for max_prefetch)
            start_deps = {g: ([last_B[g]] if g in last_B else []) + step_done for g in dp.gpus}
            grads_out: list[str] = []
            step_tasks: list[str] = []
            for u, (phase, blk) in enumerate(trace):
                for c in need[u]:
                    if c in resident:
                        continue
                    evicts: dict[int, list[str]] = {g: [] for g in dp.gpus}
                    while (len(resident) + 1) * cbytes > budget(it, u):
                        cand = [r for r in resident if r not in need[u] and r not in pinned]
                        if not cand:
                            break
                        r = max(cand, key=lambda r: (next_use(r, u), r))
                        what = unique(f"D2H.c{r}")
                        # a move: the GPU copy is freed when this GPU's shard is home
                        out = dp.shard_d2h(it, what, "chunk", elems[r] * e,
                                           {g: [ready[r][g]] + self._last(r, u, need, compute, g) for g in dp.gpus},
                                           fwd_prio(it, blk.index), blk.index,
                                           frees={g: [resident[r][g]] for g in dp.gpus})
                        for g in dp.gpus:
                            evicts[g].append(out[g])
                        del resident[r]
                    fetches.append(u)
                    q = len(fetches) - 1
                    tu = fetches[max(0, q - k.max_prefetch)]
                    trig = {g: ([compute(tu - 1, g)] if tu else list(start_deps[g])) + evicts[g] for g in dp.gpus}
                    what = unique(f"H2D.c{c}")
                    buf = {g: dp.name(it, "buf." + what, "chunk", g) for g in dp.gpus}
                    prio = fwd_prio(it, blk.index) if phase == "F" else bwd_prio(it, blk.index, nb)
                    ready[c] = dp.to_gpu(it, what, "chunk", elems[c] * e, trig, prio, blk.index,
                                         allocs={g: [Alloc(buf[g], f"gpu{g}", cbytes, MemClass.WEIGHTS, persist=True)]
                                                 for g in dp.gpus})
                    resident[c] = buf
                deps = fdeps if phase == "F" else bdeps
                for g in dp.gpus:
                    deps[g].setdefault(blk.index, []).extend(ready[c][g] for c in need[u] if c in ready)
                for c in need[u]:
                    if last_use[c] != u or c in gpu_os:
                        continue
                    # gradients complete: the chunk goes home for the CPU step
                    frees = {g: [resident[c][g]] for g in dp.gpus} if c not in pinned else None
                    out = dp.from_gpu(it, f"D2H.g.c{c}", "chunk", elems[c] * e,
                                      {g: [compute(u, g)] for g in dp.gpus}, it * PRIO_IT + PRIO_IT // 4 + c,
                                      blk.index, frees=frees)
                    grads_out += out.values()
                    if c not in pinned:
                        del resident[c]
                        del ready[c]
            t = {g: forward_backward(b, ctx, it, modes, gpu=g, start_deps=start_deps[g], fwd_weight_deps=fdeps[g],
                                     bwd_weight_deps=bdeps[g], pinned=k.pin_memory, grad_buffers=False)
                 for g in dp.gpus}
            ends = [t[g].last_B for g in dp.gpus]
            if any(c not in gpu_os for c in range(nchunks)):   # CPU chunks wait for every gradient
                cpu_deps = b.join(tname(it, "STEP", "grads"), "cpu.optim", sorted(grads_out) + ends,
                                  fwd_prio(it + 1, 0) - 1, it)
            for c in range(nchunks):                  # the optimizer step, after the backward
                fb = first_blk[c]
                if c not in gpu_os:
                    a = b.add(tname(it, "ADAM.cpu", f"c{c}"), "cpu.optim", TaskCat.OPTIM_CPU,
                              (Op(OpKind.ADAM_CPU, n=elems[c], dtype="fp32"),), deps=cpu_deps,
                              prio=fwd_prio(it + 1, fb), it=it, block=fb)
                    step_tasks.append(a)
                    if c in pinned:   # updated parameters back into the resident chunk
                        ready[c] = dp.to_gpu(it, f"H2D.w.c{c}", "chunk", elems[c] * e, [a], fwd_prio(it + 1, fb), fb)
                        step_tasks += ready[c].values()
                    continue
                rs = dp.collective(OpKind.REDUCE_SCATTER, it, f"RS.g.c{c}", "chunk", elems[c] * e,
                                   {g: [t[g].last_B] for g in dp.gpus}, it * PRIO_IT + PRIO_IT // 4 + c, fb)
                adam = {g: b.add(tname(it, "ADAM.gpu", f"c{c}", g, n), f"gpu{g}.compute", TaskCat.OPTIM_GPU,
                                 (Op(OpKind.ADAM_GPU, n=shard(elems[c], n, g), dtype="fp32"),),
                                 deps=[t[g].last_B] + ([rs[g]] if rs else []), prio=it * PRIO_IT + PRIO_IT // 2 + fb,
                                 it=it, block=fb) for g in dp.gpus}
                step_tasks += adam.values()
                ag = dp.collective(OpKind.ALLGATHER, it, f"AG.w.c{c}", "chunk", elems[c] * e,
                                   {g: [adam[g]] for g in dp.gpus}, fwd_prio(it + 1, fb), fb)
                step_tasks += ag.values()
                if c in ready:
                    ready[c] = ag or adam
            step_done = sorted(step_tasks)
            last_B = {g: t[g].last_B for g in dp.gpus}
        meta = {"policy": self.name, "chunks": str(nchunks), "os_chunks_on_gpu": str(n_os),
                "pinned_chunks": str(len(pinned))}
        initial = list(initial) + process_memory(ctx, self.k, self.name, initial)   # what a real process holds
        return b.build(ctx.pools(), initial, ctx.iterations, meta)

    @staticmethod
    def _last(r: int, u: int, need: list[list[int]], compute, g: int) -> list[str]:
        """The compute task of chunk r's most recent use before step u in this iteration, if any."""
        before = [w for w in range(u) if r in need[w]]
        return [compute(before[-1], g)] if before else []

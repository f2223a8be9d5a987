"""The chunked policy's knobs and chunk geometry (:mod:`simhete.policy.chunked` has the model):
how many chunks of how many elements, which chunks each step of the use trace needs, the
non-model memory per step, and where the chunks and their optimizer states are placed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from simhete.errors import ConfigError
from simhete.policy.base import Context, knob_key
from simhete.policy.dataparallel import shard
from simhete.policy.layout import nonmodel_by_step, owners, uses
from simhete.policy.training import ActivationKnobs, act_modes

OS_BYTES = 12   # fp32 master + Adam m + v per element (Rajbhandari et al. 2020, ZeRO §3.1)


# Chunk bookkeeping (use order, next use, eviction) grows with the square of the chunk count:
# measured here, 200 chunks build and simulate in 3 s, 1,000 in 37 s, 4,000 did not finish in 5
# minutes. Real chunk sizes give a few hundred per model (a 13B model in PatrickStar's default
# 64 MB chunks: ~400), so a smaller chunk_size is refused with the smallest one allowed.
MAX_CHUNKS = 1024


class ChunkedKnobs(ActivationKnobs):
    chunk_size: int = Field(32 * 2**20, gt=0)
    """Elements per chunk and GPU (default 32 Mi elements = 64 MB of 16-bit parameters)."""
    placement_policy: Literal["auto", "static"] = "auto"
    gpu_margin_mem_ratio: float = Field(0.0, ge=0, le=1)
    """auto: fraction of the GPU margin given to OS chunks updated on the GPU (Gemini default 0)."""
    warmup_cuda_cap_ratio: float = Field(0.2, gt=0, le=1)
    """auto: fraction of GPU capacity chunks may use in the warm-up iteration (Gemini: 1 −
    warmup_non_model_data_ratio = 0.2)."""
    steady_cuda_cap_ratio: float = Field(0.9, gt=0, le=1)
    shard_param_frac: float = Field(1.0, ge=0, le=1)
    """static: fraction of the chunks kept sharded over the GPUs after use (Gemini default 1); the
    first 1 − this fraction stay gathered on every GPU."""
    offload_param_frac: float = Field(0.0, ge=0, le=1)
    """static: fraction of 16-bit chunk shards (the last ones) kept in host memory (only with
    shard_param_frac = offload_optim_frac = 1)."""
    offload_optim_frac: float = Field(0.0, ge=0, le=1)
    """static: fraction of OS chunks (the last ones) on the CPU."""
    max_prefetch: int = Field(0, ge=0)
    """Chunk groups fetched or gathered ahead of the step that needs them."""
    async_reduce: bool = True
    """Gemini's ``enable_async_reduce`` (ColossalAI PR #5713, May 2024; its default since): a
    chunk's gradient reduce-scatter runs on the communication stream while the backward goes on.
    False: Gemini before that PR — ``GeminiDDP.grad_handle`` calls ``Chunk.reduce`` (a blocking
    ``dist.reduce_scatter``, which the compute stream waits for) from the backward hook of the
    chunk's last gradient, then reads the overflow flag and the norm with ``.item()``; the backward
    continues only after the reduction."""


@dataclass(frozen=True)
class Geometry:
    """What :meth:`geometry` derives from the model, the knobs and the sizes: the chunks
    (elements per dtype byte ``e``, counts, each GPU's shard bytes ``sh``, a chunk's payload and the
    other GPUs' shards while gathered), each step of the use trace's chunks, the non-model memory
    per step, the GPU capacity, and the placement (kept-gathered, home-GPU and GPU-updated chunks)."""

    e: int
    nchunks: int
    elems: list[int]
    sh: list[list[int]]
    sbytes: int
    extra: int
    trace: list
    need: list[list[int]]
    last_use: dict[int, int]
    used_at: dict[int, list[int]]
    first_blk: dict[int, int]
    nonmodel: list[int]
    cap: int
    maxneed: int
    n_os: int
    home_gpu: set[int]
    keep: set[int]
    gpu_os: set[int]
    fixed: set[int]
    os_gpu_bytes: int

    def budget(self, k: ChunkedKnobs, it: int, u: int) -> float:
        """``placement_policy: auto``: GPU bytes the cached chunk shards may use at step u of
        iteration ``it`` (module docstring): the warm-up ratio of capacity in iteration 1, later
        the steady ratio less the traced non-model peak of this step and the next; less the
        GPU-updated OS chunks and room for a step's gathered groups."""
        reserve = self.extra * self.maxneed
        if it == 1:
            return k.warmup_cuda_cap_ratio * self.cap - self.os_gpu_bytes - reserve
        return k.steady_cuda_cap_ratio * self.cap - max(self.nonmodel[u:u + 2]) - self.os_gpu_bytes - reserve


def geometry(ctx: Context, k: ChunkedKnobs) -> Geometry:
    """The chunks and their placement: everything the chunked policy takes from sizes before it
    emits a task. Its ``decisions`` and ``build`` both ask, so it is kept on the workload under
    what it is made from besides the blocks (the knobs, the GPUs, their capacity); the build only
    reads it."""
    return ctx.workload.keep(("chunks.geometry", knob_key(k), ctx.n_gpus, ctx.gpu_capacity),
                             lambda: _geometry(ctx, k))


def _geometry(ctx: Context, k: ChunkedKnobs) -> Geometry:
    file = ctx.scenario.file
    n = ctx.n_gpus
    modes = act_modes(ctx, k)
    static = k.placement_policy == "static"
    by = {blk.index: blk for blk in ctx.blocks}
    e = next(blk.weight_bytes // blk.params for blk in ctx.blocks if blk.params)
    C = k.chunk_size                              # elements per chunk and GPU
    S = C * n                                     # elements per chunk group across the GPUs
    start, pos = {}, 0
    for blk in ctx.blocks:
        start[blk.index] = pos
        pos += blk.params
    total = pos
    nchunks = math.ceil(total / S)
    if nchunks > MAX_CHUNKS:
        raise ConfigError(file, "knobs.chunk_size", k.chunk_size,
                          allowed=f"at least {math.ceil(total / MAX_CHUNKS / n)} elements for this model "
                                  f"({nchunks} chunks; at most {MAX_CHUNKS} are simulated — PatrickStar and "
                                  "Gemini chunks are tens of MB, a few hundred per model)")
    elems = [min(S, total - c * S) for c in range(nchunks)]
    sh = [[shard(elems[c] * e, n, g) for g in range(n)] for c in range(nchunks)]   # a GPU's 16-bit shard
    sbytes = C * e                                # a GPU's chunk payload (PatrickStar/Gemini: full size)
    extra = (S - C) * e                           # the other GPUs' shards while a group is gathered
    chunks_of = {i: list(range(start[i] // S, (start[i] + by[i].params - 1) // S + 1)) if by[i].params else []
                 for i in by}
    trace = uses(ctx.blocks)
    need = [sorted({c for o in owners(blk) for c in chunks_of[o]}) for _, blk in trace]
    last_use = {c: u for u, cs in enumerate(need) for c in cs}
    used_at: dict[int, list[int]] = {}        # chunk -> the steps that need it, ascending
    for u, cs in enumerate(need):
        for c in cs:
            used_at.setdefault(c, []).append(u)
    first_blk = {c: next(i for i in by if c in chunks_of[i]) for c in range(nchunks)}
    nonmodel = nonmodel_by_step(ctx.blocks, modes)
    cap = ctx.gpu_capacity
    maxneed = max(len(cs) for cs in need)

    if static:
        n_keep = round((1 - k.shard_param_frac) * nchunks) if n > 1 else 0
        # Gemini setup_grads_device: OS chunks of kept-gathered chunks stay on the GPU
        n_os = nchunks - min(round(k.offload_optim_frac * nchunks), nchunks - n_keep)
        home_gpu = set(range(round((1 - k.offload_param_frac) * nchunks)))
    else:
        n_keep = 0
        # PatrickStar MemTracer.update_margin_mem: capacity − non-model peak − this rank's
        # 16-bit chunks (+ the gathered remote chunks), at 12 B per OS element
        mine16 = nchunks * sbytes + (n - 1) * sbytes * maxneed
        margin = k.steady_cuda_cap_ratio * cap - max(nonmodel) - mine16
        n_os = min(nchunks, max(0, int(k.gpu_margin_mem_ratio * margin // (OS_BYTES * C))))
        home_gpu = set()
    keep = set(range(n_keep))                     # chunks that stay gathered once gathered
    gpu_os = set(range(n_os))
    fixed = home_gpu | gpu_os                     # once on the GPU, never moved out
    os_gpu_bytes = sum(shard(OS_BYTES * elems[c], n, 0) for c in gpu_os)
    return Geometry(e=e, nchunks=nchunks, elems=elems, sh=sh, sbytes=sbytes, extra=extra, trace=trace,
                     need=need, last_use=last_use, used_at=used_at, first_blk=first_blk, nonmodel=nonmodel,
                     cap=cap, maxneed=maxneed, n_os=n_os, home_gpu=home_gpu, keep=keep, gpu_os=gpu_os,
                     fixed=fixed, os_gpu_bytes=os_gpu_bytes)

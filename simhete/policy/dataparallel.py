"""Data-parallel building blocks shared by the offloading policies (1–8 GPUs).

Every GPU runs the same forward/backward on its own micro-batch (streams ``gpu{g}.*``). Model
states that live in host memory are *sharded* ZeRO-style: GPU g owns 1/N of every offloaded
tensor and moves only that shard over its own PCIe link (ZeRO-Infinity's bandwidth-centric
partitioning, Rajbhandari et al. 2021 §6.1; ZeRO-Offload's multi-GPU mode, Ren et al. 2021 §4.1).
The shards meet over NVLink:

- to the GPU: each GPU copies its shard H2D, then an all-gather on ``gpu{g}.comm`` assembles the
  full tensor on every GPU;
- from the GPU: a reduce-scatter on ``gpu{g}.comm`` sums the gradients of all GPUs and leaves
  GPU g the sum of its shard, which it copies D2H;
- gradients of GPU-resident optimizer states are all-reduced (PyTorch DDP / Megatron).

A collective is one task per GPU that depends on every GPU's producer, so all ranks enter it
together, as NCCL requires. Its time is the cost model's α-β price with nccl-tests bus-bandwidth
factors (ALLREDUCE 2(r−1)/r, REDUCE_SCATTER and ALLGATHER (r−1)/r; op ``n`` = bytes of the
full tensor per rank). With one GPU none of these collectives is emitted.

Contention between GPUs that share a PCIe switch or host DRAM bandwidth is not built here: the
profile's interference rules (``gpu*.h2d`` vs ``cpu.optim``, ...) apply to these stream names.

Gradient accumulation: ``m`` (set by the policy per micro-step) names the tasks of micro-step m;
:meth:`DataParallel.accumulate` is how a micro-step after the first adds its gradients into the
16-bit host accumulation buffer of an offloaded optimizer.
"""

from __future__ import annotations

from typing import Iterable

from simhete.opkinds import DTYPE_BYTES, Action, At, MemClass, OpKind
from simhete.policy.base import Builder, Context, dep_names, shared_op, shared_ops
from simhete.policy.training import copy_stream, tname

# The all-gather that assembles the shards an H2D of weights copied (``to_gpu`` on several GPUs)
GATHER_OF = {Action.WEIGHTS_H2D: Action.WEIGHTS_H2D_AG, Action.WEIGHTS_H2D_FWD: Action.WEIGHTS_H2D_FWD_AG,
             Action.WEIGHTS_H2D_BWD: Action.WEIGHTS_H2D_BWD_AG}
from simhete.schedule import Alloc, Op


def shard(total: int, n: int, g: int) -> int:
    """Bytes (or elements) of shard ``g`` when ``total`` is split over ``n`` ranks; the shards sum
    to ``total`` exactly (the first ``total % n`` ranks take one more)."""
    if n == 1 and type(total) is int:      # the one-GPU case, on every copy a policy emits
        return total
    q, r = divmod(total, n)
    return q + (1 if g < r else 0)


def ipg_buffer(ctx: Context, reduce_bucket_size: float, overlap_comm: bool, g: int) -> Alloc:
    """DeepSpeed ZeRO-1/2's gradient bucket buffer on GPU g. stage_1_and_2.py ``backward()``, with
    ``contiguous_gradients`` (stage 2's default; forced on with ``cpu_offload``), allocates
    ``ipg_buffer``: ``reduce_bucket_size`` elements of the model dtype, two with ``overlap_comm``
    (double-buffered, "to avoid data access conflict"), whatever the model's size. Each gradient
    is copied into it by its hook and the parameter's gradient then points into it
    (``reduce_independent_p_g_buckets_and_remove_grads``: ``grad_reduc.data =
    new_grad_tensor.data``), so a block's gradient owns no bytes of its own (``grad_views``; the
    backward's autograd gradient is transient). ``_release_ipg_buffers`` drops the buffer at the
    step; the CUDA caching allocator keeps the freed segment and hands it back at the next
    backward, so it is held here from the start."""
    e = DTYPE_BYTES[ctx.workload.dtype]
    return Alloc(f"ipg_buffer.g{g}", f"gpu{g}", int(reduce_bucket_size) * e * (2 if overlap_comm else 1),
                 MemClass.BUFFERS)


class DataParallel:
    """Emits copies and collectives for all GPUs of a context; one instance per schedule."""

    def __init__(self, b: Builder, ctx: Context, pinned: bool) -> None:
        self.b = b
        self.ctx = ctx
        self.n = ctx.n_gpus
        self.gpus = range(self.n)   # the GPUs' indices (read on every emitted copy)
        self.pinned = pinned
        self.m = 1            # micro-step whose tasks are being emitted (names)
        # GPU 0's copy streams, for the one-GPU paths of to_gpu / from_gpu
        self._h2d0, self._d2h0 = copy_stream(0, "h2d", pinned), copy_stream(0, "d2h", pinned)

    def at(self, it: int, blk: str, g: int, variant: str = "") -> At:
        """Coordinates of GPU g's task on ``blk`` in the current micro-step (``self.m``)."""
        return At(it, blk, self.m, g if self.n > 1 else -1, variant)

    def task(self, action: Action, it: int, blk: str, g: int, variant: str = "") -> str:
        """The name of GPU g's ``action`` task on ``blk`` (emitted or to be emitted)."""
        return action.task_name(self.at(it, blk, g, variant))

    def buffer(self, it: int, what: str, blk: str, g: int) -> str:
        """A buffer's name in the tasks' scheme (``it1.w.f.b3``, ``it1.m2.D2H.g.acc.k0@g1``)."""
        return tname(it, what, blk, g, self.n, self.m)

    def _per_gpu(self, deps: dict[int, list[str]] | Iterable[str], g: int) -> list[str]:
        return list(deps.get(g, [])) if isinstance(deps, dict) else list(deps)

    def to_gpu(self, it: int, action: Action, blk: str, nbytes: int, deps: dict[int, list[str]] | list[str],
               prio: int, block: int, allocs: dict[int, list[Alloc]] | None = None,
               label: int | None = None, sync: bool = False, variant: str = "") -> dict[int, str]:
        """Host → every GPU: shard H2D (``action``, an H2D of weights) on each GPU's link (+ its
        all-gather, :data:`GATHER_OF`). Returns, per GPU, the task after which the full ``nbytes``
        are on that GPU. ``allocs[g]`` are allocated by the H2D. ``label``: the iteration the
        tasks are counted in (default ``it``, which names them). ``sync``: on the compute stream
        (DeepSpeed ZeRO-3 without ``overlap_comm``)."""
        n, add, allocs = self.n, self.b.add, allocs or {}
        lab = it if label is None else label
        if n == 1 and not sync:     # one GPU (most schedules): its copy alone, stored as add would store it
            a = allocs.get(0, ())
            where = At(it, blk, self.m, -1, variant)
            return {0: self.b.add_row((action.task_name(where), self._h2d0, action.cat,
                                       shared_ops(OpKind.H2D, shard(nbytes, 1, 0), self.pinned),
                                       dep_names(deps.get(0, ()) if isinstance(deps, dict) else deps), prio,
                                       a if type(a) is tuple else tuple(a), (), lab, block, action, where))}
        h2d = {g: add(action, self.at(it, blk, g, variant), self.stream(g, "h2d", sync),
                      shared_ops(OpKind.H2D, shard(nbytes, n, g), self.pinned),
                      deps=self._per_gpu(deps, g), prio=prio, allocs=allocs.get(g, ()), it=lab, block=block)
               for g in range(n)}
        if n == 1:
            return h2d
        every = [h2d[g] for g in self.gpus]
        return {g: self.b.add(GATHER_OF[action], self.at(it, blk, g, variant), self.comm(g, sync),
                              (Op(OpKind.ALLGATHER, (self.n,), n=nbytes),), deps=every, prio=prio,
                              it=lab, block=block)
                for g in self.gpus}

    def comm(self, g: int, sync: bool = False) -> str:
        """The collectives' stream, or the compute stream when DeepSpeed runs them on the default
        stream (``overlap_comm: false``: stage_1_and_2.py ``average_tensor``, stage3.py
        ``reduce_and_partition_stream``, parameter_offload.py's all-gather stream)."""
        return f"gpu{g}.compute" if sync else f"gpu{g}.comm"

    def stream(self, g: int, direction: str, sync: bool = False) -> str:
        """The copy engine's stream, or the compute stream for a pageable copy or one made
        synchronously inside the backward (``sync``: DeepSpeed without ``overlap_comm``)."""
        return f"gpu{g}.compute" if sync else copy_stream(g, direction, self.pinned)

    def copy_or_comm(self, g: int, direction: str, sync: bool, ops: tuple[Op, ...] | None) -> str:
        """:meth:`stream` for a task that copies; a task whose ``ops`` copy nothing (a rank owning
        none of a ZeRO-Offload bucket runs only the bucket passes, or nothing) runs on the
        collectives' stream, DeepSpeed's reduction stream: no task on a copy stream moves nothing."""
        if ops is not None and not any(op.kind is OpKind.D2H or op.kind is OpKind.H2D for op in ops):
            return self.comm(g, sync)
        return self.stream(g, direction, sync)

    def from_gpu(self, it: int, blk: str, nbytes: int, deps: dict[int, list[str]],
                 prio: int, block: int, frees: dict[int, list[str]] | None = None,
                 sync: bool = False, reduce: OpKind = OpKind.REDUCE_SCATTER,
                 ops: dict[int, tuple[Op, ...]] | None = None) -> dict[int, str]:
        """Every GPU → host: (``reduce`` collective +) shard D2H of gradients (``GRADS_D2H``).
        Returns the D2H task per GPU, which
        frees ``frees[g]`` (the GPU gradient buffers) when it ends. ``reduce``: the collective over
        the full ``nbytes`` (REDUCE_SCATTER, or ALLREDUCE where the framework all-reduces and each
        rank keeps its part). ``ops[g]``: the D2H task's ops on GPU g when they are more than the
        copy of its 16-bit shard (a cast, checks, an fp32 copy: ZeRO-Offload's boundary)."""
        D2H = Action.GRADS_D2H
        if self.n == 1:     # one GPU (most schedules): its copy alone, stored as add would store it
            f = (frees or {}).get(0, ())
            where = At(it, blk, self.m)
            return {0: self.b.add_row((D2H.task_name(where), "gpu0.compute" if sync else self._d2h0,
                                       D2H.cat, ops[0] if ops else shared_ops(OpKind.D2H, shard(nbytes, 1, 0), self.pinned),
                                       dep_names(deps.get(0, ())), prio, (), f if type(f) is tuple else tuple(f),
                                       it, block, D2H, where))}
        src = deps
        if self.n > 1:
            every = sorted({d for g in self.gpus for d in deps.get(g, [])})
            red = Action.GRADS_D2H_RS if reduce is OpKind.REDUCE_SCATTER else Action.GRADS_D2H_AR
            src = {g: [self.b.add(red, self.at(it, blk, g), self.comm(g, sync),
                                  (Op(reduce, (self.n,), n=nbytes),), deps=every,
                                  prio=prio, it=it, block=block)] for g in self.gpus}
        return {g: self.b.add(D2H, self.at(it, blk, g),
                              self.copy_or_comm(g, "d2h", sync, ops[g] if ops else None),
                              ops[g] if ops else shared_ops(OpKind.D2H, shard(nbytes, self.n, g), self.pinned),
                              deps=src.get(g, []), prio=prio, frees=(frees or {}).get(g, ()), it=it, block=block)
                for g in self.gpus}

    def accumulate(self, it: int, blk: str, nbytes: int, deps: dict[int, list[str]],
                   prev: dict[int, str], prio: int, block: int,
                   frees: dict[int, list[str]] | None = None, sync: bool = False,
                   reduce: OpKind = OpKind.REDUCE_SCATTER,
                   post: dict[int, tuple[Op, ...]] | None = None,
                   parts: dict[int, int] | None = None) -> dict[int, str]:
        """Micro-step m > 1: add this micro-step's gradients (``nbytes`` 16-bit, all ranks) into the
        host accumulation buffer through the GPU, as DeepSpeed ZeRO-2/3 offload do
        (``async_accumulate_grad_in_cpu_via_gpu`` in stage_1_and_2.py, ``partition_grads`` in
        stage3.py): (reduce-scatter,) H2D of the rank's accumulated 16-bit partition into a staging
        buffer once the rank's previous D2H of it (``prev[g]``) is done, an add on the GPU, and
        D2H of the sum. The add (reads both, writes one: 3 × the shard's bytes) runs on DeepSpeed's
        reduction stream, so it is priced inside the copy-back task, not on the compute stream.
        Returns the D2H task per GPU, which frees ``frees[g]`` and the staging buffer. ``reduce``
        and ``post[g]`` (ops after the copy back, in the same task) as in :meth:`from_gpu`;
        ``parts[g]``: rank g's bytes of the accumulated partition when they are not the even shard
        (DeepSpeed ZeRO-1/2's contiguous partition, zero_offload_buckets.rank_partition_slices)."""
        src = {g: list(deps.get(g, [])) for g in self.gpus}
        if self.n > 1:
            red = Action.GRADS_D2H_RS if reduce is OpKind.REDUCE_SCATTER else Action.GRADS_D2H_AR
            rs = self.collective(reduce, red, it, blk, nbytes, deps, prio, block, sync=sync)
            src = {g: [rs[g]] for g in self.gpus}
        out = {}
        for g in self.gpus:
            part = shard(nbytes, self.n, g) if parts is None else parts[g]
            stage = self.buffer(it, Action.GRADS_D2H.what() + ".acc", blk, g)
            # a rank owning nothing of the bucket (``parts``) stages, adds and copies nothing
            up = shared_ops(OpKind.H2D, part, self.pinned) if part or parts is None else ()
            h2d = self.b.add(Action.GRADS_ACC_H2D, self.at(it, blk, g), self.copy_or_comm(g, "h2d", sync, up),
                             up, deps=src[g] + [prev[g]], prio=prio,
                             allocs=[Alloc(stage, f"gpu{g}", part, MemClass.BUFFERS)], it=it, block=block)
            down = ((Op(OpKind.ELEMENTWISE, n=3 * part), shared_op(OpKind.D2H, part, self.pinned))
                    if part or parts is None else ()) + ((post or {}).get(g, ()))
            out[g] = self.b.add(Action.GRADS_D2H, self.at(it, blk, g), self.copy_or_comm(g, "d2h", sync, down),
                                down, deps=[h2d], prio=prio, frees=list((frees or {}).get(g, ())) + [stage], it=it,
                                block=block)
        return out

    def shard_d2h(self, it: int, blk: str, nbytes: int, deps: dict[int, list[str]],
                  prio: int, block: int, frees: dict[int, list[str]] | None = None) -> dict[int, str]:
        """Each GPU copies its own shard of weights D2H (``WEIGHTS_D2H``, no collective: updated
        weights to their host home), freeing ``frees[g]`` when done."""
        return {g: self.b.add(Action.WEIGHTS_D2H, self.at(it, blk, g), copy_stream(g, "d2h", self.pinned),
                              shared_ops(OpKind.D2H, shard(nbytes, self.n, g), self.pinned),
                              deps=deps.get(g, []), prio=prio, frees=(frees or {}).get(g, ()), it=it, block=block)
                for g in self.gpus}

    def shard_h2d(self, it: int, blk: str, nbytes: int, deps: dict[int, list[str]],
                  prio: int, block: int) -> dict[int, str]:
        """Each GPU copies its own shard of weights H2D (``WEIGHTS_H2D``, no collective: an updated
        16-bit partition going back to a GPU that keeps its weights partitioned, ZeRO-3 without
        parameter offload)."""
        return {g: self.b.add(Action.WEIGHTS_H2D, self.at(it, blk, g), copy_stream(g, "h2d", self.pinned),
                              shared_ops(OpKind.H2D, shard(nbytes, self.n, g), self.pinned),
                              deps=deps.get(g, []), prio=prio, it=it, block=block)
                for g in self.gpus}

    def collective(self, kind: OpKind, action: Action, it: int, blk: str, nbytes: int,
                   deps: dict[int, list[str]], prio: int, block: int,
                   allocs: dict[int, list[Alloc]] | None = None,
                   frees: dict[int, list[str]] | None = None, sync: bool = False,
                   variant: str = "", passes: dict[int, tuple[Op, ...]] | None = None) -> dict[int, str]:
        """One collective ``kind`` over all GPUs, the task ``action`` on each (nothing with one
        GPU): per GPU the task name. ``allocs[g]``
        are allocated when it starts (an all-gather's output), ``frees[g]`` freed when it ends (a
        reduce-scatter's full-size input); ``passes[g]``: GPU g's kernels around the collective
        that run on the same stream (priced in its task, before the collective)."""
        if self.n == 1:
            return {}
        every = sorted({d for g in self.gpus for d in deps.get(g, [])})
        pre = passes or {}
        return {g: self.b.add(action, self.at(it, blk, g, variant), self.comm(g, sync),
                              pre.get(g, ()) + (Op(kind, (self.n,), n=nbytes),), deps=every, prio=prio,
                              allocs=(allocs or {}).get(g, ()), frees=(frees or {}).get(g, ()), it=it, block=block)
                for g in self.gpus}

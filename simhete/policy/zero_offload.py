"""``zero-offload``: ZeRO-Offload (Ren et al., USENIX ATC 2021; DeepSpeed ZeRO stage 2 + CPU offload).

Placement: 16-bit weights stay on the GPU; fp32 master weights, Adam m and v and fp32 gradients
live in host memory; the Adam step runs on the CPU (DeepSpeedCPUAdam).
Data flow per iteration, as DeepSpeed's stage_1_and_2.py runs it with ``offload_optimizer: cpu``:
during backward, gradients are reduced in buckets of ``reduce_bucket_size`` elements (DeepSpeed
default 5e8; all-reduced with N GPUs; ``overlap_comm`` overlaps them with backward on a side
stream with two bucket buffers; without it each bucket is reduced and copied on the compute stream
from the backward hook once the next gradient would overflow it, so the backward stalls for the
copy and the GPU holds about one bucket); at the accumulation boundary each rank computes its
partition's per-parameter norms and inf/nan checks, casts it to fp32 on the GPU and copies the fp32
partition D2H (4 B/param / N). After backward the CPU clips the fp32 gradients, runs Adam (one task
per block here; DeepSpeed steps the flat partition in one call), casts the fp32 partition to the
16-bit host buffer, and only then do the 16-bit weights go back H2D (2 B/param / N; all-gathered
with N GPUs). PCIe traffic per step: 4 + 2 B/param (see docs/policies.md for every pass).
``delayed_update`` (DPU, §5 of the paper): iteration k+1's forward/backward use the weights
updated by step k−1, so the CPU step of iteration k overlaps iteration k+1; it needs a second
fp32 gradient buffer on the host. There is still one 16-bit weight copy on each side, so step k's
weights go back to the GPU only after iteration k+1's backward of the block (its last use of the
old ones), and step k+1 waits until that copy has read the host's weights (replay found both
races when the refresh followed the step directly). The last step's refresh falls after iteration
N+1's backward, outside the simulated window, so it is not in the schedule.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from simhete.opkinds import Action, At, MemClass, OpKind
from simhete.policy.base import Builder, Context, Policy, dep_names, host_fp32_bytes, model_states, shared_ops
from simhete.policy.dataparallel import DataParallel, ipg_buffer
from simhete.policy.process_memory import process_memory
from simhete.policy.registry import register
from simhete.policy.sizes import size_table
from simhete.policy.training import (ActivationKnobs, accum_steps, act_modes, forward_backward, fwd_prio,
                                     grad_prio, hook_reduce_waits)
from simhete.policy.zero_offload_buckets import (boundary_ops, bucket_passes, rank_partition_slices, spans_ranks,
                                                 tensor_pieces)
from simhete.schedule import Alloc, Op, Schedule
from simhete.workload.tensors import param_tensors


class ZeroOffloadKnobs(ActivationKnobs):
    reduce_bucket_size: float = Field(5e8, gt=0)
    """Elements per gradient bucket sent D2H during backward (DeepSpeed ``reduce_bucket_size``)."""
    overlap_comm: bool = True
    """True: a full bucket goes D2H on the copy engine while backward goes on, with two bucket
    buffers. False: each bucket is copied synchronously inside the backward (compute stream)."""
    delayed_update: bool = False
    """One-step delayed parameter update (DPU)."""


@register("zero-offload")
class ZeroOffload(Policy):
    Knobs = ZeroOffloadKnobs
    multi_gpu = True
    # DeepSpeed ZeRO clones each partition to fp32 master weights (stage_1_and_2.py
    # single_partition_of_fp32_groups, stage3.py fp32_partitioned_groups_flat: .float() unless
    # master_weights_and_grads_dtype says otherwise) and DeepSpeedCPUAdam creates m and v in fp32
    # (cpu_adam.py: fp32_optimizer_states=True by default), also for a bf16 model.
    pure_precision = ("DeepSpeed ZeRO keeps fp32 master partitions and DeepSpeedCPUAdam fp32 m and v, "
                      "also for a bf16 model")

    def buckets(self, ctx: Context) -> list[list[int]]:
        """Block indices per gradient bucket, in backward order (depends only on the blocks'
        parameter counts and the bucket size: kept on the workload, which the build cache shares
        among every point of its micro-batch and sequence length)."""
        return [list(b) for b in self._partition(ctx)]

    def _partition(self, ctx: Context) -> tuple[tuple[int, ...], ...]:
        """:meth:`buckets` as the kept tuple of tuples."""
        return ctx.workload.keep(("zero_offload.buckets", self.k.reduce_bucket_size),
                                 lambda: tuple(map(tuple, self._buckets(ctx))))

    def _buckets(self, ctx: Context) -> list[list[int]]:
        out: list[list[int]] = []
        cur: list[int] = []
        elems = 0
        for blk in reversed(ctx.blocks):
            if not blk.params:
                continue
            cur.append(blk.index)
            elems += blk.params
            if elems >= self.k.reduce_bucket_size:
                out.append(cur)
                cur, elems = [], 0
        if cur:
            out.append(cur)
        return out

    def decisions(self, ctx: Context) -> tuple:
        """The bucket partition (what the bucket size decides; the size itself is in the knobs: it
        also sizes the ipg buffer)."""
        return self._partition(ctx)

    def build(self, ctx: Context) -> Schedule:
        k = self.k
        b = Builder(size_table(ctx))
        dp = DataParallel(b, ctx, k.pin_memory)
        gpus = dp.gpus
        nb, ga = len(ctx.blocks), accum_steps(ctx)
        modes = act_modes(ctx, k)
        initial = []
        for g in gpus:
            initial += model_states(ctx, {MemClass.WEIGHTS: "gpu"}, gpu=g)
            initial.append(ipg_buffer(ctx, k.reduce_bucket_size, k.overlap_comm, g))
        initial += model_states(ctx, {MemClass.MASTER: "cpu", MemClass.OPTIM: "cpu", MemClass.GRADS32: "cpu"})
        if k.delayed_update:   # second fp32 gradient buffer so step k reads while k+1 writes
            initial += _host_buffers(ctx.workload, "grads32b")
        if ga > 1:   # DeepSpeed's accumulated_grads_in_cpu: 16-bit, pinned, every rank's partition
            initial += _host_buffers(ctx.workload, "gacc")
        by_idx = {blk.index: blk for blk in ctx.blocks}
        buckets = self._partition(ctx)
        # per bucket, once per build: its 16-bit gradient bytes and its name's block part
        bucket_bytes = [sum(by_idx[i].grad_bytes for i in bucket) for bucket in buckets]
        bucket_tag = [f"k{j}" for j in range(len(buckets))]
        # what each rank's copy-out task of a bucket runs (DeepSpeed's reduce_ipg_grads, see
        # bucket_passes / boundary_ops): built once per build, shared by every iteration
        n = len(gpus)
        # each rank's elements of each bucket: DeepSpeed's contiguous partition of the flat group
        # (rank_partition_slices), not an even split of every bucket
        slices = rank_partition_slices(ctx.blocks, buckets, n)
        own = [{g: {i: hi - lo for i, (lo, hi) in sl[g].items()} for g in gpus} for sl in slices]
        e16 = {i: (by_idx[i].grad_bytes // by_idx[i].params if by_idx[i].params else 0) for bucket in buckets
               for i in bucket}
        e32 = {i: (host_fp32_bytes(by_idx[i]) // by_idx[i].params if by_idx[i].params else 0) for bucket in buckets
               for i in bucket}
        own16 = [{g: sum(c * e16[i] for i, c in own[j][g].items()) for g in gpus} for j in range(len(buckets))]
        passes = [{g: bucket_passes(gb, own16[j][g], spans_ranks(slices[j])) for g in gpus}
                  for j, gb in enumerate(bucket_bytes)]
        # per parameter tensor of the rank's slice of the bucket (copy_grads_in_partition runs per
        # parameter): the elements of each tensor piece, in the bucket's order
        pieces = [{g: tuple(c for i, (lo, hi) in slices[j][g].items()
                            for c in tensor_pieces(param_tensors(ctx.spec, by_idx[i]), lo, hi)) for g in gpus}
                  for j in range(len(buckets))]
        unit = {e16[i] for bucket in buckets for i in bucket if by_idx[i].params}
        f32_unit = {e32[i] for bucket in buckets for i in bucket if by_idx[i].params}
        e, e4 = (unit.pop() if len(unit) == 1 else 2), (f32_unit.pop() if len(f32_unit) == 1 else 4)
        boundary = [{g: boundary_ops(pieces[j][g], e, e4, k.pin_memory) for g in gpus}
                    for j in range(len(buckets))]
        # the D2H task's ops: gradient accumulation's first micro-step copies the 16-bit partition
        # (copy_gradients_to_cpu); the boundary (ga = 1, or micro-step ga's copy back) adds the
        # checks and the fp32 copy. A rank owning nothing of a bucket copies nothing.
        first_ops = [{g: passes[j][g] + (shared_ops(OpKind.D2H, own16[j][g], k.pin_memory) if own16[j][g] else ())
                      for g in gpus} for j in range(len(buckets))]
        last_ops = [{g: passes[j][g] + boundary[j][g] for g in gpus} for j in range(len(buckets))]
        total_f32 = sum(host_fp32_bytes(blk) for blk in ctx.blocks if blk.params)
        total_w = sum(blk.weight_bytes for blk in ctx.blocks if blk.params)
        clip_ops = (Op(OpKind.MEMCPY_CPU, n=total_f32),)
        cast_ops = (Op(OpKind.MEMCPY_CPU, n=(total_f32 + total_w) // 2),)
        h2d: dict[int, dict[int, dict[int, str]]] = {}    # it -> block -> gpu -> updated weights on the GPU
        adam: dict[int, dict[int, str]] = {}
        cast_of: dict[int, str] = {}    # it -> the step's fp32 → 16-bit cast on the host
        last_B: dict[int, str] = {}
        pinned = k.pin_memory
        sync = not k.overlap_comm
        # Without overlap_comm DeepSpeed still reduces each bucket from the backward hook
        # (stage_1_and_2.py: the grad hook → ``reduce_independent_p_g_buckets_and_remove_grads``,
        # which calls ``reduce_ipg_grads`` when the next parameter's gradient would overflow the
        # bucket), on the current (compute) stream: bucket j goes out after the backward of the
        # first block of bucket j+1 produced its gradients, and the backward waits for it.
        # bucket j -> the block whose recompute/backward waits for bucket j's reduction
        after_first = hook_reduce_waits(ctx.blocks, buckets) if sync else {}

        def refresh(it: int, last_use: dict[int, dict[int, str]], label: int) -> None:
            """DPU: H2D of step ``it``'s weights, after the step and after ``last_use[g][i]``,
            counted in iteration ``label`` (the one whose backward it follows: one refresh per
            iteration, so per-iteration traffic stays one model's worth)."""
            h2d[it] = {}
            for blk in ctx.blocks:
                if blk.params:
                    i = blk.index
                    deps = {g: [adam[it][i], cast_of[it], last_use[g][i]] for g in gpus}
                    h2d[it][i] = dp.to_gpu(it, Action.WEIGHTS_H2D, blk.name, blk.weight_bytes, deps,
                                           fwd_prio(it + 2, i), i, label=label)

        for it in range(1, ctx.iterations + 1):
            lag = 2 if k.delayed_update else 1
            # optimizer.step() returns only when every updated weight is back on the GPU, so the
            # next forward waits for the whole step (with DPU: the step before the previous one)
            step_done = {g: sorted(w[g] for w in h2d.get(it - lag, {}).values()) for g in gpus}
            prev_out: dict[int, dict[int, str]] = {}     # bucket -> gpu -> previous micro-step's D2H
            reuse = adam.get(it - lag, {})
            for m in range(1, ga + 1):
                dp.m = m
                bucket_name = {g: [dp.task(Action.GRADS_D2H, it, tag, g) for tag in bucket_tag] for g in gpus}
                # Two bucket buffers (DeepSpeed's double-buffered ipg bucket with overlap_comm): the
                # backward that starts bucket j+2 waits until bucket j has left the GPU.
                t = {g: forward_backward(
                    b, ctx, it, modes, gpu=g, m=m,
                    start_deps=([last_B[g]] if g in last_B else []) + (step_done[g] if m == 1 else []),
                    bwd_weight_deps={bk[0]: [bucket_name[g][j - 2]] for j, bk in enumerate(buckets) if j >= 2}
                    if k.overlap_comm else {i: [bucket_name[g][j]] for j, i in after_first.items()},
                    pinned=pinned, grad_views=True) for g in gpus}     # gradients live in the ipg buffer
                last = m == ga    # the fp32 gradient buffer this step writes must have been consumed
                d2h_of: list[str] = []
                for j, bucket in enumerate(buckets):
                    deps, frees = {}, {}
                    for g in gpus:
                        tg = t[g]
                        deps[g] = list(map(tg.B.__getitem__, bucket))
                        if sync and j + 1 < len(buckets):    # the hook of bucket j+1's first gradient
                            deps[g].append(tg.B[buckets[j + 1][0]])
                        if last and reuse:
                            deps[g] += [reuse[i] for i in bucket if i in reuse]
                        frees[g] = list(map(tg.grads.__getitem__, bucket))
                    prio = grad_prio(it, j, nb, m)
                    # without overlap_comm the reduction runs inside the backward hook (compute stream).
                    # N GPUs: DeepSpeed's average_tensor with reduce_scatter (default) and
                    # use_multi_rank_bucket_allreduce (default) all-reduces the bucket
                    # (allreduce_and_scatter → allreduce_bucket → dist.all_reduce) and each rank
                    # keeps its own partition's slices: an ALLREDUCE, not a reduce-scatter
                    if m == 1:
                        out = dp.from_gpu(it, bucket_tag[j], bucket_bytes[j], deps, prio, bucket[0],
                                          frees=frees, sync=sync, reduce=OpKind.ALLREDUCE,
                                          ops=last_ops[j] if last else first_ops[j])
                    else:
                        out = dp.accumulate(it, bucket_tag[j], bucket_bytes[j], deps, prev_out[j], prio,
                                            bucket[0], frees=frees, sync=sync, reduce=OpKind.ALLREDUCE,
                                            post=last_ops[j] if last else passes[j], parts=own16[j])
                    prev_out[j] = out
                    d2h_of += out.values()
                last_B = {g: t[g].last_B for g in gpus}
            dp.m = 1
            if k.delayed_update and it - 1 in adam:
                # DPU: step it-1's weights overwrite the one 16-bit copy on the GPU, so they go back
                # only after this iteration's last use of the old ones (its last backward of the
                # block); iteration it+1 is the first to use them
                refresh(it - 1, {g: t[g].B for g in gpus}, it)
            step: dict[int, str] = {}
            sent_h2d: dict[int, dict[int, str]] = {}
            adam[it], h2d[it] = step, sent_h2d
            # DeepSpeed's step (stage_1_and_2.py ``step``, cpu_offload branch), per rank over its
            # fp32 partition: unscale_and_clip_grads multiplies the fp32 gradient partition in
            # place (``grad.data.mul_(1. / combined_scale)``, run whatever the scale: a pass
            # reading and writing 4 B/param, priced as a host copy of 4 B/param), after the global
            # norm was finished from the per-parameter norms of the backward
            # (complete_grad_norm_calculation_for_cpu_offload: scalars only). The engine leaves
            # clipping to the ZeRO optimizer (engine.py ``_take_model_step`` clips itself only
            # without fp16/bf16/ZeRO), and ``zero_grad(set_to_none=True)`` frees rather than zeroes
            # (the fp32 gradient buffer is overwritten by the next copy): no further pass. One task
            # for all ranks' partitions, like the Adam tasks below.
            all_d2h = (b.add(Action.HOST_PASS, At(it, "grads"), "cpu.optim", clip_ops,
                             dep_names(sorted(d2h_of)), fwd_prio(it, 0), it=it),)
            refreshed = h2d.get(it - 1, {}) if k.delayed_update else None
            ADAM_CPU = Action.ADAM_CPU
            for blk, i, name, where, ops, prio in _adam_plan(ctx.workload, it):
                # DPU: the previous step's refresh must have read the host's 16-bit weights before
                # this step overwrites them (one host copy)
                deps = all_d2h
                if refreshed is not None:
                    sent = sorted(refreshed.get(i, {}).values())
                    if sent:
                        deps = all_d2h + dep_names(sent)
                # one task for all ranks' partitions: N processes step their 1/N concurrently on the
                # host's cores and DRAM, whose aggregate rate is the profile's Adam rate
                step[i] = b.add_row((name, "cpu.optim", ADAM_CPU.cat, ops, deps, prio, (), (), it, i, ADAM_CPU, where))
            # After DeepSpeedCPUAdam (cpu_adam.py ``step``: adam_update over the flat fp32
            # partition, no device copy), the step casts the whole fp32 partition into the pinned
            # 16-bit host buffer on the CPU (``bit16_partition_buffer.data.copy_(fp32_partition.data)``:
            # reads 4 B, writes 2 B per param = the traffic of a host copy of 3 B/param), then
            # copies that buffer into the rank's 16-bit partition on the GPU (non_blocking H2D of
            # 2 B/param) and all-gathers the partitions (``all_gather_dp_groups``). The H2D of a
            # block therefore waits for the cast of the whole partition, not for its own Adam only.
            cast = b.add(Action.HOST_PASS, At(it, "cast"), "cpu.optim", cast_ops,
                         tuple(step[i] for i in sorted(step)), fwd_prio(it, 0), it=it)
            cast_of[it] = cast
            if not k.delayed_update:
                for blk, i, name, where, ops, prio in _adam_plan(ctx.workload, it):
                    sent_h2d[i] = dp.to_gpu(it, Action.WEIGHTS_H2D, blk.name, blk.weight_bytes, (step[i], cast),
                                            fwd_prio(it + 1, i), i)
        # DPU: the last step's weights would go back after iteration N+1's backward, outside the
        # simulated window, so the schedule ends with that step (its refresh is not part of it)
        meta = {"policy": self.name, "delayed_update": str(k.delayed_update).lower()}
        initial = list(initial) + process_memory(ctx, self.k, self.name, initial)   # what a real process holds
        return b.build(ctx.pools(), initial, ctx.iterations, meta)


# What the build makes the same way for every structure of a workload (a sweep's bucket sizes,
# checkpointing and delayed update share it), kept on the workload (Workload.keep) so each new
# structure reuses the strings, ops and Allocs.

def _host_buffers(wl: Any, prefix: str) -> tuple[Alloc, ...]:
    """The host buffers ``{prefix}.{block}`` of every block with parameters: the DPU's second fp32
    gradient buffer (``grads32b``, fp32) or the accumulated 16-bit gradients (``gacc``)."""
    def make() -> tuple[Alloc, ...]:
        if prefix == "grads32b":
            return tuple(Alloc(f"grads32b.{blk.name}", "cpu", host_fp32_bytes(blk), MemClass.GRADS32)
                         for blk in wl.blocks if blk.params)
        return tuple(Alloc(f"gacc.{blk.name}", "cpu", blk.grad_bytes, MemClass.GRADS)
                     for blk in wl.blocks if blk.params)
    return wl.keep(("zero_offload.host_buffers", prefix), make)


def _adam_plan(wl: Any, it: int) -> tuple[tuple, ...]:
    """Per block with parameters, in forward order: ``(block, index, ADAM task name, its At, its
    ops, its priority)`` of iteration ``it``'s CPU step."""
    return wl.keep(("zero_offload.adam", it), lambda: tuple(
        (blk, blk.index, Action.ADAM_CPU.task_name(At(it, blk.name)), At(it, blk.name),
         shared_ops(OpKind.ADAM_CPU, blk.params, dtype="fp32"), fwd_prio(it, blk.index))
        for blk in wl.blocks if blk.params))


"""``zero-offload``: ZeRO-Offload (Ren et al., USENIX ATC 2021; DeepSpeed ZeRO stage 2 + CPU offload).

Placement: 16-bit weights stay on the GPU; fp32 master weights, Adam m and v and fp32 gradients
live in host memory; the Adam step runs on the CPU (DeepSpeedCPUAdam).
Data flow per iteration: during backward, 16-bit gradients leave the GPU in buckets of
``reduce_bucket_size`` elements (DeepSpeed default 5e8; ``overlap_comm`` overlaps them with
backward); after backward the CPU runs Adam, block by block in forward order, and each block's
updated 16-bit weights go back H2D as soon as its step is done (DeepSpeed steps in
``sub_group_size`` tiles; here the tile is one block). PCIe traffic ≈ 2 × 16-bit model size per step.
``delayed_update`` (DPU, §5 of the paper): iteration k+1's forward/backward use the weights
updated by step k−1, so the CPU step of iteration k overlaps iteration k+1; it needs a second
fp32 gradient buffer on the host. There is still one 16-bit weight copy on each side, so step k's
weights go back to the GPU only after iteration k+1's backward of the block (its last use of the
old ones), and step k+1 waits until that copy has read the host's weights (replay found both
races when the refresh followed the step directly). The last step's refresh falls after iteration
N+1's backward, outside the simulated window, so it is not in the schedule.
"""

from __future__ import annotations

from pydantic import Field

from simhete.opkinds import MemClass, OpKind, TaskCat
from simhete.policy.base import (Builder, Context, Policy, context_key, host_fp32_bytes, knob_key, model_states,
                                 shared_ops)
from simhete.policy.dataparallel import DataParallel
from simhete.policy.registry import register
from simhete.policy.training import (ActivationKnobs, accum_steps, act_modes, forward_backward, fwd_prio,
                                     grad_prio, size_decisions, tname)
from simhete.schedule import Alloc, Schedule


class ZeroOffloadKnobs(ActivationKnobs):
    reduce_bucket_size: float = Field(5e8, gt=0)
    """Elements per gradient bucket sent D2H during backward (DeepSpeed ``reduce_bucket_size``)."""
    overlap_comm: bool = True
    """True: a full bucket goes D2H on the copy engine while backward goes on, with two bucket
    buffers. False: each bucket is copied synchronously inside the backward (compute stream)."""
    delayed_update: bool = False
    """One-step delayed parameter update (DPU)."""


_BUCKETS: dict[tuple, tuple] = {}     # (id(blocks), bucket size) -> (blocks, partition)


@register("zero-offload")
class ZeroOffload(Policy):
    Knobs = ZeroOffloadKnobs
    multi_gpu = True

    def buckets(self, ctx: Context) -> list[list[int]]:
        """Block indices per gradient bucket, in backward order (depends only on the blocks'
        parameter counts and the bucket size: kept per blocks tuple, which a cached workload shares
        among every point of its micro-batch and sequence length)."""
        return [list(b) for b in self._partition(ctx)]

    def _partition(self, ctx: Context) -> tuple[tuple[int, ...], ...]:
        """:meth:`buckets` as the kept tuple of tuples."""
        blocks, size = ctx.blocks, self.k.reduce_bucket_size
        key = (id(blocks), size)
        got = _BUCKETS.get(key)
        if got is None or got[0] is not blocks:
            if len(_BUCKETS) >= 1024:
                _BUCKETS.clear()
            got = _BUCKETS[key] = (blocks, tuple(map(tuple, self._buckets(ctx))))   # holds the blocks
        return got[1]

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

    def structure_key(self, ctx: Context) -> tuple:
        """Knobs (the bucket size through the partition it gives: sizes that alias share a key),
        the context's structural values and forward_backward's size decisions; micro-batch,
        sequence length and capacities only re-size the schedule (policy/template.py)."""
        return (knob_key(self.k, ("reduce_bucket_size",)), self._partition(ctx),
                context_key(ctx), size_decisions(ctx))

    def build(self, ctx: Context) -> Schedule:
        k = self.k
        b = Builder()
        dp = DataParallel(b, ctx, k.pin_memory)
        nb, ga = len(ctx.blocks), accum_steps(ctx)
        modes = act_modes(ctx, k)
        initial = []
        for g in dp.gpus:
            initial += model_states(ctx, {MemClass.WEIGHTS: "gpu"}, gpu=g)
        initial += model_states(ctx, {MemClass.MASTER: "cpu", MemClass.OPTIM: "cpu", MemClass.GRADS32: "cpu"})
        if k.delayed_update:   # second fp32 gradient buffer so step k reads while k+1 writes
            initial += [Alloc(f"grads32b.{blk.name}", "cpu", host_fp32_bytes(blk), MemClass.GRADS32)
                        for blk in ctx.blocks if blk.params]
        if ga > 1:   # DeepSpeed's accumulated_grads_in_cpu: 16-bit, pinned, every rank's partition
            initial += [Alloc(f"gacc.{blk.name}", "cpu", blk.grad_bytes, MemClass.GRADS)
                        for blk in ctx.blocks if blk.params]
        by_idx = {blk.index: blk for blk in ctx.blocks}
        buckets = self.buckets(ctx)
        h2d: dict[int, dict[int, dict[int, str]]] = {}    # it -> block -> gpu -> updated weights on the GPU
        adam: dict[int, dict[int, str]] = {}
        last_B: dict[int, str] = {}
        pinned = k.pin_memory

        def refresh(it: int, last_use: dict[int, dict[int, str]], label: int) -> None:
            """DPU: H2D of step ``it``'s weights, after the step and after ``last_use[g][i]``,
            counted in iteration ``label`` (the one whose backward it follows: one refresh per
            iteration, so per-iteration traffic stays one model's worth)."""
            h2d[it] = {}
            for blk in ctx.blocks:
                if blk.params:
                    i = blk.index
                    deps = {g: [adam[it][i], last_use[g][i]] for g in dp.gpus}
                    h2d[it][i] = dp.to_gpu(it, "H2D.w", blk.name, blk.weight_bytes, deps,
                                           fwd_prio(it + 2, i), i, label=label)

        for it in range(1, ctx.iterations + 1):
            lag = 2 if k.delayed_update else 1
            # optimizer.step() returns only when every updated weight is back on the GPU, so the
            # next forward waits for the whole step (with DPU: the step before the previous one)
            step_done = {g: sorted(w[g] for w in h2d.get(it - lag, {}).values()) for g in dp.gpus}
            prev_out: dict[int, dict[int, str]] = {}     # bucket -> gpu -> previous micro-step's D2H
            for m in range(1, ga + 1):
                dp.m = m
                bucket_name = {g: [dp.name(it, "D2H.g", f"k{j}", g) for j in range(len(buckets))]
                               for g in dp.gpus}
                # Two bucket buffers (DeepSpeed's double-buffered ipg bucket with overlap_comm): the
                # backward that starts bucket j+2 waits until bucket j has left the GPU.
                t = {g: forward_backward(
                    b, ctx, it, modes, gpu=g, m=m,
                    start_deps=([last_B[g]] if g in last_B else []) + (step_done[g] if m == 1 else []),
                    bwd_weight_deps={bk[0]: [bucket_name[g][j - 2]] for j, bk in enumerate(buckets) if j >= 2}
                    if k.overlap_comm else {}, pinned=pinned) for g in dp.gpus}
                d2h_of: list[str] = []
                for j, bucket in enumerate(buckets):
                    deps = {g: [t[g].B[i] for i in bucket] for g in dp.gpus}
                    if m == ga:   # the fp32 gradient buffer this step writes must have been consumed
                        reuse = adam.get(it - lag, {})
                        for g in dp.gpus:
                            deps[g] += [reuse[i] for i in bucket if i in reuse]
                    nbytes = sum(by_idx[i].grad_bytes for i in bucket)
                    frees = {g: [t[g].grads[i] for i in bucket] for g in dp.gpus}
                    prio = grad_prio(it, j, nb, m)
                    # without overlap_comm the reduction runs inside the backward hook (compute stream)
                    if m == 1:
                        out = dp.from_gpu(it, "D2H.g", f"k{j}", nbytes, deps, prio, bucket[0], frees=frees,
                                          sync=not k.overlap_comm)
                    else:
                        out = dp.accumulate(it, "D2H.g", f"k{j}", nbytes, deps, prev_out[j], prio, bucket[0],
                                            frees=frees, sync=not k.overlap_comm)
                    prev_out[j] = out
                    d2h_of += out.values()
                last_B = {g: t[g].last_B for g in dp.gpus}
            dp.m = 1
            if k.delayed_update and it - 1 in adam:
                # DPU: step it-1's weights overwrite the one 16-bit copy on the GPU, so they go back
                # only after this iteration's last use of the old ones (its last backward of the
                # block); iteration it+1 is the first to use them
                refresh(it - 1, {g: t[g].B for g in dp.gpus}, it)
            adam[it], h2d[it] = {}, {}
            all_d2h = b.join(tname(it, "STEP", "grads"), "cpu.optim", sorted(d2h_of), fwd_prio(it, 0), it)
            for blk in ctx.blocks:
                if not blk.params:
                    continue
                i = blk.index
                # DPU: the previous step's refresh must have read the host's 16-bit weights before
                # this step overwrites them (one host copy)
                sent = sorted(h2d.get(it - 1, {}).get(i, {}).values()) if k.delayed_update else []
                # one task for all ranks' partitions: N processes step their 1/N concurrently on the
                # host's cores and DRAM, whose aggregate rate is the profile's Adam rate
                a = b.add(tname(it, "ADAM.cpu", blk.name), "cpu.optim", TaskCat.OPTIM_CPU,
                          shared_ops(OpKind.ADAM_CPU, blk.params, dtype="fp32"), deps=[*all_d2h, *sent],
                          prio=fwd_prio(it, i), it=it, block=i)
                adam[it][i] = a
                if not k.delayed_update:
                    h2d[it][i] = dp.to_gpu(it, "H2D.w", blk.name, blk.weight_bytes, [a], fwd_prio(it + 1, i), i)
        # DPU: the last step's weights would go back after iteration N+1's backward, outside the
        # simulated window, so the schedule ends with that step (its refresh is not part of it)
        meta = {"policy": self.name, "delayed_update": str(k.delayed_update).lower()}
        return b.build(ctx.pools(), initial, ctx.iterations, meta)

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
fp32 gradient buffer on the host.
"""

from __future__ import annotations

from pydantic import Field

from simhete.opkinds import MemClass, OpKind, TaskCat
from simhete.policy.base import Builder, Context, Policy, host_fp32_bytes, model_states
from simhete.policy.registry import register
from simhete.policy.training import (PRIO_IT, ActivationKnobs, act_modes, copy_stream, forward_backward,
                                     fwd_prio, tname)
from simhete.schedule import Alloc, Op, Schedule


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

    def buckets(self, ctx: Context) -> list[list[int]]:
        """Block indices per gradient bucket, in backward order."""
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

    def build(self, ctx: Context) -> Schedule:
        k = self.k
        b = Builder()
        modes = act_modes(ctx, k)
        initial = model_states(ctx, {MemClass.WEIGHTS: "gpu", MemClass.MASTER: "cpu", MemClass.OPTIM: "cpu",
                                     MemClass.GRADS32: "cpu"})
        if k.delayed_update:   # second fp32 gradient buffer so step k reads while k+1 writes
            initial += [Alloc(f"grads32b.{blk.name}", "cpu", host_fp32_bytes(blk), MemClass.GRADS32)
                        for blk in ctx.blocks if blk.params]
        by_idx = {blk.index: blk for blk in ctx.blocks}
        buckets = self.buckets(ctx)
        h2d: dict[int, dict[int, str]] = {}    # it -> block -> H2D of updated weights
        adam: dict[int, dict[int, str]] = {}
        last_B = ""
        pinned = k.pin_memory
        for it in range(1, ctx.iterations + 1):
            lag = 2 if k.delayed_update else 1
            # optimizer.step() returns only when every updated weight is back on the GPU, so the
            # next forward waits for the whole step (with DPU: the step before the previous one)
            step_done = sorted(h2d.get(it - lag, {}).values())
            bucket_name = [tname(it, "D2H.g", f"k{j}") for j in range(len(buckets))]
            # Two bucket buffers (DeepSpeed's double-buffered ipg bucket with overlap_comm): the
            # backward that starts bucket j+2 waits until bucket j has left the GPU.
            bwd_deps = {bk[0]: [bucket_name[j - 2]] for j, bk in enumerate(buckets) if j >= 2} \
                if k.overlap_comm else {}
            t = forward_backward(b, ctx, it, modes, start_deps=([last_B] if last_B else []) + step_done,
                                 bwd_weight_deps=bwd_deps, pinned=pinned)
            d2h_of: dict[int, str] = {}
            for j, bucket in enumerate(buckets):
                first_bwd = bucket[0]
                deps = [t.B[i] for i in bucket]
                # the fp32 gradient buffer this iteration writes must have been consumed
                reuse = adam.get(it - (2 if k.delayed_update else 1), {})
                deps += [reuse[i] for i in bucket if i in reuse]
                name = bucket_name[j]
                nbytes = sum(by_idx[i].grad_bytes for i in bucket)
                # without overlap_comm the reduction runs inside the backward hook, on the compute stream
                stream = copy_stream(0, "d2h", pinned) if k.overlap_comm else "gpu0.compute"
                b.add(name, stream, TaskCat.D2H,
                      (Op(OpKind.D2H, n=nbytes, pinned=pinned),), deps=deps,
                      prio=it * PRIO_IT + PRIO_IT // 4 + j, frees=[t.grads[i] for i in bucket],
                      it=it, block=first_bwd)
                for i in bucket:
                    d2h_of[i] = name
            adam[it], h2d[it] = {}, {}
            all_d2h = sorted(set(d2h_of.values()))
            for blk in ctx.blocks:
                if not blk.params:
                    continue
                i = blk.index
                a = b.add(tname(it, "ADAM.cpu", blk.name), "cpu.optim", TaskCat.OPTIM_CPU,
                          (Op(OpKind.ADAM_CPU, n=blk.params, dtype="fp32"),), deps=all_d2h,
                          prio=fwd_prio(it, i), it=it, block=i)
                adam[it][i] = a
                h2d[it][i] = b.add(tname(it, "H2D.w", blk.name), copy_stream(0, "h2d", pinned), TaskCat.H2D,
                                   (Op(OpKind.H2D, n=blk.weight_bytes, pinned=pinned),), deps=[a],
                                   prio=fwd_prio(it + 1, i), it=it, block=i)
            last_B = t.last_B
        meta = {"policy": self.name, "delayed_update": str(k.delayed_update).lower()}
        return b.build(ctx.pools(), initial, ctx.iterations, meta)

"""``gpu-only``: every model state on the GPU, Adam on the GPU (the PyTorch/Megatron baseline).

16-bit weights, fp32 master weights and Adam m, v live on the GPU for the whole run. Gradients
are allocated during backward and freed after the optimizer step, as PyTorch ≥ 2.0 does with
``zero_grad(set_to_none=True)`` (its default). The optimizer step (one ADAM_GPU task per block,
in forward order) runs on the compute stream after the whole backward, fused or as
``torch.optim.AdamW``'s default foreach passes (knob ``optimizer``); the next forward of a block
waits for that block's update.

Gradient accumulation: micro-steps after the first add into the same ``.grad`` buffers (PyTorch
accumulates into an existing ``.grad``), so only micro-step 1's backward allocates them.

Data parallel (N GPUs, PyTorch DDP): every GPU holds all states and runs the same tasks on
``gpu{g}.*``. DDP groups gradients in backward order into buckets of ``bucket_cap_mb`` MiB and
all-reduces each bucket on ``gpu{g}.comm`` as soon as its last gradient is ready, overlapping the
rest of the backward (Li et al., "PyTorch Distributed", VLDB 2020, §3.2; DDP docs); here a block
is the unit of a bucket. With gradient accumulation the all-reduce runs in the last micro-step
only (the ``no_sync()`` pattern of the DDP docs, used by Hugging Face Accelerate and the
Trainer). Unless ``gradient_as_bucket_view``, DDP's reducer keeps its own flat bucket buffers, a
second copy of every gradient on each GPU (DDP docs, ``gradient_as_bucket_view``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from simhete.opkinds import ADAM_GPU_ACCESSES, Action, MemClass, OpKind, at
from simhete.policy.base import Builder, Context, Policy, model_states
from simhete.policy.dataparallel import DataParallel
from simhete.policy.layout import group
from simhete.policy.process_memory import process_memory
from simhete.policy.registry import register
from simhete.policy.sizes import size_table
from simhete.policy.training import (PRIO_IT, ActivationKnobs, accum_steps, act_modes, forward_backward,
                                     grad_prio)
from simhete.schedule import Alloc, Op, Schedule


class GpuOnlyKnobs(ActivationKnobs):
    bucket_cap_mb: float = Field(25.0, gt=0)
    """DDP ``bucket_cap_mb``: MiB of gradients per all-reduce bucket (multi-GPU only)."""
    gradient_as_bucket_view: bool = False
    """DDP ``gradient_as_bucket_view``: False keeps a separate bucket copy of the gradients."""
    max_grad_norm: float = Field(0.0, ge=0)
    """``torch.nn.utils.clip_grad_norm_`` before the step with this max norm (the Hugging Face
    Trainer's default is 1.0); 0: no clipping. Its foreach implementation (torch >= 2.0 on CUDA)
    reads every gradient for ``_foreach_norm`` and scales it in place with ``_foreach_mul_`` by the
    clamped coefficient, whatever the norm: 3 accesses per gradient element, after every gradient
    is reduced."""
    optimizer: Literal["fused", "foreach"] = "fused"
    """The Adam implementation: ``fused`` (one kernel: torch ``fused=True``, apex FusedAdam as
    Megatron-LM runs it) or ``foreach`` (torch AdamW's default on CUDA, what
    the Hugging Face Trainer's ``adamw_torch`` runs: eight multi-tensor passes, 20 accesses per
    parameter instead of 7; :data:`simhete.opkinds.ADAM_GPU_ACCESSES`)."""


@register("gpu-only")
class GpuOnly(Policy):
    Knobs = GpuOnlyKnobs
    multi_gpu = True
    pure_precision = ""   # torch AdamW on the GPU keeps its state in the parameters' dtype

    def decisions(self, ctx: Context) -> tuple:
        """Nothing from sizes: buckets and model states follow the model (in the context key)."""
        return ()

    def build(self, ctx: Context) -> Schedule:
        b = Builder(size_table(ctx))
        dp = DataParallel(b, ctx, self.k.pin_memory)
        n, nb, k = ctx.n_gpus, len(ctx.blocks), accum_steps(ctx)
        modes = act_modes(ctx, self.k)
        by = {blk.index: blk for blk in ctx.blocks}
        initial = []
        for g in dp.gpus:
            initial += model_states(ctx, {MemClass.WEIGHTS: "gpu", MemClass.MASTER: "gpu", MemClass.OPTIM: "gpu"},
                                    gpu=g)
            if n > 1 and not self.k.gradient_as_bucket_view:
                initial.append(Alloc(f"ddp.buckets.g{g}", f"gpu{g}", sum(blk.grad_bytes for blk in ctx.blocks),
                                     MemClass.BUFFERS))
        buckets = group(((blk.index, blk.grad_bytes) for blk in reversed(ctx.blocks) if blk.params),
                        self.k.bucket_cap_mb * 2**20)
        updates: dict[int, dict[int, str]] = {}
        last_B: dict[int, str] = {}
        adam_shape = () if self.k.optimizer == "fused" else (ADAM_GPU_ACCESSES[self.k.optimizer],)
        clip = self.k.max_grad_norm > 0
        # accesses per gradient element: DDP's copy in and out of its buckets (2 + 2, several GPUs
        # without gradient_as_bucket_view), the clip's norm and scale (1 + 2)
        grad_passes = (4 if n > 1 and not self.k.gradient_as_bucket_view else 0) + (3 if clip else 0)
        for it in range(1, ctx.iterations + 1):
            for m in range(1, k + 1):
                t = {g: forward_backward(b, ctx, it, modes, gpu=g, m=m,
                                         start_deps=[last_B[g]] if g in last_B else [],
                                         fwd_weight_deps={i: [u[g]] for i, u in updates.items()} if m == 1 else {},
                                         pinned=self.k.pin_memory, grad_buffers=m == 1)
                     for g in dp.gpus}
                if m == 1:
                    grads = {g: t[g].grads for g in dp.gpus}
                last_B = {g: t[g].last_B for g in dp.gpus}
            reduced: dict[int, dict[int, str]] = {}
            for j, bucket in enumerate(buckets):   # last micro-step only (no_sync before)
                ar = dp.collective(OpKind.ALLREDUCE, Action.GRADS_ALLREDUCE, it, f"k{j}",
                                   sum(by[i].grad_bytes for i in bucket),
                                   {g: [t[g].B[i] for i in bucket] for g in dp.gpus}, grad_prio(it, j, nb),
                                   bucket[0])
                for i in bucket:
                    reduced[i] = ar
            every = {g: sorted({r[g] for r in reduced.values() if g in r}) for g in dp.gpus} if clip else {}
            for blk in ctx.blocks:
                if not blk.params:
                    continue
                i = blk.index
                # the block's gradient passes on the compute stream before its update: DDP's
                # copies (reducer.cpp copy_grad_to_bucket: at::mul_out into the bucket, dividing
                # by the world size, in the backward hook; finalize_bucket_dense: grad.copy_ from
                # the bucket when the backward ends) and the clip's norm and scale
                passes = (Op(OpKind.ELEMENTWISE, n=grad_passes * blk.grad_bytes),) if grad_passes else ()
                updates[i] = {g: b.add(
                    Action.ADAM_GPU, at(it, blk.name, g, n), f"gpu{g}.compute",
                    passes + (Op(OpKind.ADAM_GPU, adam_shape, n=blk.params, dtype=ctx.workload.optim_dtype),),
                    deps=[t[g].last_B] + ([reduced[i][g]] if reduced.get(i) else []) + every.get(g, []),
                    prio=t_prio_opt(it, i), frees=[grads[g][i]] if i in grads[g] else [],
                    it=it, block=i) for g in dp.gpus}
        initial = list(initial) + process_memory(ctx, self.k, self.name, initial)   # what a real process holds
        return b.build(ctx.pools(), initial, ctx.iterations, {"policy": self.name})


def t_prio_opt(it: int, idx: int) -> int:
    return it * PRIO_IT + PRIO_IT // 2 + idx

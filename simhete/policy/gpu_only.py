"""``gpu-only``: every model state on the GPU, Adam on the GPU (the PyTorch/Megatron baseline).

16-bit weights, fp32 master weights and Adam m, v live on the GPU for the whole run. Gradients
are allocated during backward and freed after the optimizer step, as PyTorch ≥ 2.0 does with
``zero_grad(set_to_none=True)`` (its default). The optimizer step (one ADAM_GPU task per block,
in forward order) runs on the compute stream after the whole backward, like
``torch.optim.AdamW(foreach=True)``; the next forward of a block waits for that block's update.
"""

from __future__ import annotations

from simhete.opkinds import MemClass, OpKind, TaskCat
from simhete.policy.base import Builder, Context, Policy, model_states
from simhete.policy.registry import register
from simhete.policy.training import ActivationKnobs, act_modes, forward_backward, tname
from simhete.schedule import Op, Schedule


class GpuOnlyKnobs(ActivationKnobs):
    pass


@register("gpu-only")
class GpuOnly(Policy):
    Knobs = GpuOnlyKnobs

    def build(self, ctx: Context) -> Schedule:
        b = Builder()
        modes = act_modes(ctx, self.k)
        initial = model_states(ctx, {MemClass.WEIGHTS: "gpu", MemClass.MASTER: "gpu", MemClass.OPTIM: "gpu"})
        updates: dict[int, str] = {}
        last_B = ""
        for it in range(1, ctx.iterations + 1):
            t = forward_backward(b, ctx, it, modes, start_deps=[last_B] if last_B else [],
                                 fwd_weight_deps={i: [u] for i, u in updates.items()},
                                 pinned=self.k.pin_memory)
            for blk in ctx.blocks:
                if not blk.params:
                    continue
                updates[blk.index] = b.add(
                    tname(it, "ADAM.gpu", blk.name), "gpu0.compute", TaskCat.OPTIM_GPU,
                    (Op(OpKind.ADAM_GPU, n=blk.params, dtype="fp32"),), deps=[t.last_B],
                    prio=t_prio_opt(it, blk.index), frees=[t.grads[blk.index]] if blk.index in t.grads else [],
                    it=it, block=blk.index)
            last_B = t.last_B
        return b.build(ctx.pools(), initial, ctx.iterations, {"policy": self.name})


def t_prio_opt(it: int, idx: int) -> int:
    from simhete.policy.training import PRIO_IT
    return it * PRIO_IT + PRIO_IT // 2 + idx

"""A complete small policy: model states and Adam on the GPU, every transformer block's activations
swapped to host memory after its forward and fetched back before its backward.
Walked through in docs/adding-a-policy.md; tests/test_docs_examples.py runs this file."""

from pydantic import model_validator

from simhete.opkinds import Action, MemClass, OpKind, at
from simhete.policy import Builder, Context, Policy, register
from simhete.policy.base import model_states
from simhete.policy.process_memory import process_memory
from simhete.policy.sizes import size_table
from simhete.policy.training import PRIO_IT, ActivationKnobs, accum_steps, forward_backward
from simhete.schedule import Op, Schedule


class SwapAllKnobs(ActivationKnobs):
    """The shared activation knobs (``pin_memory``: pinned host copies overlap compute)."""

    @model_validator(mode="after")
    def _every_block_swaps(self) -> "SwapAllKnobs":
        if self.checkpointing != "none" or self.activations is not None:
            raise ValueError("every block swaps: leave checkpointing and activations unset")
        return self


@register("swap-all-activations")
class SwapAllActivations(Policy):
    Knobs = SwapAllKnobs              # single GPU (multi_gpu = False), accumulates, mixed precision

    def decisions(self, ctx: Context) -> tuple:
        return ()      # decides nothing from sizes: sweep points re-bind one structure

    def build(self, ctx: Context) -> Schedule:
        b = Builder(size_table(ctx))      # marked cells become references into the size table
        modes = {blk.index: "swap" if blk.name.startswith("b") else "keep" for blk in ctx.blocks}
        on_gpu = {MemClass.WEIGHTS: "gpu", MemClass.MASTER: "gpu", MemClass.OPTIM: "gpu"}
        initial = model_states(ctx, on_gpu)
        updated: dict[int, list[str]] = {}     # block -> its Adam step of the last iteration
        last: list[str] = []                   # the last backward task so far
        for it in range(1, ctx.iterations + 1):
            for m in range(1, accum_steps(ctx) + 1):   # micro-steps after the first accumulate
                t = forward_backward(b, ctx, it, modes, start_deps=last, m=m, grad_buffers=m == 1,
                                     fwd_weight_deps=updated if m == 1 else {}, pinned=self.k.pin_memory)
                grads = t.grads if m == 1 else grads
                last = [t.last_B]
            for blk in (blk for blk in ctx.blocks if blk.params):     # Adam after the backward
                adam = Op(OpKind.ADAM_GPU, n=blk.params, dtype=ctx.workload.optim_dtype)
                updated[blk.index] = [b.add(Action.ADAM_GPU, at(it, blk.name), "gpu0.compute",
                                            (adam,), deps=last, it=it, block=blk.index,
                                            prio=it * PRIO_IT + PRIO_IT // 2 + blk.index,
                                            frees=[grads[blk.index]])]
        initial += process_memory(ctx, self.k, self.name, initial)     # CUDA context, process memory
        return b.build(ctx.pools(), initial, ctx.iterations, {"policy": self.name})


if __name__ == "__main__":
    from simhete.cli import main
    from simhete.scenario import load_scenario
    from simhete.sim import run

    s = load_scenario("scenarios/gpt3-2.7b_a100-80gb_gpu-only.yaml").with_changes(
        policy="swap-all-activations", knobs={}, **{"train.micro_batch": 16})
    res = run(s)
    print(f"{res.summary.iter_time_s:.3f} s per iteration, fits: {res.summary.fits}, "
          f"peak GPU {res.summary.memory['gpu0'].peak_bytes / 2**30:.1f} GiB")
    main(["compare", "scenarios/gpt3-2.7b_a100-80gb_gpu-only.yaml", "--set", "train.micro_batch=16",
          "--set", "knobs={}", "--policies", "gpu-only,swap-all-activations", "--no-largest"])

"""``zero-2``: DeepSpeed ZeRO stage 2 without offload (Rajbhandari et al., "ZeRO", SC'20, §5: P_os+g).

Every GPU holds the whole 16-bit model; the fp32 master weights and Adam m and v are partitioned
over the N GPUs (1/N each) and so is the reduced 16-bit gradient. As DeepSpeed's
stage_1_and_2.py runs it without ``offload_optimizer``:

- backward: gradients are copied into the contiguous ipg bucket buffer (``reduce_bucket_size``
  elements, two with ``overlap_comm``, held from the first backward on:
  :func:`~simhete.policy.dataparallel.ipg_buffer`) and fill buckets in backward order; a full
  bucket is reduced (``average_tensor`` with ``reduce_scatter`` and
  ``use_multi_rank_bucket_allreduce`` at their defaults all-reduces the bucket,
  ``allreduce_and_scatter``) and each rank keeps its partition's slices in its gradient partition
  (``copy_grads_in_partition`` into ``grads_in_partition``, 2 B/param / N, kept); ``overlap_comm`` (its stage 1/2 default is false) runs the reductions on a side
  stream, else on the compute stream from the backward hook. With gradient accumulation every
  micro-step reduces and adds into the partition.
- step: the partition's gradient is made fp32 (``single_partition_of_fp32_groups[i].grad``, 4 B/param
  / N for the step), Adam runs on the GPU over the rank's fp32 partition, the result is copied into
  the rank's 16-bit partition and the partitions are all-gathered (``all_gather_dp_groups``: the
  whole 16-bit model, 2 B/param); the next forward waits for it.

It is the ZeRO-3 model (:mod:`simhete.policy.zero_infinity`) with the parameters never partitioned
or offloaded, the optimizer on the GPUs in one sub-group per rank (stage 2 steps the flat partition
at once), and the bucket all-reduce in place of stage 3's reduce-scatter. With one GPU it is
``gpu-only`` with DeepSpeed's bucketing and fp32 gradient copy.

The GPU passes of that path are priced where they run (ELEMENTWISE ops, bytes read + written, at
the memory-bound rate; :meth:`Zero2.bucket_passes`, :meth:`Zero2.step_passes`): with each bucket's
reduction the hook's copies into the bucket buffer, the division by the world size, the flatten
before the all-reduce and the copies of the rank's slices back and into its gradient partition;
around the step the overflow check (``check_grad_overflow``), the fp64 gradient norm per tensor,
the flatten and fp32 conversion of the partition, the unscale, and after Adam the copy into the
16-bit partition. Not modelled: the bucket passes with one GPU (no reduction task to carry them),
the gradient-accumulation add of later micro-steps, and ``allgather_bucket_size`` (one all-gather here).
"""

from __future__ import annotations

from pydantic import Field

from simhete.opkinds import Action, OpKind
from simhete.policy.base import Context
from simhete.policy.registry import register
from simhete.policy.training import ActivationKnobs
from simhete.policy.zero3_params import ZeroInfinityKnobs
from simhete.policy.zero_infinity import ZeroInfinity
from simhete.policy.zero_offload_buckets import bucket_passes as zero_offload_bucket_passes
from simhete.policy.zero_offload_buckets import rank_partition_slices, spans_ranks, tensor_pieces
from simhete.schedule import Op
from simhete.workload.tensors import param_tensors

ONE_SUBGROUP = 1e18   # elements: beyond any model, so the whole partition is one step tile


class Zero2Knobs(ActivationKnobs):
    reduce_bucket_size: float = Field(5e8, gt=0)
    """Elements per gradient bucket reduced during backward (DeepSpeed ``reduce_bucket_size``)."""
    overlap_comm: bool = False
    """DeepSpeed ``overlap_comm`` (false by default for stage 1 and 2): reduce buckets on a side
    stream while the backward goes on; false: on the compute stream, from the backward hook."""
    check_grad_overflow: bool = True
    """DeepSpeed ``bf16.check_grad_overflow``: check the gradient partition for inf/NaN before the
    step (true by default since DeepSpeed PR 8035, June 2026; false by default from PR 6976, June
    2025, until then; always checked before PR 6976). fp16 always checks."""


@register("zero-2")
class Zero2(ZeroInfinity):
    Knobs = Zero2Knobs
    stage = 2
    reduce = (OpKind.ALLREDUCE, Action.GRADS_ALLREDUCE)
    ipg = True

    def __init__(self, knobs: Zero2Knobs) -> None:
        """The ZeRO-3 model's knobs for stage 2: nothing offloaded, one optimizer sub-group."""
        self.check_grad_overflow = knobs.check_grad_overflow
        super().__init__(ZeroInfinityKnobs(**knobs.model_dump(exclude={"check_grad_overflow"}), offload_param="none",
                                           offload_optimizer="none", sub_group_size=ONE_SUBGROUP))

    def decisions(self, ctx: Context) -> tuple:
        """The stage-2 knob the ZeRO-3 knobs lack (its step passes depend on it)."""
        return (self.check_grad_overflow,)

    def bucket_passes(self, ctx: Context, buckets: list[list[int]]) -> list[dict[int, tuple[Op, ...]]]:
        """A rank's passes with its reduction of each bucket (stage_1_and_2.py without offload,
        ``contiguous_gradients`` at its default, true): the backward hook copies each gradient
        into the bucket buffer and ``average_tensor`` divides it by the world size, and a bucket
        split over ranks is flattened and the rank's slice copied back, as with optimizer offload
        (:func:`~simhete.policy.zero_offload_buckets.bucket_passes`); then
        ``copy_grads_in_partition`` copies the rank's slices into its gradient partition (2·own)."""
        n = ctx.n_gpus
        by = {blk.index: blk for blk in ctx.blocks}
        out = []
        for bucket, per in zip(buckets, rank_partition_slices(ctx.blocks, buckets, n)):
            gb = sum(by[i].grad_bytes for i in bucket)
            own = {g: sum((hi - lo) * (by[i].grad_bytes // by[i].params) for i, (lo, hi) in per[g].items())
                   for g in range(n)}
            split = spans_ranks(per)
            out.append({g: zero_offload_bucket_passes(gb, own[g], split) + ((Op(OpKind.ELEMENTWISE, n=2 * own[g]),)
                                                                             if own[g] else ())
                        for g in range(n)})
        return out

    def step_passes(self, ctx: Context, grp: list[int]) -> dict[int, tuple[tuple[Op, ...], tuple[Op, ...]]]:
        """Rank g's kernels around its Adam (stage_1_and_2.py ``step`` without offload), over its
        contiguous partition of the flat group (``pieces``: the parameter tensors' parts in it;
        e bytes per 16-bit gradient element, fp32 4):

        - ``check_overflow`` (``check_grad_overflow``; fp16 always) → ``_has_inf_or_nan`` per
          tensor: ``x.float()`` (e + 4), ``isnan`` and ``isinf`` (4 + 1 each), ``logical_or``
          (1 + 1 + 1), ``.float()`` (1 + 4), ``.max()`` (4);
        - ``scaled_global_norm`` → ``get_grad_norm_direct`` per tensor: ``g.data.double()``
          (e + 8) and ``vector_norm`` (8);
        - ``flatten`` of the partition (2e per element) and ``.to(float32)`` (e + 4; none when the
          gradient is fp32 already);
        - ``unscale_and_clip_grads``: ``mul_`` of the fp32 partition (8), whatever the scale;
        - after Adam, ``bit16_partitions[partition_id].data.copy_(fp32_partition)`` (4 + e).

        Equal-sized tensors share their ops through ``Op.count``."""
        n = ctx.n_gpus
        by = {blk.index: blk for blk in ctx.blocks}
        part = rank_partition_slices(tuple(by[i] for i in sorted(grp)), [grp], n)[0]
        check = self.check_grad_overflow or ctx.workload.dtype == "fp16"
        out = {}
        for g in range(n):
            sizes: dict[tuple[int, int], int] = {}
            for i, (lo, hi) in part[g].items():
                e = by[i].grad_bytes // by[i].params
                for c in tensor_pieces(param_tensors(ctx.spec, by[i]), lo, hi):
                    sizes[(c, e)] = sizes.get((c, e), 0) + 1
            before: list[Op] = []
            total = cast = 0      # bytes of the 16-bit partition; of its fp32 cast (none when fp32)
            for (c, e), k in sizes.items():
                total += c * k * e
                cast += (e + 4) * c * k if e != 4 else 0
                if check:         # x.float() is no kernel on an fp32 gradient
                    widths = ((e + 4) if e != 4 else 0, 5, 5, 3, 5, 4)
                    before += [Op(OpKind.ELEMENTWISE, n=w * c, count=k) for w in widths if w]
                before += [Op(OpKind.ELEMENTWISE, n=(e + 8) * c, count=k), Op(OpKind.ELEMENTWISE, n=8 * c, count=k)]
            elems = sum(c * k for (c, _), k in sizes.items())
            if not elems:
                continue
            before += [Op(OpKind.ELEMENTWISE, n=2 * total)] + ([Op(OpKind.ELEMENTWISE, n=cast)] if cast else []) \
                + [Op(OpKind.ELEMENTWISE, n=8 * elems)]
            out[g] = (tuple(before), (Op(OpKind.ELEMENTWISE, n=4 * elems + total),))
        return out

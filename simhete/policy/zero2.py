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
``gpu-only`` with DeepSpeed's bucketing and fp32 gradient copy. Not modelled: the per-step gradient
norm and overflow passes over the partition, and ``allgather_bucket_size`` (one all-gather here).
"""

from __future__ import annotations

from pydantic import Field

from simhete.opkinds import Action, OpKind
from simhete.policy.registry import register
from simhete.policy.training import ActivationKnobs
from simhete.policy.zero3_params import ZeroInfinityKnobs
from simhete.policy.zero_infinity import ZeroInfinity

ONE_SUBGROUP = 1e18   # elements: beyond any model, so the whole partition is one step tile


class Zero2Knobs(ActivationKnobs):
    reduce_bucket_size: float = Field(5e8, gt=0)
    """Elements per gradient bucket reduced during backward (DeepSpeed ``reduce_bucket_size``)."""
    overlap_comm: bool = False
    """DeepSpeed ``overlap_comm`` (false by default for stage 1 and 2): reduce buckets on a side
    stream while the backward goes on; false: on the compute stream, from the backward hook."""


@register("zero-2")
class Zero2(ZeroInfinity):
    Knobs = Zero2Knobs
    stage = 2
    reduce = (OpKind.ALLREDUCE, Action.GRADS_ALLREDUCE)
    ipg = True

    def __init__(self, knobs: Zero2Knobs) -> None:
        """The ZeRO-3 model's knobs for stage 2: nothing offloaded, one optimizer sub-group."""
        super().__init__(ZeroInfinityKnobs(**knobs.model_dump(), offload_param="none", offload_optimizer="none",
                                           sub_group_size=ONE_SUBGROUP))

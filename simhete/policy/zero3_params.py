"""ZeRO-3's knobs and parameter plan (:mod:`simhete.policy.zero_infinity` has the model): the
knobs, how one block's 16-bit parameters are partitioned over the data-parallel ranks
(:class:`Partition`), and the fetches and releases of the partitioned-parameter coordinator over
one iteration's use trace (:func:`plan_fetches`: the same every iteration)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from simhete.policy.training import ActivationKnobs


class ZeroInfinityKnobs(ActivationKnobs):
    offload_param: Literal["cpu", "none"] = "cpu"
    """DeepSpeed ``offload_param.device``: where the 16-bit weights are homed."""
    offload_optimizer: Literal["cpu", "none"] = "cpu"
    """DeepSpeed ``offload_optimizer.device``: where fp32 master weights and Adam states live."""
    ratio: float = Field(1.0, ge=0, le=1)
    """DeepSpeed ``offload_optimizer.ratio``: fraction of the optimizer sub-groups (the last ones)
    offloaded to the CPU; the first ``1 - ratio`` stay on the GPU and step there."""
    stage3_prefetch_bucket_size: float = Field(5e7, ge=0)
    """Elements prefetched ahead of the running block (0: fetch on demand only)."""
    stage3_max_live_parameters: float = Field(1e9, ge=0)
    """Cap on fetched parameters resident on the GPU for prefetching."""
    stage3_max_reuse_distance: float = Field(1e9, ge=0)
    """Keep fetched weights if they are used again within this many elements of other parameters."""
    stage3_param_persistence_threshold: float = Field(1e5, ge=0)
    """Blocks with fewer parameters than this stay on the GPU (never fetched or released)."""
    sub_group_size: float = Field(1e9, gt=0)
    """Elements per optimizer step tile (whole blocks here)."""
    reduce_bucket_size: float = Field(5e8, gt=0)
    """Elements per gradient bucket reduced and copied D2H during backward."""
    overlap_comm: bool = True
    """DeepSpeed ``overlap_comm`` (its stage-3 default is true). False: the all-gathers, the
    gradient reduce-scatters and copies run on the compute stream (stage3.py
    ``reduce_and_partition_stream`` and parameter_offload.py's all-gather stream are then the
    default stream), each bucket from the backward hook when the next gradient would overflow it."""


@dataclass
class FetchPlan:
    """Static prefetch/release decisions for one iteration's use trace (identical every iteration)."""

    fetches: list[tuple[int, int, list[int]]] = field(default_factory=list)  # (hook use, target use, owners)
    holder: dict[tuple[int, int], int] = field(default_factory=dict)        # (use, owner) -> fetch id
    release: dict[int, list[int]] = field(default_factory=dict)             # use -> owners released after it


def plan_fetches(needs: list[list[int]], numel: dict[int, int], k: ZeroInfinityKnobs) -> FetchPlan:
    """Replay the partitioned-parameter coordinator over the use trace ``needs`` (owners per use)."""
    plan = FetchPlan()
    live: dict[int, int] = {}      # owner -> fetch id holding it

    def reused(u: int, o: int) -> bool:
        """DeepSpeed partitioned_param_coordinator.py ``__params_to_release``: walk the trace
        after the current step, adding every module's parameter count (a module used twice counts
        twice), and keep the parameter if it recurs before the count reaches
        ``stage3_max_reuse_distance``."""
        traversed = 0
        for w in range(u + 1, len(needs)):
            if traversed >= k.stage3_max_reuse_distance:
                return False
            if o in needs[w]:
                return True
            traversed += sum(numel[p] for p in needs[w])
        return False

    def fetch(hook: int, target: int, miss: list[int]) -> None:
        plan.fetches.append((hook, target, miss))
        for o in miss:
            live[o] = len(plan.fetches) - 1

    for u, need in enumerate(needs):
        miss = [o for o in need if o not in live]
        if miss:
            fetch(u, u, miss)
        prefetched = 0
        for w in range(u + 1, len(needs)):
            if prefetched >= k.stage3_prefetch_bucket_size:
                break
            miss = [o for o in needs[w] if o not in live]
            n = sum(numel[o] for o in miss)
            if not miss:
                continue
            if sum(numel[o] for o in live) + n > k.stage3_max_live_parameters:
                break
            fetch(u, w, miss)
            prefetched += n
        for o in need:
            plan.holder[(u, o)] = live[o]
        for o in need:
            if not reused(u, o):
                plan.release.setdefault(u, []).append(o)
                del live[o]
    return plan


@dataclass(frozen=True)
class Partition:
    """ZeRO-3 partitioning of one block's 16-bit parameters over ``n`` data-parallel ranks, per
    tensor, as partition_parameters.py does it: ``_partition_param`` gives every rank a
    ``ds_tensor`` of ``ceil(numel / n)`` elements (``_aligned_size`` pads each tensor to a multiple
    of n), on the GPU unless parameters are offloaded; a tensor with ``numel <=
    stage3_param_persistence_threshold`` is ``ds_persist``: gathered once and never released, so it
    is held whole besides its shard; the others are all-gathered into a buffer of the padded size
    (``_all_gather_coalesced``: ``ceil(numel / n) * n``) before use and freed after it."""

    shard: int       # elements of the rank's shards (every tensor, persistent ones included)
    persist: int     # elements of the persistent tensors, held whole
    gathered: int    # elements of the all-gather buffer of the partitioned tensors (padded)
    live: int        # elements of the partitioned tensors (what the coordinator counts)

    @staticmethod
    def of(tensors: list[int], n: int, threshold: float) -> "Partition":
        part = [t for t in tensors if t > threshold]
        return Partition(shard=sum(-(-t // n) for t in tensors), persist=sum(t for t in tensors if t <= threshold),
                         gathered=sum(-(-t // n) * n for t in part), live=sum(part))

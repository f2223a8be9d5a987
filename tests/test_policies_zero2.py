"""``zero-2`` (DeepSpeed ZeRO stage 2 without offload): what each GPU holds, what crosses the
interconnect per iteration, and how it compares with gpu-only and ZeRO-3 — exact counts."""

from __future__ import annotations

import pytest

from simhete.opkinds import Action, MemClass, OpKind
from simhete.policy.dataparallel import shard
from simhete.scenario import scenario_from_dict
from simhete.schedule import check_schedule
from simhete.sim import resolve, run


def scenario(policy: str = "zero-2", knobs: dict | None = None, gpus: int = 4, model: str = "gpt-like-h512-l6",
             **train):
    return scenario_from_dict(dict(
        model=model, hardware=dict(profile="a100-80gb-sxm", gpus=gpus),
        train={"micro_batch": 2, "seq_len": 256, "dtype": "bf16", **train}, iterations=2, policy=policy,
        knobs=knobs or {}))


def build(s):
    ctx, pol = resolve(s)
    sched = pol.build(ctx)
    assert check_schedule(sched, capacity=False) == []
    return ctx, sched


def held(sched, g: int, cls: MemClass) -> int:
    return sum(a.bytes for a in sched.initial if a.pool == f"gpu{g}" and a.cls is cls)


@pytest.mark.parametrize("gpus", [2, 3, 4])
def test_every_gpu_holds_the_whole_model_and_its_share_of_the_rest(gpus):
    ctx, s = build(scenario(gpus=gpus))
    blocks = [b for b in ctx.blocks if b.params]
    for g in range(gpus):
        assert held(s, g, MemClass.WEIGHTS) == sum(b.weight_bytes for b in blocks)          # 2 B/param
        assert held(s, g, MemClass.MASTER) == sum(shard(b.master_bytes, gpus, g) for b in blocks)   # 4/N
        assert held(s, g, MemClass.OPTIM) == sum(shard(b.optim_bytes, gpus, g) for b in blocks)     # 8/N
        assert held(s, g, MemClass.GRADS) == sum(shard(b.grad_bytes, gpus, g) for b in blocks)      # 2/N
    assert not any(a.pool == "cpu" and a.cls in (MemClass.MASTER, MemClass.OPTIM) for a in s.initial)


def test_per_iteration_traffic_is_the_bucket_all_reduces_and_one_all_gather():
    gpus = 4
    ctx, s = build(scenario(gpus=gpus, knobs={"reduce_bucket_size": 2e6}))
    p16 = sum(b.weight_bytes for b in ctx.blocks if b.params)
    it2 = [t for t in s.tasks if t.it == 2]
    for g in range(gpus):
        mine = [t for t in it2 if t.stream.startswith(f"gpu{g}.")]
        ar = [t for t in mine if t.action is Action.GRADS_ALLREDUCE]
        assert len(ar) > 1 and sum(op.n for t in ar for op in t.ops if op.kind is OpKind.ALLREDUCE) == p16
        ag = [t for t in mine if t.action is Action.WEIGHTS_ALLGATHER]
        assert [op.n for t in ag for op in t.ops] == [p16]          # the whole 16-bit model, once
        assert not [t for t in mine if t.action in (Action.WEIGHTS_AG_FWD, Action.WEIGHTS_AG_BWD,
                                                    Action.GRADS_REDUCE_SCATTER, Action.GRADS_D2H)]
        adam = [t for t in mine if t.action is Action.ADAM_GPU]      # the rank's partition, one step
        assert [op.n for t in adam for op in t.ops if op.kind is OpKind.ADAM_GPU] == [
            shard(sum(b.params for b in ctx.blocks), gpus, g)]


def _passes(t) -> int:
    return sum(op.n * op.count for op in t.ops if op.kind is OpKind.ELEMENTWISE)


@pytest.mark.parametrize("gpus,dtype,check", [(1, "bf16", False), (2, "bf16", False), (2, "bf16", True),
                                              (4, "bf16", True), (3, "fp16", False), (2, "fp32", True)])
def test_step_passes_are_those_of_deepspeeds_stage2_step(gpus, dtype, check):
    """Bytes read + written per element N of the rank's gradient partition (16-bit, 2 B; fp32 4 B),
    stage_1_and_2.py ``step`` without offload: overflow check (fp16 always; bf16 with
    check_grad_overflow) 6 + 5 + 5 + 3 + 5 + 4 = 28; fp64 norm per tensor 10 + 8; flatten 4;
    fp32 conversion 6; unscale 8 — before Adam; the copy into the 16-bit partition, 6, after."""
    from simhete.workload.tensors import model_tensors
    ctx, s = build(scenario(gpus=gpus, dtype=dtype, knobs={"check_grad_overflow": check}))
    total = sum(b.params for b in ctx.blocks)
    checked = check or dtype == "fp16"
    pieces = 0
    for g in range(gpus):
        (adam,) = [t for t in s.tasks if t.it == 2 and t.action is Action.ADAM_GPU
                   and (gpus == 1 or t.stream == f"gpu{g}.compute")]
        n = shard(total, gpus, g)
        kinds = [op.kind for op in adam.ops]
        k = kinds.index(OpKind.ADAM_GPU)
        before, after = adam.ops[:k], adam.ops[k + 1:]
        if dtype == "fp32":   # no fp32 casts: the check's x.float() and the partition's .to(float32)
            assert sum(op.n * op.count for op in before) == (20 + 8 + 8 + 22 * checked) * n
            assert [op.n for op in after] == [8 * n]
        else:
            assert sum(op.n * op.count for op in before) == (36 + 28 * checked) * n
            assert [op.n for op in after] == [6 * n]
        # per parameter tensor (piece) of the partition: 2 norm kernels, 6 of the check (5 in fp32);
        # then the flatten, the cast (not in fp32) and the unscale
        per, flat = 2 + (5 if dtype == "fp32" else 6) * checked, 2 if dtype == "fp32" else 3
        assert (sum(op.count for op in before) - flat) % per == 0
        pieces += (sum(op.count for op in before) - flat) // per
    tensors = len(model_tensors(ctx.spec))
    assert tensors <= pieces <= tensors + gpus - 1    # a tensor cut by a partition boundary is two pieces
    if gpus == 1:
        assert pieces == tensors


def test_bucket_passes_of_one_bucket_split_over_every_rank():
    """One bucket holding every gradient (reduce_bucket_size above the model): rank g copies it into
    the bucket buffer, divides it, flattens its per-rank slices (2 B/elem each), copies its own
    slice back and into its gradient partition (2 B/elem each): 6·P16 + 4·own16."""
    gpus = 4
    ctx, s = build(scenario(gpus=gpus, knobs={"reduce_bucket_size": 1e12}))
    p16 = sum(b.grad_bytes for b in ctx.blocks if b.params)
    total = sum(b.params for b in ctx.blocks)
    for g in range(gpus):
        (ar,) = [t for t in s.tasks if t.it == 2 and t.action is Action.GRADS_ALLREDUCE
                 and t.stream == f"gpu{g}.compute"]
        assert _passes(ar) == 6 * p16 + 4 * 2 * shard(total, gpus, g)


def test_a_bucket_in_one_ranks_partition_is_neither_flattened_nor_copied_back():
    from simhete.policy.zero_offload_buckets import bucket_passes
    assert [op.n for op in bucket_passes(1000, 400, split=False)] == [4000]
    assert [op.n for op in bucket_passes(1000, 400, split=True)] == [6000 + 800]


def test_overlap_comm_defaults_off_and_moves_the_reductions():
    _, off = build(scenario())
    _, on = build(scenario(knobs={"overlap_comm": True}))
    streams = lambda s: {t.stream for t in s.tasks if t.action is Action.GRADS_ALLREDUCE}  # noqa: E731
    assert streams(off) == {f"gpu{g}.compute" for g in range(4)}
    assert streams(on) == {f"gpu{g}.comm" for g in range(4)}


def test_between_gpu_only_and_zero3():
    """Peak GPU memory: ZeRO-3 (parameters partitioned too) < ZeRO-2 < gpu-only (DDP: everything
    on every GPU), by the weights' and the optimizer states' shares."""
    peak = {}
    for pol, knobs in (("gpu-only", {}), ("zero-2", {}),
                       ("zero-infinity", {"offload_param": "none", "offload_optimizer": "none"})):
        r = run(scenario(pol, knobs, model="gpt-like-h2048-l24"))    # model states dominate
        assert r.summary.fits
        peak[pol] = r.summary.memory["gpu0"].peak_bytes
    assert peak["zero-infinity"] < peak["zero-2"] < peak["gpu-only"]


def test_stage2_knobs_are_its_own():
    from simhete.errors import ConfigError
    with pytest.raises(ConfigError, match="knobs"):
        resolve(scenario(knobs={"offload_param": "cpu"}))

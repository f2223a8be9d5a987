"""zero-offload moves and computes what DeepSpeed ZeRO-1/2 with ``offload_optimizer: cpu`` does per
step (deepspeed/runtime/zero/stage_1_and_2.py), with known answers: the fp32 gradient partition
leaves each GPU (4 B/param / N), the GPU passes of the bucket reduction and of the boundary (norm,
inf/nan check, cast), the CPU's clip pass, Adam and cast to 16 bits, then the 16-bit H2D."""
from __future__ import annotations

import pytest

from simhete.engine import simulate
from simhete.opkinds import OpKind, TaskCat
from simhete.policy.base import host_fp32_bytes
from simhete.policy.dataparallel import shard
from simhete.scenario import scenario_from_dict
from simhete.schedule import Op, check_schedule
from simhete.sim import resolve

PROFILE = "a100-40gb-pcie-epyc7713"


def build(policy_knobs: dict | None = None, *, gpus: int = 1, dtype: str = "bf16", grad_accum: int = 1,
          bucket: float | None = None):
    knobs = dict(policy_knobs or {})
    if bucket is not None:
        knobs["reduce_bucket_size"] = bucket
    ctx, pol = resolve(scenario_from_dict(dict(
        model="gpt-like-h256-l4", hardware=dict(profile=PROFILE, gpus=gpus),
        train=dict(micro_batch=2, seq_len=128, dtype=dtype, grad_accum=grad_accum), iterations=3,
        policy="zero-offload", knobs=knobs)))
    sched = pol.build(ctx)
    assert check_schedule(sched, capacity=False) == []
    return ctx, pol, sched


def it2(sched, pred):
    return [t for t in sched.tasks if t.it == 2 and pred(t)]


def bucket_elems(ctx, pol):
    by = {b.index: b for b in ctx.blocks}
    return [sum(by[i].params for i in bk) for bk in pol.buckets(ctx)]


@pytest.mark.parametrize("gpus", [1, 2, 3, 4])
@pytest.mark.parametrize("bucket", [None, 1e5])
def test_d2h_is_the_rank_fp32_partition(gpus, bucket):
    """async_inplace_copy_grad_to_fp32_buffer_from_gpu: the 16-bit gradient is cast to fp32 on the
    GPU and the fp32 slice of the rank's partition is copied: per rank and iteration 4 × its
    contiguous partition of the P elements (get_data_parallel_partitions: P // N, the first P % N
    ranks one more), summing to 4P exactly."""
    ctx, pol, sched = build(gpus=gpus, bucket=bucket)
    P = sum(b.params for b in ctx.blocks)
    by = {b.index: b for b in ctx.blocks}
    f32 = [sum(host_fp32_bytes(by[i]) for i in bk) for bk in pol.buckets(ctx)]
    assert sum(f32) == 4 * P
    per = []
    syncs = []
    for g in range(gpus):
        ops = [op for t in it2(sched, lambda t: t.stream.startswith(f"gpu{g}.")) for op in t.ops
               if op.kind is OpKind.D2H]
        d2h = sum(op.n * op.count for op in ops if op.pinned)
        assert d2h == 4 * shard(P, gpus, g)
        per.append(d2h)
        # and one 4-byte pageable D2H per parameter tensor (piece) of its partition: the Python
        # ``if`` on _has_inf_or_nan's result
        syncs.append(sum(op.count for op in ops if not op.pinned and op.n == 4))
        assert all(op.pinned or op.n == 4 for op in ops)
    assert sum(per) == 4 * P
    # 12 tensors per block (2 LayerNorms with biases, fused QKV, output, fc1, fc2, each with a
    # bias), the token and learned-position tables (tied LM head), the final LayerNorm's 2:
    # 4·12 + 2 + 2 = 52 whole tensors, plus one more piece per partition boundary that cuts a tensor
    assert 52 <= sum(syncs) <= 52 + gpus - 1
    # N GPUs: one all-reduce of each bucket's 16-bit gradients per rank before the copy
    ar = it2(sched, lambda t: t.stream == "gpu0.comm" and t.cat is TaskCat.COMM and ".D2H.g" in t.name)
    if gpus == 1:
        assert ar == []
    else:
        assert [t.ops for t in ar] == [(Op(OpKind.ALLREDUCE, (gpus,), n=2 * e),) for e in bucket_elems(ctx, pol)]


def test_buckets_copy_out_by_contiguous_partition():
    """DeepSpeed flattens the group in forward order (embed, b0..b3, the final norm of ``head``) and
    rank r owns the r-th contiguous half (round_robin_gradients off): with one block per bucket,
    filled in backward order, the buckets of b3+head, b2, b1, b0 lie wholly in rank 1's half and
    only rank 1 copies them; the embedding (13127936 elements, more than half of P = 16287488) is
    split: rank 0 copies its first P/2 = 8143744, rank 1 the remaining 4984192."""
    ctx, pol, sched = build(gpus=2, bucket=1e5)
    par = {b.name: b.params for b in ctx.blocks}
    P = sum(par.values())
    assert (P, par["embed"], par["b0"], par["head"]) == (16287488, 13127936, 789760, 512)
    assert pol.buckets(ctx) == [[5, 4], [3], [2], [1], [0]]

    def copied(g):
        return [sum(op.n * op.count for op in t.ops if op.kind is OpKind.D2H and op.pinned)
                for t in it2(sched, lambda t: t.name.startswith("it2.D2H.g.k") and t.name.endswith(f"@g{g}"))]

    blk = par["b0"]
    assert copied(0) == [0, 0, 0, 0, 4 * 8143744]
    assert copied(1) == [4 * (blk + 512), 4 * blk, 4 * blk, 4 * blk, 4 * 4984192]
    # bucket k0 lies in rank 1's partition, one slice: both ranks run the hook copy and div_ over
    # its 16-bit bytes (2 passes), and no flatten or copy back (a view of one tensor, a copy_ onto
    # the same data); rank 1 also runs its norm, checks and fp32 copy (not rank 0: it owns nothing)
    k0 = {g: next(t for t in it2(sched, lambda t: t.name == f"it2.D2H.g.k0@g{g}")) for g in (0, 1)}
    gb = 2 * (blk + 512)
    assert k0[0].ops == (Op(OpKind.ELEMENTWISE, n=2 * 2 * gb),)
    assert k0[1].ops[0] == Op(OpKind.ELEMENTWISE, n=2 * 2 * gb)
    # bucket k4, the embedding, is split between the ranks: both flatten it (a third pass) and
    # each copies its reduced slice back (2 × the bytes it owns)
    k4 = {g: next(t for t in it2(sched, lambda t: t.name == f"it2.D2H.g.k4@g{g}")) for g in (0, 1)}
    ge = 2 * par["embed"]
    assert k4[0].ops[0] == Op(OpKind.ELEMENTWISE, n=3 * 2 * ge + 2 * 2 * 8143744)
    assert k4[1].ops[0] == Op(OpKind.ELEMENTWISE, n=3 * 2 * ge + 2 * 2 * 4984192)


def test_without_overlap_comm_the_ranks_wait_for_each_others_copies():
    """overlap_comm false: the copy runs from the backward hook on the compute stream and the next
    bucket's all-reduce needs every rank, so rank 0 stands still while rank 1 copies a bucket it
    owns alone: rank 0's all-reduce of bucket k1 starts after rank 1's copy of bucket k0 ended, and
    the copies of the two ranks never overlap in time (their sum is on the critical path)."""
    ctx, _, sched = build({"overlap_comm": False}, gpus=2, bucket=1e5)
    tl = simulate(sched, ctx.cost.durations(sched), ctx.cost.interference())
    rec = {r.name: r for r in tl.records}
    assert rec["it2.D2H.g.ar.k1@g0"].start >= rec["it2.D2H.g.k0@g1"].end
    assert rec["it2.D2H.g.k0@g0"].end < rec["it2.D2H.g.k0@g1"].end


# gpt-like-h256-l4's block tensors in module order: ln_1 (w, b), fused QKV (w, b), output (w, b),
# ln_2 (w, b), fc1 (w, b), fc2 (w, b)
BLOCK_TENSORS = (256, 256, 256 * 768, 768, 256 * 256, 256, 256, 256, 256 * 1024, 1024, 1024 * 256, 256)


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_gpu_passes_of_each_bucket_copy(dtype):
    """One GPU, bytes read + written per gradient element. Bucket: the hook's copy into the
    contiguous bucket buffer and average_tensor's div_ = 2 × (2 × gradient bytes), one op; one
    rank owns the whole bucket, one slice, so flatten is a view and the copy back a no-op. Boundary
    (copy_grads_in_partition), per parameter tensor of n elements, one kernel per torch op:
    ``double()`` (g + 8)n, ``norm`` 8n, ``_has_inf_or_nan`` (``float()`` (g + 4)n unless fp32,
    isnan 5n, isinf 5n, logical_or 3n, ``float()`` 5n, max 4n), the Python ``if`` on its result
    (a 4-byte pageable D2H), ``.to(float32)`` (g + 4)n unless fp32, the fp32 D2H 4n."""
    ctx, pol, sched = build(dtype=dtype, bucket=1e5)
    g = 2 if dtype == "bf16" else 4
    assert sum(BLOCK_TENSORS) == next(b.params for b in ctx.blocks if b.name == "b2")
    d2h = it2(sched, lambda t: ".D2H.g." in t.name)
    elems = bucket_elems(ctx, pol)
    assert pol.buckets(ctx)[1] == [3] and len(d2h) == len(elems) == 5
    t = d2h[1]
    assert t.stream == "gpu0.d2h" and t.cat is TaskCat.D2H
    want = [Op(OpKind.ELEMENTWISE, n=2 * 2 * g * elems[1])]
    # equal tensors share their ops through count: six of 256 elements (the two LayerNorms' weights
    # and biases, the output and fc2 biases), two of 262144 (fc1 and fc2), one of each other size
    groups = {256: 6, 196608: 1, 768: 1, 65536: 1, 262144: 2, 1024: 1}
    assert sum(n * k for n, k in groups.items()) == sum(BLOCK_TENSORS)
    for n, k in groups.items():
        cast = [Op(OpKind.ELEMENTWISE, n=(g + 4) * n, count=k)] if g != 4 else []
        want += [Op(OpKind.ELEMENTWISE, n=(g + 8) * n, count=k), Op(OpKind.ELEMENTWISE, n=8 * n, count=k), *cast,
                 Op(OpKind.ELEMENTWISE, n=5 * n, count=k), Op(OpKind.ELEMENTWISE, n=5 * n, count=k),
                 Op(OpKind.ELEMENTWISE, n=3 * n, count=k), Op(OpKind.ELEMENTWISE, n=5 * n, count=k),
                 Op(OpKind.ELEMENTWISE, n=4 * n, count=k), Op(OpKind.D2H, n=4, pinned=False, count=k),
                 *cast, Op(OpKind.D2H, n=4 * n, count=k)]
    assert t.ops == tuple(want)
    # bf16: 52 bytes of passes per element, fp32: 42; 12 syncs, one per tensor
    assert sum(op.n * op.count for op in t.ops[1:] if op.kind is OpKind.ELEMENTWISE) == \
        (52 if g == 2 else 42) * elems[1]
    assert sum(op.count for op in t.ops if op.kind is OpKind.D2H and not op.pinned) == 12
    # the six 256-element tensors cost their launches, not their bytes: each op max(7 µs, kernel)
    launch = ctx.cost.profile.gpu.launch_overhead_us.value * 1e-6
    small = [op for op in t.ops[1:1 + (11 if g == 2 else 9)] if op.kind is OpKind.ELEMENTWISE]
    assert len(small) == (9 if g == 2 else 7)
    assert all(ctx.cost.op_seconds(op) == pytest.approx(6 * launch, rel=1e-12) for op in small)


def test_cpu_step_is_clip_adam_cast_then_h2d():
    """DeepSpeed's step, cpu_offload branch: unscale_and_clip_grads (``mul_`` over the fp32
    gradients: a host copy of 4 B/param), DeepSpeedCPUAdam over the partition (one task per block
    here), the cast of the fp32 partition into the 16-bit host buffer (reads 4, writes 2: a host
    copy of 3 B/param), then the 16-bit H2D (2 B/param), every block's after the whole cast."""
    ctx, _, sched = build()
    P = sum(b.params for b in ctx.blocks)
    W = sum(b.weight_bytes for b in ctx.blocks)
    by = {t.name: t for t in sched.tasks}
    clip, cast = by["it2.STEP.grads"], by["it2.STEP.cast"]
    assert clip.ops == (Op(OpKind.MEMCPY_CPU, n=4 * P),) and clip.stream == cast.stream == "cpu.optim"
    assert cast.ops == (Op(OpKind.MEMCPY_CPU, n=3 * P),)
    assert set(clip.deps) == {t.name for t in it2(sched, lambda t: ".D2H.g." in t.name)}
    adam = it2(sched, lambda t: ".ADAM.cpu." in t.name)
    assert len(adam) == sum(1 for b in ctx.blocks if b.params)
    assert all(t.deps == (clip.name,) for t in adam)
    assert set(cast.deps) == {t.name for t in adam}
    h2d = it2(sched, lambda t: ".H2D.w." in t.name)
    assert sum(op.n for t in h2d for op in t.ops) == W == 2 * P
    assert all(cast.name in t.deps for t in h2d)
    # the engine: the step's CPU passes take their priced time at host memcpy bandwidth, and no
    # weight leaves before the cast is over
    durs = dict(zip((t.name for t in sched.tasks), ctx.cost.durations(sched)))
    q = ctx.cost.profile.host.memcpy_gbps.value * 1e9
    assert durs[clip.name] == pytest.approx(4 * P / q, rel=1e-12)
    assert durs[cast.name] == pytest.approx(3 * P / q, rel=1e-12)
    tl = simulate(sched, ctx.cost.durations(sched), ctx.cost.interference())
    rec = {r.name: r for r in tl.records}
    assert rec[clip.name].end <= min(rec[t.name].start for t in adam)
    assert max(rec[t.name].end for t in adam) <= rec[cast.name].start
    assert rec[cast.name].end <= min(rec[t.name].start for t in h2d)


@pytest.mark.parametrize("gpus", [1, 2])
def test_other_knob_settings(gpus):
    """overlap_comm false: the same ops on the compute stream; delayed_update: each refresh waits
    for its step's cast; gradient accumulation: the first micro-step sends the 16-bit gradients
    (after the bucket passes only), the last adds the boundary's passes and fp32 copy."""
    ctx, pol, base = build(gpus=gpus)
    _, _, sync = build({"overlap_comm": False}, gpus=gpus)
    ops = {t.name: t.ops for t in base.tasks if ".D2H.g." in t.name}
    moved = [t for t in sync.tasks if ".D2H.g." in t.name]
    assert moved and {t.name: t.ops for t in moved} == ops
    assert all(t.stream.endswith(".compute") for t in moved)
    _, _, dpu = build({"delayed_update": True}, gpus=gpus)
    refresh = [t for t in dpu.tasks if ".H2D.w." in t.name and ".ag." not in t.name]
    assert refresh and all(t.name.split(".")[0] + ".STEP.cast" in t.deps for t in refresh)
    _, _, ga = build(gpus=gpus, grad_accum=2)
    e = bucket_elems(ctx, pol)[0]
    first = next(t for t in ga.tasks if t.name.startswith("it2.D2H.g.k0"))
    last = next(t for t in ga.tasks if t.name.startswith("it2.m2.D2H.g.k0"))
    # one bucket (the default size holds the whole model): rank 0's contiguous partition of it is
    # its shard of P
    assert len(pol.buckets(ctx)) == 1
    g16 = shard(2 * e, gpus, 0)
    # one GPU: one slice, hook copy and div_ only; two: the bucket spans both partitions, so it is
    # also flattened and the rank copies its slice back
    passes = Op(OpKind.ELEMENTWISE, n=(3 * 2 * 2 * e + 2 * g16) if gpus > 1 else 2 * 2 * 2 * e)
    assert first.ops == (passes, Op(OpKind.D2H, n=g16))
    assert last.ops[:3] == (Op(OpKind.ELEMENTWISE, n=3 * g16), Op(OpKind.D2H, n=g16), passes)
    boundary = last.ops[3:]
    assert sum(op.n * op.count for op in boundary if op.kind is OpKind.ELEMENTWISE) == 52 * shard(e, gpus, 0)
    assert sum(op.n * op.count for op in boundary if op.kind is OpKind.D2H and op.pinned) == shard(4 * e, gpus, 0)


def test_parameter_tensors_of_a_block_in_module_order():
    """What copy_grads_in_partition walks: the parameters of a block, one tensor each. LLaMA-2-7B
    (LlamaDecoderLayer: input_layernorm, q/k/v/o_proj, post_attention_layernorm, gate/up/down_proj,
    no biases); Qwen2.5-0.5B read from its config.json (q/k/v with biases, o_proj without, 2 K/V
    heads of 64); a block the listing cannot lay out counts as one tensor."""
    from pathlib import Path

    from simhete.workload.tensors import param_tensors
    from simhete.workload.hf import from_hf_config
    from simhete.workload.ops import build_workload
    from simhete.workload.presets import get_model

    spec = get_model("llama2-7b")
    blk = build_workload(spec, 1, 128).blocks[1]
    h, f = 4096, 11008
    assert param_tensors(spec, blk) == (h, h * h, h * h, h * h, h * h, h, h * f, h * f, f * h)
    qwen = from_hf_config(Path(__file__).parent / "data" / "hf" / "qwen2.5-0.5b")
    qb = build_workload(qwen, 1, 128).blocks[1]
    h, kv, f = 896, 128, 4864
    assert param_tensors(qwen, qb) == (h, h * h, h, h * kv, kv, h * kv, kv, h * h, h, h * f, h * f, f * h)
    assert param_tensors(qwen, build_workload(qwen, 1, 128).blocks[0]) == (151936 * h,)

    class Odd:
        name, params = "b0", blk.params + 1
    assert param_tensors(spec, Odd()) == (blk.params + 1,)


@pytest.mark.parametrize("gpus", [2, 4])
@pytest.mark.parametrize("grad_accum", [1, 2])
def test_a_rank_owning_none_of_a_bucket_puts_nothing_on_its_copy_streams(gpus, grad_accum):
    """With one small bucket per block, some ranks own none of a bucket: their copy-out task runs
    only the bucket passes (or nothing) and sits on the reduction stream, so every task on a
    copy stream moves bytes (the PCIe report refuses a copy task moving nothing)."""
    ctx, pol, sched = build(gpus=gpus, bucket=1e5, grad_accum=grad_accum)
    on_copy = [t for t in sched.tasks if t.stream.rpartition(".")[2] in ("h2d", "d2h")]
    assert on_copy and all(any(op.kind in (OpKind.H2D, OpKind.D2H) for op in t.ops) for t in on_copy)
    idle = [t for t in sched.tasks if t.cat in (TaskCat.D2H, TaskCat.H2D)
            and not any(op.kind in (OpKind.H2D, OpKind.D2H) for op in t.ops)]
    assert idle and all(t.stream.endswith(".comm") for t in idle)
    simulate(sched, [0.001] * len(sched.tasks))

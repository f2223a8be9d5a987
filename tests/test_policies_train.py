"""Training-shape features of every policy with known answers: fp32 host accounting of offloaded
optimizers, gradient accumulation (micro-steps), and data parallelism of gpu-only / zero-offload."""

from __future__ import annotations

import pytest

from simhete.opkinds import DTYPE_BYTES, MemClass
from simhete.policy import list_policies
from simhete.policy.base import host_fp32_bytes
from simhete.scenario import scenario_from_dict
from simhete.schedule import check_schedule
from simhete.sim import resolve

PROFILE = "a100-40gb-pcie-epyc7713"
OFFLOADING = ["zero-offload", "zero-infinity", "stronghold", "chunked", "autohete"]


def scenario(policy: str, knobs: dict | None = None, *, layers: int = 4, hidden: int = 256, batch: int = 2,
             seq: int = 128, gpus: int = 1, iterations: int = 3, dtype: str = "bf16", **train):
    return scenario_from_dict(dict(
        model=f"gpt-like-h{hidden}-l{layers}", hardware=dict(profile=PROFILE, gpus=gpus),
        train=dict(micro_batch=batch, seq_len=seq, dtype=dtype, **train), iterations=iterations,
        policy=policy, knobs=knobs or {}))


def build(s):
    ctx, pol = resolve(s)
    sched = pol.build(ctx)
    assert check_schedule(sched, capacity=False) == []
    return ctx, sched


def host_bytes(sched, cls: MemClass) -> int:
    return sum(a.bytes for a in sched.initial if a.pool == "cpu" and a.cls is cls)


# ---------------------------------------------------------------------------------------------
# fp32 training with an offloaded optimizer

def fully_offloaded(policy: str) -> dict:
    """Knobs that put every block's optimizer on the host."""
    return {"stronghold": {"window_size": 1}, "autohete": {"offload_optimizer": True, "verify": False},
            "chunked": {"placement_policy": "static", "offload_optim_frac": 1.0}}.get(policy, {})


@pytest.mark.parametrize("policy", ["zero-offload", "zero-infinity", "autohete"])
def test_fp32_offloaded_optimizer_keeps_16_bytes_per_param_on_the_host(policy):
    """fp32 weights are already fp32, yet an offloaded optimizer keeps its own fp32 master copy and
    fp32 gradient buffer next to Adam m, v: 4 + 4 + 8 = 16 B per parameter (replay measured 16 for
    fp32 ZeRO-Offload); bf16 the same 16 B (4 + 4 + 8), so mixed precision is unchanged."""
    for dtype in ("fp32", "bf16"):
        ctx, sched = build(scenario(policy, fully_offloaded(policy), dtype=dtype))
        P = sum(b.params for b in ctx.blocks)
        assert host_bytes(sched, MemClass.MASTER) == 4 * P
        assert host_bytes(sched, MemClass.GRADS32) == 4 * P
        assert host_bytes(sched, MemClass.OPTIM) == 8 * P


def test_chunked_offloaded_optimizer_keeps_no_fp32_gradients():
    """PatrickStar / Gemini CPU Adam reads the 16-bit gradient from the chunk: master 4 + Adam m, v
    8 B/param on the host, no fp32 gradient buffer, plus the chunk shard (2 B bf16, 4 B fp32)."""
    for dtype, e in (("fp32", 4), ("bf16", 2)):
        ctx, sched = build(scenario("chunked", fully_offloaded("chunked"), dtype=dtype))
        P = sum(b.params for b in ctx.blocks)
        assert host_bytes(sched, MemClass.MASTER) == 4 * P
        assert host_bytes(sched, MemClass.GRADS32) == 0
        assert host_bytes(sched, MemClass.OPTIM) == 8 * P
        assert host_bytes(sched, MemClass.WEIGHTS) == e * P


@pytest.mark.parametrize("dtype,e", [("fp32", 4), ("bf16", 2)])
def test_stronghold_host_states(dtype, e):
    """StrongHold's artifact keeps a pinned host copy of every transformer block's parameters and
    gradients, in the parameters' dtype (GL_ParallelTransformerLayer.__init__:
    ``_gl_cpu_version_items``), and Adam m, v of the CPU-updated blocks (GL_DeepSpeedCPUAdam). In
    fp32 the CPU Adam updates that pinned copy with that pinned gradient: no master, no fp32
    gradient; with 16-bit weights GL_CPU_Float16OptimizerWithFloat16Params adds an fp32 master
    clone and fp32 main gradients. w = 1 of 4: b1 … b3 are updated by the CPU."""
    ctx, sched = build(scenario("stronghold", {"window_size": 1}, dtype=dtype))
    trans = [b for b in ctx.blocks if b.name.startswith("b")]
    P, Pc = sum(b.params for b in trans), sum(b.params for b in trans[1:])
    assert host_bytes(sched, MemClass.WEIGHTS) == host_bytes(sched, MemClass.GRADS) == e * P
    assert host_bytes(sched, MemClass.OPTIM) == 8 * Pc
    assert host_bytes(sched, MemClass.MASTER) == host_bytes(sched, MemClass.GRADS32) == (0 if e == 4 else 4 * Pc)


def test_fp32_gpu_optimizer_has_no_separate_master():
    """On the GPU the fp32 weights are the master weights: gpu-only keeps 4 + 8 B per parameter."""
    ctx, sched = build(scenario("gpu-only", dtype="fp32"))
    P = sum(b.params for b in ctx.blocks)
    g = {c: sum(a.bytes for a in sched.initial if a.pool == "gpu0" and a.cls is c) for c in MemClass}
    assert g[MemClass.WEIGHTS] == 4 * P and g[MemClass.OPTIM] == 8 * P and g[MemClass.MASTER] == 0


def test_fp32_delayed_update_second_gradient_buffer():
    ctx, sched = build(scenario("zero-offload", {"delayed_update": True}, dtype="fp32"))
    P = sum(b.params for b in ctx.blocks)
    assert host_bytes(sched, MemClass.GRADS32) == 2 * 4 * P


def test_every_policy_is_listed_here():
    assert set(list_policies()) == set(OFFLOADING) | {"gpu-only", "zero-2"}


# ---------------------------------------------------------------------------------------------
# gradient accumulation and data parallel: gpu-only, zero-offload

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from simhete.engine import simulate  # noqa: E402
from simhete.opkinds import OpKind, TaskCat  # noqa: E402
from simhete.report.pcie import copy_bytes  # noqa: E402
from simhete.sim import run  # noqa: E402

FAST = settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FB = (TaskCat.FWD, TaskCat.BWD, TaskCat.RECOMPUTE)


def durations(ctx, sched):
    return dict(zip((t.name for t in sched.tasks), ctx.cost.durations(sched)))


def per_iter(sched, it, pred):
    return [t for t in sched.tasks if t.it == it and pred(t)]


def is_sync(op) -> bool:
    """DeepSpeed's per-parameter host sync (``_has_inf_or_nan`` tested in a Python ``if``): a
    4-byte pageable D2H of one scalar, not a model-state copy."""
    return op.kind is OpKind.D2H and op.n == 4 and not op.pinned


def pcie(sched, it, gpu=None):
    """(H2D, D2H) model-state bytes of iteration ``it`` (on GPU ``gpu`` only, if given): every copy
    but the 4-byte host syncs (counted by :func:`syncs`)."""
    nb = copy_bytes(sched)
    out = {OpKind.H2D: 0, OpKind.D2H: 0}
    for t in sched.tasks:
        if t.it != it or (gpu is not None and not t.stream.startswith(f"gpu{gpu}.")):
            continue
        for op in t.ops:
            if op.kind in out and not is_sync(op):
                out[op.kind] += op.n * op.count
        assert sum(op.n * op.count for op in t.ops if op.kind in out) == nb.get(t.name, 0)
    return out[OpKind.H2D], out[OpKind.D2H]


def syncs(sched, it, gpu=None) -> int:
    return sum(op.count for t in sched.tasks if t.it == it and (gpu is None or t.stream.startswith(f"gpu{gpu}."))
               for op in t.ops if is_sync(op))


@FAST
@given(k=st.integers(1, 4), layers=st.integers(2, 4), ckpt=st.sampled_from(["none", "full"]))
def test_gpu_only_accumulation_iteration_is_k_micro_steps_then_one_step(k, layers, ckpt):
    """One GPU, nothing moves: the steady iteration is exactly k × (forward + backward) plus one
    optimizer step (the compute stream is the whole critical path)."""
    ctx, sched = build(scenario("gpu-only", {"checkpointing": ckpt}, layers=layers, grad_accum=k))
    d = durations(ctx, sched)
    fb = sum(d[t.name] for t in per_iter(sched, 2, lambda t: t.cat in FB))
    adam = [t for t in per_iter(sched, 2, lambda t: t.cat is TaskCat.OPTIM_GPU)]
    assert len(adam) == sum(1 for b in ctx.blocks if b.params)
    ctx1, sched1 = build(scenario("gpu-only", {"checkpointing": ckpt}, layers=layers))
    d1 = durations(ctx1, sched1)
    assert fb == pytest.approx(k * sum(d1[t.name] for t in per_iter(sched1, 2, lambda t: t.cat in FB)), rel=1e-12)
    tl = simulate(sched, ctx.cost.durations(sched), ctx.cost.interference())
    assert tl.steady_iteration_time() == pytest.approx(fb + sum(d[t.name] for t in adam), rel=1e-9)


def test_accumulation_names_are_stable_and_unique():
    """Micro-step 1 keeps the plain names; later micro-steps are it{i}.m{m}.…; grad_accum 1 gives the
    very schedule of before (no m-names at all)."""
    _, s1 = build(scenario("zero-offload"))
    _, s3 = build(scenario("zero-offload", grad_accum=3))
    n1, n3 = {t.name for t in s1.tasks}, [t.name for t in s3.tasks]
    assert len(n3) == len(set(n3))
    assert not any(".m" in x for x in n1)
    assert {"it1.F.b0", "it1.m2.F.b0", "it1.m3.B.b3", "it2.m3.D2H.g.k0", "it1.m2.D2H.g.ga.k0"} <= set(n3)
    assert n1 <= set(n3)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_zero_offload_accumulation_pcie_bytes(k):
    """DeepSpeed ZeRO-2 offload with k micro-steps (stage_1_and_2.py ``copy_grads_in_partition``):
    with k > 1 every micro-step's 16-bit gradients go D2H into accumulated_grads_in_cpu (k × 2P,
    async_accumulate_grad_in_cpu_via_gpu), micro-steps after the first first bring the 16-bit sum
    back H2D to add to it ((k−1) × 2P); at the boundary (also k = 1) the gradient, cast to fp32 on
    the GPU, goes D2H into the fp32 partition (4P, async_inplace_copy_grad_to_fp32_buffer_from_gpu);
    the step sends the new weights H2D (2P). The CPU step is the clip pass, one Adam per block and
    the cast to 16 bits."""
    ctx, sched = build(scenario("zero-offload", grad_accum=k))
    W = sum(b.weight_bytes for b in ctx.blocks)
    F = sum(host_fp32_bytes(b) for b in ctx.blocks if b.params)
    assert F == 2 * W
    assert pcie(sched, 2) == ((k - 1) * W + W, (k * W if k > 1 else 0) + F)
    # one host sync per parameter tensor at the boundary (copy_grads_in_partition, per parameter)
    from simhete.workload.tensors import param_tensors
    assert syncs(sched, 2) == sum(len(param_tensors(ctx.spec, b)) for b in ctx.blocks if b.params)
    cpu = per_iter(sched, 2, lambda t: t.cat is TaskCat.OPTIM_CPU)
    assert len(cpu) == sum(1 for b in ctx.blocks if b.params) + 2
    host_acc = sum(a.bytes for a in sched.initial if a.pool == "cpu" and a.cls is MemClass.GRADS)
    assert host_acc == (W if k > 1 else 0)


@pytest.mark.parametrize("gpus", [2, 3, 4])
@pytest.mark.parametrize("k", [1, 2])
def test_zero_offload_data_parallel_moves_one_nth_per_gpu(gpus, k):
    """ZeRO-Offload's multi-GPU schedule (Ren et al. 2021 §4.1; DeepSpeed's average_tensor with its
    defaults reduce_scatter and use_multi_rank_bucket_allreduce all-reduces each bucket and each rank
    keeps its partition): each GPU moves its 1/N gradient partition D2H and its 1/N of the new
    weights H2D over its own link (then all-gather): per-GPU PCIe bytes are 1/N of one GPU's,
    summing exactly to it."""
    ctx1, s1 = build(scenario("zero-offload", grad_accum=k))
    ctx, s = build(scenario("zero-offload", gpus=gpus, grad_accum=k))
    h, d = pcie(s1, 2)
    per = [pcie(s, 2, g) for g in range(gpus)]
    assert sum(x[0] for x in per) == h and sum(x[1] for x in per) == d
    ntasks = len(per_iter(s, 2, lambda t: t.stream in ("gpu0.d2h", "gpu0.h2d")))   # ≤ 1 B rounding each
    for x in per:
        assert abs(x[0] - h / gpus) <= ntasks and abs(x[1] - d / gpus) <= ntasks
    kinds = {op.kind for t in s.tasks if t.stream.endswith(".comm") for op in t.ops}
    assert kinds == {OpKind.ALLREDUCE, OpKind.ALLGATHER}
    # the whole host holds every rank's partition once; every GPU its 16-bit weights and the two
    # ipg buckets of 5e8 bf16 elements (overlap_comm)
    P = sum(b.params for b in ctx.blocks)
    assert host_bytes(s, MemClass.OPTIM) == 8 * P
    for g in range(gpus):
        assert sum(a.bytes for a in s.initial if a.pool == f"gpu{g}" and a.cls is not MemClass.CUDA_CONTEXT) \
            == sum(b.weight_bytes for b in ctx.blocks) + 2 * 2 * 500_000_000


@pytest.mark.parametrize("gpus", [2, 4])
def test_gpu_only_ddp_allreduces_every_gradient_once_per_iteration(gpus):
    """DDP: no PCIe traffic; each GPU all-reduces every gradient byte once per iteration, in the
    last micro-step only (no_sync before); the reducer's bucket copy of the gradients is on each GPU
    unless gradient_as_bucket_view."""
    for k in (1, 3):
        ctx, s = build(scenario("gpu-only", gpus=gpus, grad_accum=k))
        G = sum(b.grad_bytes for b in ctx.blocks)
        assert pcie(s, 2) == (0, 0)
        for g in range(gpus):
            ar = [t for t in s.tasks if t.it == 2 and t.stream == f"gpu{g}.comm"]
            assert {op.kind for t in ar for op in t.ops} == {OpKind.ALLREDUCE}
            assert sum(op.n for t in ar for op in t.ops) == G
            assert all(".m" not in t.name or f".m{k}." in t.name for t in ar)
            assert sum(a.bytes for a in s.initial if a.pool == f"gpu{g}" and a.cls is MemClass.BUFFERS) == G
        _, s = build(scenario("gpu-only", {"gradient_as_bucket_view": True}, gpus=gpus, grad_accum=k))
        assert not any(a.cls is MemClass.BUFFERS for a in s.initial)


@pytest.mark.parametrize("precision,e", [("mixed", 4), ("pure", 2)])
def test_gpu_only_optimizer_knob_prices_torch_foreach_adamw(precision, e):
    """knob optimizer: fused — one ADAM_GPU op per block, 7 accesses of the state dtype per
    parameter; foreach (torch AdamW's CUDA default) — the same tasks, 20 accesses: the step's
    priced time scales by 20/7 exactly and nothing else changes."""
    from simhete.schedule import Op
    ctx, fused = build(scenario("gpu-only", precision=precision))
    _, foreach = build(scenario("gpu-only", {"optimizer": "foreach"}, precision=precision))
    assert [t.name for t in fused.tasks] == [t.name for t in foreach.tasks]
    adam = lambda s: [t for t in s.tasks if t.it == 2 and t.cat.value == "optim_gpu"]   # noqa: E731
    assert [t.ops for t in adam(fused)] == [(Op(OpKind.ADAM_GPU, n=b.params, dtype=ctx.workload.optim_dtype),)
                                            for b in ctx.blocks if b.params]
    assert [t.ops for t in adam(foreach)] == [(Op(OpKind.ADAM_GPU, (20,), n=b.params,
                                                  dtype=ctx.workload.optim_dtype),) for b in ctx.blocks if b.params]
    assert DTYPE_BYTES[ctx.workload.optim_dtype] == e
    big = max(zip(adam(fused), adam(foreach)), key=lambda pair: pair[0].ops[0].n)
    t_f, t_e = (ctx.cost.op_seconds(t.ops[0]) for t in big)
    assert t_f > ctx.cost.profile.gpu.launch_overhead_us.value * 1e-6      # priced by its bytes
    assert t_e == pytest.approx(t_f * 20 / 7, rel=1e-12)


@pytest.mark.parametrize("gpus,view,clip,passes", [(1, False, 0.0, 0), (1, False, 1.0, 3), (2, False, 0.0, 4),
                                                    (2, False, 1.0, 7), (2, True, 0.0, 0), (2, True, 0.5, 3)])
def test_gpu_only_gradient_passes_before_each_update(gpus, view, clip, passes):
    """Accesses per gradient element priced with each block's update on the compute stream: DDP's
    copy into its bucket (dividing by the world size) and back out (2 + 2; several GPUs without
    gradient_as_bucket_view), clip_grad_norm_'s foreach norm and scale (1 + 2). Clipping needs the
    global norm: every update waits for every bucket's all-reduce of its GPU."""
    knobs = {"gradient_as_bucket_view": view, "max_grad_norm": clip}
    ctx, s = build(scenario("gpu-only", knobs, gpus=gpus))
    by = {b.index: b for b in ctx.blocks}
    for g in range(gpus):
        mine = [t for t in s.tasks if t.it == 2 and t.stream == f"gpu{g}.compute"]
        adam = [t for t in mine if t.action.name == "ADAM_GPU"]
        assert len(adam) == sum(1 for b in ctx.blocks if b.params)
        for t in adam:
            grad = by[t.block].grad_bytes
            assert [(op.kind, op.n) for op in t.ops[:-1]] == ([(OpKind.ELEMENTWISE, passes * grad)] if passes else [])
            assert t.ops[-1].kind is OpKind.ADAM_GPU
        ar = {t.name for t in s.tasks if t.it == 2 and t.stream == f"gpu{g}.comm"}
        assert bool(ar) == (gpus > 1)
        for t in adam:
            assert ar <= set(t.deps) if clip else len(ar & set(t.deps)) <= 1


def test_gpu_only_one_gpu_has_no_collective_and_no_bucket_copy():
    _, s = build(scenario("gpu-only"))
    assert not any(t.stream.endswith(".comm") for t in s.tasks)
    assert not any(a.cls is MemClass.BUFFERS for a in s.initial)


@pytest.mark.parametrize("policy", ["gpu-only", "zero-offload"])
def test_tokens_and_samples_per_iteration_scale_with_accumulation_and_gpus(policy):
    r = run(scenario(policy, gpus=2, grad_accum=3, batch=2, seq=128))
    assert r.summary.tokens_per_iter == 2 * 128 * 3 * 2
    assert r.summary.samples_per_iter == 2 * 3 * 2
    assert r.summary.tokens_per_s == pytest.approx(r.summary.tokens_per_iter / r.summary.iter_time_s)


# ---------------------------------------------------------------------------------------------
# gradient accumulation in every policy

from simhete.errors import ConfigError  # noqa: E402

PINNED = {"zero-offload": {}, "zero-infinity": {}, "stronghold": {"window_size": 2},
          "autohete": {"offload_param": True, "offload_optimizer": True, "checkpointing": "full", "verify": False},
          "gpu-only": {}, "zero-2": {}}


def grad_bytes(sched, it, tag, kind):
    """Bytes of ``kind`` copies in iteration ``it``'s tasks named ….{tag}.…"""
    return sum(op.n * op.count for t in sched.tasks if t.it == it and f".{tag}." in t.name for op in t.ops
               if op.kind is kind and not is_sync(op))


@pytest.mark.parametrize("policy", sorted(PINNED))
@pytest.mark.parametrize("gpus", [1, 2])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_every_policy_builds_valid_accumulating_schedules_that_fit(policy, gpus, k):
    ctx, s = build(scenario(policy, PINNED[policy], gpus=gpus, grad_accum=k, iterations=2))
    names = [t.name for t in s.tasks]
    assert len(names) == len(set(names))
    tl = simulate(s, ctx.cost.durations(s), ctx.cost.interference())
    assert tl.oom is None
    for pool, cap in s.pools.items():
        assert tl.peak.get(pool, 0) <= cap


@pytest.mark.parametrize("policy", sorted(PINNED))
def test_accumulation_known_answers(policy):
    """k micro-steps: k × one micro-step's forward/backward compute, the same optimizer tasks once;
    gradients bound for the host leave every micro-step (k × the D2H of one) and micro-steps after
    the first bring the 16-bit sum back to add to it ((k − 1) × that, as DeepSpeed does)."""
    k = 3
    ctx1, s1 = build(scenario(policy, PINNED[policy]))
    ctx, s = build(scenario(policy, PINNED[policy], grad_accum=k))
    d1, d = durations(ctx1, s1), durations(ctx, s)
    fb1 = sum(d1[t.name] for t in per_iter(s1, 2, lambda t: t.cat in FB))
    fb = sum(d[t.name] for t in per_iter(s, 2, lambda t: t.cat in FB))
    assert fb == pytest.approx(k * fb1, rel=1e-12)
    opt = (TaskCat.OPTIM_CPU, TaskCat.OPTIM_GPU)
    assert sorted(t.name for t in per_iter(s, 2, lambda t: t.cat in opt)) == \
        sorted(t.name for t in per_iter(s1, 2, lambda t: t.cat in opt))
    g1 = grad_bytes(s1, 2, "D2H.g", OpKind.D2H)
    assert (g1 > 0) == (policy not in ("gpu-only", "zero-2"))
    if policy == "zero-offload":
        # ZeRO-1/2 offload: k × the 16-bit gradients (g16) into the host accumulation, plus the
        # boundary's fp32 copy, which is all one micro-step sends (g1 = 4 B/param = 2 × g16)
        g16 = sum(b.grad_bytes for b in ctx.blocks)
        assert g1 == 2 * g16
        assert grad_bytes(s, 2, "D2H.g", OpKind.D2H) == k * g16 + g1
        assert grad_bytes(s, 2, "D2H.g.ga", OpKind.H2D) == (k - 1) * g16
        return
    assert grad_bytes(s, 2, "D2H.g", OpKind.D2H) == k * g1
    assert grad_bytes(s, 2, "D2H.g.ga", OpKind.H2D) == (k - 1) * g1


@pytest.mark.parametrize("policy", ["zero-infinity", "stronghold", "autohete"])
def test_accumulating_data_parallel_splits_offload_traffic(policy):
    """With N GPUs each GPU moves 1/N of what one GPU moves (shards sum exactly), micro-steps included."""
    _, s1 = build(scenario(policy, PINNED[policy], grad_accum=2))
    _, s = build(scenario(policy, PINNED[policy], gpus=2, grad_accum=2))
    h, d = pcie(s1, 2)
    per = [pcie(s, 2, g) for g in range(2)]
    assert (sum(x[0] for x in per), sum(x[1] for x in per)) == (h, d)
    assert all(abs(x[0] - h / 2) <= 1000 and abs(x[1] - d / 2) <= 1000 for x in per)


def test_chunked_refuses_accumulation_and_compare_leaves_it_out():
    with pytest.raises(ConfigError, match="train.grad_accum"):
        build(scenario("chunked", grad_accum=2))
    from simhete.search.compare import compare_policies
    out = compare_policies(scenario("gpu-only", grad_accum=2, iterations=2), policies=["gpu-only", "chunked"])
    assert list(out) == ["gpu-only"]


def test_accumulation_bound_by_priority_bands():
    """102 blocks: the compute band (PRIO_IT/4 = 250000) holds 250000 // (4 · 102) = 612 micro-steps."""
    with pytest.raises(ConfigError, match="train.grad_accum: bad value 613; allowed: at most 612"):
        build(scenario("gpu-only", layers=100, grad_accum=613))

"""gpu-only and zero-offload: memory by hand, PCIe bytes, known-answer properties."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simhete.engine import simulate
from simhete.opkinds import PROCESS_CLASSES, MemClass, OpKind, TaskCat
from simhete.report.pcie import copy_bytes
from simhete.scenario import scenario_from_dict
from simhete.schedule import check_schedule
from simhete.sim import resolve, run

LLAMA2_7B = 6_738_415_616   # parameters (Touvron et al. 2023; HF config of Llama-2-7b)


def scen(model="gpt-like-h256-l4", policy="gpu-only", knobs=None, mb=2, seq=128, its=3, hw=None):
    return scenario_from_dict({
        "model": model, "hardware": hw or {"profile": "h100-sxm", "gpus": 1},
        "train": {"micro_batch": mb, "seq_len": seq, "dtype": "bf16"},
        "iterations": its, "policy": policy, "knobs": knobs or {},
        "framework": "fused"})   # the figures below are of the fused accounting


def initial_bytes(schedule, pool):
    return {c: sum(a.bytes for a in schedule.initial if a.pool == pool and a.cls is c) for c in MemClass}


def ideal(by_class):
    """The ideal model states: every class but what a real process adds (process_memory.py)."""
    return sum(v for c, v in by_class.items() if c not in PROCESS_CLASSES)


def test_llama2_7b_model_state_memory_by_hand():
    """Mixed-precision Adam: 2 B weights + 2 B grads + 4 B master + 8 B Adam m, v per parameter
    (ZeRO §3.1). gpu-only keeps weights, master and m, v resident (grads live from backward to the
    step); ZeRO-Offload keeps only 16-bit weights on the GPU and master, m, v, fp32 grads on the host."""
    s = scen("llama2-7b", "gpu-only", mb=1, seq=256, its=1)
    ctx, pol = resolve(s)
    g = initial_bytes(pol.build(ctx), "gpu0")
    assert g[MemClass.WEIGHTS] == 2 * LLAMA2_7B
    assert g[MemClass.MASTER] == 4 * LLAMA2_7B
    assert g[MemClass.OPTIM] == 8 * LLAMA2_7B
    assert ideal(g) == 14 * LLAMA2_7B
    assert g[MemClass.CUDA_CONTEXT] == ctx.profile.gpu.reserved_bytes.value

    s = scen("llama2-7b", "zero-offload", mb=1, seq=256, its=1)
    ctx, pol = resolve(s)
    sched = pol.build(ctx)
    g, c = initial_bytes(sched, "gpu0"), initial_bytes(sched, "cpu")
    # the 16-bit weights and DeepSpeed's two ipg buckets of 5e8 bf16 elements (overlap_comm)
    assert g[MemClass.WEIGHTS] == 2 * LLAMA2_7B and ideal(g) == 2 * LLAMA2_7B + 2 * 2 * 500_000_000
    assert (c[MemClass.MASTER], c[MemClass.OPTIM], c[MemClass.GRADS32]) == (4 * LLAMA2_7B, 8 * LLAMA2_7B, 4 * LLAMA2_7B)
    assert ideal(c) == 16 * LLAMA2_7B


def test_llama2_7b_gpu_only_peak_by_hand():
    """gpu-only runs on one stream, so its memory trace is a walk in task order: allocate at
    start, free at end. The engine's peak must equal that walk (and exceed an 80 GB GPU)."""
    s = scen("llama2-7b", "gpu-only", {"checkpointing": "full"}, mb=1, seq=1024, its=2,
             hw={"profile": "h100-sxm", "gpus": 1, "gpu_memory": "1TiB"})
    res = run(s)
    sched = res.schedule
    assert {t.stream for t in sched.tasks} == {"gpu0.compute"}
    live = sum(a.bytes for a in sched.initial if a.pool == "gpu0")
    sizes = {a.buf: a.bytes for t in sched.tasks for a in t.allocs}
    peak = live
    by_start = sorted(res.timeline.records, key=lambda r: r.start)
    tasks = {t.name: t for t in sched.tasks}
    for r in by_start:
        t = tasks[r.name]
        live += sum(a.bytes for a in t.allocs)
        peak = max(peak, live)
        live -= sum(sizes[b] for b in t.frees if b in sizes)
    assert res.timeline.peak["gpu0"] == peak
    assert peak > 14 * LLAMA2_7B > 80e9


@pytest.mark.parametrize("policy,knobs,h2d,d2h", [
    ("gpu-only", {}, 0, 0), ("zero-offload", {}, 2, 4),
    ("zero-offload", {"pin_memory": False}, 2, 4),     # pageable: copies on the compute stream
    ("zero-offload", {"overlap_comm": False}, 2, 4)])  # gradient copies inside the backward
def test_pcie_bytes_per_iteration(policy, knobs, h2d, d2h):
    """No offload ⇒ zero PCIe bytes; ZeRO-Offload sends the 16-bit weights back (2 B/param) and, as
    DeepSpeed does, the gradients cast to fp32 on the GPU (4 B/param: stage_1_and_2.py
    async_inplace_copy_grad_to_fp32_buffer_from_gpu; the paper's §4.1 counts 2), whichever stream
    the copies run on."""
    res = run(scen(policy=policy, knobs=knobs))
    params = res.context.workload.params
    # plus ZeRO-Offload's host sync per parameter tensor: a 4-byte D2H of _has_inf_or_nan's result
    from simhete.workload.tensors import param_tensors
    ctx = res.context
    tensors = sum(len(param_tensors(ctx.spec, b)) for b in ctx.blocks if b.params) if d2h else 0
    assert res.summary.pcie_bytes_per_iter == {"h2d": h2d * params, "d2h": d2h * params + 4 * tensors}


def _zero_copy_durations(res):
    return [0.0 if t.cat in (TaskCat.H2D, TaskCat.D2H) else d
            for t, d in zip(res.schedule.tasks, res.context.cost.durations(res.schedule))]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hidden=st.sampled_from([128, 256, 512]), layers=st.integers(1, 6), mb=st.integers(1, 4),
       ckpt=st.sampled_from(["none", "full", "every"]))
def test_zero_offload_infinite_bandwidth_is_compute_plus_cpu_step(hidden, layers, mb, ckpt):
    """With free copies, an iteration is the GPU's forward+backward followed by the CPU step."""
    res = run(scen(f"gpt-like-h{hidden}-l{layers}", "zero-offload", {"checkpointing": ckpt}, mb=mb))
    tl = simulate(res.schedule, _zero_copy_durations(res), ())
    durs = dict(zip((t.name for t in res.schedule.tasks), res.context.cost.durations(res.schedule)))
    last = res.schedule.iterations
    gpu = sum(durs[t.name] for t in res.schedule.tasks if t.it == last and t.stream == "gpu0.compute")
    cpu = sum(durs[t.name] for t in res.schedule.tasks if t.it == last and t.stream == "cpu.optim")
    assert tl.steady_iteration_time() == pytest.approx(gpu + cpu, rel=1e-9)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=st.sampled_from(["gpu-only", "zero-offload"]), layers=st.integers(1, 5),
       ckpt=st.sampled_from(["none", "full", "every"]), every=st.integers(1, 3), pin=st.booleans(),
       bucket=st.sampled_from([1e5, 1e6, 5e8]), overlap=st.booleans(), dpu=st.booleans(),
       its=st.integers(1, 4))
def test_schedules_are_well_formed(policy, layers, ckpt, every, pin, bucket, overlap, dpu, its):
    knobs = {"checkpointing": ckpt, "checkpoint_every": every, "pin_memory": pin}
    if policy == "zero-offload":
        knobs |= {"reduce_bucket_size": bucket, "overlap_comm": overlap, "delayed_update": dpu}
    ctx, pol = resolve(scen(f"gpt-like-h256-l{layers}", policy, knobs, its=its))
    sched = pol.build(ctx)
    assert check_schedule(sched) == []
    tl = simulate(sched, ctx.cost.durations(sched), ctx.cost.interference())
    assert tl.oom is None and len(tl.records) == len(sched.tasks)
    for pool, events in tl.mem_events.items():
        assert max(b for _, b in events) <= sched.pools[pool]


def test_delayed_update_overlaps_cpu_step():
    base = {"checkpointing": "full"}
    plain = run(scen("gpt-like-h1024-l8", "zero-offload", base, mb=4, seq=512, its=4))
    dpu = run(scen("gpt-like-h1024-l8", "zero-offload", base | {"delayed_update": True}, mb=4, seq=512, its=4))
    assert dpu.summary.iter_time_s < plain.summary.iter_time_s
    # DPU keeps a second fp32 gradient buffer on the host
    params = plain.context.workload.params
    assert dpu.summary.memory["cpu"].peak_bytes - plain.summary.memory["cpu"].peak_bytes == 4 * params


def test_pageable_copies_serialise_with_compute():
    pinned = run(scen("gpt-like-h1024-l8", "zero-offload", mb=4, seq=512))
    pageable = run(scen("gpt-like-h1024-l8", "zero-offload", {"pin_memory": False}, mb=4, seq=512))
    assert all(t.stream in ("gpu0.compute", "cpu.optim") for t in pageable.schedule.tasks)
    assert all(not op.pinned for t in pageable.schedule.tasks for op in t.ops if op.kind in (OpKind.H2D, OpKind.D2H))
    assert pageable.summary.iter_time_s > pinned.summary.iter_time_s


def test_swap_moves_activations_to_host_and_back():
    layers = 4
    keep = run(scen(f"gpt-like-h512-l{layers}", "gpu-only", mb=4, seq=512))
    swap = run(scen(f"gpt-like-h512-l{layers}", "gpu-only", {"activations": ["swap"] * layers}, mb=4, seq=512))
    blocks = [b for b in swap.context.blocks if b.name.startswith("b")]
    moved = copy_bytes(swap.schedule)
    last = swap.schedule.iterations
    for b in blocks:
        assert moved[f"it{last}.D2H.act.{b.name}"] == moved[f"it{last}.H2D.act.{b.name}"] == b.act_bytes
    assert swap.summary.memory["gpu0"].peak_bytes < keep.summary.memory["gpu0"].peak_bytes
    assert swap.summary.memory["cpu"].peak_bytes > 0


def test_activation_list_length_is_checked():
    from simhete.errors import ConfigError
    with pytest.raises(ConfigError, match=r"knobs\.activations: bad value '3 entries'; allowed: one entry per transformer block \(4\)"):
        run(scen("gpt-like-h256-l4", "gpu-only", {"activations": ["keep"] * 3}))


def test_bucket_double_buffering_caps_gradients_on_gpu():
    """With overlap_comm, at most two buckets (plus the one being produced) of 16-bit grads live on the GPU."""
    res = run(scen("gpt-like-h1024-l12", "zero-offload", {"reduce_bucket_size": 2e7}, mb=8, seq=1024))
    block = max(b.grad_bytes for b in res.context.blocks)
    grads_peak = res.summary.memory["gpu0"].peak_by_class_bytes.get("grads", 0)
    per_bucket = max(2e7 * 2, block)
    assert grads_peak <= 3 * per_bucket + block


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hidden=st.sampled_from([128, 256, 512]), layers=st.integers(1, 6), mb=st.integers(1, 4),
       seq=st.sampled_from([64, 128, 256]), ckpt=st.sampled_from(["none", "full", "every"]),
       gpus=st.integers(1, 4), accum=st.integers(1, 3), its=st.integers(1, 3))
def test_no_offload_moves_no_pcie_bytes(hidden, layers, mb, seq, ckpt, gpus, accum, its):
    """Everything on the GPU (no swap) ⇒ no H2D/D2H task and zero PCIe bytes, on any GPU count."""
    res = run(scenario_from_dict({
        "model": f"gpt-like-h{hidden}-l{layers}", "hardware": {"profile": "h100-sxm", "gpus": gpus},
        "train": {"micro_batch": mb, "seq_len": seq, "dtype": "bf16", "grad_accum": accum},
        "iterations": its, "policy": "gpu-only", "knobs": {"checkpointing": ckpt}}))
    assert not any(t.cat in (TaskCat.H2D, TaskCat.D2H) for t in res.schedule.tasks)
    assert set(res.summary.pcie_bytes_per_iter.values()) == {0}


def test_lazy_policy_lookup_names_each_shipped_module():
    """get_policy imports only the asked-for shipped policy's module (registry.SHIPPED): the table
    must name every shipped policy and the module that registers it."""
    import importlib

    from simhete.policy import registry

    registry.load_shipped()
    ours = [p for p in registry.list_policies() if registry.get_policy(p).__module__.startswith("simhete.policy.")]
    assert ours == sorted(registry.SHIPPED) and len(ours) == 7
    for name, module in registry.SHIPPED.items():
        cls = registry.get_policy(name)
        assert cls.__module__ == f"simhete.policy.{module}"
        assert importlib.import_module(cls.__module__) is not None


def test_asking_for_one_policy_imports_no_other():
    import subprocess
    import sys

    code = ("import sys; from simhete.policy import get_policy; get_policy('zero-offload'); "
            "print(sorted(m for m in sys.modules if m in ('simhete.policy.autohete', 'simhete.policy.chunked', "
            "'simhete.policy.zero_infinity', 'scipy.optimize')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"

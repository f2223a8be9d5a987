"""What a real training process holds beyond the ideal model states (policy/process_memory.py):
pinned power-of-two rounding, DeepSpeed's host buffers, the process baseline and the CUDA context,
with answers worked out by hand from the DeepSpeed / PyTorch rules each class cites."""

from __future__ import annotations

import pytest

from simhete.opkinds import PROCESS_CLASSES, MemClass
from simhete.policy.process_memory import PROCESS_RSS_DEFAULT, group_numels, pinned_extra, pow2_ceil
from simhete.scenario import scenario_from_dict
from simhete.sim import resolve, run
from simhete.workload import get_model

GIB = 2**30
MIB = 2**20
LLAMA2_7B = 6_738_415_616
NORMS = 65 * 4096               # 2 RMSNorm weights per block + the final one: DeepSpeed logs
DECAYED = LLAMA2_7B - NORMS     # "Total persistent parameters: 266240 in 65 params" for this model
EMBED = 32000 * 4096            # the largest tensor (embedding, and the untied LM head)


def scen(policy, gpus, knobs=None, profile="a100-80gb-sxm", ga=1):
    return scenario_from_dict({
        "model": "llama2-7b", "hardware": {"profile": profile, "gpus": gpus},
        "train": {"micro_batch": 1, "seq_len": 1024, "dtype": "bf16", "grad_accum": ga},
        "iterations": 1, "policy": policy, "knobs": {"checkpointing": "full", **(knobs or {})}})


def by_class(sched, pool):
    out: dict[str, int] = {}
    for a in sched.initial:
        if a.pool == pool and a.cls in PROCESS_CLASSES:
            out[a.cls.value] = out.get(a.cls.value, 0) + a.bytes
    return out


def build(s):
    ctx, pol = resolve(s)
    return ctx, pol.build(ctx)


def test_power_of_two_rounding_of_pinned_blocks():
    # c10::llvm::PowerOf2Ceil, as CachingHostAllocatorImpl::allocate applies it
    assert [pow2_ceil(n) for n in (0, 1, 2, 3, 512, 513, 2**33)] == [0, 1, 2, 4, 512, 1024, 2**33]
    master = 4 * DECAYED                   # LLaMA-2-7B's fp32 master partition on one GPU
    assert round(master / GIB, 1) == 25.1 and pow2_ceil(master) == 32 * GIB
    assert pinned_extra([master]) == 32 * GIB - master
    assert pinned_extra([100 * MIB, 64 * MIB]) == 28 * MIB
    # pageable buffers (pin_memory: false) are not rounded
    assert pinned_extra([master, 100 * MIB], pinned=False) == 0


def test_llama2_7b_parameter_groups():
    # Trainer's two groups: every matrix decayed; the RMSNorm weights not
    assert group_numels(get_model("llama2-7b")) == [DECAYED, NORMS]


def test_llama2_7b_zero_offload_one_gpu_classes_by_hand():
    ctx, sched = build(scen("zero-offload", 1))
    # DeepSpeed stage_1_and_2.py, per parameter group: fp32 master and fp32 gradient partitions and
    # a 16-bit staging copy, each pinned; a 16-bit temp gradient buffer of the largest tensor, pinned
    rounding = 2 * (32 * GIB - 4 * DECAYED) + (16 * GIB - 2 * DECAYED) \
        + 2 * (2 * MIB - 4 * NORMS) + (1 * MIB - 2 * NORMS) + (256 * MIB - 2 * EMBED)
    framework = 2 * LLAMA2_7B + 2 * EMBED
    assert by_class(sched, "cpu") == {"pinned_rounding": rounding, "framework_buffers": framework,
                                      "process_baseline": PROCESS_RSS_DEFAULT}
    assert rounding == 18_526_724_096 and framework == 13_738_975_232
    assert by_class(sched, "gpu0") == {"cuda_context": 2 * GIB}      # a100-80gb-sxm gpu.reserved_bytes
    assert sched.pools["gpu0"] == 80 * GIB                           # the reserve is now a buffer
    ideal = sum(a.bytes for a in sched.initial if a.pool == "cpu" and a.cls not in PROCESS_CLASSES)
    assert ideal == 16 * LLAMA2_7B
    total = ideal + rounding + framework + PROCESS_RSS_DEFAULT
    assert round(total / GIB, 1) == 132.3        # vs 100.4 GiB of ideal model states


def test_pageable_buffers_get_no_rounding():
    _, sched = build(scen("zero-offload", 1, {"pin_memory": False}))
    got = by_class(sched, "cpu")
    assert "pinned_rounding" not in got and got["framework_buffers"] == 2 * LLAMA2_7B + 2 * EMBED
    _, sched = build(scen("zero-offload", 1, {"pin_backend": "native"}))   # DeepNVMe exact-size pins
    assert "pinned_rounding" not in by_class(sched, "cpu")


def test_llama2_7b_zero3_offload_eight_gpus_classes_by_hand():
    ctx, sched = build(scen("zero-infinity", 8))
    d, p = DECAYED // 8, NORMS // 8       # every tensor splits evenly over 8 ranks
    # per rank (stage3.py): 16-bit parameter partitions per group, pinned; fp32 gradients per
    # sub-group (sub_group_size 1e9 > the 842M-element partition: one per group), pinned; the flat
    # 16-bit gradient partition over all groups, pinned (a framework buffer). fp32 master and Adam
    # m, v are pageable.
    per_rank = (2 * GIB - 2 * d) + (128 * 1024 - 2 * p) + (4 * GIB - 4 * d) + (256 * 1024 - 4 * p) \
        + (2 * GIB - 2 * (d + p))
    assert by_class(sched, "cpu") == {"pinned_rounding": 8 * per_rank,
                                      "framework_buffers": 8 * 2 * (d + p),
                                      "process_baseline": 8 * PROCESS_RSS_DEFAULT}
    assert 8 * per_rank == 14_815_297_536
    for g in range(8):
        assert by_class(sched, f"gpu{g}") == {"cuda_context": 2 * GIB}
    ideal = sum(a.bytes for a in sched.initial if a.pool == "cpu" and a.cls not in PROCESS_CLASSES)
    assert ideal == 18 * LLAMA2_7B
    total = ideal + 8 * per_rank + 16 * (d + p) + 8 * PROCESS_RSS_DEFAULT
    assert round(total / GIB, 1) == 153.9        # vs 113.0 GiB of ideal model states


def test_model_built_on_every_rank_counts_when_it_exceeds_the_steady_state():
    # ZeRO-Offload on 8 GPUs with a 64 GiB process baseline per rank: the construction peak
    # (8 x (13.5 GB of bf16 weights + baseline)) is below the steady state, so nothing is added;
    # with model_load: full under ZeRO-3 (no zero.Init) the eight full copies exceed the partitioned
    # steady state and the difference is added, so the pool's peak is the construction peak
    _, z2 = build(scen("zero-offload", 8))
    assert not any(a.buf == "process_baseline.model_load" for a in z2.initial)
    ctx, z3 = build(scen("zero-infinity", 8, {"model_load": "full", "offload_param": "none",
                                              "offload_optimizer": "none"}))
    host = sum(a.bytes for a in z3.initial if a.pool == "cpu")
    assert host == 8 * 2 * LLAMA2_7B + 8 * PROCESS_RSS_DEFAULT
    _, z3_init = build(scen("zero-infinity", 8, {"offload_param": "none", "offload_optimizer": "none"}))
    assert sum(a.bytes for a in z3_init.initial if a.pool == "cpu") == 8 * PROCESS_RSS_DEFAULT


def test_cpu_device_has_no_process_classes():
    s = scenario_from_dict({"model": "gpt-like-h256-l4", "hardware": {"profile": "cpu-local"},
                            "train": {"micro_batch": 1, "seq_len": 64}, "iterations": 1,
                            "policy": "zero-offload"})
    _, sched = build(s)
    assert not any(a.cls in PROCESS_CLASSES for a in sched.initial)


def test_report_and_capacity_see_the_classes():
    # 128 GiB of host memory holds LLaMA-2-7B's 100.4 GiB of ideal ZeRO-Offload states but not the
    # 132.3 GiB a pinned DeepSpeed process holds: predicted OOM in host memory; pageable fits
    s = scen("zero-offload", 1, profile="rtx4090-desktop")
    res = run(s)
    assert res.timeline.oom is not None and res.timeline.oom.pool == "cpu"
    res = run(scen("zero-offload", 1, {"pin_memory": False}, profile="rtx4090-desktop"))
    assert res.timeline.oom is None
    peak = res.summary.memory["cpu"].peak_by_class_bytes
    assert peak["framework_buffers"] == 2 * LLAMA2_7B + 2 * EMBED
    assert peak["process_baseline"] == PROCESS_RSS_DEFAULT and "pinned_rounding" not in peak
    assert res.summary.memory["gpu0"].peak_by_class_bytes[MemClass.CUDA_CONTEXT.value] == int(1.5 * GIB)


@pytest.mark.parametrize("policy", ["gpu-only", "stronghold", "chunked", "autohete"])
def test_every_policy_holds_the_context_and_baseline(policy):
    _, sched = build(scen(policy, 1, profile="h100-sxm"))
    assert by_class(sched, "gpu0")["cuda_context"] == 2 * GIB
    assert by_class(sched, "cpu")["process_baseline"] >= PROCESS_RSS_DEFAULT

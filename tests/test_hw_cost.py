"""CostModel: known answers per op kind, caching, flags, and monotonicity properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simhete.config import validate
from simhete.errors import ConfigError
from simhete.hw.cost import CostModel, ops_key
from simhete.hw.profile import HardwareProfile, load_profile
from simhete.opkinds import OpKind, TaskCat
from simhete.schedule import Op, Schedule, Task

GiB = 2**30
PROFILES = ["h100-sxm", "h100-pcie", "a100-40gb-pcie-epyc7713", "rtx4090-desktop", "v100-32gb-dgx2"]
MODELS = {name: CostModel(load_profile(name)) for name in PROFILES}


def q(value, source="assumed"):
    return {"value": value, "source": source, "ref": "test"}


def cpu_profile(gemm: dict | None = None, links: dict | None = None) -> HardwareProfile:
    """A device_type cpu profile shaped like calibration's output, built in the test."""
    data = {
        "name": "cpu-test", "device_type": "cpu",
        "gpu": {"ref": "test", "model": "cpu", "count": 1, "memory_bytes": "8GiB",
                "reserved_bytes": q("1GiB"), "sms": 4,
                "peak_tflops": {"fp32": q(1.0)}, "mem_bandwidth_gbps": q(2000.0),
                "memory_bound_efficiency": q(0.5), "launch_overhead_us": q(10.0),
                "gemm": gemm or {"model": "roofline", "max_efficiency": q(0.5), "tile_m": 16,
                                 "tile_n": 16, "k_half": q(0.0)}},
        "host": {"ref": "test", "cpu_model": "x", "sockets": 1, "cores": 4, "memory_bytes": "16GiB",
                 "dram_bandwidth_gbps": q(28.0), "memcpy_gbps": q(8.0), "pinned_limit_bytes": q("4GiB"),
                 "adam": {"params_per_s": q(1e8)}},
    }
    if links:
        data["links"] = links
    return validate(HardwareProfile, data, "cpu-test.yaml")


# -- known answers ------------------------------------------------------------------------------

def test_gemm_at_the_anchor_shape_on_h100_sxm_is_the_published_rate_at_the_sustained_clock():
    cm = CostModel(load_profile("h100-sxm"))   # MAMF table: 794.5 TFLOPS at 2048x2048x13312
    t = cm.op_seconds(Op(OpKind.GEMM, (2048, 2048, 13312), dtype="bf16"))
    # 158 us of kernel at the power-limited clock (MSMF / MAMF = 0.887): the 7 us dispatch of
    # the next op overlaps it
    assert t == pytest.approx(2 * 2048 * 2048 * 13312 / (794.5e12 * 0.887), rel=1e-12)
    assert "gpu.sustained_clock_factor (assumed)" in cm.flags
    # The anchor's dtype cancels the datasheet peak: only assumed k_half/launch are flagged.
    assert "gpu.peak_tflops.bf16 (datasheet)" not in cm.flags
    assert "gpu.gemm (roofline model for 1 shapes)" in cm.flags


def test_sustained_clock_factor_slows_compute_bound_kernels_only():
    # the same profile with and without the factor: GEMM and attention rooflines scale by it,
    # memory-bound and launch-bound ops do not
    base = load_profile("h100-sxm")
    data = base.model_dump(mode="json", exclude_none=True)
    del data["gpu"]["sustained_clock_factor"]
    burst = CostModel(validate(HardwareProfile, data, "h100-sxm.yaml"))
    sus = CostModel(base)
    f = base.gpu.sustained_clock_factor.value
    big = Op(OpKind.GEMM, (8192, 8192, 8192), dtype="bf16")
    attn = Op(OpKind.ATTN_FWD, (8, 32, 4096, 4096, 128, 1), dtype="bf16")
    assert sus.op_seconds(big) == pytest.approx(burst.op_seconds(big) / f, rel=1e-12)
    assert sus.op_seconds(attn) == pytest.approx(burst.op_seconds(attn) / f, rel=1e-12)
    for op in (Op(OpKind.ELEMENTWISE, n=2**30, dtype="bf16"), Op(OpKind.GEMM, (16, 16, 16), dtype="bf16")):
        assert sus.op_seconds(op) == burst.op_seconds(op)
    assert not any("sustained" in fl for fl in burst.flags)


def test_a_gemm_off_the_16_byte_boundary_runs_the_slow_kernel():
    # GPT-2's unpadded vocabulary: the LM head's forward (N = 50257), backward data (K = 50257) and
    # weight gradient (M = 50257) all miss cuBLAS's 16-byte alignment in bf16 (8 elements);
    # Megatron's padded 50304 = 64 * 786 does not
    base = load_profile("a100-80gb-sxm")
    data = base.model_dump(mode="json", exclude_none=True)
    del data["gpu"]["gemm"]["misaligned_slowdown"]
    plain, cm = CostModel(validate(HardwareProfile, data, "a100.yaml")), CostModel(base)
    assert base.gpu.gemm.misaligned_slowdown.value == 3.0
    tokens, h = 8 * 1024, 768

    def both(shape, dtype="bf16"):
        op = Op(OpKind.GEMM, shape, dtype=dtype)
        return cm.op_seconds(op), plain.op_seconds(op)

    for v in (50257, 50260):            # odd; even but not a multiple of 8
        for shape in ((tokens, v, h), (tokens, h, v), (v, h, tokens)):
            t, t0 = both(shape)
            assert t == pytest.approx(3.0 * t0, rel=1e-12)
    for shape in ((tokens, 50304, h), (tokens, h, 50304), (50304, h, tokens)):
        assert both(shape)[0] == both(shape)[1]
    t, t0 = both((tokens, 50260, h), "fp32")     # fp32 needs 4 elements: 50260 is aligned there
    assert t == t0
    assert "gpu.gemm.misaligned_slowdown (assumed)" in cm.flags
    assert not any("misaligned" in f for f in plain.flags)


def test_a_batched_gemm_is_one_launch_whose_tiles_share_the_waves():
    # The per-head products of unfused attention (GPT-2 1.2B: b·a = 8·16 = 128 heads, s = 1024,
    # d = 96) as torch.matmul runs them: one strided-batched launch. V100: 80 SMs, 128x128 tiles,
    # k_half 64. One head is 8 x 8 = 64 tiles: alone, one wave with 16 SMs idle; the batch is
    # 128 x 64 = 8192 tiles = 102.4 -> 103 waves, against 128 separate one-wave launches.
    cm = CostModel(load_profile("v100-32gb-dgx2"))
    g = cm.profile.gpu
    assert (g.sms, g.gemm.tile_m, g.gemm.tile_n, g.gemm.k_half.value) == (80, 128, 128, 64)
    sep = Op(OpKind.GEMM, (1024, 1024, 96), dtype="fp16", count=128)
    bat = Op(OpKind.GEMM, (1024, 1024, 96), dtype="fp16", count=128, batched=True)
    rate = g.peak_tflops.fp16.value * 1e12 * cm.tables.max_eff * cm.tables.sustain
    one_wave = 2.0 * 80 * 128 * 128 * (96 + 64)
    # each GEMM reads Q and K and writes the fp16 scores; the batch is memory-bound on V100
    mem = (1024 * 96 + 96 * 1024 + 1024 * 1024) * 2 / (cm.tables.mem_bps * cm.tables.mb_eff)
    assert cm.op_seconds(sep) == pytest.approx(128 * max(one_wave / rate, mem, cm.tables.launch), rel=1e-12)
    assert 103 * one_wave / rate < 128 * mem
    assert cm.op_seconds(bat) == pytest.approx(max(128 * mem, cm.tables.launch), rel=1e-12)
    assert cm.op_seconds(bat) < 0.81 * cm.op_seconds(sep)
    # the same computation: one key for a measured block, one FLOP count; a batch of one is a GEMM
    assert ops_key((sep,)) == ops_key((bat,)) and sep.flops == bat.flops
    one = Op(OpKind.GEMM, (1024, 1024, 96), dtype="fp16", count=1, batched=True)
    assert cm.op_seconds(one) == cm.op_seconds(Op(OpKind.GEMM, (1024, 1024, 96), dtype="fp16"))


def test_gemm_of_other_dtype_uses_its_peak_and_flags_it():
    cm = CostModel(load_profile("h100-sxm"))
    p = cm.profile.gpu
    t = cm.op_seconds(Op(OpKind.GEMM, (8192, 8192, 8192), dtype="fp32"))
    eff = 794.5 / (989 * p.shape_factor(2048, 2048, 13312))
    assert t == pytest.approx(2 * 8192**3 / (67e12 * eff * p.shape_factor(8192, 8192, 8192) * 0.887),
                              rel=1e-12)
    assert "gpu.peak_tflops.fp32 (datasheet)" in cm.flags


def test_wave_quantisation_one_tile_more_costs_a_whole_wave():
    # 132 SMs, 128x128 tiles: 132 tiles fill one wave exactly, 133 need a second.
    cm = CostModel(load_profile("h100-sxm"))
    g = cm.profile.gpu
    assert g.shape_factor(128 * 132, 128, 4096) == pytest.approx(4096 / (4096 + 64))
    assert g.shape_factor(128 * 133, 128, 4096) == pytest.approx(133 / 264 * 4096 / (4096 + 64))


def test_small_gemm_is_memory_or_launch_bound():
    cm = CostModel(load_profile("h100-sxm"))
    # a 1x1x1 GEMM's kernel is shorter than the 7 us eager dispatch: the GPU waits for the CPU
    assert cm.op_seconds(Op(OpKind.GEMM, (1, 1, 1))) == 7e-6


def test_h2d_one_gib_pinned_gen5_is_alpha_beta():
    cm = CostModel(load_profile("h100-pcie"))
    assert cm.op_seconds(Op(OpKind.H2D, n=GiB)) == pytest.approx(10e-6 + GiB / 55e9, rel=1e-12)
    assert cm.op_seconds(Op(OpKind.H2D, n=GiB, pinned=False)) == pytest.approx(20e-6 + GiB / 10e9)
    assert cm.op_seconds(Op(OpKind.D2H, n=GiB, pinned=False)) == pytest.approx(20e-6 + GiB / 10.8e9)   # min(55, the DGX A100 bandwidthTest 10.8)
    assert "links.h2d.pageable.bandwidth_gbps (assumed)" in cm.flags
    assert "links.h2d.pinned.bandwidth_gbps (assumed)" in cm.flags


def test_adam_cpu_is_linear_and_dram_bound_without_a_per_core_rate():
    p = load_profile("a100-40gb-pcie-epyc7713")
    cm = CostModel(_with(p, ("host", "adam"), {}))      # no simd / per-core rate: the DRAM default
    one = cm.op_seconds(Op(OpKind.ADAM_CPU, n=10**9))
    # 28 B/param at 0.7 of the 204.8 GB/s datasheet DRAM bandwidth: the fraction host copies use
    # (memcpy_gbps 72 = 0.35 x 204.8, a copy moving each byte twice)
    assert one == pytest.approx(10**9 * 28 / (0.7 * 204.8e9), rel=1e-12)
    assert cm.op_seconds(Op(OpKind.ADAM_CPU, n=2 * 10**9)) == pytest.approx(2 * one, rel=1e-12)
    assert cm.op_seconds(Op(OpKind.ADAM_CPU, n=10**9, count=3)) == pytest.approx(3 * one, rel=1e-12)
    assert "host.adam.params_per_s (assumed: 0.7 x dram_bandwidth/28)" in cm.flags


# DeepSpeed PR #735: 11.6e9 params in 8.2 s on (assumed) 48 Xeon 8168 cores; avx2 class: the same
AVX512_PER_CORE = 11.6e9 / 8.2 / 48


@pytest.mark.parametrize("name, cores, per_core, source", [
    ("v100-32gb-dgx2", 48, 2.947e7, "reported"),            # 2x Xeon 8168: the PR #735 host itself
    ("h100-sxm", 112, 2.947e7, "reported"),                 # 2x Xeon 8480C
    ("h200-sxm", 112, 2.947e7, "reported"),
    ("t4", 4, 2.947e7, "reported"),
    ("a100-40gb-pcie-epyc7713", 64, 2.947e7, "assumed"),  # EPYC 7713 (Zen 3): avx2 class
    ("a100-80gb-sxm", 128, 2.947e7, "assumed"),           # 2x EPYC 7742 (Zen 2)
    ("2xa100-40gb-2xepyc7742", 128, 2.947e7, "assumed"),
    ("h100-pcie", 32, 2.947e7, "assumed"),                # EPYC 9354 (Zen 4: 256-bit FMA datapath)
    ("l40", 64, 2.947e7, "assumed"),
    ("rtx4090-desktop", 16, 2.947e7, "assumed"),          # Ryzen 9 7950X
])
def test_shipped_hosts_price_cpu_adam_per_core_times_cores(name, cores, per_core, source):
    cm = CostModel(load_profile(name))
    assert cm.profile.host.cores == cores
    # all cores step (torch's default intra-op threads; one cpu.optim stream per host), far below
    # the DRAM ceiling 0.7 x dram / 28 on every shipped host
    assert cm.op_seconds(Op(OpKind.ADAM_CPU, n=10**9)) == pytest.approx(1e9 / (per_core * cores), rel=1e-12)
    assert per_core * cores < 0.7 * cm.profile.host.dram_bandwidth_gbps.value * 1e9 / 28
    assert cm.flags == {f"host.adam.per_core_params_per_s ({source})"}


def test_dgx2_prices_the_pr735_step_it_rests_on():
    # 11.6B params on the 48-core DGX-2 host: the published 8.2 s, by construction of the rate
    cm = CostModel(load_profile("v100-32gb-dgx2"))
    assert cm.op_seconds(Op(OpKind.ADAM_CPU, n=11_600_000_000)) == pytest.approx(11.6e9 / (2.947e7 * 48))
    assert 11.6e9 / (2.947e7 * 48) == pytest.approx(8.2, rel=1e-4)


def _host_adam(adam: dict, cores: int = 4, dram: float = 28.0) -> CostModel:
    p = _with(cpu_profile(), ("host", "adam"), adam)
    p = _with(p, ("host", "cores"), cores)
    return CostModel(_with(p, ("host", "dram_bandwidth_gbps"), q(dram)))


def test_adam_thread_rule_per_core_times_threads_capped_by_cores_and_dram():
    n = 10**8
    pc = {"simd": "avx512", "per_core_params_per_s": q(1e7, "reported")}
    # threads default: host.cores (4) -> 4e7 params/s
    assert _host_adam(pc).op_seconds(Op(OpKind.ADAM_CPU, n=n)) == pytest.approx(n / 4e7)
    # torchrun's OMP_NUM_THREADS=1 with 2 ranks: 2 threads on the host
    assert _host_adam({**pc, "threads": 2}).op_seconds(Op(OpKind.ADAM_CPU, n=n)) == pytest.approx(n / 2e7)
    # more threads than cores (N unbound ranks x all cores): the cores, flagged
    cm = _host_adam({**pc, "threads": 16})
    assert cm.op_seconds(Op(OpKind.ADAM_CPU, n=n)) == pytest.approx(n / 4e7)
    assert "host.adam.threads (16 > host.cores 4: 4 used)" in cm.flags
    # the DRAM-bound ceiling binds: 64 cores x 1e7 = 6.4e8 > 0.7 x 28e9 / 28 = 7e8? no; 100 cores: yes
    assert _host_adam(pc, cores=64).op_seconds(Op(OpKind.ADAM_CPU, n=n)) == pytest.approx(n / 6.4e8)
    cm = _host_adam(pc, cores=100)
    assert cm.op_seconds(Op(OpKind.ADAM_CPU, n=n)) == pytest.approx(n / 7e8)
    assert "host.dram_bandwidth_gbps (assumed)" in cm.flags
    assert "host.adam.per_core_params_per_s (reported)" in cm.flags


def test_adam_whole_host_rate_wins_over_the_per_core_model():
    # a testbed extending a shipped profile (simd + per-core) may state a measured host rate
    cm = _host_adam({"simd": "avx2", "per_core_params_per_s": q(1e7), "params_per_s": q(5e8, "reported")})
    assert cm.op_seconds(Op(OpKind.ADAM_CPU, n=10**8)) == pytest.approx(0.2)
    assert cm.flags == {"host.adam.params_per_s (reported)"}


def test_adam_simd_alone_takes_the_cited_per_core_rate_of_its_class():
    n = 10**8
    cm = _host_adam({"simd": "avx512"})
    assert cm.op_seconds(Op(OpKind.ADAM_CPU, n=n)) == pytest.approx(n / (4 * AVX512_PER_CORE))
    assert cm.flags == {"host.adam.per_core_params_per_s (reported)"}
    cm = _host_adam({"simd": "avx2"})
    assert cm.op_seconds(Op(OpKind.ADAM_CPU, n=n)) == pytest.approx(n / (4 * AVX512_PER_CORE))
    assert cm.flags == {"host.adam.per_core_params_per_s (assumed)"}
    assert "host.adam.per_core_params_per_s (assumed)" in cm.profile.provenance_flags()


@pytest.mark.parametrize("adam, match", [
    ({"simd": "avx1024"}, r"c\.yaml: host\.adam\.simd: bad value 'avx1024'; allowed: 'avx512' or 'avx2'"),
    ({"per_core_params_per_s": q(1e7)}, r"c\.yaml: host\.adam: .*per_core_params_per_s needs simd \(avx512 or avx2\)"),
    ({"simd": "avx2", "per_core_params_per_s": q(-1.0)}, r"c\.yaml: host\.adam\.per_core_params_per_s\.value: bad value -1\.0"),
])
def test_bad_adam_values_name_file_key_and_what_is_allowed(adam, match):
    data = cpu_profile().model_dump(mode="json", exclude_none=True)
    data["host"]["adam"] = adam
    with pytest.raises(ConfigError, match=match):
        validate(HardwareProfile, data, "c.yaml")


def test_adam_gpu_and_memory_bound_ops():
    cm = CostModel(load_profile("h100-sxm"))
    bw = 3000e9 * 0.9
    assert cm.op_seconds(Op(OpKind.ADAM_GPU, n=10**9, dtype="fp32")) == pytest.approx(28e9 / bw, rel=1e-12)
    # torch's foreach AdamW: 20 accesses per parameter, here of bf16 state (pure training)
    assert cm.op_seconds(Op(OpKind.ADAM_GPU, (20,), n=10**9, dtype="bf16")) == pytest.approx(40e9 / bw, rel=1e-12)
    for kind in (OpKind.ELEMENTWISE, OpKind.NORM, OpKind.SOFTMAX_CE, OpKind.EMBED):
        assert cm.op_seconds(Op(kind, n=10**9)) == pytest.approx(1e9 / bw, rel=1e-12)
        # 1 MB streams in 0.37 us: the op costs the 7 us dispatch
        assert cm.op_seconds(Op(kind, n=10**6)) == 7e-6
    assert cm.op_seconds(Op(OpKind.D2D, n=10**9)) == pytest.approx(2e9 / 3000e9, rel=1e-12)


def test_attention_uses_op_flops_and_efficiency():
    cm = CostModel(load_profile("a100-40gb-pcie-epyc7713"))
    op = Op(OpKind.ATTN_FWD, (4, 32, 2048, 2048, 128, 1))
    assert cm.op_seconds(op) == pytest.approx(op.flops / (312e12 * 0.497), rel=1e-12)   # FA2 paper, A100
    bwd = Op(OpKind.ATTN_BWD, (4, 32, 2048, 2048, 128, 1))
    assert cm.op_seconds(bwd) == pytest.approx(bwd.flops / (312e12 * 0.497), rel=1e-12)


def test_collectives_use_nccl_bus_factors():
    cm = CostModel(load_profile("h100-sxm"))  # no collectives section: NVLink link as bus
    n = 10**9
    ar = cm.op_seconds(Op(OpKind.ALLREDUCE, (8,), n=n))
    rs = cm.op_seconds(Op(OpKind.REDUCE_SCATTER, (8,), n=n))
    assert ar == pytest.approx(10e-6 + n * 2 * 7 / 8 / 380e9, rel=1e-9)
    assert rs == pytest.approx(10e-6 + n * 7 / 8 / 380e9, rel=1e-9)
    assert cm.op_seconds(Op(OpKind.ALLGATHER, (8,), n=n)) == rs
    assert cm.op_seconds(Op(OpKind.ALLREDUCE, (1,), n=n)) == 0.0
    assert "collectives (absent: links.nvlink used as bus bandwidth)" in cm.flags


def test_dtype_without_peak_is_a_config_error():
    cm = CostModel(load_profile("v100-32gb-dgx2"))
    with pytest.raises(ConfigError, match=r"gpu\.peak_tflops\.bf16: profile v100-32gb-dgx2 has no "
                                          r"peak rate for dtype 'bf16'; it has: fp16, fp32"):
        cm.op_seconds(Op(OpKind.GEMM, (1024, 1024, 1024), dtype="bf16"))
    assert cm.peak_flops("fp16") == 125e12


def test_peak_flops_for_mfu():
    assert CostModel(load_profile("h100-sxm")).peak_flops("bf16") == 989e12


# -- cpu device and measured tables ------------------------------------------------------------

def test_cpu_device_without_links_prices_copies_as_host_memcpy():
    cm = CostModel(cpu_profile())
    assert cm.op_seconds(Op(OpKind.H2D, n=8 * 10**9)) == pytest.approx(1.0)
    assert cm.op_seconds(Op(OpKind.D2H, n=4 * 10**9, pinned=False)) == pytest.approx(0.5)
    assert cm.op_seconds(Op(OpKind.MEMCPY_CPU, n=8 * 10**9)) == pytest.approx(1.0)
    assert cm.op_seconds(Op(OpKind.ADAM_CPU, n=10**8)) == pytest.approx(1.0)
    assert "host.adam.params_per_s (assumed)" in cm.flags


def test_gemm_table_exact_interpolated_and_fallback():
    rows = [[m, n, k, float(m) / 64] for m in (64, 256) for n in (64, 256) for k in (64, 256)]
    gemm = {"model": "table", "max_efficiency": q(0.5), "tile_m": 16, "tile_n": 16, "k_half": q(0.0),
            "table": {"source": "measured", "ref": "t", "raw": "x.csv", "device": "cpu",
                      "driver": "n/a (CPU device)", "torch": "2.13", "date": "2026-11-21", "points": {"fp32": rows}}}
    cm = CostModel(cpu_profile(gemm))
    # Exact point: 2·M·N·K / rate, no extra launch term (table rates are end to end).
    assert cm.op_seconds(Op(OpKind.GEMM, (256, 64, 64), dtype="fp32")) == pytest.approx(
        2 * 256 * 64 * 64 / 4e12)
    # Inside the hull: rate interpolated in log space, between the neighbours (1 and 4 TFLOP/s).
    t = cm.op_seconds(Op(OpKind.GEMM, (128, 128, 128), dtype="fp32"))
    assert 2 * 128**3 / 4e12 < t < 2 * 128**3 / 1e12
    assert cm.flags == set()
    # Outside the hull: roofline fallback, counted once per shape.
    big = Op(OpKind.GEMM, (1024, 1024, 1024), dtype="fp32")
    assert cm.op_seconds(big) == pytest.approx(10e-6 + 2 * 1024**3 / (1e12 * 0.5))
    assert "gpu.gemm (roofline fallback for 1 shapes)" in cm.flags


def test_gemm_table_of_square_sizes_interpolates_along_flops():
    rows = [[s, s, s, r] for s, r in ((128, 0.1), (512, 0.4), (2048, 0.8))]
    gemm = {"model": "table", "max_efficiency": q(0.5), "tile_m": 16, "tile_n": 16, "k_half": q(0.0),
            "table": {"source": "assumed", "ref": "t", "points": {"fp32": rows}}}
    cm = CostModel(cpu_profile(gemm))
    t = cm.op_seconds(Op(OpKind.GEMM, (512, 512, 2048), dtype="fp32"))  # flops of 812.7^3
    rate = 2 * 512 * 512 * 2048 / t / 1e12
    assert 0.4 < rate < 0.8
    assert "gpu.gemm.table (assumed)" in cm.flags


def test_link_curve_interpolates_in_log_bytes():
    link = {"bandwidth_gbps": q(10.0), "latency_us": q(0.0),
            "curve": {"source": "assumed", "ref": "t", "points": [[1000, 1.0], [100000, 3.0]]}}
    links = {"h2d": {"pinned": link, "pageable": link}, "d2h": {"pinned": link, "pageable": link},
             "duplex_factor": q(1.0)}
    cm = CostModel(cpu_profile(links=links))
    assert cm.op_seconds(Op(OpKind.H2D, n=10000)) == pytest.approx(10000 / 2e9)   # midway in log
    assert cm.op_seconds(Op(OpKind.H2D, n=10)) == pytest.approx(1000 / 1e9)        # floor
    assert cm.op_seconds(Op(OpKind.D2H, n=10**6)) == pytest.approx(10**6 / 3e9)    # last rate


# -- caching, schedule API ---------------------------------------------------------------------

def _task(name, ops, stream="gpu0.compute"):
    return Task(name=name, stream=stream, cat=TaskCat.FWD, ops=ops)


def test_identical_blocks_share_one_cached_value():
    cm = CostModel(load_profile("h100-sxm"))
    ops = (Op(OpKind.GEMM, (4096, 4096, 4096)), Op(OpKind.NORM, n=10**8))
    a, b = _task("it1.F.b0", ops), _task("it1.F.b1", tuple(ops))
    ta, tb = cm.task_seconds(a), cm.task_seconds(b)
    assert ta == tb and ta == math.fsum(cm.op_seconds(o) for o in ops)
    assert len(cm._task_cache) == 1


def test_models_of_one_profile_share_derived_values_but_not_what_they_priced():
    prof = load_profile("h100-pcie")
    a = CostModel(prof)
    rules = a.interference()
    a.ops_seconds((Op(OpKind.ADAM_CPU, n=10**6),))
    b = CostModel(prof)
    assert b.flags == set() and not b._task_cache       # a fresh model starts empty
    assert b.interference() == rules and b.flags == {f for f in a.flags if f.startswith("interference")}
    b.ops_seconds((Op(OpKind.ADAM_CPU, n=10**6),))
    assert b.flags == a.flags
    assert CostModel(load_profile("h100-pcie").with_overrides(gpus=1)).interference() == rules


def test_a_copy_with_other_numbers_is_priced_by_its_own_numbers():
    # what pricing derives from a profile lives on the profile object (HardwareProfile.pricing);
    # a copy made with model_copy(update=...) after the original was priced must not inherit it
    import copy
    import pickle

    from simhete.hw.profile import BlockTable
    prof = load_profile("h100-sxm")
    ops = (Op(OpKind.GEMM, (4096, 4096, 4096)),)
    a = CostModel(prof)
    assert CostModel(prof).tables is a.tables                     # shared by models of one profile
    key = ops_key(ops)
    table = BlockTable(source="assumed", ref="test", entries=[[key, "b0 fwd", 1.25]])
    other = prof.model_copy(update={"gpu": prof.gpu.model_copy(update={"blocks": table})})
    assert CostModel(other).ops_seconds(ops) == 1.25
    assert a.ops_seconds(ops) == a.ops_sum_seconds(ops) != 1.25
    for dup in (copy.copy(prof), copy.deepcopy(prof), pickle.loads(pickle.dumps(prof))):
        assert "pricing" not in dup.__dict__ and CostModel(dup).ops_seconds(ops) == a.ops_seconds(ops)


def test_a_model_is_freed_by_reference_counting_alone():
    # sweeps make a CostModel per point: one that is part of a reference cycle waits for the
    # cyclic collector, which then walks every object the sweep keeps
    import gc
    import weakref

    enabled = gc.isenabled()
    gc.disable()
    try:
        cm = CostModel(load_profile("h100-sxm"))
        cm.ops_seconds((Op(OpKind.GEMM, (4096, 4096, 4096)), Op(OpKind.H2D, n=GiB), Op(OpKind.ADAM_CPU, n=10**6)))
        ref = weakref.ref(cm)
        del cm
        assert ref() is None
    finally:
        if enabled:
            gc.enable()


def test_durations_in_task_order_and_interference_rules():
    cm = CostModel(load_profile("h100-sxm").with_overrides(gpus=1))   # one GPU: no switch sharing
    sched = Schedule(tasks=(_task("a", (Op(OpKind.H2D, n=GiB),), "gpu0.h2d"),
                            _task("b", (Op(OpKind.ADAM_CPU, n=10**6),), "cpu.optim")),
                     pools={"gpu0": 80 * GiB, "cpu": 2**40})
    assert cm.durations(sched) == [cm.op_seconds(Op(OpKind.H2D, n=GiB)),
                                   cm.op_seconds(Op(OpKind.ADAM_CPU, n=10**6))]
    assert cm.interference() == (("cpu.optim", "gpu*.d2h", 1.1), ("cpu.optim", "gpu*.h2d", 1.1))
    assert "interference[0].slowdown (assumed)" in cm.flags


# -- properties --------------------------------------------------------------------------------

dims = st.integers(min_value=1, max_value=1 << 15)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(PROFILES), dims, dims, dims, st.sampled_from([0, 1, 2]), st.integers(1, 4096))
def test_bigger_gemm_is_never_faster(name, m, n, k, axis, grow):
    # within one alignment class: a GEMM off cuBLAS's 16-byte boundary runs a slower kernel than
    # a bigger aligned one (tested above), so both shapes are taken aligned (multiples of 8) or
    # both with an odd dimension
    cm = MODELS[name]
    dtype = "fp16" if name == "v100-32gb-dgx2" else "bf16"
    aligned = m % 2 == 0
    shape = [8 * m, 8 * n, 8 * k] if aligned else [m | 1, n, k]
    bigger = list(shape)
    bigger[axis] += 8 * grow if aligned else 2 * grow
    assert cm.op_seconds(Op(OpKind.GEMM, tuple(bigger), dtype=dtype)) >= \
        cm.op_seconds(Op(OpKind.GEMM, tuple(shape), dtype=dtype))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(PROFILES),
       st.sampled_from([OpKind.H2D, OpKind.D2H, OpKind.D2D, OpKind.MEMCPY_CPU, OpKind.ELEMENTWISE,
                        OpKind.ADAM_CPU, OpKind.ADAM_GPU, OpKind.ALLREDUCE]),
       st.booleans(), st.integers(0, 1 << 40), st.integers(1, 1 << 30))
def test_more_bytes_is_never_faster(name, kind, pinned, n, more):
    cm = MODELS[name]
    shape = (4,) if kind is OpKind.ALLREDUCE else ()
    small = cm.op_seconds(Op(kind, shape, n=n, pinned=pinned))
    assert cm.op_seconds(Op(kind, shape, n=n + more, pinned=pinned)) >= small >= 0.0


# -- per-kind memory-bound pricing, CPU Adam threads and overhead ------------------------------

def _with(prof: HardwareProfile, path: tuple[str, ...], value) -> HardwareProfile:
    data = prof.model_dump(exclude_none=True)
    node = data
    for k in path[:-1]:
        node = node.setdefault(k, {})
    node[path[-1]] = value
    return validate(HardwareProfile, data, "cpu-test.yaml")


def test_memory_bound_kind_without_curve_is_its_overhead_plus_bandwidth():
    prof = _with(cpu_profile(), ("gpu", "memory_bound"),
                 {"NORM": {"bandwidth_gbps": q(4.0), "overhead_us": q(3.0)},
                  "SOFTMAX_CE": {"bandwidth_gbps": q(8.0)}})
    cm = CostModel(prof)
    assert cm.op_seconds(Op(OpKind.NORM, n=4 * 10**9)) == pytest.approx(3e-6 + 1.0)
    # No overhead of its own: the device's launch overhead (10 us).
    assert cm.op_seconds(Op(OpKind.SOFTMAX_CE, (1, 1), n=8 * 10**9)) == pytest.approx(10e-6 + 1.0)
    # A kind left out keeps the single bandwidth × efficiency (2000 GB/s × 0.5).
    assert cm.op_seconds(Op(OpKind.ELEMENTWISE, n=10**9)) == pytest.approx(10e-6 + 1e-3)
    assert {"gpu.memory_bound.NORM.bandwidth_gbps (assumed)", "gpu.memory_bound.NORM.overhead_us "
            "(assumed)", "gpu.memory_bound.SOFTMAX_CE.bandwidth_gbps (assumed)"} <= cm.flags


def test_memory_bound_curve_is_linear_between_points_floored_and_monotone():
    # Times: 1000 B in 1 us, 2000 B in 0.5 us (noise: raised to 1 us), 4000 B in 2 us, 16000 B in 4 us.
    curve = {"source": "assumed", "ref": "t",
             "points": [[1000, 1.0], [2000, 4.0], [4000, 2.0], [16000, 4.0]]}
    prof = _with(cpu_profile(), ("gpu", "memory_bound"),
                 {"ELEMENTWISE": {"bandwidth_gbps": q(4.0), "curve": curve}})
    cm = CostModel(prof)
    t = lambda n: cm.op_seconds(Op(OpKind.ELEMENTWISE, n=n))  # noqa: E731
    assert t(10) == pytest.approx(1e-6)          # below the curve: its smallest time
    assert t(1500) == pytest.approx(1e-6)        # between equal (raised) times
    assert t(3000) == pytest.approx(1.5e-6)      # linear in n
    assert t(10000) == pytest.approx(3e-6)
    assert t(16000) == pytest.approx(4e-6)
    assert t(32000) == pytest.approx(8e-6)       # above: the largest size's rate (4 GB/s)
    assert cm.flags == {"gpu.memory_bound.ELEMENTWISE.curve (assumed)"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 10**9), st.floats(0.01, 1000.0)), min_size=2, max_size=6,
                unique_by=lambda p: p[0]),
       st.integers(0, 2 * 10**9), st.integers(0, 10**9))
def test_memory_bound_curve_never_prices_more_bytes_faster(points, n, more):
    curve = {"source": "assumed", "ref": "t", "points": sorted([b, g] for b, g in points)}
    cm = CostModel(_with(cpu_profile(), ("gpu", "memory_bound"),
                         {"EMBED": {"bandwidth_gbps": q(1.0), "curve": curve}}))
    small = cm.op_seconds(Op(OpKind.EMBED, (1, 1), n=n))
    assert cm.op_seconds(Op(OpKind.EMBED, (1, 1), n=n + more)) >= small > 0.0


def _adam(**adam) -> CostModel:
    by = {"source": "assumed", "ref": "t", "points": [[1, 1e8], [4, 3e8]]}
    return CostModel(_with(cpu_profile(), ("host", "adam"),
                           {"params_per_s": q(5e7), "by_threads": by, **adam}))


def test_adam_rate_is_by_threads_at_the_optimizer_threads():
    n = 10**8
    assert _adam().op_seconds(Op(OpKind.ADAM_CPU, n=n)) == pytest.approx(2.0)   # no threads: params_per_s
    assert _adam(threads=1).op_seconds(Op(OpKind.ADAM_CPU, n=n)) == pytest.approx(1.0)
    assert _adam(threads=2).op_seconds(Op(OpKind.ADAM_CPU, n=n)) == pytest.approx(n / (1e8 + 2e8 / 3))
    assert _adam(threads=4).op_seconds(Op(OpKind.ADAM_CPU, n=n)) == pytest.approx(1 / 3)
    cm = _adam(threads=8)                       # beyond the measured counts: the nearest, flagged
    assert cm.op_seconds(Op(OpKind.ADAM_CPU, n=n)) == pytest.approx(1 / 3)
    assert "host.adam.by_threads (no point at 8 threads: 4 used)" in cm.flags
    assert "host.adam.params_per_s (assumed)" not in cm.flags


def test_adam_overhead_is_paid_once_per_call():
    cm = _adam(threads=1, overhead_us=q(50.0))
    assert cm.op_seconds(Op(OpKind.ADAM_CPU, n=10**8)) == pytest.approx(50e-6 + 1.0)
    assert cm.op_seconds(Op(OpKind.ADAM_CPU, n=10**8, count=3)) == pytest.approx(3 * (50e-6 + 1.0))
    assert cm.op_seconds(Op(OpKind.ADAM_CPU, n=0)) == pytest.approx(50e-6)
    assert "host.adam.overhead_us (assumed)" in cm.flags


def test_on_a_cpu_device_d2d_is_memcpy_and_device_adam_is_cpu_adam():
    cm = CostModel(cpu_profile())
    assert cm.op_seconds(Op(OpKind.D2D, n=8 * 10**9)) == pytest.approx(1.0)        # memcpy 8 GB/s
    assert cm.op_seconds(Op(OpKind.ADAM_GPU, n=10**8)) == cm.op_seconds(Op(OpKind.ADAM_CPU, n=10**8))
    assert cm.op_seconds(Op(OpKind.ADAM_GPU, n=10**8)) == pytest.approx(1.0)


def test_a_measured_table_point_is_its_measurement_even_where_bandwidth_would_bind():
    # 1e-3 TFLOP/s measured for a shape whose bytes at 2000 GB/s × 0.5 would take longer still:
    # the end-to-end measurement wins (bandwidth measured on other ops is not a bound on it).
    rows = [[m, n, k, 1e-3] for m in (64, 256) for n in (64, 256) for k in (64, 256)]
    gemm = {"model": "table", "max_efficiency": q(0.5), "tile_m": 16, "tile_n": 16, "k_half": q(0.0),
            "table": {"source": "assumed", "ref": "t", "points": {"fp32": rows}}}
    prof = _with(cpu_profile(gemm), ("gpu", "mem_bandwidth_gbps"), q(1e-6))
    cm = CostModel(prof)
    assert cm.op_seconds(Op(OpKind.GEMM, (256, 256, 256), dtype="fp32")) == pytest.approx(
        2 * 256**3 / 1e9)


# -- kinds split from ELEMENTWISE/NORM, per-dtype rates, attention between measured shapes ------

NEW_KINDS = {OpKind.RMSNORM: OpKind.NORM, OpKind.GELU: OpKind.ELEMENTWISE,
             OpKind.RELU: OpKind.ELEMENTWISE, OpKind.SWIGLU: OpKind.ELEMENTWISE,
             OpKind.DROPOUT: OpKind.ELEMENTWISE, OpKind.ROPE: OpKind.ELEMENTWISE}


@pytest.mark.parametrize("name", PROFILES)
def test_gpu_profiles_price_the_new_kinds_as_before(name):
    # A GPU profile has no curves for the new kinds: every block of every model costs exactly what
    # it cost when they were ELEMENTWISE/NORM (so the GPU goldens do not move).
    from simhete.workload import build_workload
    cm = MODELS[name]
    for model in ("llama3-8b", "gpt3-1.3b", "opt-1.3b"):
        for blk in build_workload(model, 2, 512, "fp16" if name.startswith("v100") else "bf16").blocks:
            for ops in (blk.fwd_ops, blk.bwd_ops):
                old = tuple(Op(NEW_KINDS.get(o.kind, o.kind), o.shape, o.n, o.dtype, o.pinned, o.count)
                            for o in ops)
                assert [cm.op_seconds(o) for o in ops] == [cm.op_seconds(o) for o in old]


def test_new_kinds_fall_back_to_the_kind_they_were_split_from():
    prof = _with(cpu_profile(), ("gpu", "memory_bound"),
                 {"NORM": {"bandwidth_gbps": q(4.0), "overhead_us": q(3.0)},
                  "ELEMENTWISE": {"bandwidth_gbps": q(8.0), "overhead_us": q(1.0)},
                  "GELU": {"bandwidth_gbps": q(2.0), "overhead_us": q(5.0)}})
    cm = CostModel(prof)
    n = 4 * 10**9
    assert cm.op_seconds(Op(OpKind.RMSNORM, n=n)) == pytest.approx(3e-6 + 1.0)    # NORM's
    assert cm.op_seconds(Op(OpKind.GELU, n=n)) == pytest.approx(5e-6 + 2.0)       # its own
    for kind in (OpKind.RELU, OpKind.SWIGLU, OpKind.DROPOUT, OpKind.ROPE):
        assert cm.op_seconds(Op(kind, n=n)) == pytest.approx(1e-6 + 0.5)          # ELEMENTWISE's
    rope = _with(prof, ("gpu", "memory_bound", "ROPE"), {"bandwidth_gbps": q(0.5), "overhead_us": q(7.0)})
    assert CostModel(rope).op_seconds(Op(OpKind.ROPE, n=n)) == pytest.approx(7e-6 + 8.0)  # its own
    # no memory_bound entry on the chain at all: launch + n / (bandwidth × efficiency)
    cm = CostModel(_with(cpu_profile(), ("gpu", "memory_bound"),
                         {"GELU": {"bandwidth_gbps": q(2.0)}}))
    assert cm.op_seconds(Op(OpKind.RMSNORM, n=10**9)) == pytest.approx(10e-6 + 1e-3)


def test_memory_bound_rate_per_dtype():
    prof = _with(cpu_profile(), ("gpu", "memory_bound"),
                 {"GELU": {"bandwidth_gbps": q(4.0), "overhead_us": q(2.0),
                           "dtypes": {"bf16": {"bandwidth_gbps": q(1.0), "overhead_us": q(6.0)}}}})
    cm = CostModel(prof)
    assert cm.op_seconds(Op(OpKind.GELU, n=4 * 10**9, dtype="fp32")) == pytest.approx(2e-6 + 1.0)
    assert cm.op_seconds(Op(OpKind.GELU, n=4 * 10**9, dtype="bf16")) == pytest.approx(6e-6 + 4.0)
    assert cm.op_seconds(Op(OpKind.GELU, n=4 * 10**9, dtype="fp16")) == pytest.approx(2e-6 + 1.0)
    assert "gpu.memory_bound.GELU.dtypes.bf16.bandwidth_gbps (assumed)" in cm.flags


def _attn_profile() -> HardwareProfile:
    # fwd fp32 TFLOP/s on a 2x2x2 grid of (batch·heads, seq, head_dim): rate = bh/8 · s/64 · d/32
    # · 0.01, i.e. log-linear in each axis, so interpolation in log space is exact.
    rows = [[b, h, s, s, d, 1, 0.01 * (b * h / 8) * (s / 64) * (d / 32)]
            for b, h in ((2, 4), (4, 8)) for s in (64, 256) for d in (32, 128)]
    table = {"source": "assumed", "ref": "t", "fwd": {"fp32": rows}, "bwd": {}}
    return _with(cpu_profile(), ("gpu", "attention"),
                 {"fwd_efficiency": q(0.5), "bwd_efficiency": q(0.5), "table": table})


def test_attention_between_measured_shapes_is_interpolated_in_log_space():
    cm = CostModel(_attn_profile())
    exact = Op(OpKind.ATTN_FWD, (2, 4, 64, 64, 32, 1), dtype="fp32")
    assert cm.op_seconds(exact) == pytest.approx(exact.flops / 0.01e12, rel=1e-12)
    # (4, 4, 128, 128, 64): bh 16, s 128, d 64 — inside the grid, not on it
    mid = Op(OpKind.ATTN_FWD, (4, 4, 128, 128, 64, 1), dtype="fp32")
    rate = 0.01 * 2 * 2 * 2
    assert cm.op_seconds(mid) == pytest.approx(mid.flops / (rate * 1e12), rel=1e-6)
    # outside the grid, another pass or dtype: the efficiency roofline (1 TFLOP/s fp32 peak × 0.5)
    for op in (Op(OpKind.ATTN_FWD, (1, 4, 128, 128, 64, 1), dtype="fp32"),
               Op(OpKind.ATTN_BWD, (4, 4, 128, 128, 64, 1), dtype="fp32")):
        assert cm.op_seconds(op) == pytest.approx(10e-6 + op.flops / 0.5e12)


def test_ops_key_names_an_op_sequence_stably_and_only_it():
    from simhete.hw.cost import ops_key

    ops = (Op(OpKind.NORM, n=4096, dtype="fp32"), Op(OpKind.GEMM, (512, 768, 256), dtype="fp32"))
    # a fixed digest: keys are written into profiles, so they must not change between processes
    assert ops_key(ops) == ops_key(tuple(ops)) == "d0db107ca787b1c4"
    assert len(ops_key(ops)) == 16 and int(ops_key(ops), 16) >= 0
    variants = [ops[::-1], ops[:1], (ops[0], Op(OpKind.GEMM, (512, 768, 256), dtype="bf16")),
                (ops[0], Op(OpKind.GEMM, (512, 768, 256), dtype="fp32", count=2)),
                (Op(OpKind.NORM, n=4097, dtype="fp32"), ops[1])]
    assert len({ops_key(v) for v in variants} | {ops_key(ops)}) == len(variants) + 1


def test_a_measured_block_prices_exactly_its_ops_tuple_and_is_not_flagged():
    from simhete.hw.cost import ops_key

    fwd = (Op(OpKind.NORM, n=4096, dtype="fp32"), Op(OpKind.GEMM, (512, 768, 256), dtype="fp32"))
    other = (Op(OpKind.NORM, n=4096, dtype="fp32"), Op(OpKind.GEMM, (512, 768, 128), dtype="fp32"))
    base = cpu_profile()
    data = base.model_dump(mode="json", exclude_none=True)
    data["gpu"]["blocks"] = {"source": "measured", "ref": "test", "raw": "p.raw/blocks.csv", "device": "cpu",
                             "driver": "n/a (CPU device)", "torch": "2.13.0", "date": "2026-11-22",
                             "entries": [[ops_key(fwd), "b fwd", 0.0123]]}
    cm = CostModel(validate(HardwareProfile, data, "cpu-test.yaml"))
    assert cm.ops_seconds(fwd) == 0.0123
    assert cm.ops_sum_seconds(fwd) == CostModel(base).ops_seconds(fwd) != 0.0123
    assert cm.ops_seconds(other) == CostModel(base).ops_seconds(other)
    assert cm.ops_seconds(fwd[1:]) == CostModel(base).ops_seconds(fwd[1:])   # a part: not the block
    assert not any(f.startswith("gpu.blocks") for f in cm.flags)
    data["gpu"]["blocks"]["source"] = "assumed"
    cm = CostModel(validate(HardwareProfile, data, "cpu-test.yaml"))
    cm.ops_seconds(fwd)
    assert "gpu.blocks (assumed)" in cm.flags


@pytest.mark.parametrize("entry, msg", [
    (["xyz", "b fwd", 0.01], "key must be 16 hex digits"),
    (["0123456789abcdef", "b fwd", 0.0], "seconds must be > 0"),
])
def test_bad_block_entries_are_one_line_config_errors(entry, msg):
    data = cpu_profile().model_dump(mode="json", exclude_none=True)
    data["gpu"]["blocks"] = {"source": "paper", "ref": "test", "entries": [entry]}
    with pytest.raises(ConfigError, match=r"gpu\.blocks\.entries") as e:
        validate(HardwareProfile, data, "cpu-test.yaml")
    assert msg in str(e.value) and "\n" not in str(e.value)


# Achieved copy bandwidth (bytes read + written) per GPU base profile and its source kind:
# STREAM SCALE kernel results of RRZE-HPC/gpu-benches (A100 80GB, H100 PCIe, L40, V100), torch
# copy_ results of chsasank/device-benchmarks (RTX 3090/4090, T4), the PTsolvers A100 40GB memcopy
# reference, the team's H100/H200 readings; only the Grand Teton H100 96GB stays assumed.
@pytest.mark.parametrize("name,gbps,source", [
    ("a100-80gb-sxm", 1737, "reported"), ("a100-40gb-sxm", 1355, "reported"),
    ("a100-40gb-pcie", 1355, "reported"), ("h100-pcie", 1704, "reported"), ("l40", 776, "reported"),
    ("v100-32gb-dgx2", 809, "reported"), ("rtx3090", 831, "reported"),
    ("rtx4090-desktop", 912, "reported"), ("t4", 240, "reported"), ("h100-sxm", 3000, "reported"),
    ("h200-sxm", 4300, "reported"), ("h100-96gb-grandteton", 2150, "assumed")])
def test_device_copy_bandwidth_per_gpu_is_the_published_reading(name, gbps, source):
    cm = CostModel(load_profile(name))
    q_ = cm.profile.gpu.mem_bandwidth_gbps
    assert (q_.value, q_.source) == (gbps, source)
    # a device-to-device copy of n bytes reads and writes n: launch + 2n / bandwidth
    assert cm.op_seconds(Op(OpKind.D2D, n=10**9)) == pytest.approx(2e9 / (gbps * 1e9), rel=1e-12)


def test_eager_dispatch_overlaps_the_kernel_on_a_gpu_and_adds_on_a_cpu_device():
    # GPU (h100-sxm: 7 us dispatch, 3000 GB/s x 0.9): an op costs max(dispatch, kernel); the
    # crossover is the op whose kernel takes exactly the dispatch, 7e-6 x 2700e9 = 18.9 MB.
    cm = CostModel(load_profile("h100-sxm"))
    assert cm.profile.gpu.launch_overhead_us.value == 7
    assert cm.profile.gpu.launch_overhead_us.source == "reported"
    assert cm.op_seconds(Op(OpKind.ELEMENTWISE, n=18_900_000)) == pytest.approx(7e-6, rel=1e-12)
    assert cm.op_seconds(Op(OpKind.ELEMENTWISE, n=9_450_000)) == 7e-6
    assert cm.op_seconds(Op(OpKind.ELEMENTWISE, n=37_800_000)) == pytest.approx(14e-6, rel=1e-12)
    # count repeats the op: ten dispatch-bound ops cost ten dispatches
    assert cm.op_seconds(Op(OpKind.ELEMENTWISE, n=1000, count=10)) == pytest.approx(70e-6, rel=1e-12)
    assert "gpu.launch_overhead_us (reported)" in cm.flags
    # CPU device (launch 10 us, 2000 GB/s x 0.5): the host thread dispatches and runs the kernel
    cpu = CostModel(cpu_profile())
    assert cpu.op_seconds(Op(OpKind.ELEMENTWISE, n=10**6)) == pytest.approx(10e-6 + 1e6 / 1000e9, rel=1e-12)
    # one 16x16 tile, one wave of the 4 "SMs" (cores): 2 x 4 x 16 x 16 x 16 quantised FLOPs
    assert cpu.op_seconds(Op(OpKind.GEMM, (16, 16, 16), dtype="fp32")) == pytest.approx(
        10e-6 + 2 * 4 * 16 * 16 * 16 / 0.5e12, rel=1e-12)

"""The ``framework`` key: which kernels run, so what a block saves for backward and which ops it runs.

Reference values were recorded with benchmarks/hf_saved_bytes.py from transformers 5.25.0,
torch 2.13.0 (CPU), 2026-12-07: one block, random init, bf16, training mode, every storage autograd
saves counted once (saved-tensor hooks), parameters and the model-wide rotary tables left out.
The formulas model CUDA; the CPU differs in mechanisms named where used (dropout keeps an e-byte
noise tensor on the CPU, a 1-byte mask on CUDA; CPU LayerNorm keeps its mean/rstd in bf16).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from simhete.errors import ConfigError
from simhete.opkinds import OpKind
from simhete.scenario import load_scenario
from simhete.sim import resolve
from simhete.workload import build_workload, from_hf_config

DATA = Path(__file__).parent / "data" / "hf"
LLAMA = from_hf_config(DATA / "llama-2-7b" / "config.json")
GPT2 = from_hf_config(DATA / "gpt2" / "config.json")
SCENARIOS = Path(__file__).parent.parent / "scenarios"
MiB = 2**20

# (b, s) -> bytes, recorded (module docstring)
LLAMA_SDPA = {(1, 256): 47_745_024, (2, 256): 95_490_048, (1, 512): 95_490_048, (1, 1024): 190_980_096}
LLAMA_EAGER = {(1, 256): 60_295_168, (2, 256): 120_590_336, (1, 512): 145_756_160,
               (1, 1024): 392_175_616}
GPT2_EAGER = {(1, 256): 16_517_120, (2, 512): 84_942_848}
# GPT-2 with attn_pdrop = 0 (--attn-dropout 0): SDPA then runs torch's CPU flash kernel, as it
# runs flash on a GPU (with dropout too, there); "fused" is simhete's replay block
GPT2_NODROP = {"hf-eager": 13_371_392, "hf-sdpa": 11_810_816, "fused": 7_092_224}   # (1, 256)


def act(spec, b, s, framework, flash=True):
    return build_workload(spec, b, s, "bf16", flash_attention=flash, framework=framework).blocks[1].act_bytes


def gpt2_cpu_correction(b, s, flash):
    """What the CPU keeps beyond CUDA's accounting for a GPT-2 block (e = 2): each dropout keeps
    its e-byte noise instead of a 1-byte mask (ATen Dropout.cpp ``_dropout_impl``: ``input *
    noise``; CUDA's ``native_dropout`` saves a bool mask) — two residual dropouts of t·h, and
    without flash the attention dropout of b·a·s² — and LayerNorm keeps mean and rstd in bf16
    (2 + 2 bytes per token) where CUDA keeps fp32 (8): -4 per token per norm."""
    t, h, a = b * s, GPT2.hidden, GPT2.n_heads
    return 2 * t * h + (0 if flash else b * a * s * s) - 2 * 4 * t


@pytest.mark.parametrize(("b", "s"), sorted(LLAMA_SDPA))
def test_llama_hf_sdpa_block_equals_transformers(b, s):
    assert act(LLAMA, b, s, "hf-sdpa") == LLAMA_SDPA[(b, s)]
    assert act(LLAMA, b, s, "hf-flash2") == LLAMA_SDPA[(b, s)]


@pytest.mark.parametrize(("b", "s"), sorted(LLAMA_EAGER))
def test_llama_hf_eager_block_equals_transformers(b, s):
    assert act(LLAMA, b, s, "hf-eager", flash=False) == LLAMA_EAGER[(b, s)]


def test_llama_2_7b_b1_s4096():
    """The issue's figure: fused 600.53 MiB; Transformers with SDPA 728.53 MiB (+ 8·h bytes per
    token: each LlamaRMSNorm keeps its fp32 upcast, 4·h, and its cast-back y, e·h, but not its
    e·h input); eager adds 6 bytes per score (fp32 softmax output and its bf16 cast)."""
    t, h, a = 4096, 4096, 32
    fused = act(LLAMA, 1, 4096, "fused")
    assert fused == 629_702_656 and fused / MiB == 600.53125
    sdpa = act(LLAMA, 1, 4096, "hf-sdpa")
    assert sdpa == fused + 8 * h * t == 763_920_384 and sdpa / MiB == 728.53125
    eager = act(LLAMA, 1, 4096, "hf-eager", flash=False)
    assert eager == sdpa - 4 * a * t + 6 * a * 4096 * 4096 == 3_984_621_568


@pytest.mark.parametrize(("b", "s"), sorted(GPT2_EAGER))
def test_gpt2_hf_eager_block_equals_transformers(b, s):
    assert act(GPT2, b, s, "hf-eager", flash=False) + gpt2_cpu_correction(b, s, False) == GPT2_EAGER[(b, s)]


@pytest.mark.parametrize("framework", sorted(GPT2_NODROP))
def test_gpt2_without_attention_dropout_equals_measured(framework):
    spec = dataclasses.replace(GPT2, attn_dropout=False)
    flash = framework != "hf-eager"
    got = act(spec, 1, 256, framework, flash) + gpt2_cpu_correction(1, 256, True)
    assert got == GPT2_NODROP[framework]


def test_gpt2_hf_gelu_new_saves_five_tensors():
    """GPT-2's gelu_new (NewGELUActivation) keeps x, tanh(·), 0.5·x, 1 + tanh(·) and the output;
    fused GeLU keeps x and the output: 3·e·f more per token."""
    t, f = 256, GPT2.ffn_hidden
    assert act(GPT2, 1, 256, "hf-sdpa") - act(GPT2, 1, 256, "fused") == 3 * 2 * f * t


def test_fused_is_the_default_and_unchanged():
    for spec in (LLAMA, GPT2):
        for flash in (True, False):
            a = build_workload(spec, 2, 128, "bf16", flash_attention=flash)
            b = build_workload(spec, 2, 128, "bf16", flash_attention=flash, framework="fused")
            assert a.framework == "fused" and a.blocks == b.blocks


def test_memory_efficient_kernel_pads_log_sum_exp():
    spec = LLAMA
    w1 = build_workload(spec, 1, 100, "bf16", framework="hf-sdpa").blocks[1].act_bytes
    w32 = build_workload(spec, 1, 100, "bf16", framework="hf-sdpa", lse_align=32).blocks[1].act_bytes
    assert w32 - w1 == 4 * spec.n_heads * (128 - 100)


def test_hf_ops_unfused_chains():
    """RMSNorm: 8 forward kernels (bf16; 2 of them per token) moving 36 bytes per element instead
    of one kernel of 4; the
    LLaMA block's GEMMs are the same, so FLOPs differ only by the elementwise chains."""
    f = build_workload(LLAMA, 1, 256, "bf16", framework="fused").blocks[1]
    h = build_workload(LLAMA, 1, 256, "bf16", framework="hf-sdpa").blocks[1]
    gemms = lambda ops: [op for op in ops if op.kind == OpKind.GEMM]  # noqa: E731
    assert gemms(f.fwd_ops) == gemms(h.fwd_ops) and gemms(f.bwd_ops) == gemms(h.bwd_ops)
    assert not any(op.kind in (OpKind.RMSNORM, OpKind.ROPE) for op in h.fwd_ops)
    t, hid, kv = 256, LLAMA.hidden, LLAMA.kv_dim
    fused_ew = sum(op.n for op in f.fwd_ops if op.kind in (OpKind.RMSNORM, OpKind.ROPE))
    assert fused_ew == 2 * 4 * t * hid + 4 * t * (hid + kv)
    # norms: 2 × 32 bytes per element; rotary: 10·e per element of q and k
    hf_ew = sum(op.n for op in h.fwd_ops if op.kind == OpKind.ELEMENTWISE) \
        - sum(op.n for op in f.fwd_ops if op.kind == OpKind.ELEMENTWISE)
    assert hf_ew == 2 * 36 * t * hid + 2 * 2 * 8 * t + 10 * 2 * t * (hid + kv)
    assert len(h.fwd_ops) == len(f.fwd_ops) - 3 + 2 * 8 + 2 * 5


def test_hf_eager_ops_fp32_softmax():
    e = build_workload(LLAMA, 1, 256, "bf16", flash_attention=False, framework="hf-eager").blocks[1]
    soft = [op for op in e.fwd_ops if op.kind == OpKind.SOFTMAX_CE]
    ns = 32 * 256 * 256
    assert len(soft) == 1 and soft[0].dtype == "fp32" and soft[0].n == 8 * ns
    assert not any(op.kind == OpKind.ATTN_FWD for op in e.fwd_ops)


def _scenario(tmp_path, **train):
    text = (SCENARIOS / "llama2-7b_a100-80gb_zero-offload-pageable.yaml").read_text()
    p = tmp_path / "s.yaml"
    p.write_text(text)
    s = load_scenario(p)
    return s.with_changes(**train) if train else s


def test_scenario_framework_reaches_the_workload(tmp_path):
    s = _scenario(tmp_path)
    assert s.data.framework == "hf-sdpa"
    ctx, _ = resolve(s)
    assert ctx.workload.framework == "hf-sdpa" and ctx.workload.flash_attention
    ctx, _ = resolve(s.with_changes(framework="hf-eager"))
    assert ctx.workload.framework == "hf-eager" and not ctx.workload.flash_attention
    ctx, _ = resolve(s.with_changes(framework="fused", **{"train.attention": "math"}))
    assert ctx.workload.framework == "fused" and not ctx.workload.flash_attention


def test_eager_with_flash_is_an_error(tmp_path):
    s = _scenario(tmp_path).with_changes(framework="hf-eager", **{"train.attention": "flash"})
    with pytest.raises(ConfigError, match=r"train\.attention: bad value 'flash'.*hf-eager") as ei:
        resolve(s)
    assert "\n" not in str(ei.value)


def test_compute_capability_picks_the_kernel(tmp_path):
    """attention_kernel reads only device_type, name and gpu.compute_capability (absent: sm80+)."""
    from types import SimpleNamespace

    from simhete.sim import attention_kernel
    s = _scenario(tmp_path)
    v100 = SimpleNamespace(device_type="cuda", name="v100", gpu=SimpleNamespace(compute_capability=7.0))
    h100 = SimpleNamespace(device_type="cuda", name="h100", gpu=SimpleNamespace(compute_capability=9.0))
    plain = SimpleNamespace(device_type="cuda", name="x", gpu=SimpleNamespace())
    assert attention_kernel(s, v100, LLAMA) == (True, 32)     # memory-efficient kernel
    assert attention_kernel(s, h100, LLAMA) == (True, 1)
    assert attention_kernel(s, plain, LLAMA) == (True, 1)
    with pytest.raises(ConfigError, match=r"framework: bad value 'hf-flash2'.*compute capability 7\.0") as ei:
        attention_kernel(s.with_changes(framework="hf-flash2"), v100, LLAMA)
    assert "\n" not in str(ei.value)
    assert attention_kernel(s.with_changes(framework="hf-flash2"), h100, LLAMA) == (True, 1)
    assert attention_kernel(s.with_changes(framework="fused"), v100, LLAMA) == (True, 1)
    assert attention_kernel(s.with_changes(framework="hf-eager"), v100, LLAMA) == (False, 1)
    assert attention_kernel(s.with_changes(**{"train.dtype": "fp32"}), h100, LLAMA) == (True, 32)


def test_cpu_replay_scenarios_are_fused():
    for p in sorted(SCENARIOS.glob("small-*_cpu_*.yaml")):
        assert load_scenario(p).data.framework == "fused", p.name


def _attn_seconds(ctx):
    """Seconds of the first block's ATTN_FWD and ATTN_BWD ops as the scenario's cost model prices them."""
    blk = next(b for b in ctx.workload.blocks if any(op.kind == OpKind.ATTN_FWD for op in b.fwd_ops))
    fwd = next(op for op in blk.fwd_ops if op.kind == OpKind.ATTN_FWD)
    bwd = next(op for op in blk.bwd_ops if op.kind == OpKind.ATTN_BWD)
    return fwd, bwd, ctx.cost.op_seconds(fwd), ctx.cost.op_seconds(bwd)


def test_attention_kernel_flash1_prices_at_its_rate(tmp_path):
    """train.attention_kernel: flash1 prices fused attention at gpu.attention.kernels.flash1 of the
    profile (a100-80gb-sxm: FlashAttention v1's 69 of 312 TFLOP/s, 0.221; FlashAttention-2 0.497),
    and nothing else changes: same ops, same GEMM prices, same saved bytes."""
    s = _scenario(tmp_path, **{"train.micro_batch": 4, "train.seq_len": 2048})
    ctx2, _ = resolve(s)
    ctx1, _ = resolve(s.with_changes(**{"train.attention_kernel": "flash1"}))
    f, b, t2f, t2b = _attn_seconds(ctx2)
    _, _, t1f, t1b = _attn_seconds(ctx1)
    peak = 312e12   # A100 dense bf16; no sustained_clock_factor in the A100 profiles
    assert t2f == pytest.approx(f.flops / (peak * 0.497), rel=1e-12)
    assert t1f == pytest.approx(f.flops / (peak * 0.221), rel=1e-12)
    assert t1b == pytest.approx(b.flops / (peak * 0.221), rel=1e-12)
    assert ctx1.workload.blocks == ctx2.workload.blocks
    gemm = next(op for b in ctx2.workload.blocks for op in b.fwd_ops if op.kind == OpKind.GEMM)
    assert ctx1.cost.op_seconds(gemm) == ctx2.cost.op_seconds(gemm)
    assert ctx1.profile.gpu.attention.fwd_efficiency.source == "paper"


def test_attention_kernel_needs_the_profile_entry_and_a_fused_kernel(tmp_path):
    s = _scenario(tmp_path, **{"train.attention_kernel": "flash1"})
    with pytest.raises(ConfigError, match=r"train\.attention_kernel: bad value 'flash1'.*v100-32gb-dgx2 lists no "
                                          r"gpu\.attention\.kernels") as ei:
        resolve(s.with_changes(**{"hardware.profile": "v100-32gb-dgx2", "hardware.gpus": 1}))
    assert "\n" not in str(ei.value)
    with pytest.raises(ConfigError, match=r"train\.attention_kernel: bad value 'flash1'.*unfused") as ei:
        resolve(s.with_changes(framework="hf-eager"))
    assert "\n" not in str(ei.value)
    with pytest.raises(ConfigError, match=r"attention_kernel"):
        resolve(s.with_changes(**{"train.attention_kernel": "flash3"}))


# fused-eager-attn: Megatron-LM's block with its attention as separate PyTorch ops (no flash, no
# fused softmax: NVIDIA/Megatron-LM abe36e2 mpu/transformer.py, v1.0 megatron/model/transformer.py)

def test_fused_eager_attn_saves_the_fp16_softmax_and_dropout():
    """A GPT-2 block (MHA, attention dropout) in fp16 saves the fused terms without flash: per
    score the softmax output (e), the dropout's 1-byte mask and its output (e); Q, K, V, O, both
    LayerNorms' inputs, outputs and fp32 statistics, GeLU input and output, two residual masks."""
    b, s, e = 2, 512, 2
    t, h, f, a = b * s, GPT2.hidden, GPT2.ffn_hidden, GPT2.n_heads
    per_token = 2 * e * h + 3 * e * h + e * h + h + 2 * e * h + 2 * e * f + h + 2 * 8
    want = t * per_token + b * a * s * s * (e + 1 + e)
    got = build_workload(GPT2, b, s, "fp16", flash_attention=False, framework="fused-eager-attn").blocks[1]
    assert got.act_bytes == want == 58_212_352
    fused_math = build_workload(GPT2, b, s, "fp16", flash_attention=False, framework="fused").blocks[1]
    assert got.act_bytes == fused_math.act_bytes and got.workspace_bytes == fused_math.workspace_bytes
    # hf-eager keeps gelu_new's five tensors (3·e·f more per token), the same s×s terms
    hf = build_workload(GPT2, b, s, "fp16", flash_attention=False, framework="hf-eager").blocks[1]
    assert hf.act_bytes - got.act_bytes == 3 * e * f * t


def test_fused_eager_attn_ops():
    """Forward: the fused LayerNorm, GeLU and GEMMs of ``fused``; per head the scores and PV GEMMs
    (count b·a), a scale, mask, fp16 softmax and dropout pass over the b·a·s² scores, O made
    contiguous; the residual dropout then the add. Backward adds the mask's and the scale's passes
    to dropout and softmax backward."""
    b, s, e = 2, 512, 2
    t, h, a, d = b * s, GPT2.hidden, GPT2.n_heads, GPT2.head_dim
    ns = b * a * s * s
    w = build_workload(GPT2, b, s, "fp16", flash_attention=False, framework="fused-eager-attn").blocks[1]
    fused = build_workload(GPT2, b, s, "fp16", flash_attention=True, framework="fused").blocks[1]
    kinds = [op.kind for op in w.fwd_ops]
    assert OpKind.ATTN_FWD not in kinds and OpKind.ATTN_BWD not in [op.kind for op in w.bwd_ops]
    assert [op for op in w.fwd_ops if op.kind in (OpKind.NORM, OpKind.GELU)] == \
        [op for op in fused.fwd_ops if op.kind in (OpKind.NORM, OpKind.GELU)]
    batched = [op for op in w.fwd_ops if op.kind == OpKind.GEMM and op.count > 1]
    assert [(op.shape, op.count) for op in batched] == [((s, s, d), b * a), ((s, d, s), b * a)]
    soft = [op for op in w.fwd_ops if op.kind == OpKind.SOFTMAX_CE]
    assert len(soft) == 1 and soft[0].dtype == "fp16" and soft[0].n == 2 * e * ns
    moved = lambda ops: sum(op.n for op in ops if op.kind != OpKind.GEMM)  # noqa: E731
    # scale, mask (+ the s×s bool mask), softmax, dropout per score; O made contiguous; each of the
    # two residual dropouts apart from its add: (2e + 1) + 3e instead of 3e + 1 per element
    assert moved(w.fwd_ops) - moved(fused.fwd_ops) == \
        (2 * e + 2 * e + 2 * e + 2 * e + 1) * ns + s * s + 2 * e * t * h + 2 * 2 * e * t * h
    drops = [op.n for op in w.fwd_ops if op.kind == OpKind.DROPOUT]
    assert drops == [(2 * e + 1) * ns, (2 * e + 1) * t * h, (2 * e + 1) * t * h]
    assert len(w.fwd_ops) == len(fused.fwd_ops) - 1 + 7 + 2     # ATTN_FWD -> 7 ops; 2 residual adds
    # dropout, softmax, mask (+ the bool mask), scale backward per score
    assert moved(w.bwd_ops) - moved(fused.bwd_ops) == (2 * e + 1 + 3 * e + 2 * e + 2 * e) * ns + s * s
    gemm_flops = lambda ops: sum(op.flops for op in ops if op.kind == OpKind.GEMM)  # noqa: E731
    assert gemm_flops(w.fwd_ops) - gemm_flops(fused.fwd_ops) == 2 * 2 * ns * d
    assert gemm_flops(w.bwd_ops) - gemm_flops(fused.bwd_ops) == 4 * 2 * ns * d


def test_fused_eager_attn_scenario(tmp_path):
    """Never a fused attention kernel: auto and math run Megatron's ops, flash is a one-line error."""
    s = _scenario(tmp_path).with_changes(framework="fused-eager-attn")
    ctx, _ = resolve(s)
    assert ctx.workload.framework == "fused-eager-attn" and not ctx.workload.flash_attention
    ctx, _ = resolve(s.with_changes(**{"train.attention": "math"}))
    assert not ctx.workload.flash_attention
    with pytest.raises(ConfigError, match=r"train\.attention: bad value 'flash'.*fused-eager-attn") as ei:
        resolve(s.with_changes(**{"train.attention": "flash"}))
    assert "\n" not in str(ei.value)


def test_published_v100_megatron_cases_run_megatron_kernels():
    """Every published V100 case that ran Megatron-LM code of 2019-2021 (the 2019 paper, the v1.0
    blog, DeepSpeedExamples' Megatron-LM copies of the ZeRO-Offload / ZeRO-3 Offload runs, the
    StrongHold SC'22 artifact in fp32) names the kernels that code ran."""
    pub = SCENARIOS / "published"
    names = [p for p in sorted(pub.glob("*.yaml")) if p.name.startswith(
        ("megatron-2019_", "megatron-v1_", "ds-zero-offload-paper-", "ds-zero3-offload-blog-", "sc22ae_"))]
    assert len(names) == 22
    for p in names:
        assert load_scenario(p).data.framework == "fused-eager-attn", p.name

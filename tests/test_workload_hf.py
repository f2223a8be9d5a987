"""Hugging Face config.json files read exactly: every shipped config and probe counts what
transformers builds from it.

The reference numbers were recorded from transformers 5.25.0 (torch 2.13.0+cpu) with
tests/data/hf/count_with_transformers.py: ``AutoModelForCausalLM.from_config`` on the meta device,
``sum(p.numel() for p in model.parameters())`` (tied weights counted once). Configs under
tests/data/hf/<model>/ are the published config.json of the model repository (no weights);
probes/ holds a published config with the key named by the folder changed, and probes/defaults-*
minimal configs that leave every optional key to the config class's default.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simhete.errors import ConfigError
from simhete.workload import build_workload, from_hf_config

HF = Path(__file__).parent / "data" / "hf"

# recorded from transformers 5.25.0 on the meta device (see the module docstring)
TRANSFORMERS_COUNTS = {
    "bloom-560m": 559_214_592,
    "falcon-40b": 41_303_293_952,
    "falcon-7b": 6_921_720_704,
    "gemma-2-2b": 2_614_341_888,
    "gemma-2b": 2_506_172_416,
    "gemma-3-1b": 999_885_952,
    "gemma-7b": 8_537_680_896,
    "gpt-j-6b": 6_050_882_784,
    "gpt2": 124_439_808,
    "llama-2-7b": 6_738_415_616,
    "llama-3-8b": 8_030_261_248,
    "opt-1.3b": 1_315_758_080,
    "opt-350m": 331_196_416,
    "phi-3-mini-4k": 3_821_079_552,
    "probes/bloom-n-embed": 204_109_824,
    "probes/defaults-bloom": 1_836_544,
    "probes/defaults-falcon": 1_633_792,
    "probes/defaults-gemma": 109_012_992,
    "probes/defaults-gemma2": 83_855_360,
    "probes/defaults-gemma3_text": 83_856_384,
    "probes/defaults-gpt2": 1_868_800,
    "probes/defaults-gpt_neox": 41_886_720,
    "probes/defaults-gptj": 2_089_960,
    "probes/defaults-llama": 43_952_128,
    "probes/defaults-mistral": 31_369_216,
    "probes/defaults-opt": 1_344_000,
    "probes/defaults-phi3": 43_952_128,
    "probes/defaults-qwen2": 43_964_416,
    "probes/defaults-qwen3": 77_507_072,
    "probes/falcon-ffn": 4_018_213_760,
    "probes/falcon-new-one-ln": 41_302_310_912,
    "probes/falcon-sequential-alibi-bias": 8_226_175_872,
    "probes/gemma-attention-bias": 2_506_255_360,
    "probes/gemma2-attention-bias": 2_614_508_288,
    "probes/gemma3-head-dim": 961_540_736,
    "probes/gpt2-n-inner": 86_666_496,
    "probes/gpt2-relu": 124_439_808,
    "probes/gpt2-untied": 163_037_184,
    "probes/gptj-n-inner": 4_171_605_216,
    "probes/gptj-tied": 5_844_444_384,
    "probes/llama-attention-bias": 6_738_939_904,
    "probes/llama-head-dim": 5_664_673_792,
    "probes/llama-kv-null": 8_835_567_616,
    "probes/llama-mlp-bias": 6_739_251_200,
    "probes/mistral-bias-flags": 6_738_415_616,
    "probes/mistral-head-dim": 5_664_673_792,
    "probes/neox-attention-bias-false": 162_286_080,
    "probes/neox-relu": 162_322_944,
    "probes/opt-350m-pre": 331_198_464,
    "probes/opt-no-affine": 1_315_557_376,
    "probes/opt-no-bias": 1_315_315_712,
    "probes/opt-remove-final-ln": 1_315_753_984,
    "probes/phi3-attention-bias": 3_821_079_552,
    "probes/phi3-gqa": 3_368_094_720,
    "probes/phi3-head-dim": 4_223_732_736,
    "probes/qwen2-attention-bias-false": 494_032_768,
    "probes/qwen2-head-dim": 538_100_608,
    "probes/qwen3-attention-bias": 596_193_280,
    "pythia-160m": 162_322_944,
    "qwen2-0.5b": 494_032_768,
    "qwen2.5-0.5b": 494_032_768,
    "qwen3-0.6b": 596_049_920,
}


def test_every_shipped_config_has_a_reference_count() -> None:
    shipped = {str(p.parent.relative_to(HF)) for p in HF.glob("**/config.json")}
    assert shipped == set(TRANSFORMERS_COUNTS)


@pytest.mark.parametrize("name", sorted(TRANSFORMERS_COUNTS))
def test_count_equals_transformers(name: str) -> None:
    assert from_hf_config(HF / name / "config.json").n_params() == TRANSFORMERS_COUNTS[name]


@pytest.mark.parametrize("name", sorted(n for n in TRANSFORMERS_COUNTS if not n.startswith("probes/")))
def test_published_configs_build_a_workload(name: str) -> None:
    spec = from_hf_config(HF / name)
    wl = build_workload(spec, 1, 128)
    assert wl.params == TRANSFORMERS_COUNTS[name]
    assert wl.fwd_flops > 0 and wl.model_flops_per_iter > 0


def test_structure_read_from_the_configs() -> None:
    qwen2 = from_hf_config(HF / "qwen2.5-0.5b")
    assert (qwen2.bias, qwen2.qkv_bias, qwen2.out_bias, qwen2.mlp_bias) == (False, True, None, None)
    qwen3 = from_hf_config(HF / "qwen3-0.6b")
    assert (qwen3.head_dim, qwen3.q_dim, qwen3.qk_norm) == (128, 2048, True)
    gemma2 = from_hf_config(HF / "gemma-2-2b")
    assert (gemma2.norms_per_block, gemma2.head_dim, gemma2.tied_embeddings) == (4, 256, True)
    falcon = from_hf_config(HF / "falcon-7b")
    assert (falcon.n_kv_heads, falcon.norms_per_block, falcon.bias, falcon.pos) == (1, 1, False, "rope")
    assert from_hf_config(HF / "falcon-40b").n_kv_heads == 8
    bloom = from_hf_config(HF / "bloom-560m")
    assert (bloom.pos, bloom.embed_norm, bloom.embed_params()) == ("alibi", True, 250880 * 1024 + 2 * 1024)
    gptj = from_hf_config(HF / "gpt-j-6b")
    assert (gptj.lm_head_bias, gptj.qkv_bias, gptj.norms_per_block) == (True, False, 1)
    opt = from_hf_config(HF / "opt-350m")
    assert (opt.embed_dim, opt.final_norm) == (512, False)
    # OPT-350m: V×512 embedding + 2050×1024 positions + 512×1024 project_in; head: 1024×512 project_out
    assert opt.embed_params() == 50272 * 512 + 2050 * 1024 + 512 * 1024
    assert opt.head_params() == 1024 * 512


def test_gpt2_activation_is_read(tmp_path: Path) -> None:
    relu = from_hf_config(HF / "probes" / "gpt2-relu")
    assert relu.mlp == "relu" and from_hf_config(HF / "gpt2").mlp == "gelu"
    data = json.loads((HF / "gpt2" / "config.json").read_text()) | {"activation_function": "tanh"}
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"activation_function: bad value 'tanh'; allowed: one of gelu, gelu_new"):
        from_hf_config(tmp_path)


@pytest.mark.parametrize("change, pattern", [
    ({"add_cross_attention": True}, r"add_cross_attention: bad value True; allowed: False"),
])
def test_gpt2_refusals(tmp_path: Path, change: dict[str, object], pattern: str) -> None:
    data = json.loads((HF / "gpt2" / "config.json").read_text()) | change
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=pattern) as ei:
        from_hf_config(tmp_path)
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize("base, change, pattern", [
    ("falcon-40b", {"num_ln_in_parallel_attn": 3}, r"num_ln_in_parallel_attn: bad value 3; allowed: 1, 2 or null$"),
    ("falcon-7b", {"alibi": "yes"}, r"alibi: bad value 'yes'; allowed: true or false$"),
    ("qwen3-0.6b", {"head_dim": -1}, r"head_dim: bad value -1; allowed: a positive integer or null$"),
    ("qwen3-0.6b", {"num_key_value_heads": 3}, r"num_key_value_heads: n_kv_heads=3 must divide n_heads=16"),
    ("opt-350m", {"word_embed_proj_dim": 0}, r"word_embed_proj_dim: bad value 0"),
    ("bloom-560m", {"n_head": 0}, r"n_head: bad value 0; allowed: a positive integer"),
    ("gemma-2b", {"model_type": "gemma3"}, r"model_type: 'gemma3' is the multimodal Gemma-3"),
])
def test_new_family_refusals(tmp_path: Path, base: str, change: dict[str, object], pattern: str) -> None:
    data = json.loads((HF / base / "config.json").read_text()) | change
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=pattern) as ei:
        from_hf_config(tmp_path)
    assert str(ei.value).startswith(str(tmp_path / "config.json")) and "\n" not in str(ei.value)


def test_ops_follow_the_read_structure() -> None:
    """GEMMs use the widths read from the config: Q and output projections a·d wide (Qwen3-0.6B:
    16·128 = 2048 for h = 1024), OPT-350m's project_in / project_out and a 512-wide LM head,
    BLOOM's embedding norm, no final norm for post-norm OPT."""
    from simhete.opkinds import OpKind
    from simhete.workload.ops import _linear_flops

    t = 256
    for name in ("qwen3-0.6b", "gemma-7b", "falcon-7b", "gpt-j-6b", "bloom-560m", "opt-350m"):
        sp = from_hf_config(HF / name)
        wl = build_workload(sp, 1, t)
        h, q, kv, f = sp.hidden, sp.q_dim, sp.kv_dim, sp.ffn_hidden
        matrices = 2 * h * q + 2 * h * kv + (sp.n_mlp_in + 1) * h * f
        block_gemm = sum(op.flops for op in wl.blocks[1].fwd_ops if op.kind == OpKind.GEMM)
        assert block_gemm == _linear_flops(sp, t) == 2 * t * matrices, name
    qwen3 = build_workload(from_hf_config(HF / "qwen3-0.6b"), 1, t)
    assert {op.shape for op in qwen3.blocks[1].fwd_ops if op.kind == OpKind.GEMM} >= {
        (t, 2048 + 2 * 1024, 1024), (t, 1024, 2048)}
    opt = build_workload(from_hf_config(HF / "opt-350m"), 1, t)
    embed_gemms = [op.shape for op in opt.blocks[0].fwd_ops if op.kind == OpKind.GEMM]
    head_gemms = [op.shape for op in opt.blocks[-1].fwd_ops if op.kind == OpKind.GEMM]
    assert embed_gemms == [(t, 1024, 512)] and head_gemms == [(t, 512, 1024), (t, 50272, 512)]
    assert not any(op.kind == OpKind.NORM for op in opt.blocks[-1].fwd_ops)
    bloom = build_workload(from_hf_config(HF / "bloom-560m"), 1, t)
    assert [op.kind for op in bloom.blocks[0].fwd_ops] == [OpKind.EMBED, OpKind.NORM]
    assert not any(op.kind == OpKind.ROPE for op in bloom.blocks[1].fwd_ops)   # ALiBi: no rotary op


def test_extra_structure_names_what_the_plain_layout_lacks() -> None:
    from simhete.workload.presets import PRESETS

    assert all(m.extra_structure() == () for m in PRESETS.values())
    for name in ("llama-2-7b", "llama-3-8b", "gpt2", "opt-1.3b", "pythia-160m"):
        assert from_hf_config(HF / name).extra_structure() == ()
    assert from_hf_config(HF / "qwen3-0.6b").extra_structure() == ("attn_head_dim", "qk_norm")
    assert from_hf_config(HF / "qwen2.5-0.5b").extra_structure() == ("qkv_bias",)
    assert from_hf_config(HF / "opt-350m").extra_structure() == ("final_norm", "embed_dim")
    assert from_hf_config(HF / "bloom-560m").extra_structure() == ("embed_norm", "pos")

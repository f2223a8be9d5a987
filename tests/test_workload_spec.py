"""ModelSpec, presets and Hugging Face config import: exact parameter counts and errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from simhete.errors import ConfigError
from simhete.workload import (ModelSpec, build_workload, family_models, from_hf_config, get_model,
                              gpt_like, list_families, list_models)

HF = Path(__file__).parent / "data" / "hf"


# Published parameter counts (Hugging Face model cards / the models' own reports).
@pytest.mark.parametrize("name, n", [
    ("llama2-7b", 6_738_415_616),
    ("llama2-13b", 13_015_864_320),
    ("llama2-70b", 68_976_648_192),
    ("llama3-8b", 8_030_261_248),
    ("llama3-70b", 70_553_706_496),
    ("opt-1.3b", 1_315_758_080),
])
def test_published_parameter_counts(name: str, n: int) -> None:
    assert get_model(name).n_params() == n


def test_gpt3_125m_by_hand() -> None:
    # h = 768, L = 12, V = 50257, 2048 learned positions, tied LM head.
    # block: attention 4h² + 4h, MLP 8h² + 5h (h×4h, 4h×h with biases), two LayerNorms 4h
    #        = 12h² + 13h = 7,077,888 + 9,984 = 7,087,872
    # embed: V·h + 2048·h = 38,597,376 + 1,572,864 = 40,170,240; final LayerNorm 2h = 1,536
    m = get_model("gpt3-125m")
    assert m.block_params() == 7_087_872
    assert m.embed_params() == 40_170_240
    assert m.head_params() == 1_536
    assert m.n_params() == 40_170_240 + 12 * 7_087_872 + 1_536 == 125_226_240
    assert m.non_embedding_params() == 12 * 7_087_872 + 1_536


def test_gpt_like_by_hand() -> None:
    # DeepSpeed ZeRO-Offload tutorial's 10B GPT-2: h = 4096, L = 50, 32 heads, 1024 positions.
    m = get_model("gpt-like-h4096-l50")
    h = 4096
    assert (m.n_heads, m.head_dim, m.ffn_hidden, m.vocab, m.max_seq) == (32, 128, 4 * h, 50257, 1024)
    assert m.n_params() == 50257 * h + 1024 * h + 50 * (12 * h * h + 13 * h) + 2 * h == 10_279_047_168
    assert m == gpt_like(4096, 50)
    assert get_model("gpt-like-h768-l12-a12-s2048") == gpt_like(768, 12, 12, 2048)
    assert get_model("gpt-like-h768-l12-a12-s2048").name == "gpt-like-h768-l12-a12-s2048"
    assert get_model("gpt-like-h4096-l50-a32").name == "gpt-like-h4096-l50"  # canonical name
    assert get_model("gpt-like-h960-l2").n_heads == 15  # 960 = 15 · 64: head_dim 64 fallback


def test_llama_gqa_and_tied_counts() -> None:
    m = get_model("llama3-8b")
    assert (m.head_dim, m.kv_dim, m.n_mlp_in) == (128, 1024, 2)
    # q, o: 2h²; k, v: 2·h·1024; SwiGLU 3·h·f; two RMSNorm weights 2h
    assert m.block_params() == 2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert m.head_params() == 4096 + 128256 * 4096
    tied = dataclasses.replace(m, tied_embeddings=True)
    assert tied.n_params() == m.n_params() - 128256 * 4096


def test_registry_and_families() -> None:
    names = list_models()
    assert len(names) == 22 and len(set(names)) == 22
    assert all(get_model(n).name == n for n in names)
    assert list_families() == ("gpt3", "opt", "llama2", "llama3", "qwen2.5")
    assert [m.name for m in family_models("llama2")] == ["llama2-7b", "llama2-13b", "llama2-70b"]
    sizes = [m.n_params() for m in family_models("gpt3")]
    assert sizes == sorted(sizes) and len(sizes) == 8
    assert family_models("opt")[-1].name == "opt-175b"
    with pytest.raises(ConfigError, match=r"family: bad value 'gpt4'; allowed: one of the model families: gpt3"):
        family_models("gpt4")


def test_qwen25_parameter_counts_match_the_model_cards() -> None:
    # Qwen2.5 model cards: 1.54B (1.31B non-embedding) and 3.09B (2.77B non-embedding). The presets
    # leave out the q/k/v biases (28 x 2048 and 36 x 2560 parameters), hence exact counts below.
    small, large = get_model("qwen2.5-1.5b"), get_model("qwen2.5-3b")
    assert (small.n_params(), small.non_embedding_params()) == (1_543_656_960, 1_310_283_264)
    assert (large.n_params(), large.non_embedding_params()) == (3_085_846_528, 2_774_681_600)
    assert small.tied_embeddings and large.tied_embeddings


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as ei:
        get_model("llama2-8b", file="scenario.yaml", key="model.name")
    msg = str(ei.value)
    assert msg.startswith("scenario.yaml: model.name: bad value 'llama2-8b'; allowed: one of the models")
    assert "llama2-7b" in msg and "gpt-like-h{H}-l{L}" in msg and "\n" not in msg


def test_bad_gpt_like_names() -> None:
    with pytest.raises(ConfigError, match=r"not a multiple of 64; give the number of heads"):
        get_model("gpt-like-h100-l2")
    with pytest.raises(ConfigError, match=r"hidden=768 is not divisible by n_heads=7"):
        get_model("gpt-like-h768-l2-a7")
    with pytest.raises(ConfigError, match=r"bad value 'gpt-like-h768'"):
        get_model("gpt-like-h768")


def _spec(**kw: object) -> ModelSpec:
    base = dict(name="t", family="t", n_layers=2, hidden=8, n_heads=2, n_kv_heads=2, ffn_hidden=32,
                vocab=16, max_seq=4)
    return ModelSpec(**(base | kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("kw, pattern", [
    (dict(hidden=10, n_heads=4), r"^n_heads: hidden=10 is not divisible by n_heads=4"),
    (dict(n_heads=4, n_kv_heads=3), r"^n_kv_heads: n_kv_heads=3 must divide n_heads=4"),
    (dict(n_kv_heads=4), r"must divide n_heads=2"),
    (dict(n_layers=0), r"^n_layers: bad value 0; allowed: a positive integer$"),
    (dict(vocab=True), r"^vocab: bad value True"),
    (dict(norm="batchnorm"), r"^norm: bad value 'batchnorm'; allowed: one of layernorm, rmsnorm$"),
    (dict(mlp="geglu"), r"^mlp: bad value 'geglu'; allowed: one of gelu, relu, swiglu$"),
    (dict(pos="sinusoidal"), r"^pos: bad value 'sinusoidal'"),
    (dict(bias=1), r"^bias: bad value 1; allowed: true or false$"),
    (dict(attn_dropout="yes"), r"^attn_dropout: bad value 'yes'; allowed: true or false$"),
    (dict(pos="rope", pos_offset=2), r"^pos_offset: pos_offset only applies to learned"),
])
def test_spec_validation(kw: dict[str, object], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        _spec(**kw)


def test_spec_is_hashable() -> None:
    assert hash(_spec()) == hash(_spec()) and _spec() == _spec()
    assert len({get_model("llama2-7b"), get_model("llama2-7b"), get_model("llama3-8b")}) == 2


# --- Hugging Face config.json ------------------------------------------------------------------

ARCH = [f.name for f in dataclasses.fields(ModelSpec) if f.name not in ("name", "family")]


@pytest.mark.parametrize("folder, preset", [("llama-2-7b", "llama2-7b"), ("llama-3-8b", "llama3-8b"),
                                            ("opt-1.3b", "opt-1.3b")])
def test_hf_round_trip_matches_preset(folder: str, preset: str) -> None:
    got, want = from_hf_config(HF / folder / "config.json"), get_model(preset)
    assert {f: getattr(got, f) for f in ARCH} == {f: getattr(want, f) for f in ARCH}
    assert got.n_params() == want.n_params()
    assert got.name == folder  # no _name_or_path: the folder name


def test_hf_round_trip_same_workload() -> None:
    hf = from_hf_config(HF / "llama-2-7b")
    assert build_workload(hf, 2, 512).blocks == build_workload("llama2-7b", 2, 512).blocks


def test_hf_mistral_name_and_dropout(tmp_path: Path) -> None:
    # Mistral-7B-v0.1's public config: a LLaMA layout with GQA and a sliding window (ignored).
    data = {"model_type": "mistral", "_name_or_path": "mistralai/Mistral-7B-v0.1", "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "vocab_size": 32000, "max_position_embeddings": 32768,
            "hidden_act": "silu", "sliding_window": 4096, "tie_word_embeddings": False, "head_dim": 128}
    m = from_hf_config(_write(tmp_path, data))
    assert (m.name, m.family, m.n_kv_heads) == ("mistralai/Mistral-7B-v0.1", "mistral", 8)
    assert m.n_params() == 7_241_732_096  # Mistral-7B-v0.1
    assert (m.dropout, m.attn_dropout) == (False, False)
    assert from_hf_config(_write(tmp_path, data | {"attention_dropout": 0.1})).attn_dropout is True
    assert from_hf_config(HF / "opt-1.3b").attn_dropout is False  # OPT: attention_dropout 0.0
    assert from_hf_config(HF / "gpt2").attn_dropout is True         # attn_pdrop 0.1


def test_hf_gpt2_and_neox_published_counts() -> None:
    gpt2 = from_hf_config(HF / "gpt2")  # a folder works too
    assert gpt2.n_params() == 124_439_808  # GPT-2 small
    assert (gpt2.dropout, gpt2.tied_embeddings, gpt2.ffn_hidden) == (True, True, 3072)
    neox = from_hf_config(HF / "pythia-160m" / "config.json")
    assert neox.n_params() == 162_322_944  # Pythia-160M (untied embed_in / embed_out)
    assert (neox.pos, neox.dropout, neox.tied_embeddings) == ("rope", False, False)
    assert from_hf_config(HF / "gpt2", name="mine").name == "mine"


def _write(tmp_path: Path, data: object) -> Path:
    p = tmp_path / "config.json"
    p.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return p


def _llama2(**changes: object) -> dict[str, object]:
    data = json.loads((HF / "llama-2-7b" / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            del data[k]
        else:
            data[k] = v
    return data


@pytest.mark.parametrize("data, pattern", [
    (_llama2(model_type="t5"), r"config.json: model_type: bad value 't5'; allowed: one of bloom, falcon, gemma, gemma2, gemma3_text, gpt2, gpt_neox, gptj, llama, mistral, opt, phi3, qwen2, qwen3$"),
    (_llama2(model_type=None), r"config.json: model_type: required key is missing"),
    (_llama2(intermediate_size=None), r"config.json: intermediate_size: required key is missing for model_type 'llama'$"),
    (_llama2(hidden_size="4096"), r"config.json: hidden_size: bad value '4096'; allowed: an integer$"),
    (_llama2(num_key_value_heads=5), r"config.json: num_key_value_heads: n_kv_heads=5 must divide n_heads=32"),
    (_llama2(num_attention_heads=3), r"config.json: num_attention_heads: hidden=4096 is not divisible by n_heads=3"),
    (_llama2(hidden_act="gelu"), r"config.json: hidden_act: bad value 'gelu'; allowed: 'silu' \(SwiGLU MLP\)$"),
    (_llama2(head_dim=0), r"config.json: head_dim: bad value 0; allowed: a positive integer or null$"),
    (_llama2(model_type="gemma3"), r"config.json: model_type: 'gemma3' is the multimodal Gemma-3 .*gemma3_text"),
    (_llama2(model_type="gemma", hidden_activation="silu"), r"config.json: hidden_activation: bad value 'silu'; allowed: one of gelu, "),
    (_llama2(model_type="gpt_neox", hidden_act="swish"), r"config.json: hidden_act: bad value 'swish'; allowed: one of gelu, .*relu$"),
    (_llama2(tie_word_embeddings="no"), r"config.json: tie_word_embeddings: bad value 'no'; allowed: true or false$"),
    ("[1, 2]", r"config.json: expected a JSON object at the top level$"),
    ('{"model_type": "llama",', r"config.json: malformed JSON at line 1, column 24"),
])
def test_hf_bad_configs(tmp_path: Path, data: object, pattern: str) -> None:
    p = _write(tmp_path, data)
    with pytest.raises(ConfigError, match=pattern) as ei:
        from_hf_config(p)
    assert str(ei.value).startswith(str(p)) and "\n" not in str(ei.value)


def test_hf_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config.json: Hugging Face config.json not found$"):
        from_hf_config(tmp_path)


def test_hf_opt_variants(tmp_path: Path) -> None:
    data = json.loads((HF / "opt-1.3b" / "config.json").read_text())
    proj = from_hf_config(_write(tmp_path, data | {"word_embed_proj_dim": 512}))
    assert proj.embed_dim == 512
    post = from_hf_config(_write(tmp_path, data | {"do_layer_norm_before": False}))
    assert post.final_norm is False and post.n_params() == from_hf_config(HF / "opt-1.3b").n_params() - 2 * 2048
    assert from_hf_config(_write(tmp_path, data | {"dropout": 0.0})).dropout is False


def test_scenario_model_overrides_switch_biases_and_dropout_off():
    """MPT / nanoGPT (bias=False, dropout 0) as a GPT-2 preset with overrides: exactly the linear
    layers' biases go (9·h per block: QKV 3h, output h, fc1 4h, fc2 h)."""
    from simhete.scenario import scenario_from_dict
    from simhete.sim import resolve_model
    base = {"hardware": "a100-80gb-sxm", "train": {"micro_batch": 1, "seq_len": 1024}}
    on = resolve_model(scenario_from_dict({**base, "model": "gpt-like-h768-l12"}))
    off = resolve_model(scenario_from_dict({**base, "model": {"preset": "gpt-like-h768-l12",
                                                             "bias": False, "dropout": False}}))
    assert on.n_params() - off.n_params() == 12 * 9 * 768
    assert off.bias is False and off.dropout is False
    # a config.json model's per-part bias flags follow model.bias too: Qwen2.5-0.5B loses its
    # q/k/v biases (896 + 2·128 per block, 24 blocks)
    hf = str(HF / "qwen2.5-0.5b" / "config.json")
    q_on = resolve_model(scenario_from_dict({**base, "model": {"hf_config": hf}}))
    q_off = resolve_model(scenario_from_dict({**base, "model": {"hf_config": hf, "bias": False}}))
    assert q_on.qkv_bias is True and q_off.qkv_bias is None and q_off.bias is False
    assert q_on.n_params() - q_off.n_params() == 24 * (896 + 2 * 128)

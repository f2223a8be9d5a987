"""Read a local Hugging Face ``config.json`` into a ModelSpec.

Every key that changes the parameter count of the model ``AutoModelForCausalLM.from_config`` builds
is read (defaults as in the transformers config classes), or the config is refused with a one-line
ConfigError naming the key and value. Counts are checked against transformers on the meta device
(tests/test_workload_hf.py). Per ``model_type``:

- ``llama``: hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads (default:
  heads), intermediate_size, vocab_size, max_position_embeddings, head_dim (default h/a),
  tie_word_embeddings (false), attention_bias (q, k, v, o) and mlp_bias (false), hidden_act silu,
  attention_dropout. RMSNorm, SwiGLU, rotary positions.
- ``mistral``: as llama, but its modules have no biases whatever the config says (attention_bias
  and mlp_bias are not read by transformers' Mistral); sliding_window changes no parameter.
- ``qwen2``: as llama, with biases on q, k, v only (transformers hard-codes them).
- ``qwen3``: as llama (attention_bias on q, k, v, o), head_dim default 128, per-head q/k RMSNorm.
- ``phi3``: as llama without biases (fused qkv_proj and gate_up_proj hold the same elements);
  resid_pdrop, embd_pdrop, attention_dropout.
- ``gemma``, ``gemma2``, ``gemma3_text``: as llama with head_dim (default 256), tied embeddings
  (default true), a GeLU-gated MLP (hidden_activation or hidden_act a GeLU), attention_bias on
  q, k, v, o; Gemma-2/3 have four norms per block, Gemma-3 also q/k norms. ``gemma3`` (the
  multimodal model) is refused: point at a text-only config.
- ``gpt2``: n_embd, n_layer, n_head, n_inner (null: 4·n_embd), vocab_size, n_positions,
  activation_function (GeLU variants or relu), tie_word_embeddings (true), resid_pdrop/embd_pdrop
  and attn_pdrop (0.1); add_cross_attention must be false. LayerNorm, learned positions, biases.
- ``gptj``: n_embd, n_layer, n_head, n_inner, vocab_size, n_positions, activation_function,
  tie_word_embeddings (false): bias-free q, k, v, o; MLP and LM head with biases; one LayerNorm
  per block shared by the parallel attention and MLP; rotary (rotary_dim changes no parameter).
- ``opt``: hidden_size, num_hidden_layers, num_attention_heads, ffn_dim, vocab_size,
  max_position_embeddings (+2 position rows), activation_function (relu or a GeLU), enable_bias
  (true), layer_norm_elementwise_affine (true), do_layer_norm_before (true) and
  _remove_final_layer_norm (false) (a final norm only when pre-norm and not removed),
  word_embed_proj_dim (hidden_size; else bias-free project_in/project_out), tie_word_embeddings
  (true), dropout (0.1), attention_dropout (0).
- ``gpt_neox``: hidden_size, num_hidden_layers, num_attention_heads, intermediate_size,
  vocab_size, max_position_embeddings, tie_word_embeddings (false), hidden_act (GeLU or relu),
  attention_bias (true; the MLP always has biases), hidden_dropout and attention_dropout (0).
  LayerNorm, rotary (partial rotary changes no parameter).
- ``falcon``: hidden_size, num_hidden_layers, num_attention_heads, new_decoder_architecture
  (num_kv_heads K/V heads), multi_query (one K/V head), parallel_attn, num_ln_in_parallel_attn,
  bias (false, every linear), alibi (no position parameters) or rotary, ffn_hidden_size (4·h),
  activation (GeLU or relu), tie_word_embeddings (true), hidden_dropout, attention_dropout.
- ``bloom``: hidden_size (or n_embed), n_layer, n_head, vocab_size, tie_word_embeddings (true),
  hidden_dropout, attention_dropout: LayerNorm on the embeddings, ALiBi, biases, 4·h GeLU MLP.

What the ops do not model exactly (parallel blocks, Gemma's extra norms, q/k norms, GeGLU) is
listed in docs/workload.md; the parameter counts are exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simhete.errors import ConfigError
from simhete.workload.spec import ModelSpec

_MISSING = object()
MODEL_TYPES = ("bloom", "falcon", "gemma", "gemma2", "gemma3_text", "gpt2", "gpt_neox", "gptj", "llama",
               "mistral", "opt", "phi3", "qwen2", "qwen3")
# activation names of transformers.activations.ACT2FN by the MLP structure they give
GELUS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_accurate", "gelu_python", "quick_gelu")


class _Cfg:
    """Typed access to a config.json mapping; every problem is a ConfigError naming file and key."""

    def __init__(self, data: dict[str, Any], file: str) -> None:
        self.data, self.file, self.keys = data, file, {}

    def get(self, key: str, default: Any = _MISSING, *, kind: type = int, field: str | None = None) -> Any:
        v = self.data.get(key, default)
        if v is _MISSING:
            raise ConfigError(self.file, key, problem=(
                f"required key is missing for model_type {self.data.get('model_type')!r}"))
        if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise ConfigError(self.file, key, v, allowed="an integer")
        if kind is bool and not isinstance(v, bool):
            raise ConfigError(self.file, key, v, allowed="true or false")
        if kind is float and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ConfigError(self.file, key, v, allowed="a number")
        if kind is str and not isinstance(v, str):
            raise ConfigError(self.file, key, v, allowed="a string")
        if field:
            self.keys[field] = key
        return v

    def require(self, key: str, expected: Any, what: str, default: Any = _MISSING) -> None:
        v = self.data.get(key, default)
        if v is _MISSING:
            raise ConfigError(self.file, key, problem="required key is missing")
        if v != expected:
            raise ConfigError(self.file, key, v, allowed=f"{expected!r} ({what})")


def from_hf_config(path: str | Path, name: str | None = None) -> ModelSpec:
    """The ModelSpec described by the Hugging Face config.json at ``path`` (a file or a folder)."""
    p = Path(path)
    try:
        if p.is_dir():
            p = p / "config.json"
    except (OSError, ValueError):    # a name too long, a NUL byte: load_json says which
        pass
    file = str(p)
    from simhete.config import load_json

    data = load_json(p, "Hugging Face config.json")
    cfg = _Cfg(data, file)
    mtype = cfg.get("model_type", kind=str)
    if mtype == "gemma3":
        raise ConfigError(file, "model_type", mtype, problem=(
            "'gemma3' is the multimodal Gemma-3 (vision tower and text model); give the text-only "
            "config (model_type gemma3_text, e.g. google/gemma-3-1b)"))
    if mtype not in MODEL_TYPES:
        raise ConfigError(file, "model_type", mtype, allowed="one of " + ", ".join(MODEL_TYPES))
    if name is None:
        given = data.get("_name_or_path")
        name = given if isinstance(given, str) and given else p.parent.name or p.stem
    reader = {"llama": _llama, "mistral": _llama, "qwen2": _llama, "qwen3": _llama, "phi3": _llama,
              "gemma": _llama, "gemma2": _llama, "gemma3_text": _llama, "gpt2": _gpt2, "gptj": _gptj,
              "opt": _opt, "gpt_neox": _neox, "falcon": _falcon, "bloom": _bloom}[mtype]
    fields = reader(cfg)
    flags = [fields.get(k) for k in ("qkv_bias", "out_bias", "mlp_bias")]
    if all(f is not None for f in flags) and len(set(flags)) == 1:  # one flag for every linear
        fields["bias"] = flags[0]
    for k in ("qkv_bias", "out_bias", "mlp_bias"):  # None: as ``bias`` (the presets' structure)
        if fields.get(k) == fields["bias"]:
            fields[k] = None
    try:
        return ModelSpec(name=name, family=mtype, **fields)
    except ConfigError as e:  # a spec-level inconsistency: name the config.json key it came from
        problem = e.problem or f"bad value {e.value!r}; allowed: {e.allowed}"
        raise ConfigError(file, cfg.keys.get(e.key or "", e.key), problem=problem) from None


def _dropout(cfg: _Cfg, *keys_defaults: tuple[str, float]) -> bool:
    return any(cfg.get(k, d, kind=float) > 0 for k, d in keys_defaults)


def _act(cfg: _Cfg, key: str, default: str, allowed: tuple[str, ...] = ("gelu", "relu")) -> str:
    """The MLP activation named by ``key``: 'gelu' for any GeLU variant, 'relu', or refused."""
    act = cfg.get(key, default, kind=str)
    if act in GELUS and "gelu" in allowed:
        return "gelu"
    if act == "relu" and "relu" in allowed:
        return "relu"
    names = (GELUS if "gelu" in allowed else ()) + (("relu",) if "relu" in allowed else ())
    raise ConfigError(cfg.file, key, act, allowed="one of " + ", ".join(names))


def _head_dim(cfg: _Cfg, hidden: int, heads: int, default: int | None) -> int:
    """The config's head_dim (null or absent: ``default``, or hidden / heads) as attn_head_dim:
    0 when it equals hidden / heads, so such models keep the plain structure."""
    v = cfg.data.get("head_dim", default)
    if v is None:
        return 0
    d = cfg.get("head_dim", default, field="attn_head_dim")
    if d < 1:
        raise ConfigError(cfg.file, "head_dim", d, allowed="a positive integer or null")
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden == heads * d:
        return 0
    return d


# Defaults of the transformers config classes where the key is absent (or null, for K/V heads):
# num_key_value_heads null means num_attention_heads in every class; absent, the signature's
# default (MistralConfig 8, Qwen2Config/Qwen3Config 32, GemmaConfig 16, Gemma2/Gemma3TextConfig 4).
_KV_DEFAULT = {"mistral": 8, "qwen2": 32, "qwen3": 32, "gemma": 16, "gemma2": 4, "gemma3_text": 4}
_MAX_POS = {"llama": 2048, "mistral": 131072, "qwen2": 32768, "qwen3": 32768, "phi3": 4096, "gemma": 8192,
            "gemma2": 8192, "gemma3_text": 131072}


def _kv_heads(cfg: _Cfg, heads: int) -> int:
    if cfg.data.get("num_key_value_heads", _MISSING) is None:
        return heads
    return cfg.get("num_key_value_heads", _KV_DEFAULT.get(cfg.data["model_type"], heads), field="n_kv_heads")


def _llama(cfg: _Cfg) -> dict[str, Any]:
    """LLaMA and the families built like it (RMSNorm, gated MLP, rotary): see the module docstring."""
    mtype = cfg.data["model_type"]
    heads = cfg.get("num_attention_heads", field="n_heads")
    hidden = cfg.get("hidden_size", field="hidden")
    gemma = mtype.startswith("gemma")
    if gemma:  # GemmaMLP uses hidden_activation, falling back to hidden_act
        key = "hidden_activation" if cfg.data.get("hidden_activation") is not None else "hidden_act"
        _act(cfg, key, "gelu_pytorch_tanh", allowed=("gelu",))
    else:
        cfg.require("hidden_act", "silu", "SwiGLU MLP", default="silu")
    head_default = {"qwen3": 128, "gemma": 256, "gemma2": 256, "gemma3_text": 256}.get(mtype)
    if mtype == "phi3":
        head_default = None
    attn_bias = cfg.get("attention_bias", False, kind=bool) if mtype != "phi3" else False
    qkv_bias, out_bias, mlp_bias = attn_bias, attn_bias, False
    if mtype == "llama":
        mlp_bias = cfg.get("mlp_bias", False, kind=bool)
    elif mtype == "mistral":  # MistralAttention/MistralMLP: bias=False, whatever the config says
        qkv_bias = out_bias = False
    elif mtype == "qwen2":    # Qwen2Attention: q/k/v with bias=True, o_proj without
        qkv_bias, out_bias = True, False
    dropout = ()
    if mtype == "phi3":
        dropout = (("resid_pdrop", 0.0), ("embd_pdrop", 0.0))
    tied_default = gemma
    return dict(n_layers=cfg.get("num_hidden_layers", field="n_layers"), hidden=hidden, n_heads=heads,
                n_kv_heads=_kv_heads(cfg, heads),
                ffn_hidden=cfg.get("intermediate_size", field="ffn_hidden"),
                vocab=cfg.get("vocab_size", field="vocab"),
                max_seq=cfg.get("max_position_embeddings", _MAX_POS.get(mtype, _MISSING), field="max_seq"),
                norm="rmsnorm", mlp="swiglu", bias=False, qkv_bias=qkv_bias, out_bias=out_bias,
                mlp_bias=mlp_bias, pos="rope", attn_head_dim=_head_dim(cfg, hidden, heads, head_default),
                qk_norm=mtype in ("qwen3", "gemma3_text"),
                norms_per_block=4 if mtype in ("gemma2", "gemma3_text") else 2,
                tied_embeddings=cfg.get("tie_word_embeddings", tied_default, kind=bool),
                dropout=_dropout(cfg, *dropout) if dropout else False,
                attn_dropout=_dropout(cfg, ("attention_dropout", 0.0)))


def _gpt2(cfg: _Cfg) -> dict[str, Any]:
    hidden = cfg.get("n_embd", field="hidden")
    inner = cfg.data.get("n_inner")
    cfg.require("add_cross_attention", False, "no cross-attention (a decoder-only model)", default=False)
    return dict(n_layers=cfg.get("n_layer", field="n_layers"), hidden=hidden,
                n_heads=cfg.get("n_head", field="n_heads"), n_kv_heads=cfg.get("n_head"),
                ffn_hidden=4 * hidden if inner is None else cfg.get("n_inner", field="ffn_hidden"),
                vocab=cfg.get("vocab_size", field="vocab"),
                max_seq=cfg.get("n_positions", field="max_seq"),
                norm="layernorm", mlp=_act(cfg, "activation_function", "gelu_new"), bias=True,
                pos="learned", tied_embeddings=cfg.get("tie_word_embeddings", True, kind=bool),
                dropout=_dropout(cfg, ("resid_pdrop", 0.1), ("embd_pdrop", 0.1)),
                attn_dropout=_dropout(cfg, ("attn_pdrop", 0.1)))


def _gptj(cfg: _Cfg) -> dict[str, Any]:
    """GPT-J (GPTJBlock): ln_1 shared by attention and MLP run in parallel; q, k, v, out_proj
    without bias; fc_in/fc_out with bias; ln_f; lm_head with a bias."""
    hidden = cfg.get("n_embd", field="hidden")
    inner = cfg.data.get("n_inner")
    heads = cfg.get("n_head", field="n_heads")
    return dict(n_layers=cfg.get("n_layer", field="n_layers"), hidden=hidden, n_heads=heads, n_kv_heads=heads,
                ffn_hidden=4 * hidden if inner is None else cfg.get("n_inner", field="ffn_hidden"),
                vocab=cfg.get("vocab_size", field="vocab"), max_seq=cfg.get("n_positions", field="max_seq"),
                norm="layernorm", mlp=_act(cfg, "activation_function", "gelu_new"), bias=True,
                qkv_bias=False, out_bias=False, pos="rope", norms_per_block=1, lm_head_bias=True,
                tied_embeddings=cfg.get("tie_word_embeddings", False, kind=bool),
                dropout=_dropout(cfg, ("resid_pdrop", 0.0), ("embd_pdrop", 0.0)),
                attn_dropout=_dropout(cfg, ("attn_pdrop", 0.0)))


def _opt(cfg: _Cfg) -> dict[str, Any]:
    hidden = cfg.get("hidden_size", field="hidden")
    proj = cfg.get("word_embed_proj_dim", hidden, field="embed_dim")
    if proj < 1:
        raise ConfigError(cfg.file, "word_embed_proj_dim", proj, allowed="a positive integer")
    pre = cfg.get("do_layer_norm_before", True, kind=bool)
    removed = cfg.get("_remove_final_layer_norm", False, kind=bool)
    heads = cfg.get("num_attention_heads", field="n_heads")
    return dict(n_layers=cfg.get("num_hidden_layers", field="n_layers"), hidden=hidden, n_heads=heads,
                n_kv_heads=heads, ffn_hidden=cfg.get("ffn_dim", field="ffn_hidden"),
                vocab=cfg.get("vocab_size", field="vocab"),
                max_seq=cfg.get("max_position_embeddings", field="max_seq"),
                norm="layernorm", mlp=_act(cfg, "activation_function", "relu"),
                bias=cfg.get("enable_bias", True, kind=bool),
                norm_affine=cfg.get("layer_norm_elementwise_affine", True, kind=bool),
                final_norm=pre and not removed,  # OPTDecoder builds final_layer_norm only then
                embed_dim=0 if proj == hidden else proj,
                pos="learned", pos_offset=2,  # OPTLearnedPositionalEmbedding's padding offset
                tied_embeddings=cfg.get("tie_word_embeddings", True, kind=bool),
                dropout=_dropout(cfg, ("dropout", 0.1)),
                attn_dropout=_dropout(cfg, ("attention_dropout", 0.0)))


def _neox(cfg: _Cfg) -> dict[str, Any]:
    heads = cfg.get("num_attention_heads", field="n_heads")
    attn_bias = cfg.get("attention_bias", True, kind=bool)
    return dict(n_layers=cfg.get("num_hidden_layers", field="n_layers"),
                hidden=cfg.get("hidden_size", field="hidden"), n_heads=heads, n_kv_heads=heads,
                ffn_hidden=cfg.get("intermediate_size", field="ffn_hidden"),
                vocab=cfg.get("vocab_size", field="vocab"),
                max_seq=cfg.get("max_position_embeddings", field="max_seq"),
                norm="layernorm", mlp=_act(cfg, "hidden_act", "gelu"), bias=True,
                qkv_bias=attn_bias, out_bias=attn_bias,  # GPTNeoXMLP's dense layers always have biases
                pos="rope", tied_embeddings=cfg.get("tie_word_embeddings", False, kind=bool),
                dropout=_dropout(cfg, ("hidden_dropout", 0.0)),
                attn_dropout=_dropout(cfg, ("attention_dropout", 0.0)))


def _falcon(cfg: _Cfg) -> dict[str, Any]:
    """Falcon (FalconDecoderLayer): fused query_key_value of (a + 2·g)·d outputs, g = num_kv_heads
    (new_decoder_architecture), 1 (multi_query) or a; every linear with ``bias``; LayerNorms:
    input + post-attention (sequential), one shared input norm (parallel_attn), or ln_attn +
    ln_mlp (new architecture with num_ln_in_parallel_attn 2, its default)."""
    heads = cfg.get("num_attention_heads", field="n_heads")
    hidden = cfg.get("hidden_size", field="hidden")
    new = cfg.get("new_decoder_architecture", False, kind=bool)
    parallel = cfg.get("parallel_attn", True, kind=bool)
    if new:
        kv = cfg.get("num_kv_heads", heads, field="n_kv_heads")
        n_ln = cfg.data.get("num_ln_in_parallel_attn")
        n_ln = 2 if n_ln is None else cfg.get("num_ln_in_parallel_attn")
        if n_ln not in (1, 2):
            raise ConfigError(cfg.file, "num_ln_in_parallel_attn", n_ln, allowed="1, 2 or null")
        norms = n_ln
    else:
        kv = 1 if cfg.get("multi_query", True, kind=bool) else heads
        norms = 1 if parallel else 2
    if not new and not parallel:
        norms = 2
    ffn = cfg.data.get("ffn_hidden_size")
    alibi = cfg.get("alibi", False, kind=bool)
    return dict(n_layers=cfg.get("num_hidden_layers", field="n_layers"), hidden=hidden, n_heads=heads,
                n_kv_heads=kv, ffn_hidden=4 * hidden if ffn is None else cfg.get("ffn_hidden_size", field="ffn_hidden"),
                vocab=cfg.get("vocab_size", field="vocab"),
                max_seq=cfg.get("max_position_embeddings", 2048, field="max_seq"),
                norm="layernorm", mlp=_act(cfg, "activation", "gelu"), bias=cfg.get("bias", False, kind=bool),
                pos="alibi" if alibi else "rope", norms_per_block=norms,
                tied_embeddings=cfg.get("tie_word_embeddings", True, kind=bool),
                dropout=_dropout(cfg, ("hidden_dropout", 0.0)),
                attn_dropout=_dropout(cfg, ("attention_dropout", 0.0)))


def _bloom(cfg: _Cfg) -> dict[str, Any]:
    """BLOOM (BloomModel): word_embeddings_layernorm, ALiBi, fused query_key_value and dense with
    biases, 4·h GeLU MLP with biases, two LayerNorms per block, ln_f, tied LM head."""
    key = "n_embed" if "n_embed" in cfg.data else "hidden_size"
    hidden = cfg.get(key, 64, field="hidden")
    lkey = "n_layer" if "n_layer" in cfg.data else "num_hidden_layers"
    hkey = "n_head" if "n_head" in cfg.data else "num_attention_heads"
    heads = cfg.get(hkey, 8, field="n_heads")
    return dict(n_layers=cfg.get(lkey, 2, field="n_layers"), hidden=hidden, n_heads=heads, n_kv_heads=heads,
                ffn_hidden=4 * hidden, vocab=cfg.get("vocab_size", 250880, field="vocab"),
                max_seq=cfg.get("seq_length", 2048, field="max_seq"),
                norm="layernorm", mlp="gelu", bias=True, pos="alibi", embed_norm=True,
                tied_embeddings=cfg.get("tie_word_embeddings", True, kind=bool),
                dropout=_dropout(cfg, ("hidden_dropout", 0.0)),
                attn_dropout=_dropout(cfg, ("attention_dropout", 0.0)))

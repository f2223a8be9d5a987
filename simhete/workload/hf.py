"""Read a local Hugging Face ``config.json`` into a ModelSpec.

Supported ``model_type`` values and the keys read (defaults as in the transformers config classes):

- ``llama``, ``mistral``: hidden_size, num_hidden_layers, num_attention_heads,
  num_key_value_heads (default: num_attention_heads), intermediate_size, vocab_size,
  max_position_embeddings, tie_word_embeddings (false), attention_bias and mlp_bias (false),
  attention_dropout (0; LLaMA has no residual dropout), hidden_act (must be silu), head_dim (must be hidden/heads if present).
  RMSNorm, SwiGLU, rotary positions. Mistral's sliding window does not change the parameters and
  is ignored (attention is priced as full causal).
- ``gpt2``: n_embd, n_layer, n_head, n_inner (null: 4·n_embd), vocab_size, n_positions,
  tie_word_embeddings (true), resid_pdrop/embd_pdrop and attn_pdrop (0.1). LayerNorm, GeLU, learned positions, biases.
- ``opt``: hidden_size, num_hidden_layers, num_attention_heads, ffn_dim, vocab_size,
  max_position_embeddings (+2 position rows), activation_function (relu or gelu), enable_bias
  (true), tie_word_embeddings (true), dropout (0.1), attention_dropout (0); word_embed_proj_dim must equal hidden_size
  and do_layer_norm_before must be true (OPT-350m's projections and post-norm are not modelled).
- ``gpt_neox``: hidden_size, num_hidden_layers, num_attention_heads, intermediate_size,
  vocab_size, max_position_embeddings, tie_word_embeddings (false), hidden_act (gelu),
  attention_bias (true), hidden_dropout and attention_dropout (0). LayerNorm, GeLU, rotary
  positions (partial rotary changes no parameter), parallel residual (same parameters and ops).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simhete.errors import ConfigError
from simhete.workload.spec import ModelSpec

_MISSING = object()
MODEL_TYPES = ("gpt2", "gpt_neox", "llama", "mistral", "opt")


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
    if p.is_dir():
        p = p / "config.json"
    file = str(p)
    from simhete.config import load_json

    data = load_json(p, "Hugging Face config.json")
    cfg = _Cfg(data, file)
    mtype = cfg.get("model_type", kind=str)
    if mtype not in MODEL_TYPES:
        raise ConfigError(file, "model_type", mtype, allowed="one of " + ", ".join(MODEL_TYPES))
    if name is None:
        given = data.get("_name_or_path")
        name = given if isinstance(given, str) and given else p.parent.name or p.stem
    fields = {"llama": _llama, "mistral": _llama, "gpt2": _gpt2, "opt": _opt, "gpt_neox": _neox}[mtype](cfg)
    try:
        return ModelSpec(name=name, family=mtype, **fields)
    except ConfigError as e:  # a spec-level inconsistency: name the config.json key it came from
        problem = e.problem or f"bad value {e.value!r}; allowed: {e.allowed}"
        raise ConfigError(file, cfg.keys.get(e.key or "", e.key), problem=problem) from None


def _dropout(cfg: _Cfg, *keys_defaults: tuple[str, float]) -> bool:
    return any(cfg.get(k, d, kind=float) > 0 for k, d in keys_defaults)


def _llama(cfg: _Cfg) -> dict[str, Any]:
    heads = cfg.get("num_attention_heads", field="n_heads")
    hidden = cfg.get("hidden_size", field="hidden")
    cfg.require("hidden_act", "silu", "SwiGLU MLP", default="silu")
    head_dim = cfg.data.get("head_dim")
    if head_dim is not None and head_dim != hidden // heads:
        raise ConfigError(cfg.file, "head_dim", head_dim, allowed=(
            f"hidden_size / num_attention_heads = {hidden // heads} (a separate head_dim is not modelled)"))
    attn_bias = cfg.get("attention_bias", False, kind=bool)
    cfg.require("mlp_bias", attn_bias, "mlp_bias equal to attention_bias", default=False)
    return dict(n_layers=cfg.get("num_hidden_layers", field="n_layers"), hidden=hidden, n_heads=heads,
                n_kv_heads=cfg.get("num_key_value_heads", heads, field="n_kv_heads"),
                ffn_hidden=cfg.get("intermediate_size", field="ffn_hidden"),
                vocab=cfg.get("vocab_size", field="vocab"),
                max_seq=cfg.get("max_position_embeddings", field="max_seq"),
                norm="rmsnorm", mlp="swiglu", bias=attn_bias, pos="rope",
                tied_embeddings=cfg.get("tie_word_embeddings", False, kind=bool),
                attn_dropout=_dropout(cfg, ("attention_dropout", 0.0)))


def _gpt2(cfg: _Cfg) -> dict[str, Any]:
    hidden = cfg.get("n_embd", field="hidden")
    inner = cfg.data.get("n_inner")
    return dict(n_layers=cfg.get("n_layer", field="n_layers"), hidden=hidden,
                n_heads=cfg.get("n_head", field="n_heads"), n_kv_heads=cfg.get("n_head"),
                ffn_hidden=4 * hidden if inner is None else cfg.get("n_inner", field="ffn_hidden"),
                vocab=cfg.get("vocab_size", field="vocab"),
                max_seq=cfg.get("n_positions", field="max_seq"),
                norm="layernorm", mlp="gelu", bias=True, pos="learned",
                tied_embeddings=cfg.get("tie_word_embeddings", True, kind=bool),
                dropout=_dropout(cfg, ("resid_pdrop", 0.1), ("embd_pdrop", 0.1)),
                attn_dropout=_dropout(cfg, ("attn_pdrop", 0.1)))


def _opt(cfg: _Cfg) -> dict[str, Any]:
    hidden = cfg.get("hidden_size", field="hidden")
    cfg.require("word_embed_proj_dim", hidden, "equal to hidden_size", default=hidden)
    cfg.require("do_layer_norm_before", True, "pre-norm", default=True)
    act = cfg.get("activation_function", "relu", kind=str)
    if act not in ("relu", "gelu"):
        raise ConfigError(cfg.file, "activation_function", act, allowed="relu or gelu")
    heads = cfg.get("num_attention_heads", field="n_heads")
    return dict(n_layers=cfg.get("num_hidden_layers", field="n_layers"), hidden=hidden, n_heads=heads,
                n_kv_heads=heads, ffn_hidden=cfg.get("ffn_dim", field="ffn_hidden"),
                vocab=cfg.get("vocab_size", field="vocab"),
                max_seq=cfg.get("max_position_embeddings", field="max_seq"),
                norm="layernorm", mlp=act, bias=cfg.get("enable_bias", True, kind=bool),
                pos="learned", pos_offset=2,  # OPTLearnedPositionalEmbedding's padding offset
                tied_embeddings=cfg.get("tie_word_embeddings", True, kind=bool),
                dropout=_dropout(cfg, ("dropout", 0.1)),
                attn_dropout=_dropout(cfg, ("attention_dropout", 0.0)))


def _neox(cfg: _Cfg) -> dict[str, Any]:
    cfg.require("hidden_act", "gelu", "GeLU MLP", default="gelu")
    heads = cfg.get("num_attention_heads", field="n_heads")
    return dict(n_layers=cfg.get("num_hidden_layers", field="n_layers"),
                hidden=cfg.get("hidden_size", field="hidden"), n_heads=heads, n_kv_heads=heads,
                ffn_hidden=cfg.get("intermediate_size", field="ffn_hidden"),
                vocab=cfg.get("vocab_size", field="vocab"),
                max_seq=cfg.get("max_position_embeddings", field="max_seq"),
                norm="layernorm", mlp="gelu", bias=cfg.get("attention_bias", True, kind=bool),
                pos="rope", tied_embeddings=cfg.get("tie_word_embeddings", False, kind=bool),
                dropout=_dropout(cfg, ("hidden_dropout", 0.0)),
                attn_dropout=_dropout(cfg, ("attention_dropout", 0.0)))

"""Named model presets, keyed by the exact strings used in YAML and on the command line.

Every preset cites its source. Besides the fixed presets, any name ``gpt-like-h{H}-l{L}`` (with
optional ``-a{A}`` heads and ``-s{S}`` maximum sequence length) is a GPT-2-style model built by
:func:`gpt_like`, the parametrised family the offloading papers sweep over.
"""

from __future__ import annotations

import re
from types import MappingProxyType

from simhete.config import one_of
from simhete.errors import ConfigError
from simhete.workload.spec import ModelSpec

GPT2_VOCAB = 50257  # GPT-2 BPE vocabulary (Radford et al. 2019), also used by GPT-3 and gpt-like
GPT_LIKE_RE = re.compile(r"^gpt-like-h(\d+)-l(\d+)(?:-a(\d+))?(?:-s(\d+))?$")
GPT_LIKE_PATTERN = "gpt-like-h{H}-l{L}[-a{A}][-s{S}]"


def gpt_like(hidden: int, layers: int, heads: int | None = None, max_seq: int = 1024) -> ModelSpec:
    """A GPT-2-style model: vocab 50257, ffn 4h, LayerNorm, GeLU, biases, learned positions, tied
    embeddings, dropout — the Megatron-LM GPT-2 the offloading papers (ZeRO-Offload, StrongHold,
    AutoHete) scale by hidden size and depth at sequence length 1024.

    ``heads`` defaults to hidden/128 (head_dim 128, as in DeepSpeed's ZeRO-Offload tutorial 10B
    GPT-2: 50 layers, hidden 4096, 32 heads, seq 1024), falling back to head_dim 64.
    """
    if heads is None:
        heads = _default_heads(hidden)
        if heads == 0:
            raise ConfigError(None, "hidden", hidden, problem=(
                f"hidden={hidden} is not a multiple of 64; give the number of heads explicitly "
                f"(gpt-like-h{hidden}-l{layers}-a<heads>)"))
    name = f"gpt-like-h{hidden}-l{layers}" + (f"-a{heads}" if heads != _default_heads(hidden) else "")
    name += f"-s{max_seq}" if max_seq != 1024 else ""
    return ModelSpec(name=name, family="gpt-like", n_layers=layers, hidden=hidden, n_heads=heads,
                     n_kv_heads=heads, ffn_hidden=4 * hidden, vocab=GPT2_VOCAB, max_seq=max_seq,
                     norm="layernorm", mlp="gelu", bias=True, pos="learned",
                     tied_embeddings=True, dropout=True, attn_dropout=True)


def _default_heads(hidden: int) -> int:
    return hidden // 128 if hidden % 128 == 0 else hidden // 64 if hidden % 64 == 0 else 0


def _gpt3(name: str, layers: int, hidden: int, heads: int) -> ModelSpec:
    # Brown et al. 2020, "Language Models are Few-Shot Learners", §2.1: GPT-2 architecture
    # (pre-LayerNorm, GeLU, learned positions, tied embeddings), context 2048, ffn = 4·d_model,
    # GPT-2 BPE vocabulary, GPT-2's dropout (residual, embedding and attention). The alternating
    # locally banded sparse attention is not modelled.
    return ModelSpec(name=name, family="gpt3", n_layers=layers, hidden=hidden, n_heads=heads,
                     n_kv_heads=heads, ffn_hidden=4 * hidden, vocab=GPT2_VOCAB, max_seq=2048,
                     norm="layernorm", mlp="gelu", bias=True, pos="learned",
                     tied_embeddings=True, dropout=True, attn_dropout=True)


def _opt(name: str, layers: int, heads: int, hidden: int) -> ModelSpec:
    # Zhang et al. 2022, "OPT: Open Pre-trained Transformer Language Models", Table 1 (layers,
    # heads, d_model); §2.2: ReLU, dropout 0.1, context 2048; ffn = 4·d_model, vocab 50272,
    # attention_dropout 0.0 and 2 extra learned position rows (padding offset) from the released
    # Hugging Face config.json.
    return ModelSpec(name=name, family="opt", n_layers=layers, hidden=hidden, n_heads=heads,
                     n_kv_heads=heads, ffn_hidden=4 * hidden, vocab=50272, max_seq=2048,
                     norm="layernorm", mlp="relu", bias=True, pos="learned",
                     tied_embeddings=True, dropout=True, pos_offset=2)


def _llama(name: str, family: str, layers: int, hidden: int, heads: int, kv_heads: int, ffn: int,
           vocab: int, max_seq: int) -> ModelSpec:
    # LLaMA architecture: pre-RMSNorm, SwiGLU, rotary positions, no biases, untied LM head,
    # no dropout (Touvron et al. 2023, "Llama 2", §2.2 and Table 1; Dubey et al. 2024, "The Llama 3
    # Herd of Models", Table 3). ffn, vocab and attention_dropout 0.0 as in the released config.json.
    return ModelSpec(name=name, family=family, n_layers=layers, hidden=hidden, n_heads=heads,
                     n_kv_heads=kv_heads, ffn_hidden=ffn, vocab=vocab, max_seq=max_seq,
                     norm="rmsnorm", mlp="swiglu", bias=False, pos="rope",
                     tied_embeddings=False, dropout=False)


_PRESETS: tuple[ModelSpec, ...] = (
    # GPT-3, Brown et al. 2020 Table 2.1 (n_layers, d_model, n_heads).
    _gpt3("gpt3-125m", 12, 768, 12),
    _gpt3("gpt3-350m", 24, 1024, 16),
    _gpt3("gpt3-760m", 24, 1536, 16),
    # Table 2.1 lists 24 heads of d_head 128 for d_model 2048, which is inconsistent; we keep
    # d_head = 128 and use 16 heads (as GPT-Neo 1.3B does). Parameter count is unaffected.
    _gpt3("gpt3-1.3b", 24, 2048, 16),
    _gpt3("gpt3-2.7b", 32, 2560, 32),
    _gpt3("gpt3-6.7b", 32, 4096, 32),
    # Table 2.1 lists d_model 5140 with 40 heads of d_head 128; 5140 is not divisible by 40, so we
    # use 40 × 128 = 5120 (as the rest of the literature does).
    _gpt3("gpt3-13b", 40, 5120, 40),
    _gpt3("gpt3-175b", 96, 12288, 96),
    # OPT, Zhang et al. 2022 Table 1 (#L, #H, d_model).
    _opt("opt-1.3b", 24, 32, 2048),
    _opt("opt-2.7b", 32, 32, 2560),
    _opt("opt-6.7b", 32, 32, 4096),
    _opt("opt-13b", 40, 40, 5120),
    _opt("opt-30b", 48, 56, 7168),
    _opt("opt-66b", 64, 72, 9216),
    _opt("opt-175b", 96, 96, 12288),
    # LLaMA-2, Touvron et al. 2023 Table 1 and meta-llama/Llama-2-*-hf config.json.
    _llama("llama2-7b", "llama2", 32, 4096, 32, 32, 11008, 32000, 4096),
    _llama("llama2-13b", "llama2", 40, 5120, 40, 40, 13824, 32000, 4096),
    _llama("llama2-70b", "llama2", 80, 8192, 64, 8, 28672, 32000, 4096),
    # LLaMA-3, Dubey et al. 2024 Table 3 and meta-llama/Meta-Llama-3-*B config.json (vocab 128256).
    _llama("llama3-8b", "llama3", 32, 4096, 32, 8, 14336, 128256, 8192),
    _llama("llama3-70b", "llama3", 80, 8192, 64, 8, 28672, 128256, 8192),
    # Qwen2.5 base models (Qwen2ForCausalLM): LLaMA-like (RMSNorm, SwiGLU, RoPE, GQA) with tied
    # embeddings; dims from the released config.json (Qwen/Qwen2.5-1.5B: 28 layers, hidden 1536,
    # 12/2 heads, intermediate 8960; Qwen/Qwen2.5-3B: 36 layers, hidden 2048, 16/2 heads,
    # intermediate 11008; both vocab 151936, tie_word_embeddings true). Qwen2 has biases on the
    # q/k/v projections only; ModelSpec's bias flag covers every linear, so they are left out
    # (28 x 2048 = 57 K and 36 x 2560 = 92 K parameters, < 0.01 %).
    ModelSpec(name="qwen2.5-1.5b", family="qwen2.5", n_layers=28, hidden=1536, n_heads=12,
              n_kv_heads=2, ffn_hidden=8960, vocab=151936, max_seq=32768, norm="rmsnorm",
              mlp="swiglu", bias=False, pos="rope", tied_embeddings=True, dropout=False),
    ModelSpec(name="qwen2.5-3b", family="qwen2.5", n_layers=36, hidden=2048, n_heads=16,
              n_kv_heads=2, ffn_hidden=11008, vocab=151936, max_seq=32768, norm="rmsnorm",
              mlp="swiglu", bias=False, pos="rope", tied_embeddings=True, dropout=False),
)

PRESETS = MappingProxyType({m.name: m for m in _PRESETS})


def list_models() -> tuple[str, ...]:
    """Names of the fixed presets, in registry order (gpt-like names are open-ended)."""
    return tuple(PRESETS)


def list_families() -> tuple[str, ...]:
    """Families of the fixed presets, in registry order."""
    return tuple(dict.fromkeys(m.family for m in _PRESETS))


def family_models(family: str, file: str | None = None, key: str = "family") -> tuple[ModelSpec, ...]:
    """Preset models of ``family`` sorted by parameter count, smallest first.

    The ``gpt-like`` family is open-ended: build its members with :func:`gpt_like`.
    """
    one_of(family, list_families(), file, key, "model families")
    return tuple(sorted((m for m in _PRESETS if m.family == family), key=lambda m: m.n_params()))


def get_model(name: str, file: str | None = None, key: str = "model") -> ModelSpec:
    """The preset called ``name``, or a ``gpt-like-h{H}-l{L}[-a{A}][-s{S}]`` model."""
    if name in PRESETS:
        return PRESETS[name]
    m = GPT_LIKE_RE.match(name) if isinstance(name, str) else None
    if m:
        h, l, a, s = (int(g) if g else None for g in m.groups())
        try:
            return gpt_like(h, l, a, 1024 if s is None else s)
        except ConfigError as e:
            raise ConfigError(file, key, problem=f"{name!r}: {e}") from None
    # not a preset and not the gpt-like pattern: one_of raises, listing the valid names
    return PRESETS[one_of(name, list(PRESETS), file, key, f"models (or {GPT_LIKE_PATTERN})")]

"""ModelSpec: the architecture of a dense decoder-only transformer, and its exact parameter count.

Parameter counting (per transformer block, as in GPT-2/GPT-3/OPT/LLaMA and the Hugging Face
modules of the families hf.py reads; fused QKV or gate/up matrices hold the same elements):

- attention: Q projection h×q and output projection q×h, K and V projections h×(g·d) each, where
  d is the head dimension (h/a unless ``attn_head_dim`` is set, as in Gemma and Qwen3), q = a·d and
  g the number of key/value heads (g = a without GQA); QKV biases add q + 2·g·d, the output bias h;
  per-head q/k RMSNorms (Qwen3, Gemma-3) add a weight of d each (2·d).
- MLP: two matrices h×f and f×h (GeLU/ReLU) or three (SwiGLU/GeGLU: gate, up, down; Shazeer 2020,
  "GLU Variants Improve Transformer"); biases add f + h (or 2·f + h for gated MLPs).
- ``norms_per_block`` norms (2 pre-norm; 1 where attention and MLP share one input norm, GPT-J and
  Falcon-7B; 4 in Gemma-2/3, which also norm each branch's output): LayerNorm has a weight and a
  bias (2·h), RMSNorm only a weight (h), a norm without elementwise affine (OPT option) nothing.

Outside the blocks: token embedding V×p (p = ``embed_dim``, h unless set: OPT-350m embeds at 512
and projects in and out with bias-free p×h matrices), learned position embedding
(max_seq + pos_offset)×h (none for rotary or ALiBi positions), an optional LayerNorm on the
embeddings (BLOOM), a final norm (unless absent: OPT post-norm), and the LM head V×p unless tied to
the token embedding, plus an LM-head bias V where the family has one (GPT-J).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from simhete.errors import ConfigError

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "relu", "swiglu")
POSITIONS = ("learned", "rope", "alibi")

# Sanity limits, checked before anything is built: far beyond any trained dense transformer (the
# deepest decoders have ~100-130 blocks, e.g. LLaMA-3 405B 126; the widest hidden size 18,432,
# PaLM 540B; the largest vocabularies ~256k), so only a typo reaches them, and they keep every
# structure simhete builds (one task per block and op, the planners' tables) bounded.
MAX_LAYERS = 1024
MAX_HIDDEN = 65_536
MAX_FFN_HIDDEN = 262_144
MAX_VOCAB = 4_194_304
MAX_PARAMS = 10**13


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A dense decoder-only transformer. Hashable, so workloads built from it can be cached."""

    name: str
    family: str
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    """Key/value heads; equal to ``n_heads`` for multi-head attention, fewer for GQA."""
    ffn_hidden: int
    """Width f of the MLP intermediate (per matrix; SwiGLU has two h×f input matrices)."""
    vocab: int
    max_seq: int
    """Longest trained context; the number of learned position rows is ``max_seq + pos_offset``."""
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    mlp: Literal["gelu", "relu", "swiglu"] = "gelu"
    bias: bool = True
    """Biases on every linear layer of the blocks (the LM head never has one here)."""
    pos: Literal["learned", "rope"] = "learned"
    tied_embeddings: bool = True
    dropout: bool = False
    """Dropout on the embedding and residual branches (1-byte masks saved for backward)."""
    attn_dropout: bool = False
    """Dropout on the attention probabilities (stored only without flash attention)."""
    pos_offset: int = 0
    """Extra learned position rows (OPT reserves 2 for padding: 2050 rows for 2048 positions)."""
    # Fields below exist for Hugging Face families whose counts need them; their defaults give the
    # structure above (every preset leaves them at the default).
    attn_head_dim: int = 0
    """Head dimension d when it is not hidden / n_heads (Gemma: 256, Qwen3: 128); 0: h/a."""
    qkv_bias: bool | None = None
    """Biases on the Q, K, V projections; None: ``bias`` (Qwen2: true with bias false)."""
    out_bias: bool | None = None
    """Bias on the attention output projection; None: ``bias``."""
    mlp_bias: bool | None = None
    """Biases on the MLP matrices; None: ``bias`` (GPT-J and GPT-NeoX without attention bias)."""
    qk_norm: bool = False
    """Per-head RMSNorm of queries and keys (weight of head_dim each; Qwen3, Gemma-3)."""
    norms_per_block: int = 2
    """Norm layers per block: 2 pre-norm, 1 shared by parallel attention+MLP, 4 in Gemma-2/3."""
    norm_affine: bool = True
    """Norms carry weights (and LayerNorm biases); false: OPT's layer_norm_elementwise_affine."""
    final_norm: bool = True
    """A norm after the last block (OPT without ``do_layer_norm_before`` has none)."""
    embed_norm: bool = False
    """A norm on the token embeddings (BLOOM's word_embeddings_layernorm)."""
    embed_dim: int = 0
    """Width p of the token embedding and LM head when they differ from hidden (OPT-350m's
    word_embed_proj_dim 512, with p×h project_in and h×p project_out); 0: hidden."""
    lm_head_bias: bool = False
    """A bias of V on the LM head (GPT-J)."""

    def __post_init__(self) -> None:
        for f in ("n_layers", "hidden", "n_heads", "n_kv_heads", "ffn_hidden", "vocab", "max_seq"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(None, f, v, allowed="a positive integer")
        for f, limit in (("n_layers", MAX_LAYERS), ("hidden", MAX_HIDDEN), ("ffn_hidden", MAX_FFN_HIDDEN),
                         ("vocab", MAX_VOCAB)):
            if getattr(self, f) > limit:
                raise ConfigError(None, f, getattr(self, f), problem=(
                    f"{getattr(self, f)} is over simhete's sanity limit of {limit:,} for {f} "
                    "(beyond any trained transformer; a typo?)"))
        for f in ("pos_offset", "attn_head_dim", "embed_dim"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(None, f, v, allowed="a non-negative integer")
        for f in ("attn_head_dim", "embed_dim"):
            if getattr(self, f) > MAX_HIDDEN:
                raise ConfigError(None, f, getattr(self, f), problem=(
                    f"{getattr(self, f)} is over simhete's sanity limit of {MAX_HIDDEN:,} for {f} "
                    "(beyond any trained transformer; a typo?)"))
        if (isinstance(self.norms_per_block, bool) or not isinstance(self.norms_per_block, int)
                or not 0 <= self.norms_per_block <= 4):
            raise ConfigError(None, "norms_per_block", self.norms_per_block, allowed="an integer 0..4")
        if not self.attn_head_dim and self.hidden % self.n_heads:
            raise ConfigError(None, "n_heads", self.n_heads, problem=(
                f"hidden={self.hidden} is not divisible by n_heads={self.n_heads}; pick n_heads "
                f"dividing hidden (e.g. {self.hidden // 128 or 1} for head_dim 128 if it divides)"))
        if self.n_kv_heads > self.n_heads or self.n_heads % self.n_kv_heads:
            raise ConfigError(None, "n_kv_heads", self.n_kv_heads, problem=(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} "
                f"(use n_kv_heads=n_heads for multi-head attention)"))
        for f, allowed in (("norm", NORMS), ("mlp", MLPS), ("pos", POSITIONS)):
            if getattr(self, f) not in allowed:
                raise ConfigError(None, f, getattr(self, f), allowed="one of " + ", ".join(allowed))
        for f in ("bias", "tied_embeddings", "dropout", "attn_dropout", "qk_norm", "norm_affine",
                  "final_norm", "embed_norm", "lm_head_bias"):
            if not isinstance(getattr(self, f), bool):
                raise ConfigError(None, f, getattr(self, f), allowed="true or false")
        for f in ("qkv_bias", "out_bias", "mlp_bias"):
            if getattr(self, f) is not None and not isinstance(getattr(self, f), bool):
                raise ConfigError(None, f, getattr(self, f), allowed="true, false or null (= bias)")
        if self.pos_offset and self.pos != "learned":
            raise ConfigError(None, "pos_offset", self.pos_offset,
                              problem="pos_offset only applies to learned position embeddings")
        if self.n_params() > MAX_PARAMS:
            raise ConfigError(None, "n_layers", self.n_layers, problem=(
                f"the model has {self.n_params() / 1e12:,.1f} T parameters, over simhete's sanity limit of "
                f"{MAX_PARAMS / 1e12:.0f} T (beyond any trained dense transformer; a typo?)"))

    @property
    def head_dim(self) -> int:
        return self.attn_head_dim or self.hidden // self.n_heads

    @property
    def q_dim(self) -> int:
        """Width of the Q projection output (and output-projection input): n_heads · head_dim."""
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of the K (or V) projection output: n_kv_heads · head_dim."""
        return self.n_kv_heads * self.head_dim

    @property
    def embed_width(self) -> int:
        """Width p of the token embedding and LM head (hidden unless ``embed_dim`` is set)."""
        return self.embed_dim or self.hidden

    @property
    def n_mlp_in(self) -> int:
        """Number of h×f input matrices of the MLP: 2 for SwiGLU (gate, up), else 1."""
        return 2 if self.mlp == "swiglu" else 1

    def extra_structure(self) -> tuple[str, ...]:
        """Names of the Hugging Face-only fields set away from their defaults (empty for every
        preset): code that lays out a block by the plain structure (the replay's torch blocks,
        per-tensor listings) can refuse or fall back on such a model by name."""
        plain = {"attn_head_dim": 0, "qkv_bias": None, "out_bias": None, "mlp_bias": None, "qk_norm": False,
                 "norms_per_block": 2, "norm_affine": True, "final_norm": True, "embed_norm": False,
                 "embed_dim": 0, "lm_head_bias": False}
        out = tuple(k for k, v in plain.items() if getattr(self, k) != v)
        return out + (("pos",) if self.pos == "alibi" else ())

    def _flag(self, v: bool | None) -> bool:
        return self.bias if v is None else v

    def norm_params(self) -> int:
        """Parameters of one norm layer: weight (+ bias for LayerNorm); 0 without affine."""
        if not self.norm_affine:
            return 0
        return 2 * self.hidden if self.norm == "layernorm" else self.hidden

    def block_params(self) -> int:
        """Parameters of one transformer block (attention, MLP, its norms)."""
        h, q, kv, f = self.hidden, self.q_dim, self.kv_dim, self.ffn_hidden
        attn = 2 * h * q + 2 * h * kv
        attn += (q + 2 * kv if self._flag(self.qkv_bias) else 0) + (h if self._flag(self.out_bias) else 0)
        attn += 2 * self.head_dim if self.qk_norm else 0
        mlp = (self.n_mlp_in + 1) * h * f + ((self.n_mlp_in * f + h) if self._flag(self.mlp_bias) else 0)
        return attn + mlp + self.norms_per_block * self.norm_params()

    def embed_params(self) -> int:
        """Token embedding, learned position embedding (if any), embedding norm and projection."""
        p = self.embed_width
        pos = (self.max_seq + self.pos_offset) * self.hidden if self.pos == "learned" else 0
        return (self.vocab * p + pos + (self.norm_params() if self.embed_norm else 0)
                + (p * self.hidden if p != self.hidden else 0))

    def head_params(self) -> int:
        """Final norm, output projection, the LM head matrix (0 if tied) and its bias (if any)."""
        p = self.embed_width
        return ((self.norm_params() if self.final_norm else 0) + (p * self.hidden if p != self.hidden else 0)
                + (0 if self.tied_embeddings else self.vocab * p) + (self.vocab if self.lm_head_bias else 0))

    def n_params(self) -> int:
        """Exact number of trainable parameters (tied weights counted once)."""
        return self.embed_params() + self.n_layers * self.block_params() + self.head_params()

    def non_embedding_params(self) -> int:
        """Parameters of the transformer blocks and the final norm (Kaplan et al. 2020's N)."""
        return self.n_layers * self.block_params() + (self.norm_params() if self.final_norm else 0)

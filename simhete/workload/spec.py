"""ModelSpec: the architecture of a dense decoder-only transformer, and its exact parameter count.

Parameter counting (per transformer block, pre-norm, as in GPT-2/GPT-3/OPT/LLaMA):

- attention: Q and output projections h×h each, K and V projections h×(g·d) each, where
  d = h/a is the head dimension and g the number of key/value heads (g = a without GQA);
  biases (if any) add h + 2·g·d (QKV) + h (output).
- MLP: two matrices h×f and f×h (GeLU/ReLU) or three (SwiGLU: gate, up, down; Shazeer 2020,
  "GLU Variants Improve Transformer"); biases add f + h (or 2·f + h for SwiGLU).
- two norms: LayerNorm has a weight and a bias (2·h), RMSNorm only a weight (h).

Outside the blocks: token embedding V×h, learned position embedding (max_seq + pos_offset)×h,
a final norm, and the LM head V×h unless tied to the token embedding (no LM-head bias in any of
the supported families).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from simhete.errors import ConfigError

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "relu", "swiglu")
POSITIONS = ("learned", "rope")

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
        if isinstance(self.pos_offset, bool) or not isinstance(self.pos_offset, int) or self.pos_offset < 0:
            raise ConfigError(None, "pos_offset", self.pos_offset, allowed="a non-negative integer")
        if self.hidden % self.n_heads:
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
        for f in ("bias", "tied_embeddings", "dropout", "attn_dropout"):
            if not isinstance(getattr(self, f), bool):
                raise ConfigError(None, f, getattr(self, f), allowed="true or false")
        if self.pos_offset and self.pos != "learned":
            raise ConfigError(None, "pos_offset", self.pos_offset,
                              problem="pos_offset only applies to learned position embeddings")
        if self.n_params() > MAX_PARAMS:
            raise ConfigError(None, "n_layers", self.n_layers, problem=(
                f"the model has {self.n_params() / 1e12:,.1f} T parameters, over simhete's sanity limit of "
                f"{MAX_PARAMS / 1e12:.0f} T (beyond any trained dense transformer; a typo?)"))

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_heads

    @property
    def kv_dim(self) -> int:
        """Width of the K (or V) projection output: n_kv_heads · head_dim."""
        return self.n_kv_heads * self.head_dim

    @property
    def n_mlp_in(self) -> int:
        """Number of h×f input matrices of the MLP: 2 for SwiGLU (gate, up), else 1."""
        return 2 if self.mlp == "swiglu" else 1

    def norm_params(self) -> int:
        """Parameters of one norm layer: weight (+ bias for LayerNorm)."""
        return 2 * self.hidden if self.norm == "layernorm" else self.hidden

    def block_params(self) -> int:
        """Parameters of one transformer block (attention, MLP, two norms)."""
        h, kv, f = self.hidden, self.kv_dim, self.ffn_hidden
        attn = 2 * h * h + 2 * h * kv + (2 * h + 2 * kv if self.bias else 0)
        mlp = (self.n_mlp_in + 1) * h * f + ((self.n_mlp_in * f + h) if self.bias else 0)
        return attn + mlp + 2 * self.norm_params()

    def embed_params(self) -> int:
        """Token embedding plus learned position embedding (if any)."""
        pos = (self.max_seq + self.pos_offset) * self.hidden if self.pos == "learned" else 0
        return self.vocab * self.hidden + pos

    def head_params(self) -> int:
        """Final norm plus the LM head matrix (0 if tied to the token embedding)."""
        return self.norm_params() + (0 if self.tied_embeddings else self.vocab * self.hidden)

    def n_params(self) -> int:
        """Exact number of trainable parameters (tied weights counted once)."""
        return self.embed_params() + self.n_layers * self.block_params() + self.head_params()

    def non_embedding_params(self) -> int:
        """Parameters of the transformer blocks and the final norm (Kaplan et al. 2020's N)."""
        return self.n_layers * self.block_params() + self.norm_params()

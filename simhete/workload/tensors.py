"""A model's parameter tensors as its framework module holds them: element counts in module order
(the order of ``model.parameters()``), and whether weight decay applies to each.

Several mechanisms depend on the tensor split, not only on a block's parameter count: DeepSpeed
stage 1/2 runs its gradient checks once per parameter tensor (``copy_grads_in_partition``);
ZeRO-3 partitions, pads and persists per tensor (``partition_parameters.py``); the Hugging Face
Trainer puts biases and norm weights in the no-decay optimizer group
(``get_decay_parameter_names``), and DeepSpeed flattens each group on its own.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

# Families whose attention (and, for Phi-3, MLP input) projections are one fused matrix: Megatron /
# GPT-2 style c_attn / query_key_value (transformers GPT2Attention, GPTNeoXAttention, FalconAttention,
# BloomAttention; Phi3Attention qkv_proj and Phi3MLP gate_up_proj); the gpt-like and gpt3 presets
# follow Megatron-LM's fused query_key_value.
FUSED_QKV = frozenset({"gpt2", "gpt-like", "gpt3", "gpt_neox", "falcon", "bloom", "phi3"})


def block_kind(name: str) -> str:
    """``embed``, ``head`` or ``block`` (a transformer block) for a block's name."""
    return name if name in ("embed", "head") else "block"


@lru_cache(maxsize=1024)
def layout(spec: Any, kind: str) -> tuple[tuple[int, bool], ...]:
    """(elements, decayed) of each parameter tensor of one ``kind`` of block (:func:`block_kind`),
    in module order: embed — token table (+ learned positions, embedding norm, project_in); a
    transformer block — norm 1 (weight, + bias for LayerNorm), the attention projections (fused
    QKV or q, k, v) and output projection, each weight then its bias, q/k norms, norm 2, the MLP
    matrices (gate and up, or fc1; then down) with biases; head — the final norm, project_out, an
    untied LM head and its bias. ``decayed``: matrices and embedding tables yes, biases and norm
    weights no (the Trainer's no-decay group)."""
    h, q, kv, f, p = spec.hidden, spec.q_dim, spec.kv_dim, spec.ffn_hidden, spec.embed_width
    flag = spec._flag

    def norm() -> list[tuple[int, bool]]:
        if not spec.norm_affine:
            return []
        return [(h, False), (h, False)] if spec.norm == "layernorm" else [(h, False)]

    def lin(n_in: int, n_out: int, bias: bool) -> list[tuple[int, bool]]:
        return [(n_in * n_out, True)] + ([(n_out, False)] if bias else [])

    if kind == "embed":
        t = [(spec.vocab * p, True)] \
            + ([((spec.max_seq + spec.pos_offset) * h, True)] if spec.pos == "learned" else []) \
            + (norm() if spec.embed_norm else []) + ([(p * h, True)] if p != h else [])
    elif kind == "head":
        t = (norm() if spec.final_norm else []) + ([(p * h, True)] if p != h else []) \
            + ([] if spec.tied_embeddings else [(spec.vocab * p, True)]) \
            + ([(spec.vocab, False)] if spec.lm_head_bias else [])
    else:
        qb = flag(spec.qkv_bias)
        attn = lin(h, q + 2 * kv, qb) if spec.family in FUSED_QKV else lin(h, q, qb) + lin(h, kv, qb) + lin(h, kv, qb)
        attn += lin(q, h, flag(spec.out_bias)) + ([(spec.head_dim, False)] * 2 if spec.qk_norm else [])
        mb = flag(spec.mlp_bias)
        mlp = lin(h, spec.n_mlp_in * f, mb) if spec.family == "phi3" else \
            [x for _ in range(spec.n_mlp_in) for x in lin(h, f, mb)]
        mlp += lin(f, h, mb)
        norms = [norm() for _ in range(spec.norms_per_block)]
        t = (norms[0] if norms else []) + attn + [x for nm in norms[1:] for x in nm] + mlp
    return tuple(x for x in t if x[0])


def param_tensors(spec: Any, blk: Any) -> tuple[int, ...]:
    """Element counts of ``blk``'s parameter tensors in module order (:func:`layout`). When the
    layout does not add up to the block's parameters (a structure not laid out here) the block
    counts as one tensor."""
    t = tuple(n for n, _ in layout(spec, block_kind(blk.name)))
    return t if sum(t) == blk.params else (blk.params,)


def model_tensors(spec: Any) -> list[tuple[int, bool]]:
    """(elements, decayed) of every parameter tensor of the whole model, in model order."""
    return list(layout(spec, "embed")) + list(layout(spec, "block")) * spec.n_layers + list(layout(spec, "head"))

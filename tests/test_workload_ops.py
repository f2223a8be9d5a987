"""build_workload: block structure, op shapes, FLOPs and memory by class, with hand-computed answers."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simhete.errors import ConfigError
from simhete.opkinds import OpKind
from simhete.schedule import Op
from simhete.workload import ModelSpec, build_workload, get_model, gpt_like

# A tiny GPT: h = 8, 2 heads (d = 4), f = 32, V = 16, 4 positions, LayerNorm, GeLU, dropout
# (residual and attention).
TINY_GPT = ModelSpec(name="tiny-gpt", family="t", n_layers=2, hidden=8, n_heads=2, n_kv_heads=2,
                     ffn_hidden=32, vocab=16, max_seq=4, dropout=True, attn_dropout=True)
# A tiny LLaMA: h = 8, 4 heads (d = 2), 2 KV heads (kv = 4), f = 12, RMSNorm, SwiGLU, no dropout.
TINY_LLAMA = ModelSpec(name="tiny-llama", family="t", n_layers=3, hidden=8, n_heads=4, n_kv_heads=2,
                       ffn_hidden=12, vocab=16, max_seq=64, norm="rmsnorm", mlp="swiglu", bias=False,
                       pos="rope", tied_embeddings=False)


def test_block_order_and_params() -> None:
    w = build_workload("llama2-7b", 1, 4096)
    assert [b.name for b in w.blocks] == ["embed", *(f"b{i}" for i in range(32)), "head"]
    assert [b.index for b in w.blocks] == list(range(34))
    assert sum(b.params for b in w.blocks) == w.params == 6_738_415_616
    assert w.blocks[0].params == 32000 * 4096 and w.blocks[-1].params == 32000 * 4096 + 4096
    assert w.blocks[-1].tied_to is None
    assert build_workload("gpt3-125m", 1, 8).blocks[-1].tied_to == 0  # LM head uses embed's weights
    assert w.tokens_per_iter == 4096 and (w.micro_batch, w.seq_len, w.dtype) == (1, 4096, "bf16")


def test_identical_blocks_share_identical_ops() -> None:
    w = build_workload("llama3-8b", 2, 1024)
    mid = w.blocks[1:-1]
    assert all(b.fwd_ops == mid[0].fwd_ops and b.bwd_ops == mid[0].bwd_ops for b in mid)
    assert len({b.fwd_ops for b in mid}) == 1 and len({b.bwd_ops for b in mid}) == 1  # hashable
    assert build_workload("llama3-8b", 2, 1024) is w  # cached


def test_llama_block_ops_exact() -> None:
    # LLaMA-2-7B, b = 2, s = 8: T = 16 tokens, h = 4096, f = 11008, d = 128, MHA (kv = h), e = 2.
    w = build_workload("llama2-7b", 2, 8)
    T, h, f, e = 16, 4096, 11008, 2
    attn = (2, 32, 8, 8, 128, 1)
    assert w.blocks[1].fwd_ops == (
        Op(OpKind.RMSNORM, (), 2 * e * T * h),
        Op(OpKind.GEMM, (T, 3 * h, h)),                      # fused QKV
        Op(OpKind.ROPE, (), 2 * e * T * 2 * h),              # rope on q and k
        Op(OpKind.ATTN_FWD, attn),
        Op(OpKind.GEMM, (T, h, h)),                          # output projection
        Op(OpKind.ELEMENTWISE, (), 3 * e * T * h),           # residual add
        Op(OpKind.RMSNORM, (), 2 * e * T * h),
        Op(OpKind.GEMM, (T, f, h), count=2),                 # gate and up
        Op(OpKind.SWIGLU, (), 2 * e * T * f),                # silu
        Op(OpKind.ELEMENTWISE, (), 3 * e * T * f),           # silu(g) · u
        Op(OpKind.GEMM, (T, h, f)),                          # down
        Op(OpKind.ELEMENTWISE, (), 3 * e * T * h),
    )
    assert w.blocks[1].bwd_ops == (
        Op(OpKind.ELEMENTWISE, (), 3 * e * T * h),
        Op(OpKind.GEMM, (T, f, h)), Op(OpKind.GEMM, (h, f, T)),                  # down: dX, dW
        Op(OpKind.ELEMENTWISE, (), 5 * e * T * f), Op(OpKind.SWIGLU_BWD, (), 3 * e * T * f),
        Op(OpKind.GEMM, (T, h, f), count=2), Op(OpKind.GEMM, (f, h, T), count=2),  # gate, up
        Op(OpKind.ELEMENTWISE, (), 3 * e * T * h),                               # dX sum
        Op(OpKind.RMSNORM_BWD, (), 3 * e * T * h),
        Op(OpKind.ELEMENTWISE, (), 3 * e * T * h),
        Op(OpKind.GEMM, (T, h, h)), Op(OpKind.GEMM, (h, h, T)),
        Op(OpKind.ATTN_BWD, attn),
        Op(OpKind.ROPE_BWD, (), 2 * e * T * 2 * h),
        Op(OpKind.GEMM, (T, h, 3 * h)), Op(OpKind.GEMM, (3 * h, h, T)),
        Op(OpKind.RMSNORM_BWD, (), 3 * e * T * h),
    )
    head = w.blocks[-1]
    V = 32000
    # cross-entropy as torch runs it on logits.float(): upcast, log_softmax, nll_loss gather;
    # backward: nll_loss_backward's zero fill (ATen Loss.cu grad_input.zero_()) and scatter,
    # log_softmax_backward, the upcast's backward cast
    assert head.fwd_ops == (Op(OpKind.RMSNORM, (), 2 * e * T * h), Op(OpKind.GEMM, (T, V, h)),
                            Op(OpKind.ELEMENTWISE, (), 6 * T * V),
                            Op(OpKind.SOFTMAX_CE, (T, V), 8 * T * V),
                            Op(OpKind.ELEMENTWISE, (), 12 * T))
    assert head.bwd_ops == (Op(OpKind.ELEMENTWISE, (), 4 * T * V), Op(OpKind.ELEMENTWISE, (), 12 * T),
                            Op(OpKind.SOFTMAX_CE, (T, V), 12 * T * V),
                            Op(OpKind.ELEMENTWISE, (), 6 * T * V),
                            Op(OpKind.GEMM, (T, h, V)), Op(OpKind.GEMM, (V, h, T)),
                            Op(OpKind.RMSNORM_BWD, (), 3 * e * T * h))
    assert w.blocks[0].fwd_ops == (Op(OpKind.EMBED, (T, h), 8 * T + 2 * e * T * h),)


def test_gpt_block_ops_exact_kinds() -> None:
    # TINY_GPT, b = 2, s = 4: T = 8 tokens, h = 8, f = 32, 2 heads of d = 4, e = 2, dropout:
    # LayerNorm → NORM, GeLU → GELU (fwd and bwd), residual dropout → DROPOUT in the forward (the
    # add fused with it: 3·e·T·h + 1-byte mask) and ELEMENTWISE in the backward (masked scale).
    w = build_workload(TINY_GPT, 2, 4)
    T, h, f, e = 8, 8, 32, 2
    attn = (2, 2, 4, 4, 4, 1)
    drop_fwd = Op(OpKind.DROPOUT, (), 3 * e * T * h + T * h)
    drop_bwd = Op(OpKind.ELEMENTWISE, (), 3 * e * T * h + (2 * e + 1) * T * h)
    assert w.blocks[1].fwd_ops == (
        Op(OpKind.NORM, (), 2 * e * T * h), Op(OpKind.GEMM, (T, 3 * h, h)), Op(OpKind.ATTN_FWD, attn),
        Op(OpKind.GEMM, (T, h, h)), drop_fwd, Op(OpKind.NORM, (), 2 * e * T * h),
        Op(OpKind.GEMM, (T, f, h)), Op(OpKind.GELU, (), 2 * e * T * f), Op(OpKind.GEMM, (T, h, f)),
        drop_fwd)
    assert w.blocks[1].bwd_ops == (
        drop_bwd, Op(OpKind.GEMM, (T, f, h)), Op(OpKind.GEMM, (h, f, T)),
        Op(OpKind.GELU_BWD, (), 3 * e * T * f), Op(OpKind.GEMM, (T, h, f)), Op(OpKind.GEMM, (f, h, T)),
        Op(OpKind.NORM_BWD, (), 3 * e * T * h), drop_bwd, Op(OpKind.GEMM, (T, h, h)),
        Op(OpKind.GEMM, (h, h, T)), Op(OpKind.ATTN_BWD, attn), Op(OpKind.GEMM, (T, h, 3 * h)),
        Op(OpKind.GEMM, (3 * h, h, T)), Op(OpKind.NORM_BWD, (), 3 * e * T * h))
    # embed: token gather, then the learned-position add with dropout (4 positions × h rows read)
    assert w.blocks[0].fwd_ops == (Op(OpKind.EMBED, (T, h), 8 * T + 2 * e * T * h),
                                   Op(OpKind.DROPOUT, (), 2 * e * T * h + e * 4 * h + T * h))
    assert w.blocks[-1].fwd_ops[0] == Op(OpKind.NORM, (), 2 * e * T * h)
    # ReLU (OPT) → RELU; no dropout → the residual is a plain ELEMENTWISE add
    relu = build_workload(dataclasses.replace(TINY_GPT, mlp="relu", dropout=False,
                                              attn_dropout=False), 2, 4)
    kinds = [op.kind for op in relu.blocks[1].fwd_ops]
    assert OpKind.RELU in kinds and OpKind.DROPOUT not in kinds and OpKind.GELU not in kinds
    assert [op.kind for op in relu.blocks[0].fwd_ops] == [OpKind.EMBED, OpKind.ELEMENTWISE]


def test_gqa_qkv_width() -> None:
    w = build_workload("llama3-8b", 1, 16)
    assert Op(OpKind.GEMM, (16, 4096 + 2 * 1024, 4096)) in w.blocks[1].fwd_ops


@pytest.mark.parametrize("name", ["llama2-7b", "llama3-8b", "gpt3-1.3b", "opt-1.3b", "gpt-like-h1024-l4"])
def test_backward_gemm_flops_are_twice_forward(name: str) -> None:
    for blk in build_workload(name, 2, 256).blocks:
        fwd = sum(op.flops for op in blk.fwd_ops if op.kind is OpKind.GEMM)
        bwd = sum(op.flops for op in blk.bwd_ops if op.kind is OpKind.GEMM)
        assert bwd == 2 * fwd


def _gemm_fwd_flops(w) -> float:  # type: ignore[no-untyped-def]
    return sum(op.flops for b in w.blocks for op in b.fwd_ops if op.kind is OpKind.GEMM)


def test_gemm_flops_equal_2_n_tokens_llama() -> None:
    # LLaMA has no biases: every parameter outside the embedding and the 2L + 1 RMSNorm weights is a
    # GEMM weight used once per token, so forward GEMM FLOPs are exactly 2 · N_gemm · tokens.
    m, b, s = get_model("llama2-7b"), 2, 512
    n_gemm = m.n_params() - m.embed_params() - (2 * m.n_layers + 1) * m.hidden
    assert _gemm_fwd_flops(build_workload(m, b, s)) == 2 * n_gemm * b * s


def test_gemm_flops_gpt3_remainder() -> None:
    # GPT-3 (tied): the non-embedding parameters that are not GEMM weights are the biases and the
    # LayerNorms: per block 13h (QKV 3h, out h, fc1 4h, fc2 h, two LayerNorms 4h) + final 2h;
    # the tied LM head adds V·h GEMM weights that are counted under the embedding.
    m, b, s = get_model("gpt3-1.3b"), 1, 2048
    h, L, V = m.hidden, m.n_layers, m.vocab
    remainder = L * 13 * h + 2 * h
    n_gemm = m.non_embedding_params() - remainder + V * h
    assert _gemm_fwd_flops(build_workload(m, b, s)) == 2 * n_gemm * b * s
    assert n_gemm == L * 12 * h * h + V * h


@pytest.mark.parametrize("name, b, s", [("gpt3-175b", 1, 2048), ("gpt3-125m", 8, 1024),
                                        ("opt-66b", 2, 2048), ("gpt-like-h4096-l50", 4, 1024)])
def test_model_flops_match_narayanan(name: str, b: int, s: int) -> None:
    # Narayanan et al. 2021 / Korthikanti et al. 2022 (no recomputation):
    # 72·B·s·l·h²·(1 + s/(6h) + V/(12·l·h)) = 72·B·s·l·h² + 12·B·s²·l·h + 6·B·s·V·h
    m = get_model(name)
    h, L, V = m.hidden, m.n_layers, m.vocab
    want = 72 * b * s * L * h * h + 12 * b * s * s * L * h + 6 * b * s * V * h
    assert build_workload(m, b, s).model_flops_per_iter == want


def test_model_flops_llama_gqa_swiglu() -> None:
    m, b, s = get_model("llama3-8b"), 1, 8192
    h, kv, f, L, V = 4096, 1024, 14336, 32, 128256
    per_layer = 2 * b * s * (h * (h + 2 * kv) + h * h + 3 * h * f)
    want = 3 * (L * per_layer + 2 * b * s * V * h + 4 * b * s * s * h * L)
    assert build_workload(m, b, s).model_flops_per_iter == want


def test_executed_flops_totals() -> None:
    # fwd/bwd_flops sum the ops: causal attention counted at half, attention backward 2.5× forward.
    w = build_workload(TINY_LLAMA, 1, 64)
    b, s, a, d, L = 1, 64, 4, 2, 3
    attn_fwd = 4 * b * a * s * s * d * 0.5
    gemm = _gemm_fwd_flops(w)
    assert w.fwd_flops == gemm + L * attn_fwd
    assert w.bwd_flops == 2 * gemm + L * 2.5 * attn_fwd


def test_llama2_7b_model_states_mixed_precision_adam() -> None:
    # ZeRO §3.1: 2 + 2 + 12 = 16 bytes/param (fp16 weights, fp16 grads, fp32 master + m + v).
    n = 6_738_415_616
    blocks = build_workload("llama2-7b", 1, 4096).blocks
    tot = {k: sum(getattr(b, k) for b in blocks)
           for k in ("weight_bytes", "grad_bytes", "master_bytes", "optim_bytes", "grad32_bytes")}
    assert tot == {"weight_bytes": 2 * n, "grad_bytes": 2 * n, "master_bytes": 4 * n,
                   "optim_bytes": 8 * n, "grad32_bytes": 4 * n}
    assert tot["weight_bytes"] + tot["grad_bytes"] + tot["master_bytes"] + tot["optim_bytes"] == 16 * n


def test_fp32_has_no_master_copy() -> None:
    blk = build_workload("gpt3-125m", 1, 128, dtype="fp32").blocks[1]
    p = blk.params
    assert (blk.weight_bytes, blk.grad_bytes, blk.master_bytes, blk.optim_bytes, blk.grad32_bytes) == \
        (4 * p, 4 * p, 0, 8 * p, 0)
    assert build_workload("gpt3-125m", 1, 128, dtype="fp16").blocks[1].master_bytes == 4 * p


def test_tiny_gpt_activation_bytes_by_hand() -> None:
    # b = 2, s = 4 → t = 8 tokens; h = 8, a = 2, f = 32, V = 16, e = 2 (bf16), dropout.
    # Per token, flash attention:
    #   ln1 input 2·8 = 16, ln1 output 16, Q K V 2·(8 + 2·8) = 48, attention output 16,
    #   dropout mask 8, ln2 input 16, ln2 output 16, GeLU input and output 2·2·32 = 128,
    #   dropout mask 8                                  → 272 = 34·h (Korthikanti eq. 1, no s² term)
    #   LayerNorm mean + rstd 2·8 = 16, log-sum-exp 4·a = 8 → 296
    w = build_workload(TINY_GPT, 2, 4)
    blk = w.blocks[1]
    assert blk.act_bytes == 8 * 296 == 2368
    assert blk.ckpt_bytes == 8 * 2 * 8 == 128                    # block input, t·h·e
    # Without flash: 272 + 16 per token, K and V already full width (MHA), plus per score
    # b·a·s² = 2·2·16 = 64 scores × (softmax 2 + mask 1 + dropout output 2) = 320.
    # Korthikanti: s·b·h·(34 + 5·a·s/h) = 4·2·8·(34 + 5) = 2496, + 8·16 norm stats = 2624.
    assert build_workload(TINY_GPT, 2, 4, flash_attention=False).blocks[1].act_bytes == 8 * 288 + 320 == 2624
    # Residual dropout but none on the attention probabilities (OPT): 64 scores × 2 bytes only.
    opt_like = dataclasses.replace(TINY_GPT, attn_dropout=False)
    assert build_workload(opt_like, 2, 4, flash_attention=False).blocks[1].act_bytes == 8 * 288 + 128
    assert build_workload(opt_like, 2, 4).blocks[1].act_bytes == 2368  # flash: no difference
    # embed: int64 ids 8·8 + dropout mask 8·8; checkpointed: the ids only
    assert (w.blocks[0].act_bytes, w.blocks[0].ckpt_bytes) == (128, 64)
    # head: final-norm input 16 + stats 8 + its output 16 + fp32 log-probs 4·16 = 104 per token
    assert (w.blocks[-1].act_bytes, w.blocks[-1].ckpt_bytes) == (8 * 104, 128)


def test_tiny_llama_activation_bytes_by_hand() -> None:
    # b = 1, s = 4 → t = 4; h = 8, a = 4, kv = 4, f = 12, e = 2, no dropout.
    # Per token: ln1 in 16 + ln1 out 16 + Q K V 2·(8 + 4 + 4) = 32 + O 16 + ln2 in 16 + ln2 out 16
    #   + SwiGLU g, silu(g), u, silu(g)·u 4·2·12 = 96 + RMSNorm rstd 2·4 = 8 + log-sum-exp 4·4 = 16
    #   = 232
    w = build_workload(TINY_LLAMA, 1, 4)
    assert w.blocks[1].act_bytes == 4 * 232 == 928
    # Without flash, K and V are expanded to all heads (8 + 8 + 8 = 48 instead of 32), no
    # log-sum-exp: 232 − 16 + 16 = 232 per token, plus b·a·s² = 64 scores × 2 bytes of softmax.
    assert build_workload(TINY_LLAMA, 1, 4, flash_attention=False).blocks[1].act_bytes == 4 * 232 + 128
    assert w.blocks[0].act_bytes == 8 * 4                        # ids only, no dropout


def test_tiny_workspace_by_hand() -> None:
    # TINY_GPT, t = 8, e = 2: MLP backward 8·2·(2·8 + 2·32) = 1280; flash attention backward
    # 8·(2·5·8 + 4·8) = 896 → 1280. Head: 8·t·V = 8·8·16 = 1024. Embed: the incoming gradient 128.
    w = build_workload(TINY_GPT, 2, 4)
    assert [w.blocks[i].workspace_bytes for i in (0, 1, -1)] == [128, 1280, 1024]
    # TINY_LLAMA, t = 4: SwiGLU backward 4·2·(16 + 3·12) = 416; attention 4·(80 + 32) = 448, but
    # by then the MLP half's saved tensors are freed: ln2 in 16 + out 16 + rstd 4 + SwiGLU 96 =
    # 132 per token, 448 − 528 < 416 → 416.
    assert build_workload(TINY_LLAMA, 1, 4).blocks[1].workspace_bytes == 416


def test_tiny_llama_hf_eager_attention_workspace_by_hand() -> None:
    # hf-eager, b = 1, s = 16 → t = 16, 4 heads: 1024 scores. SwiGLU backward 16·2·(16 + 36) =
    # 1664. Attention: 16·2·(2·8 + 3·8) = 1280 plus, per score, the fp32 gradients of the softmax
    # output and of the scores (4 + 4) less the bf16 probabilities PV's backward has released (2):
    # 6·1024 = 6144; less the MLP half freed before it: RMSNorm 4·8 + 4 + 2·2·8 = 68, SwiGLU
    # 4·2·12 = 96 → 164 per token, 2624. 1280 + 6144 − 2624 = 4800 > 1664.
    w = build_workload(TINY_LLAMA, 1, 16, flash_attention=False, framework="hf-eager")
    assert w.blocks[1].workspace_bytes == 4800
    # fp16 on CUDA (half_to_float): the softmax backward writes the fp16 score gradient, 2 bytes
    # instead of 4, and first the fp32 grad·output (softmax_grad_mul, 4 bytes per score), alive
    # with both: 4 + 2 − 2 + 4 = 8 per score, 1280 + 8192 − 2624 = 6848. bf16 takes no
    # half_to_float path: 6 + 4 = 10 per score, 1280 + 10240 − 2624 = 8896.
    w16 = build_workload(TINY_LLAMA, 1, 16, "fp16", flash_attention=False, framework="hf-eager", cuda=True)
    assert w16.blocks[1].workspace_bytes == 6848
    assert build_workload(TINY_LLAMA, 1, 16, "bf16", flash_attention=False, framework="hf-eager",
                          cuda=True).blocks[1].workspace_bytes == 8896
    assert build_workload(TINY_LLAMA, 1, 16, "fp16", flash_attention=False, framework="hf-eager",
                          cuda=False).blocks[1].workspace_bytes == 4800


def test_attention_dropout_tensors_are_released_before_the_softmax_backward_by_hand() -> None:
    # TINY_GPT without flash, b = 1, s = 64 → t = 64, b·a·s² = 8192 scores, e = 2. MLP backward
    # 64·2·(2·8 + 2·32) = 10240. Attention 64·2·(2·8 + 3·8) = 5120 plus per score, less the MLP
    # half freed before it (ln2 in 16 + out 16 + stats 8 + GeLU 128 + mask 8 = 176 per token,
    # 11264). With attention dropout the softmax backward finds the dropout's output and mask
    # (2 + 1) released by PV's and the dropout's backward: grad of the probabilities 2 + of the
    # scores 2 + CUDA's grad·output 2 − 3 = 3 per score, 5120 + 24576 − 11264 = 18432; on the
    # CPU (no grad·output) 1 per score, but PV's backward held its gradient (2) beside every
    # saved tensor: 5120 + 16384 − 11264 = 10240 (= the MLP's). Without attention dropout
    # nothing is released: 6 per score on CUDA (43008), 4 on the CPU (26624).
    tiny = dataclasses.replace(TINY_GPT, max_seq=64)
    no_drop = dataclasses.replace(tiny, attn_dropout=False)

    def ws(spec, cuda):
        return build_workload(spec, 1, 64, flash_attention=False, cuda=cuda).blocks[1].workspace_bytes

    assert (ws(tiny, True), ws(tiny, False), ws(no_drop, True), ws(no_drop, False)) == (18432, 10240, 43008, 26624)


def test_half_to_float_softmax_kernels() -> None:
    """fp16 on CUDA: no upcast kernel before the softmax (it reads 2 and writes 4 bytes per score)
    and no downcast after its backward (which writes 2): one elementwise kernel fewer each way."""
    ns = 1 * 4 * 16 * 16

    def soft(h2f):
        blk = build_workload(TINY_LLAMA, 1, 16, "fp16", flash_attention=False, framework="hf-eager",
                             cuda=h2f).blocks[1]
        return ([op.n for op in blk.fwd_ops if op.kind is OpKind.SOFTMAX_CE],
                [op.n for op in blk.bwd_ops if op.kind is OpKind.SOFTMAX_CE],
                len(blk.fwd_ops), len(blk.bwd_ops))

    assert soft(False) == ([8 * ns], [12 * ns], *soft(False)[2:])
    f, b, nf, nb = soft(True)
    # backward: the downcast kernel goes, the CUDA softmax backward's multiply comes
    assert (f, b) == ([6 * ns], [10 * ns]) and (nf, nb) == (soft(False)[2] - 1, soft(False)[3])


@pytest.mark.parametrize("model, framework, dtype, g", [
    (TINY_LLAMA, "hf-eager", "fp16", 4),     # fp32 softmax (half_to_float): fp32 grad and output
    (TINY_LLAMA, "hf-eager", "bf16", 4),     # fp32 softmax after an upcast
    (TINY_LLAMA, "hf-eager", "fp32", 4),
    (TINY_LLAMA, "fused-eager-attn", "fp16", 2),   # Megatron's torch.nn.Softmax in the working dtype
    (TINY_LLAMA, "fused", "bf16", 2),        # SDPA's math path
])
def test_cuda_softmax_backward_runs_its_multiply_first(model, framework, dtype, g) -> None:
    """ATen's CUDA softmax backward (softmax_backward_cuda_out) writes tmp = grad * output with a
    kernel of its own before the backward kernel: an ELEMENTWISE op of 3·g bytes per score just
    before the SOFTMAX_CE op, on CUDA only; the rest of the block is unchanged."""
    ns = 2 * 4 * 16 * 16

    def bwd(cuda):
        return build_workload(model, 2, 16, dtype, flash_attention=False, framework=framework,
                              cuda=cuda).blocks[1].bwd_ops

    cpu, gpu = bwd(False), bwd(True)
    k = next(i for i, op in enumerate(gpu) if op.kind is OpKind.SOFTMAX_CE)
    assert gpu[k - 1].kind is OpKind.ELEMENTWISE and gpu[k - 1].n == 3 * g * ns
    assert gpu[:k - 1] + gpu[k:] == cpu or dtype == "fp16" and framework == "hf-eager"


# Peak bytes of one Transformers 4.33.3 LlamaDecoderLayer (eager, bf16, CPU) forward + backward
# to its input, measured by benchmarks/hf_block_peak.py (b x s x hidden x heads x ffn).
HF_BLOCK_PEAK = {(1, 512, 256, 4, 688): 15_075_336, (2, 512, 256, 4, 688): 30_150_664,
                 (1, 1024, 256, 4, 688): 55_316_488, (1, 256, 512, 8, 1376): 10_848_264}


@pytest.mark.parametrize("shape", sorted(HF_BLOCK_PEAK))
def test_hf_eager_block_peak_against_the_measured_block(shape) -> None:
    """act_bytes + workspace_bytes + the block's output stays within 0 to +11 % of the measured
    peak (it was +33 % to +47 % while the MLP's tensors and the probabilities counted as live)."""
    b, s, h, a, f = shape
    spec = dataclasses.replace(get_model("llama2-7b"), hidden=h, n_heads=a, n_kv_heads=a, ffn_hidden=f)
    blk = build_workload(spec, b, s, flash_attention=False, framework="hf-eager").blocks[1]
    model = blk.act_bytes + blk.workspace_bytes + 2 * b * s * h
    assert 1.0 <= model / HF_BLOCK_PEAK[shape] <= 1.11


def test_korthikanti_gpt3_175b() -> None:
    # GPT-3 175B, s = 2048, b = 1: eq. 1 gives s·b·h·(34 + 5·a·s/h); ours adds the fp32 norm
    # statistics (16 bytes per token) and, with flash attention, drops the s² term for the
    # log-sum-exp (4·a bytes per token).
    s, b, h, a = 2048, 1, 12288, 96
    korthikanti = s * b * h * (34 * h + 5 * a * s) // h
    assert build_workload("gpt3-175b", b, s, flash_attention=False).blocks[1].act_bytes == korthikanti + s * b * 16
    assert build_workload("gpt3-175b", b, s).blocks[1].act_bytes == s * b * (34 * h + 16 + 4 * a)


@pytest.mark.parametrize("args, kw, pattern", [
    (("llama2-7b", 0, 128), {}, r"^micro_batch: bad value 0; allowed: a positive integer$"),
    (("llama2-7b", 1, 1.5), {}, r"^seq_len: bad value 1.5"),
    (("llama2-7b", 1, 128), {"dtype": "fp8"}, r"^dtype: bad value 'fp8'; allowed: one of the dtypes: bf16, fp16, fp32$"),
    (("gpt3-125m", 1, 4096), {}, r"^seq_len: seq_len=4096 exceeds gpt3-125m's 2048 learned positions$"),
    (("llama2-70x", 1, 128), {}, r"^model: bad value 'llama2-70x'"),
    (("llama2-7b", 1, 128), {"flash_attention": 1}, r"^flash_attention: bad value 1"),
])
def test_build_errors(args: tuple, kw: dict, pattern: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match=pattern):
        build_workload(*args, **kw)


def test_rope_models_may_exceed_max_seq() -> None:
    assert build_workload("llama2-7b", 1, 8192).tokens_per_iter == 8192


def _total_act(m: ModelSpec, b: int, s: int) -> int:
    return sum(blk.act_bytes for blk in build_workload(m, b, s).blocks)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 64).map(lambda k: 64 * k), dh=st.integers(1, 16).map(lambda k: 64 * k),
       layers=st.integers(1, 64), dl=st.integers(1, 16), b=st.integers(1, 4),
       s=st.sampled_from([128, 512, 1024]), flash=st.booleans())
def test_params_and_activations_monotone(h: int, dh: int, layers: int, dl: int, b: int, s: int,
                                         flash: bool) -> None:
    # Fixed head_dim 64: with the default heads rule (h/128, else h/64) widening 576 → 640 drops
    # the heads from 9 to 5, and without flash the a·s² term then shrinks — not a monotone pair.
    small, wider = gpt_like(h, layers, h // 64), gpt_like(h + dh, layers, (h + dh) // 64)
    deeper = gpt_like(h, layers + dl, h // 64)
    assert small.n_params() < wider.n_params() and small.n_params() < deeper.n_params()
    w = build_workload(small, b, s, flash_attention=flash)
    ww = build_workload(wider, b, s, flash_attention=flash)
    assert w.blocks[1].act_bytes < ww.blocks[1].act_bytes
    assert _total_act(small, b, s) < _total_act(wider, b, s)
    assert _total_act(small, b, s) < _total_act(deeper, b, s)
    assert w.model_flops_per_iter < ww.model_flops_per_iter


@settings(max_examples=40, deadline=None)
@given(layers=st.integers(1, 8), heads=st.integers(1, 8), kv_div=st.sampled_from([1, 2, 4, 8]),
       d=st.sampled_from([2, 4, 8]), f=st.integers(1, 64), mlp=st.sampled_from(["gelu", "relu", "swiglu"]),
       bias=st.booleans(), tied=st.booleans(), b=st.integers(1, 3), s=st.integers(1, 16))
def test_block_params_sum_and_model_states(layers: int, heads: int, kv_div: int, d: int, f: int,
                                           mlp: str, bias: bool, tied: bool, b: int, s: int) -> None:
    kv = heads // kv_div if heads % kv_div == 0 else heads
    m = ModelSpec(name="p", family="p", n_layers=layers, hidden=heads * d, n_heads=heads,
                  n_kv_heads=kv, ffn_hidden=f, vocab=32, max_seq=16, mlp=mlp, bias=bias,  # type: ignore[arg-type]
                  tied_embeddings=tied)
    w = build_workload(m, b, s)
    assert sum(blk.params for blk in w.blocks) == m.n_params() == w.params
    for blk in w.blocks:
        assert blk.act_bytes >= blk.ckpt_bytes > 0  # policies allocate act − ckpt on recompute
        assert blk.weight_bytes == blk.grad_bytes == 2 * blk.params
        assert blk.optim_bytes == 2 * blk.master_bytes == 8 * blk.params
        gemm_f = sum(op.flops for op in blk.fwd_ops if op.kind is OpKind.GEMM)
        assert sum(op.flops for op in blk.bwd_ops if op.kind is OpKind.GEMM) == 2 * gemm_f
    # the untied/tied LM head is a V×h GEMM either way
    assert Op(OpKind.GEMM, (b * s, 32, m.hidden)) in w.blocks[-1].fwd_ops
    assert dataclasses.replace(m, tied_embeddings=not tied).n_params() != m.n_params()


def test_math_attention_ops_without_flash():
    # TINY_GPT, b = 2, s = 4, 2 heads of d = 4, e = 2, attention dropout: n_s = 2·2·4·4 = 64 scores.
    b, s, e, ns = 2, 4, 2, 64
    flash, math_ = build_workload(TINY_GPT, b, s), build_workload(TINY_GPT, b, s, flash_attention=False)
    attn_f = math_.blocks[1].fwd_ops[2:10]
    t, h = b * s, 8
    assert attn_f == (Op(OpKind.ELEMENTWISE, (), 2 * e * t * h),               # q · sqrt(scale)
                      Op(OpKind.ELEMENTWISE, (), 2 * e * t * h),               # k · sqrt(scale)
                      Op(OpKind.GEMM, (4, 4, 4), count=4, batched=True),       # S = Q·Kᵀ per head, one launch
                      Op(OpKind.ELEMENTWISE, (), 2 * e * ns + e * s * s),      # + causal mask
                      Op(OpKind.SOFTMAX_CE, (16, 4), 2 * e * ns),
                      Op(OpKind.ELEMENTWISE, (), (3 * e + 2) * ns),            # safe softmax's where
                      Op(OpKind.DROPOUT, (), 2 * e * ns + ns),                 # on the probabilities
                      Op(OpKind.GEMM, (4, 4, 4), count=4, batched=True))       # O = P·V
    kinds = {op.kind for blk in math_.blocks for op in blk.fwd_ops + blk.bwd_ops}
    assert OpKind.ATTN_FWD not in kinds and OpKind.ATTN_BWD not in kinds
    # the math path computes every score: 4·s²·d per head forward (twice the causal flash count),
    # 8·s²·d backward; the MFU numerator does not depend on the kernel
    head_f = 4 * s * s * 4 * 4
    assert math_.blocks[1].fwd_flops - flash.blocks[1].fwd_flops == head_f - head_f / 2
    assert math_.model_flops_per_iter == flash.model_flops_per_iter
    # GQA: K and V expanded to all heads and their gradients summed back (TINY_LLAMA: kv 4, h 8)
    ll = build_workload(TINY_LLAMA, 1, 4, flash_attention=False).blocks[1]
    t = 4
    assert Op(OpKind.ELEMENTWISE, (), 2 * e * t * (4 + 8)) in ll.fwd_ops
    assert Op(OpKind.DROPOUT, ()) not in ll.fwd_ops and all(op.kind is not OpKind.DROPOUT
                                                            for op in ll.fwd_ops)


def test_head_cross_entropy_fp32_has_no_upcast() -> None:
    # fp32 training: logits.float() is a no-op, so neither the upcast nor its backward cast runs;
    # log_softmax (read 4, write 4), nll gather (12 B per token); backward zero fill 4, scatter 12
    # per token, log_softmax_backward 12. TINY_GPT: b = 2, s = 4 → T = 8, V = 16.
    w = build_workload(TINY_GPT, 2, 4, dtype="fp32")
    head = w.blocks[-1]
    T, V = 8, 16
    assert head.fwd_ops[2:] == (Op(OpKind.SOFTMAX_CE, (T, V), 8 * T * V, dtype="fp32"),
                                Op(OpKind.ELEMENTWISE, (), 12 * T, dtype="fp32"))
    assert head.bwd_ops[:3] == (Op(OpKind.ELEMENTWISE, (), 4 * T * V, dtype="fp32"),
                                Op(OpKind.ELEMENTWISE, (), 12 * T, dtype="fp32"),
                                Op(OpKind.SOFTMAX_CE, (T, V), 12 * T * V, dtype="fp32"))
    assert head.bwd_ops[3].kind is OpKind.GEMM


def test_simulation_takes_the_half_to_float_softmax_only_for_fp16_on_cuda() -> None:
    """resolve() builds the workload for CUDA (half_to_float in fp16, the softmax backward's
    multiply) on a CUDA profile; a CPU device casts first and has no separate multiply."""
    from simhete.scenario import scenario_from_dict
    from simhete.sim import resolve

    def ws(profile, dtype):
        s = scenario_from_dict(dict(model="llama2-7b", hardware=dict(profile=profile), framework="hf-eager",
                                    train=dict(micro_batch=1, seq_len=2048, dtype=dtype), policy="gpu-only"))
        return resolve(s)[0].blocks[1].workspace_bytes

    spec = get_model("llama2-7b")
    want = {h2f: build_workload(spec, 1, 2048, "fp16", flash_attention=False, framework="hf-eager",
                                cuda=h2f).blocks[1].workspace_bytes for h2f in (False, True)}
    assert want[True] != want[False]
    assert ws("a100-80gb-sxm", "fp16") == want[True]
    assert ws("cpu-local", "fp16") == want[False]

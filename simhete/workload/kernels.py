"""The kernels a transformer block runs, as ops: the building blocks (GEMMs, elementwise passes),
the block under each framework (:func:`block_ops`), the attention variants, and what a per-op
selective checkpoint recomputes. :mod:`simhete.workload.ops` assembles them into a Workload; its
module docstring lists the op sequence of a block and the frameworks.

Per framework (``framework``): ``fused`` is :func:`_block_ops`. The Hugging Face Transformers
frameworks run some modules as chains of eager kernels (transformers/models/*/modeling_*.py), each
an ELEMENTWISE op here (:func:`hf_rmsnorm`, :func:`_hf_gelu_new`, :func:`_hf_rope`,
:func:`_eager_attention`); ``fused-eager-attn`` is ``fused`` with Megatron-LM's unfused attention
ops (:func:`_megatron_attention`, :func:`_megatron_block_ops`).
"""

from __future__ import annotations

from simhete.errors import ConfigError
from simhete.opkinds import BWD_KIND, OpKind
from simhete.schedule import Op
from simhete.workload import memory
from simhete.workload.spec import ModelSpec

def _gemm(m: int, n: int, k: int, dtype: str, count: int = 1, batched: bool = False) -> Op:
    return Op(OpKind.GEMM, (m, n, k), dtype=dtype, count=count, batched=batched)


def _head_gemm(m: int, n: int, k: int, dtype: str, ba: int) -> Op:
    """The (m, n, k) product of every head of every sequence: ``torch.matmul`` of (b, a, m, k) and
    (b, a, k, n) tensors is one strided-batched cuBLAS GEMM of b·a entries (ATen's bmm path,
    ``cublasGemmStridedBatchedEx``), one launch whose tiles share the waves."""
    return _gemm(m, n, k, dtype, ba, batched=True)

def _head_products(s: int, d: int, e: int, t: int, h: int, kv: int, dtype: str, ba: int
                   ) -> tuple[Op, Op, tuple[Op, ...], tuple[Op, ...]]:
    """What every unfused attention shares: S = Q·Kᵀ (s, s, d) and O = P·V (s, d, s) for each of
    the b·a heads as one batched launch (dP = dO·Vᵀ has the first's shape; dV = Pᵀ·dO, dQ = dS·K,
    dK = dSᵀ·Q the second's), and under grouped-query attention (kv < h) K and V expanded to all
    heads (read kv, write h per token) and their gradients summed back per group."""
    gqa = kv < h
    expand = (ew(2 * e * t * (kv + h), dtype),) if gqa else ()
    reduce = (ew(2 * e * t * (h + kv), dtype),) if gqa else ()
    return _head_gemm(s, s, d, dtype, ba), _head_gemm(s, d, s, dtype, ba), expand, reduce



def op_sac_recompute(fwd: tuple[Op, ...], spec: ModelSpec, t: int, dtype: str) -> tuple[Op, ...]:
    """What the backward's recompute of a block re-runs under torchtitan's per-op selective
    checkpointing (:meth:`memory.Activations.block_op_sac` says what is saved): the block's forward
    without the attention kernel (saved), with the QKV projection reduced to wk (wq and wv saved),
    the gated MLP's gate+up GEMM to the up projection w3 (fc1 saved outright otherwise), and
    nothing from the down projection on: w2's output is saved and nothing after it is read by the
    backward, where ``torch.utils.checkpoint``'s non-reentrant recompute stops ("by default,
    non-reentrant checkpoint stops recomputation as soon as it has computed all needed Tensors":
    ``set_checkpoint_early_stop``). The block's own GEMMs, in order, are QKV, output, fc1, fc2
    (:func:`_block_ops`); the norms, rotary, residual add and activation are re-run."""
    if spec.norms_per_block != 2:
        raise ConfigError(None, "train.recompute", "op", allowed=(
            f"full for {spec.name}: per-op selective checkpointing is modelled for sequential "
            "pre-norm blocks (two norms per block)"))
    out: list[Op] = []
    g = 0                                    # ordinal of the block's own (not per-head) GEMMs
    for op in fwd:
        if op.kind is OpKind.ATTN_FWD:
            continue
        if op.kind is OpKind.GEMM and not op.batched:
            g += 1
            if g == 1:                       # QKV: only wk is recomputed
                op = _gemm(t, spec.kv_dim, spec.hidden, dtype)
            elif g == 3:                     # fc1: the gated MLP's up projection
                if spec.n_mlp_in == 1:
                    continue
                op = _gemm(t, spec.ffn_hidden, spec.hidden, dtype)
            elif g == 4:
                break
        out.append(op)
    return tuple(out)


def ew(n: int, dtype: str) -> Op:
    return Op(OpKind.ELEMENTWISE, (), n, dtype=dtype)


def softmax_grad_mul(ns: int, g: int, dtype: str, cuda: bool) -> tuple[Op, ...]:
    """What ATen's CUDA softmax backward runs before its kernel: ``softmax_backward_cuda_out``
    computes ``tmp = grad * output`` as a kernel of its own (read both, write tmp: 3·g bytes per
    score, g the bytes of the gradient's dtype) and hands tmp to ``host_softmax_backward``
    (aten/src/ATen/native/cuda/SoftMax.cu, pytorch/pytorch at 000cace5; the epilogue's comment:
    "gradOutput that we get here is really gradOutput * output"). The CPU kernel takes the sum of
    grad·output inside its one pass: nothing off CUDA."""
    return (Op(OpKind.ELEMENTWISE, (), 3 * g * ns, dtype="fp32" if g == 4 else dtype),) if cuda else ()


def _with_mul(soft_b: tuple[Op, ...], mul: tuple[Op, ...]) -> tuple[Op, ...]:
    """``soft_b`` with the softmax backward's multiply (:func:`softmax_grad_mul`) just before its
    SOFTMAX_CE kernel."""
    k = next(i for i, op in enumerate(soft_b) if op.kind is OpKind.SOFTMAX_CE)
    return (*soft_b[:k], *mul, *soft_b[k:])


def linear(t: int, n_out: int, n_in: int, dtype: str, count: int = 1) -> tuple[Op, tuple[Op, Op]]:
    """Forward GEMM of a linear layer on t tokens, and its (input-grad, weight-grad) GEMMs."""
    fwd = _gemm(t, n_out, n_in, dtype, count)          # Y = X·Wᵀ: (t×n_in)·(n_in×n_out)
    dgrad = _gemm(t, n_in, n_out, dtype, count)        # dX = dY·W: (t×n_out)·(n_out×n_in)
    wgrad = _gemm(n_out, n_in, t, dtype, count)        # dW = dYᵀ·X: (n_out×t)·(t×n_in)
    return fwd, (dgrad, wgrad)


def norm_kind(spec: ModelSpec) -> OpKind:
    return OpKind.RMSNORM if spec.norm == "rmsnorm" else OpKind.NORM


def _attention(spec: ModelSpec, b: int, s: int, e: int, dtype: str,
               flash: bool, cuda: bool = False) -> tuple[tuple[Op, ...], tuple[Op, ...]]:
    """Attention core ops (forward, backward). Flash: one fused ATTN_FWD / ATTN_BWD (attention
    dropout, if any, is generated inside the kernel). Otherwise the math path of eager PyTorch
    (torch's ``_scaled_dot_product_attention_math``, what SDPA runs where no fused kernel applies,
    e.g. on a CPU with dropout_p > 0): per head a GEMM S = Q·Kᵀ (s, s, d), the causal mask added
    (read S and the s×s mask, write S), softmax over s scores, dropout on the probabilities
    (DROPOUT: a random mask per score) and a GEMM O = P·V (s, d, s); K and V first expanded to all
    heads under grouped-query attention. Backward: dP = dO·Vᵀ, dV = Pᵀ·dO, the dropout's masked
    scale, softmax backward (read P and dP, write dS; on CUDA after its separate multiply,
    :func:`softmax_grad_mul`), dQ = dS·K, dK = dSᵀ·Q, and the expanded K/V gradients summed back
    to their heads. n_s = b·a·s² scores; e bytes per element."""
    a, d, h, kv = spec.n_heads, spec.head_dim, spec.q_dim, spec.kv_dim  # h: a·d, the Q width
    shape = (b, a, s, s, d, 1)
    if flash:
        return (Op(OpKind.ATTN_FWD, shape, dtype=dtype),), (Op(OpKind.ATTN_BWD, shape, dtype=dtype),)
    t, ns, ba = b * s, b * a * s * s, b * a
    drop = spec.attn_dropout
    qk, pv, expand, reduce = _head_products(s, d, e, t, h, kv, dtype, ba)
    mask = ew(2 * e * ns + e * s * s, dtype)
    soft_f = Op(OpKind.SOFTMAX_CE, (ba * s, s), 2 * e * ns, dtype=dtype)
    soft_b = Op(OpKind.SOFTMAX_CE, (ba * s, s), 3 * e * ns, dtype=dtype)
    # torch >= 2.5's math path (aten/src/ATen/native/transformers/attention.cpp) scales q and k by
    # sqrt(1/sqrt(d)) each (read + write t·h elements each, k after any GQA expansion) and takes a
    # "safe" softmax: isneginf (read e·n_s, write n_s bools), all over each row (read n_s), where
    # (read e·n_s, write e·n_s): (3e + 2)·n_s; backward: both scales again and dK made contiguous
    scale = ew(2 * e * t * h, dtype)
    safe = ew((3 * e + 2) * ns, dtype)
    fwd = (*expand, scale, scale, qk, mask, soft_f, safe,
           *((Op(OpKind.DROPOUT, (), 2 * e * ns + ns, dtype=dtype),) if drop else ()), pv)
    bwd = (qk, pv, *((ew(2 * e * ns + ns, dtype),) if drop else ()),
           *softmax_grad_mul(ns, e, dtype, cuda), soft_b, pv, pv, scale, scale, scale, *reduce)
    return fwd, bwd


def _block_ops(spec: ModelSpec, b: int, s: int, e: int, dtype: str, flash: bool = True,
               attn: tuple[tuple[Op, ...], tuple[Op, ...]] | None = None,
               cuda: bool = False) -> tuple[tuple[Op, ...], tuple[Op, ...]]:
    t, h, f, kv = b * s, spec.hidden, spec.ffn_hidden, spec.kv_dim
    drop = 1 if spec.dropout else 0
    norm = norm_kind(spec)
    norm_fwd = Op(norm, (), 2 * e * t * h, dtype=dtype)     # read x, write y
    norm_bwd = Op(BWD_KIND[norm], (), 3 * e * t * h, dtype=dtype)     # read dy and x, write dx
    # residual add with fused dropout: read 2 inputs, write 1 output (+ 1-byte mask); the mask's
    # random numbers make it a DROPOUT op (compute-bound on a CPU), a plain add without dropout
    resid_fwd = Op(OpKind.DROPOUT if drop else OpKind.ELEMENTWISE, (), 3 * e * t * h + drop * t * h,
                   dtype=dtype)
    # backward: dropout backward (read grad and mask, write grad: a masked scale, no random
    # numbers) and the residual gradient sum
    resid_bwd = ew(3 * e * t * h + drop * (2 * e + 1) * t * h, dtype)
    attn_f, attn_b = attn if attn is not None else _attention(spec, b, s, e, dtype, flash, cuda)
    q = spec.q_dim  # a·d: h unless the head dimension is set apart (Gemma, Qwen3)
    qkv, qkv_b = linear(t, q + 2 * kv, h, dtype)
    out, out_b = linear(t, h, q, dtype)
    fc1, fc1_b = linear(t, f, h, dtype, spec.n_mlp_in)
    fc2, fc2_b = linear(t, h, f, dtype)
    # rotary positions (Su et al. 2021) on q and k, forward and backward: read + write both
    rope = (Op(OpKind.ROPE, (), 2 * e * t * (q + kv), dtype=dtype),) if spec.pos == "rope" else ()
    rope_b = (Op(OpKind.ROPE_BWD, (), 2 * e * t * (q + kv), dtype=dtype),) if spec.pos == "rope" else ()
    if spec.mlp == "swiglu":
        # Shazeer 2020 "GLU Variants": silu(g)·u — the SiLU (a sigmoid per element) is SWIGLU, the
        # product a plain ELEMENTWISE multiply; backward: the product's gradients (read dy, silu(g),
        # u; write both), then SiLU's backward (read d·, g; write dg)
        silu = OpKind.SWIGLU
        act_fwd = (Op(silu, (), 2 * e * t * f, dtype=dtype), ew(3 * e * t * f, dtype))
        act_bwd = (ew(5 * e * t * f, dtype), Op(OpKind.SWIGLU_BWD, (), 3 * e * t * f, dtype=dtype))
        fc1_sum = (ew(3 * e * t * h, dtype),)  # dX = dg·Wg + du·Wu: sum of the two input grads
    else:
        act = OpKind.GELU if spec.mlp == "gelu" else OpKind.RELU
        act_fwd = (Op(act, (), 2 * e * t * f, dtype=dtype),)   # read x, write act(x)
        act_bwd = (Op(BWD_KIND[act], (), 3 * e * t * f, dtype=dtype),)   # read dy and x, write dx
        fc1_sum = ()
    fwd = (norm_fwd, qkv, *rope, *attn_f, out, resid_fwd,
           norm_fwd, fc1, *act_fwd, fc2, resid_fwd)
    bwd = (resid_bwd, *fc2_b, *act_bwd, *fc1_b, *fc1_sum, norm_bwd,
           resid_bwd, *out_b, *attn_b, *rope_b, *qkv_b, norm_bwd)
    return fwd, bwd


def _ews(t: int, w: int, dtype: str, kernels: tuple[tuple[float, float], ...]) -> tuple[Op, ...]:
    """One ELEMENTWISE op per kernel, each given as (bytes read, bytes written) per element of a
    t × w tensor (per-token reductions add 4 bytes per token, negligible against w)."""
    return tuple(ew(int((r + wr) * t * w), dtype) for r, wr in kernels)


def hf_rmsnorm(t: int, h: int, e: int, dtype: str) -> tuple[tuple[Op, ...], tuple[Op, ...]]:
    """Transformers' ``LlamaRMSNorm.forward`` as the kernels eager PyTorch runs, per element of
    t × h: x.to(fp32) (read e, write 4; none in fp32), pow(2) (4, 4), mean(-1) (read 4), + eps
    and rsqrt (per token), x·rstd (4, 4), .to(input dtype) (4, e; none in fp32), weight·y (e, e).
    Backward, as autograd differentiates that chain: dy·weight (e, e) and dy·y summed over tokens
    (2e, e, then read e); the cast back (e, 4); d·rstd (4, 4) and d·x summed per token (8, 4,
    then read 4); rsqrt's backward (per token); mean's backward expands (write 4); pow's backward (ATen ``pow_backward``:
    grad·(2·x.pow(1))): x.pow(1) (4, 4), ·2 (4, 4), ·grad (8, 4); the two fp32 gradients of x
    added (8, 4); the cast to the input dtype (4, e)."""
    cast = e < 4
    per_token = ew(8 * t, dtype)      # + eps, rsqrt: one fp32 per token in and out
    fwd = (*_ews(t, h, dtype, (*(((e, 4),) if cast else ()), (4, 4), (4, 0))), per_token, per_token,
           *_ews(t, h, dtype, ((4, 4), *(((4, e),) if cast else ()), (e, e))))
    bwd = (*_ews(t, h, dtype, ((e, e), (2 * e, e), (e, 0), *(((e, 4),) if cast else ()),
                               (4, 4), (8, 4), (4, 0))),
           ew(12 * t, dtype),         # rsqrt's backward (read its output and the gradient)
           *_ews(t, h, dtype, ((0, 4), (4, 4), (4, 4), (8, 4), (8, 4), *(((4, e),) if cast else ()))))
    return fwd, bwd


def _hf_gelu_new(t: int, f: int, e: int, dtype: str) -> tuple[tuple[Op, ...], tuple[Op, ...]]:
    """Transformers' ``NewGELUActivation`` (GPT-2's gelu_new), 0.5·x·(1 + tanh(√(2/π)·(x +
    0.044715·x³))), one kernel per operator, per element of t × f: x³, ·0.044715, + x, ·√(2/π),
    tanh, + 1, 0.5·x, the product — each (e, e) except the adds and the product (2e, e).
    Backward (autograd): the product's two gradients (2e, e each), tanh's (2e, e), the two scalar
    multiplies (e, e each), 0.5·x's (e, e), pow's (x.pow(2), ·3, ·grad: (e, e), (e, e), (2e, e))
    and the three gradients of x summed (two adds, (2e, e))."""
    fwd = _ews(t, f, dtype, ((e, e), (e, e), (2 * e, e), (e, e), (e, e), (e, e), (e, e), (2 * e, e)))
    bwd = _ews(t, f, dtype, ((2 * e, e), (2 * e, e), (2 * e, e), (e, e), (e, e), (e, e),
                             (e, e), (e, e), (2 * e, e), (2 * e, e), (2 * e, e)))
    return fwd, bwd


def _hf_rope(t: int, widths: tuple[int, ...], e: int, dtype: str) -> tuple[tuple[Op, ...], tuple[Op, ...]]:
    """Transformers' ``apply_rotary_pos_emb``: x·cos + rotate_half(x)·sin for q and for k, per
    element of t × width: x·cos (e, e), neg of one half (e/2, e/2), cat (e, e), ·sin (e, e), the
    add (2e, e). Backward: ·sin (e, e), neg (e/2, e/2), the two halves' slice backwards (zero-fill
    and copy: (e/2, e) each), ·cos (e, e), the three gradients of x summed (two adds, (2e, e))."""
    fwd: list[Op] = []
    bwd: list[Op] = []
    half = e / 2
    for w in widths:
        fwd += _ews(t, w, dtype, ((e, e), (half, half), (e, e), (e, e), (2 * e, e)))
        bwd += _ews(t, w, dtype, ((e, e), (half, half), (half, e), (half, e), (e, e), (2 * e, e), (2 * e, e)))
    return tuple(fwd), tuple(bwd)


def _eager_attention(spec: ModelSpec, b: int, s: int, e: int, dtype: str,
                     half_to_float: bool = False, cuda: bool = False) -> tuple[tuple[Op, ...], tuple[Op, ...]]:
    """Transformers' ``eager_attention_forward``: K and V expanded to all heads (``repeat_kv``:
    read kv, write h per token) under GQA; per head (count b·a) S = Q·Kᵀ (s, s, d); ·scaling
    (e, e per score); + the additive causal mask (read the scores and the b·s² mask, write);
    softmax — LLaMA/Mistral/OPT/GPT-NeoX upcast to fp32 (``dtype=torch.float32``: (e, 4)), take
    an fp32 softmax (SOFTMAX_CE, 8 bytes per score) and cast back ((4, e)); GPT-2-style models a
    softmax in the working dtype (2e); dropout on the probabilities when the model has attention
    dropout (DROPOUT, 2e + 1; ``dropout(p=0)`` returns its input, no kernel); O = P·V (s, d, s);
    O transposed and made contiguous (e, e per element of t × h). Backward: dP = dO·Vᵀ,
    dV = Pᵀ·dO, dropout's masked scale, the casts and softmax backward (fp32: 12 bytes per score;
    else 3e), ·scaling, dQ = dS·K, dK = dSᵀ·Q, and under GQA the expanded K/V gradients summed
    back per group. n_s = b·a·s² scores. ``half_to_float`` (fp16 on CUDA): ATen's ``softmax``
    with ``dtype=float32`` calls ``_softmax(input, dim, half_to_float=true)`` for a CUDA Half
    input instead of casting first (aten/src/ATen/native/SoftMax.cpp), and its backward
    (``_softmax_backward_data`` with the Half input dtype) writes the fp16 score gradient: no
    upcast kernel, a softmax reading e and writing 4 bytes per score, a backward writing e.
    ``cuda``: the softmax backward's separate multiply (:func:`softmax_grad_mul`; on the fp32
    gradient where the softmax is taken in fp32)."""
    a, d, h, kv = spec.n_heads, spec.head_dim, spec.hidden, spec.kv_dim
    t, ns, ba = b * s, b * a * s * s, b * a
    qk, pv, expand, reduce = _head_products(s, d, e, t, h, kv, dtype, ba)
    scale = ew(2 * e * ns, dtype)
    mask = ew(2 * e * ns + e * b * s * s, dtype)
    fp32 = spec.family not in memory.GPT2_STYLE
    if fp32:
        up = () if e == 4 else (ew((e + 4) * ns, dtype),)
        down = () if e == 4 else (ew((4 + e) * ns, dtype),)
        if half_to_float:
            soft_f = (Op(OpKind.SOFTMAX_CE, (ba * s, s), (e + 4) * ns, dtype="fp32"), *down)
            soft_b = (*up, Op(OpKind.SOFTMAX_CE, (ba * s, s), (8 + e) * ns, dtype="fp32"))
        else:
            soft_f = (*up, Op(OpKind.SOFTMAX_CE, (ba * s, s), 8 * ns, dtype="fp32"), *down)
            soft_b = (*up, Op(OpKind.SOFTMAX_CE, (ba * s, s), 12 * ns, dtype="fp32"), *down)
    else:
        soft_f = (Op(OpKind.SOFTMAX_CE, (ba * s, s), 2 * e * ns, dtype=dtype),)
        soft_b = (Op(OpKind.SOFTMAX_CE, (ba * s, s), 3 * e * ns, dtype=dtype),)
    soft_b = _with_mul(soft_b, softmax_grad_mul(ns, 4 if fp32 else e, dtype, cuda))
    drop = spec.attn_dropout
    drop_f = (Op(OpKind.DROPOUT, (), 2 * e * ns + ns, dtype=dtype),) if drop else ()
    drop_b = (ew(2 * e * ns + ns, dtype),) if drop else ()
    contig = ew(2 * e * t * h, dtype)
    fwd = (*expand, qk, scale, mask, *soft_f, *drop_f, pv, contig)
    bwd = (qk, pv, *drop_b, *soft_b, scale, pv, pv, *reduce)
    return fwd, bwd


def _hf_block_ops(spec: ModelSpec, b: int, s: int, e: int, dtype: str, flash: bool,
                  framework: str, half_to_float: bool = False,
                  cuda: bool = False) -> tuple[tuple[Op, ...], tuple[Op, ...]]:
    """A block as Transformers runs it (module docstring): :func:`_block_ops`' ops with the
    unfused RMSNorm, gelu_new and rotary chains, residual dropout as its own kernel (nn.Dropout,
    then the add), and under ``hf-eager`` without flash the eager attention."""
    eager = framework == "hf-eager" and not flash
    fwd, bwd = _block_ops(spec, b, s, e, dtype, flash,
                          _eager_attention(spec, b, s, e, dtype, half_to_float, cuda) if eager else None,
                          cuda)
    t, h, f, kv = b * s, spec.hidden, spec.ffn_hidden, spec.kv_dim
    out_f: list[Op] = []
    out_b: list[Op] = []
    norm_f, norm_b = hf_rmsnorm(t, h, e, dtype)
    gelu_f, gelu_b = _hf_gelu_new(t, f, e, dtype)
    rope_f, rope_b = _hf_rope(t, (h, kv), e, dtype)

    def swap(ops: tuple[Op, ...], out: list[Op], backward: bool) -> None:
        for op in ops:
            k = op.kind
            if spec.norm == "rmsnorm" and k in (OpKind.RMSNORM, OpKind.RMSNORM_BWD):
                out.extend(norm_b if backward else norm_f)
            elif memory.hf_gelu_new(spec) and k in (OpKind.GELU, OpKind.GELU_BWD):
                out.extend(gelu_b if backward else gelu_f)
            elif k in (OpKind.ROPE, OpKind.ROPE_BWD):
                out.extend(rope_b if backward else rope_f)
            elif k == OpKind.DROPOUT and not backward and op.n == 3 * e * t * h + t * h:
                # nn.Dropout (read e, write e and the 1-byte mask), then the residual add
                out.extend((Op(OpKind.DROPOUT, (), (2 * e + 1) * t * h, dtype=dtype), ew(3 * e * t * h, dtype)))
            else:
                out.append(op)

    swap(fwd, out_f, False)
    swap(bwd, out_b, True)
    return tuple(out_f), tuple(out_b)


def _megatron_attention(spec: ModelSpec, b: int, s: int, e: int,
                        dtype: str, cuda: bool = False) -> tuple[tuple[Op, ...], tuple[Op, ...]]:
    """Megatron-LM's self-attention as separate PyTorch ops, what it runs without a fused softmax
    kernel: the 2019 code (NVIDIA/Megatron-LM abe36e2, mpu/transformer.py
    ``GPT2ParallelSelfAttention.forward``; copied into DeepSpeedExamples' Megatron-LM, which the
    ZeRO-Offload runs used), v1.0 (03d2880, megatron/model/transformer.py), and every later
    version when FusedScaleMaskSoftmax is off (its ``--scaled-*-masked-softmax-fusion`` flags are
    opt-in in v1.1.5, DeepSpeedExamples 2cd968f Megatron-LM-v1.1.5-ZeRO3) or cannot run (it takes
    fp16/bf16 inputs only: megatron/model/fused_softmax.py ``is_kernel_available``, so an fp32 run
    takes ``forward_torch_softmax``). Per head (count b·a): S = Q·Kᵀ (s, s, d); a scale pass over
    the scores (read e, write e: abe36e2 divides by √d, the fp32 path multiplies by the
    query-key layer-scaling coefficient); the causal mask (``masked_fill_`` with the [1, 1, s, s]
    bool mask: read e and the mask, write e); ``torch.nn.Softmax`` in the working dtype
    (SOFTMAX_CE, 2e: ``--attention-softmax-in-fp32`` is off by default in 2019–2020, and an fp32
    run is fp32 anyway); attention dropout on the probabilities (DROPOUT, 2e + 1: CUDA's fused
    dropout writes a 1-byte mask); O = P·V (s, d, s); O permuted and made contiguous (2e per
    element of t·h). Backward: dP = dO·Vᵀ, dV = Pᵀ·dO, dropout's masked scale (2e + 1), softmax
    backward (3e; on CUDA after its separate multiply, :func:`softmax_grad_mul`), the mask's
    backward (the gradient masked: read e and the mask, write e), the scale's (2e), dQ = dS·K,
    dK = dSᵀ·Q. Versions differ by one pass over the scores: abe36e2
    masks with a multiply and a subtraction (one more forward pass); v1.0 scales Q and K (2e per
    element of t·h each) and v1.1.5 the GEMM (``baddbmm`` alpha) instead of the scores (one pass
    fewer each way). Under GQA, K and V are first expanded to all heads (Megatron-LM of that time
    had no GQA). n_s = b·a·s² scores."""
    a, d, h, kv = spec.n_heads, spec.head_dim, spec.q_dim, spec.kv_dim
    t, ns, ba = b * s, b * a * s * s, b * a
    qk, pv, expand, reduce = _head_products(s, d, e, t, h, kv, dtype, ba)
    scale = ew(2 * e * ns, dtype)
    mask = ew(2 * e * ns + s * s, dtype)
    soft_f = Op(OpKind.SOFTMAX_CE, (ba * s, s), 2 * e * ns, dtype=dtype)
    soft_b = Op(OpKind.SOFTMAX_CE, (ba * s, s), 3 * e * ns, dtype=dtype)
    drop = spec.attn_dropout
    drop_f = (Op(OpKind.DROPOUT, (), 2 * e * ns + ns, dtype=dtype),) if drop else ()
    drop_b = (ew(2 * e * ns + ns, dtype),) if drop else ()
    contig = ew(2 * e * t * h, dtype)
    fwd = (*expand, qk, scale, mask, soft_f, *drop_f, pv, contig)
    bwd = (qk, pv, *drop_b, *softmax_grad_mul(ns, e, dtype, cuda), soft_b, mask, scale, pv, pv, *reduce)
    return fwd, bwd


def _megatron_block_ops(spec: ModelSpec, b: int, s: int, e: int, dtype: str,
                        flash: bool, cuda: bool = False) -> tuple[tuple[Op, ...], tuple[Op, ...]]:
    """``fused-eager-attn``: :func:`_block_ops` (fused LayerNorm — apex ``FusedLayerNorm`` in
    abe36e2 / 03d2880, Megatron's ``MixedFusedLayerNorm`` later —, a single-kernel GeLU, the GEMMs)
    with :func:`_megatron_attention` unless ``flash``, and the residual dropout as its own kernel
    before the add (abe36e2 / 03d2880: ``self.output_dropout(output)`` / ``self.dropout(output)``
    in the attention and MLP, then ``hidden_states + attention_output`` in the layer)."""
    attn = None if flash else _megatron_attention(spec, b, s, e, dtype, cuda)
    fwd, bwd = _block_ops(spec, b, s, e, dtype, flash, attn, cuda)
    t, h = b * s, spec.hidden
    in_attn = {id(op) for op in attn[0]} if attn is not None else set()
    out: list[Op] = []
    for op in fwd:
        if op.kind == OpKind.DROPOUT and id(op) not in in_attn and op.n == 3 * e * t * h + t * h:
            # dropout (read e, write e and the 1-byte mask), then the residual add
            out.extend((Op(OpKind.DROPOUT, (), (2 * e + 1) * t * h, dtype=dtype), ew(3 * e * t * h, dtype)))
        else:
            out.append(op)
    return tuple(out), bwd


def block_ops(spec: ModelSpec, b: int, s: int, e: int, dtype: str, flash: bool, framework: str,
              half_to_float: bool = False, cuda: bool = False) -> tuple[tuple[Op, ...], tuple[Op, ...]]:
    """A transformer block's (forward, backward) ops under ``framework`` (identical, ==, for every
    block of a model); ``cuda``: ATen's CUDA kernels run them (:func:`softmax_grad_mul`)."""
    if framework == "fused":
        return _block_ops(spec, b, s, e, dtype, flash, cuda=cuda)
    if framework == "fused-eager-attn":
        return _megatron_block_ops(spec, b, s, e, dtype, flash, cuda)
    return _hf_block_ops(spec, b, s, e, dtype, flash, framework, half_to_float, cuda)

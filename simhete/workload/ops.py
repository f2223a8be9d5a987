"""From a ModelSpec to a Workload: per-block ops (forward and backward) and per-block memory.

Blocks in execution order: ``embed`` (token + position embedding), ``b0`` … ``b{L-1}``
(transformer blocks), ``head`` (final norm, LM head, softmax cross-entropy). Shapes follow
:mod:`simhete.opkinds`. With T = micro_batch · seq_len tokens, h hidden, f ffn width, kv the
K/V projection width, e the bytes per element of ``dtype``:

Forward of a transformer block (pre-norm; biases fused into the GEMM epilogue, residual dropout
fused into the residual add):
  NORM|RMSNORM ln1 · GEMM qkv (T, h+2kv, h) · [ROPE on q, k] · ATTN_FWD (b, a, s, s,
  d, 1) · GEMM out (T, h, h) · DROPOUT+residual (ELEMENTWISE without dropout) · NORM|RMSNORM ln2 ·
  GEMM fc1 (T, f, h) ×1 (×2 gate+up for SwiGLU) · activation: GELU | RELU | SWIGLU (the gate's
  SiLU) then ELEMENTWISE (silu(g)·u) · GEMM fc2 (T, h, f) · DROPOUT+residual.
Backward, in reverse: every GEMM (M, N, K) with weight W gives an input-gradient GEMM and a
weight-gradient GEMM of the same FLOPs, so backward GEMM FLOPs are exactly 2× forward. The
activation, norm and rotary backwards are their own kinds (GELU_BWD, RELU_BWD, SWIGLU_BWD,
NORM_BWD, RMSNORM_BWD, ROPE_BWD: priced from their own curves, falling back to the forward's);
dropout's backward is a masked scale of the gradient (no
random numbers), so it stays an ELEMENTWISE op fused with the residual-gradient sum.

With ``flash_attention=False`` the fused ATTN_FWD/ATTN_BWD are replaced by the math path's ops
(:func:`_attention`), which is what PyTorch runs where no fused kernel applies — on a CPU, SDPA
with attention dropout.

Each op is one kernel (or, for DROPOUT+residual, the pair a fused kernel replaces), so a profile
without curves for the new kinds prices exactly what it priced when they were ELEMENTWISE/NORM
(simhete/hw/cost/compute.py falls back RMSNORM → NORM, GELU/RELU/SWIGLU/DROPOUT/ROPE → ELEMENTWISE).

Per framework (``framework``): ``fused`` is the above. The Hugging Face Transformers frameworks
run some modules as chains of eager kernels (transformers/models/*/modeling_*.py), each an
ELEMENTWISE op here (:func:`_hf_rmsnorm`, :func:`_hf_gelu_new`, :func:`_hf_rope`,
:func:`_eager_attention`): RMSNorm, GPT-2's gelu_new and rotary positions always; attention under
``hf-eager`` (and under ``attention: math``); residual dropout as its own kernel before the add.
``hf-sdpa`` / ``hf-flash2`` attention is the fused ATTN_FWD / ATTN_BWD. ``fused-eager-attn`` is
``fused`` with Megatron-LM's unfused attention ops (:func:`_megatron_attention`) and its residual
dropout as a kernel of its own (:func:`_megatron_block_ops`).

Memory accounting and the FLOP totals are in :mod:`simhete.workload.memory` and the docstring of
:class:`Workload`; the derivations are in docs/workload.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from typing import Any, Callable

from simhete.config import one_of
from simhete.errors import ConfigError
from simhete.opkinds import BWD_KIND, DTYPE_BYTES, OpKind
from simhete.schedule import Op
from simhete.workload import memory
from simhete.workload.presets import get_model
from simhete.workload.spec import ModelSpec

TRAIN_DTYPES = ("bf16", "fp16", "fp32")   # working precisions a model trains in
PRECISIONS = ("mixed", "pure")            # where the optimizer keeps its state (see _pure)
RECOMPUTE = ("full", "op")                # what a checkpointed block keeps (see build_workload)


@dataclass(frozen=True, slots=True)
class BlockWork:
    """One schedulable block: its ops, its parameters and its memory by class (all ints, bytes)."""

    name: str
    index: int
    params: int
    fwd_ops: tuple[Op, ...]
    bwd_ops: tuple[Op, ...]
    weight_bytes: int      # working-precision weights (dtype)
    grad_bytes: int        # working-precision gradients (dtype)
    master_bytes: int      # fp32 master weights (0 when dtype is fp32: the weights are the master)
    optim_bytes: int       # Adam m and v: fp32 (mixed), the working dtype (pure)
    grad32_bytes: int      # fp32 gradients for the optimizer (0 when dtype is fp32)
    act_bytes: int         # saved for backward when the block is not recomputed
    ckpt_bytes: int        # kept when the block is checkpointed (recomputed in backward)
    workspace_bytes: int   # peak transient memory during its forward or backward, beyond act_bytes
    recompute_ops: tuple[Op, ...]   # what a recompute of the block re-runs (fwd_ops, or less: train.recompute op)
    recompute_bytes: int   # what that recompute allocates beyond ckpt_bytes (act_bytes - ckpt_bytes, or see op)
    tied_to: int | None = None
    """Index of the block owning weights this block's ops also use (the LM head tied to ``embed``)."""

    @property
    def fwd_flops(self) -> float:
        return sum(op.flops for op in self.fwd_ops)

    @property
    def bwd_flops(self) -> float:
        return sum(op.flops for op in self.bwd_ops)


@dataclass(frozen=True, slots=True)
class Workload:
    """A model at one micro-batch size, sequence length and dtype.

    ``fwd_flops`` / ``bwd_flops`` are what the ops execute (flash: causal attention counted at
    half, attention backward at 2.5× forward as FlashAttention-2 does; math path: every score,
    backward 2× forward; no recomputation).
    ``model_flops_per_iter`` is the MFU numerator: 3 × forward matmul FLOPs, attention counted
    non-causal, no recomputation — for a GPT (MHA, f = 4h) exactly Narayanan et al. 2021 /
    Korthikanti et al. 2022's 72·B·s·l·h²·(1 + s/(6h) + V/(12·l·h)).
    ``tokens_per_iter`` is micro_batch · seq_len (one micro-batch per iteration).
    ``optim_dtype`` is the dtype of the optimizer's state and of its update kernel: fp32 in mixed
    precision, the working dtype in pure low-precision training (``precision="pure"``).
    ``key`` is what the workload is built from (:func:`build_workload`'s arguments): equal keys,
    equal workloads (whoever makes a workload otherwise, ``replace`` included, gives its own key
    or ``()``: none, which nothing reuses by). ``derived`` holds what policies derive from this workload alone and keep on
    it (:meth:`keep`); neither is part of equality, the repr, ``replace`` or pickles.
    """

    spec: ModelSpec
    micro_batch: int
    seq_len: int
    dtype: str
    flash_attention: bool
    blocks: tuple[BlockWork, ...]
    params: int
    fwd_flops: float
    bwd_flops: float
    model_flops_per_iter: int
    tokens_per_iter: int
    optim_dtype: str = "fp32"
    framework: str = "fused"
    key: tuple = field(default=(), compare=False, repr=False)
    derived: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    KEPT = 256      # entries of derived; past that it starts empty again

    def keep(self, key: tuple, make: Callable[[], Any]) -> Any:
        """``make()``, kept in :attr:`derived` under ``key`` (hashable, naming its owner first:
        the data depends only on this workload and the values in ``key``); it dies with the
        workload (the build cache keeps at most 4096)."""
        d = self.derived
        got = d.get(key)
        if got is None:
            if len(d) >= self.KEPT:
                d.clear()
            got = d[key] = make()
        return got

    def __getstate__(self) -> list:
        return [{} if f.name == "derived" else getattr(self, f.name) for f in fields(self)]

    def __setstate__(self, state: list) -> None:
        for f, v in zip(fields(self), state):
            object.__setattr__(self, f.name, v)


def build_workload(spec: ModelSpec | str, micro_batch: int, seq_len: int, dtype: str = "bf16",
                   flash_attention: bool = True, framework: str = "fused",
                   lse_align: int = 1, precision: str = "mixed", half_to_float: bool = False,
                   recompute: str = "full") -> Workload:
    """The Workload of ``spec`` (a ModelSpec or a preset name); cached, so cheap to call again.
    ``framework``: which kernels run (:data:`memory.FRAMEWORKS`); ``flash_attention=False`` is
    the eager attention under ``hf-eager``, torch SDPA's math path otherwise; ``lse_align`` = 32
    for PyTorch's memory-efficient SDPA kernel (its padded log-sum-exp). ``half_to_float``: fp16
    on a CUDA device, where ATen's ``softmax(x, dtype=float32)`` runs the fused half-to-float
    kernel (hf-eager's fp32 softmax; :func:`_eager_attention`).
    ``precision``: ``mixed`` (fp32 master weights and Adam state) or ``pure`` (see :func:`_pure`).
    ``recompute``: what a checkpointed transformer block keeps and re-runs (:data:`RECOMPUTE`):
    ``full`` — its input, the whole forward; ``op`` — torchtitan's per-op selective checkpointing
    (:func:`_op_sac_recompute`, :meth:`memory.Activations.block_op_sac`)."""
    if isinstance(spec, str):
        spec = get_model(spec)
    one_of(precision, PRECISIONS, None, "train.precision", "precisions")
    one_of(recompute, RECOMPUTE, None, "train.recompute", "recompute granularities")
    if recompute == "op" and not flash_attention:
        raise ConfigError(None, "train.recompute", recompute, allowed=(
            "full: per-op selective checkpointing saves the output of a fused attention kernel, "
            "and this attention is unfused"))
    # checked before the cached builders: their lru_cache takes 1 for True (equal and same hash)
    for key, v in (("micro_batch", micro_batch), ("seq_len", seq_len)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(None, key, v, allowed="a positive integer")
    for key, v in (("flash_attention", flash_attention), ("half_to_float", half_to_float)):
        if not isinstance(v, bool):
            raise ConfigError(None, key, v, allowed="true or false")
    if precision == "pure":
        return _pure(spec, micro_batch, seq_len, dtype, flash_attention, framework, lse_align, half_to_float,
                     recompute)
    return _build(spec, micro_batch, seq_len, dtype, flash_attention, framework, lse_align, half_to_float,
                  recompute)


@lru_cache(maxsize=4096)
def _build(spec: ModelSpec, b: int, s: int, dtype: str, flash: bool, framework: str = "fused",
           lse_align: int = 1, half_to_float: bool = False, recompute: str = "full") -> Workload:
    for key, v in (("micro_batch", b), ("seq_len", s)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(None, key, v, allowed="a positive integer")
    one_of(dtype, TRAIN_DTYPES, None, "dtype", "dtypes")
    if not isinstance(flash, bool):
        raise ConfigError(None, "flash_attention", flash, allowed="true or false")
    one_of(framework, memory.FRAMEWORKS, None, "framework", "frameworks")
    if spec.pos == "learned" and s > spec.max_seq:
        raise ConfigError(None, "seq_len", s, problem=(
            f"seq_len={s} exceeds {spec.name}'s {spec.max_seq} learned positions"))
    e = DTYPE_BYTES[dtype]
    h2f = half_to_float and dtype == "fp16"
    acts = memory.Activations(spec, b, s, e, flash, framework, lse_align, h2f)
    blocks = [_embed(spec, b, s, e, dtype, acts)]
    if framework == "fused":
        fwd, bwd = _block_ops(spec, b, s, e, dtype, flash)
    elif framework == "fused-eager-attn":
        fwd, bwd = _megatron_block_ops(spec, b, s, e, dtype, flash)
    else:
        fwd, bwd = _hf_block_ops(spec, b, s, e, dtype, flash, framework, h2f)  # identical (==) for every transformer block
    ckpt, rec = acts.block_ckpt(), None
    if recompute == "op":
        ckpt, rbytes = acts.block_op_sac()
        rec = (_op_sac_recompute(fwd, spec, b * s, dtype), rbytes)
    for i in range(spec.n_layers):
        blocks.append(_blockwork(f"b{i}", i + 1, spec.block_params(), fwd, bwd, e,
                                 acts.block_act(), ckpt, acts.block_workspace(), recompute=rec))
    blocks.append(_head(spec, b, s, e, dtype, acts))
    model_fwd = _linear_flops(spec, b * s) * spec.n_layers
    model_fwd += 2 * b * s * spec.vocab * spec.embed_width  # LM head GEMM
    if spec.embed_width != spec.hidden:  # OPT-350m's project_in and project_out GEMMs
        model_fwd += 2 * 2 * b * s * spec.embed_width * spec.hidden
    # Attention QK^T and PV, 2·b·s²·a·d FLOPs each per layer (a·d = h unless the head dimension is
    # set apart), counted non-causal (Narayanan et al. 2021 §5.1 / Korthikanti et al. 2022 §6
    # convention for model FLOPs).
    model_fwd += 4 * b * s * s * spec.q_dim * spec.n_layers
    # each block's BlockWork.fwd_flops / bwd_flops, summed once per distinct ops tuple: every
    # transformer block has the same two
    per_tuple: dict[tuple[Op, ...], float] = {}

    def flops(ops: tuple[Op, ...]) -> float:
        f = per_tuple.get(ops)
        if f is None:
            f = per_tuple[ops] = sum(op.flops for op in ops)
        return f

    return Workload(
        spec=spec, micro_batch=b, seq_len=s, dtype=dtype, flash_attention=flash, framework=framework,
        blocks=tuple(blocks), params=sum(bw.params for bw in blocks),
        fwd_flops=sum(flops(bw.fwd_ops) for bw in blocks), bwd_flops=sum(flops(bw.bwd_ops) for bw in blocks),
        model_flops_per_iter=3 * int(model_fwd), tokens_per_iter=b * s,
        key=(spec, b, s, dtype, flash, framework, lse_align, half_to_float, recompute, "mixed"))


def _blockwork(name: str, index: int, params: int, fwd: tuple[Op, ...], bwd: tuple[Op, ...], e: int,
               act: int, ckpt: int, workspace: int, tied_to: int | None = None,
               recompute: tuple[tuple[Op, ...], int] | None = None) -> BlockWork:
    # Model states per parameter for mixed-precision Adam (Rajbhandari et al. 2020, "ZeRO", §3.1):
    # 2 bytes 16-bit weights + 2 bytes 16-bit gradients + 12 bytes optimizer state (fp32 master
    # 4 + Adam m 4 + v 4); ZeRO-Offload keeps a further fp32 gradient (4) on the CPU side.
    # In fp32 training the weights and gradients are themselves fp32: no master copy, no grad32.
    # Pure low-precision training (no master, 16-bit m and v) is derived from these in _pure.
    mixed = e < 4
    return BlockWork(name=name, index=index, params=params, fwd_ops=fwd, bwd_ops=bwd,
                     weight_bytes=params * e, grad_bytes=params * e,
                     master_bytes=4 * params if mixed else 0, optim_bytes=8 * params,
                     grad32_bytes=4 * params if mixed else 0,
                     act_bytes=act, ckpt_bytes=ckpt, workspace_bytes=workspace,
                     recompute_ops=recompute[0] if recompute else fwd,
                     recompute_bytes=recompute[1] if recompute else act - ckpt, tied_to=tied_to)


@lru_cache(maxsize=1024)
def _pure(spec: ModelSpec, b: int, s: int, dtype: str, flash: bool, framework: str = "fused",
          lse_align: int = 1, half_to_float: bool = False, recompute: str = "full") -> Workload:
    """The workload of :func:`_build` trained in pure low precision: the optimizer updates the working-dtype weights in
    place, with no fp32 master copy and no fp32 gradients, and keeps Adam m and v in that dtype.
    torch.optim.Adam/AdamW create their state with ``torch.zeros_like(p,
    memory_format=torch.preserve_format)`` (torch/optim/adam.py ``_init_group``), so it takes the
    parameter's dtype: a model loaded with ``torch_dtype=torch.bfloat16`` and trained with torch
    AdamW (Hugging Face Trainer's default optimizer; Lightning Fabric ``precision="bf16-true"``,
    whose HalfPrecision plugin converts the module to bf16) holds per parameter 2 B weights +
    2 B gradients + 2 B m + 2 B v = 8 B, against 16 B in mixed precision (ZeRO §3.1). In fp32
    nothing changes: mixed fp32 already has no master copy and keeps fp32 state."""
    wl = _build(spec, b, s, dtype, flash, framework, lse_align, half_to_float, recompute)
    if wl.dtype == "fp32":
        return wl
    e = DTYPE_BYTES[wl.dtype]
    blocks = tuple(replace(bw, master_bytes=0, optim_bytes=2 * e * bw.params, grad32_bytes=0)
                   for bw in wl.blocks)
    return replace(wl, blocks=blocks, optim_dtype=wl.dtype, key=(*wl.key[:-1], "pure"))


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
    expand = (_ew(2 * e * t * (kv + h), dtype),) if gqa else ()
    reduce = (_ew(2 * e * t * (h + kv), dtype),) if gqa else ()
    return _head_gemm(s, s, d, dtype, ba), _head_gemm(s, d, s, dtype, ba), expand, reduce



def _op_sac_recompute(fwd: tuple[Op, ...], spec: ModelSpec, t: int, dtype: str) -> tuple[Op, ...]:
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


def _ew(n: int, dtype: str) -> Op:
    return Op(OpKind.ELEMENTWISE, (), n, dtype=dtype)


def _linear(t: int, n_out: int, n_in: int, dtype: str, count: int = 1) -> tuple[Op, tuple[Op, Op]]:
    """Forward GEMM of a linear layer on t tokens, and its (input-grad, weight-grad) GEMMs."""
    fwd = _gemm(t, n_out, n_in, dtype, count)          # Y = X·Wᵀ: (t×n_in)·(n_in×n_out)
    dgrad = _gemm(t, n_in, n_out, dtype, count)        # dX = dY·W: (t×n_out)·(n_out×n_in)
    wgrad = _gemm(n_out, n_in, t, dtype, count)        # dW = dYᵀ·X: (n_out×t)·(t×n_in)
    return fwd, (dgrad, wgrad)


def _norm(spec: ModelSpec) -> OpKind:
    return OpKind.RMSNORM if spec.norm == "rmsnorm" else OpKind.NORM


def _linear_flops(spec: ModelSpec, t: int) -> int:
    """Forward FLOPs of a block's linear layers (QKV, output, MLP) on t tokens: 2·t·in·out each
    (q = a·d is h unless the head dimension is set apart)."""
    h, f, kv, q = spec.hidden, spec.ffn_hidden, spec.kv_dim, spec.q_dim
    return 2 * t * h * ((q + 2 * kv) + q + spec.n_mlp_in * f + f)


def _attention(spec: ModelSpec, b: int, s: int, e: int, dtype: str,
               flash: bool) -> tuple[tuple[Op, ...], tuple[Op, ...]]:
    """Attention core ops (forward, backward). Flash: one fused ATTN_FWD / ATTN_BWD (attention
    dropout, if any, is generated inside the kernel). Otherwise the math path of eager PyTorch
    (torch's ``_scaled_dot_product_attention_math``, what SDPA runs where no fused kernel applies,
    e.g. on a CPU with dropout_p > 0): per head a GEMM S = Q·Kᵀ (s, s, d), the causal mask added
    (read S and the s×s mask, write S), softmax over s scores, dropout on the probabilities
    (DROPOUT: a random mask per score) and a GEMM O = P·V (s, d, s); K and V first expanded to all
    heads under grouped-query attention. Backward: dP = dO·Vᵀ, dV = Pᵀ·dO, the dropout's masked
    scale, softmax backward (read P and dP, write dS), dQ = dS·K, dK = dSᵀ·Q, and the expanded
    K/V gradients summed back to their heads. n_s = b·a·s² scores; e bytes per element."""
    a, d, h, kv = spec.n_heads, spec.head_dim, spec.q_dim, spec.kv_dim  # h: a·d, the Q width
    shape = (b, a, s, s, d, 1)
    if flash:
        return (Op(OpKind.ATTN_FWD, shape, dtype=dtype),), (Op(OpKind.ATTN_BWD, shape, dtype=dtype),)
    t, ns, ba = b * s, b * a * s * s, b * a
    drop = spec.attn_dropout
    qk, pv, expand, reduce = _head_products(s, d, e, t, h, kv, dtype, ba)
    mask = _ew(2 * e * ns + e * s * s, dtype)
    soft_f = Op(OpKind.SOFTMAX_CE, (ba * s, s), 2 * e * ns, dtype=dtype)
    soft_b = Op(OpKind.SOFTMAX_CE, (ba * s, s), 3 * e * ns, dtype=dtype)
    # torch >= 2.5's math path (aten/src/ATen/native/transformers/attention.cpp) scales q and k by
    # sqrt(1/sqrt(d)) each (read + write t·h elements each, k after any GQA expansion) and takes a
    # "safe" softmax: isneginf (read e·n_s, write n_s bools), all over each row (read n_s), where
    # (read e·n_s, write e·n_s): (3e + 2)·n_s; backward: both scales again and dK made contiguous
    scale = _ew(2 * e * t * h, dtype)
    safe = _ew((3 * e + 2) * ns, dtype)
    fwd = (*expand, scale, scale, qk, mask, soft_f, safe,
           *((Op(OpKind.DROPOUT, (), 2 * e * ns + ns, dtype=dtype),) if drop else ()), pv)
    bwd = (qk, pv, *((_ew(2 * e * ns + ns, dtype),) if drop else ()), soft_b, pv, pv,
           scale, scale, scale, *reduce)
    return fwd, bwd


def _block_ops(spec: ModelSpec, b: int, s: int, e: int, dtype: str, flash: bool = True,
               attn: tuple[tuple[Op, ...], tuple[Op, ...]] | None = None) -> tuple[tuple[Op, ...], tuple[Op, ...]]:
    t, h, f, kv = b * s, spec.hidden, spec.ffn_hidden, spec.kv_dim
    drop = 1 if spec.dropout else 0
    norm = _norm(spec)
    norm_fwd = Op(norm, (), 2 * e * t * h, dtype=dtype)     # read x, write y
    norm_bwd = Op(BWD_KIND[norm], (), 3 * e * t * h, dtype=dtype)     # read dy and x, write dx
    # residual add with fused dropout: read 2 inputs, write 1 output (+ 1-byte mask); the mask's
    # random numbers make it a DROPOUT op (compute-bound on a CPU), a plain add without dropout
    resid_fwd = Op(OpKind.DROPOUT if drop else OpKind.ELEMENTWISE, (), 3 * e * t * h + drop * t * h,
                   dtype=dtype)
    # backward: dropout backward (read grad and mask, write grad: a masked scale, no random
    # numbers) and the residual gradient sum
    resid_bwd = _ew(3 * e * t * h + drop * (2 * e + 1) * t * h, dtype)
    attn_f, attn_b = attn if attn is not None else _attention(spec, b, s, e, dtype, flash)
    q = spec.q_dim  # a·d: h unless the head dimension is set apart (Gemma, Qwen3)
    qkv, qkv_b = _linear(t, q + 2 * kv, h, dtype)
    out, out_b = _linear(t, h, q, dtype)
    fc1, fc1_b = _linear(t, f, h, dtype, spec.n_mlp_in)
    fc2, fc2_b = _linear(t, h, f, dtype)
    # rotary positions (Su et al. 2021) on q and k, forward and backward: read + write both
    rope = (Op(OpKind.ROPE, (), 2 * e * t * (q + kv), dtype=dtype),) if spec.pos == "rope" else ()
    rope_b = (Op(OpKind.ROPE_BWD, (), 2 * e * t * (q + kv), dtype=dtype),) if spec.pos == "rope" else ()
    if spec.mlp == "swiglu":
        # Shazeer 2020 "GLU Variants": silu(g)·u — the SiLU (a sigmoid per element) is SWIGLU, the
        # product a plain ELEMENTWISE multiply; backward: the product's gradients (read dy, silu(g),
        # u; write both), then SiLU's backward (read d·, g; write dg)
        silu = OpKind.SWIGLU
        act_fwd = (Op(silu, (), 2 * e * t * f, dtype=dtype), _ew(3 * e * t * f, dtype))
        act_bwd = (_ew(5 * e * t * f, dtype), Op(OpKind.SWIGLU_BWD, (), 3 * e * t * f, dtype=dtype))
        fc1_sum = (_ew(3 * e * t * h, dtype),)  # dX = dg·Wg + du·Wu: sum of the two input grads
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
    return tuple(_ew(int((r + wr) * t * w), dtype) for r, wr in kernels)


def _hf_rmsnorm(t: int, h: int, e: int, dtype: str) -> tuple[tuple[Op, ...], tuple[Op, ...]]:
    """Transformers' ``LlamaRMSNorm.forward`` as the kernels eager PyTorch runs, per element of
    t × h: x.to(fp32) (read e, write 4; none in fp32), pow(2) (4, 4), mean(-1) (read 4), + eps
    and rsqrt (per token), x·rstd (4, 4), .to(input dtype) (4, e; none in fp32), weight·y (e, e).
    Backward, as autograd differentiates that chain: dy·weight (e, e) and dy·y summed over tokens
    (2e, e, then read e); the cast back (e, 4); d·rstd (4, 4) and d·x summed per token (8, 4,
    then read 4); rsqrt's backward (per token); mean's backward expands (write 4); pow's backward (ATen ``pow_backward``:
    grad·(2·x.pow(1))): x.pow(1) (4, 4), ·2 (4, 4), ·grad (8, 4); the two fp32 gradients of x
    added (8, 4); the cast to the input dtype (4, e)."""
    cast = e < 4
    per_token = _ew(8 * t, dtype)      # + eps, rsqrt: one fp32 per token in and out
    fwd = (*_ews(t, h, dtype, (*(((e, 4),) if cast else ()), (4, 4), (4, 0))), per_token, per_token,
           *_ews(t, h, dtype, ((4, 4), *(((4, e),) if cast else ()), (e, e))))
    bwd = (*_ews(t, h, dtype, ((e, e), (2 * e, e), (e, 0), *(((e, 4),) if cast else ()),
                               (4, 4), (8, 4), (4, 0))),
           _ew(12 * t, dtype),         # rsqrt's backward (read its output and the gradient)
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
                     half_to_float: bool = False) -> tuple[tuple[Op, ...], tuple[Op, ...]]:
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
    upcast kernel, a softmax reading e and writing 4 bytes per score, a backward writing e."""
    a, d, h, kv = spec.n_heads, spec.head_dim, spec.hidden, spec.kv_dim
    t, ns, ba = b * s, b * a * s * s, b * a
    qk, pv, expand, reduce = _head_products(s, d, e, t, h, kv, dtype, ba)
    scale = _ew(2 * e * ns, dtype)
    mask = _ew(2 * e * ns + e * b * s * s, dtype)
    fp32 = spec.family not in memory.GPT2_STYLE
    if fp32:
        up = () if e == 4 else (_ew((e + 4) * ns, dtype),)
        down = () if e == 4 else (_ew((4 + e) * ns, dtype),)
        if half_to_float:
            soft_f = (Op(OpKind.SOFTMAX_CE, (ba * s, s), (e + 4) * ns, dtype="fp32"), *down)
            soft_b = (*up, Op(OpKind.SOFTMAX_CE, (ba * s, s), (8 + e) * ns, dtype="fp32"))
        else:
            soft_f = (*up, Op(OpKind.SOFTMAX_CE, (ba * s, s), 8 * ns, dtype="fp32"), *down)
            soft_b = (*up, Op(OpKind.SOFTMAX_CE, (ba * s, s), 12 * ns, dtype="fp32"), *down)
    else:
        soft_f = (Op(OpKind.SOFTMAX_CE, (ba * s, s), 2 * e * ns, dtype=dtype),)
        soft_b = (Op(OpKind.SOFTMAX_CE, (ba * s, s), 3 * e * ns, dtype=dtype),)
    drop = spec.attn_dropout
    drop_f = (Op(OpKind.DROPOUT, (), 2 * e * ns + ns, dtype=dtype),) if drop else ()
    drop_b = (_ew(2 * e * ns + ns, dtype),) if drop else ()
    contig = _ew(2 * e * t * h, dtype)
    fwd = (*expand, qk, scale, mask, *soft_f, *drop_f, pv, contig)
    bwd = (qk, pv, *drop_b, *soft_b, scale, pv, pv, *reduce)
    return fwd, bwd


def _hf_block_ops(spec: ModelSpec, b: int, s: int, e: int, dtype: str, flash: bool,
                  framework: str, half_to_float: bool = False) -> tuple[tuple[Op, ...], tuple[Op, ...]]:
    """A block as Transformers runs it (module docstring): :func:`_block_ops`' ops with the
    unfused RMSNorm, gelu_new and rotary chains, residual dropout as its own kernel (nn.Dropout,
    then the add), and under ``hf-eager`` without flash the eager attention."""
    eager = framework == "hf-eager" and not flash
    fwd, bwd = _block_ops(spec, b, s, e, dtype, flash,
                          _eager_attention(spec, b, s, e, dtype, half_to_float) if eager else None)
    t, h, f, kv = b * s, spec.hidden, spec.ffn_hidden, spec.kv_dim
    out_f: list[Op] = []
    out_b: list[Op] = []
    norm_f, norm_b = _hf_rmsnorm(t, h, e, dtype)
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
                out.extend((Op(OpKind.DROPOUT, (), (2 * e + 1) * t * h, dtype=dtype), _ew(3 * e * t * h, dtype)))
            else:
                out.append(op)

    swap(fwd, out_f, False)
    swap(bwd, out_b, True)
    return tuple(out_f), tuple(out_b)


def _megatron_attention(spec: ModelSpec, b: int, s: int, e: int,
                        dtype: str) -> tuple[tuple[Op, ...], tuple[Op, ...]]:
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
    backward (3e), the mask's backward (the gradient masked: read e and the mask, write e), the
    scale's (2e), dQ = dS·K, dK = dSᵀ·Q. Versions differ by one pass over the scores: abe36e2
    masks with a multiply and a subtraction (one more forward pass); v1.0 scales Q and K (2e per
    element of t·h each) and v1.1.5 the GEMM (``baddbmm`` alpha) instead of the scores (one pass
    fewer each way). Under GQA, K and V are first expanded to all heads (Megatron-LM of that time
    had no GQA). n_s = b·a·s² scores."""
    a, d, h, kv = spec.n_heads, spec.head_dim, spec.q_dim, spec.kv_dim
    t, ns, ba = b * s, b * a * s * s, b * a
    qk, pv, expand, reduce = _head_products(s, d, e, t, h, kv, dtype, ba)
    scale = _ew(2 * e * ns, dtype)
    mask = _ew(2 * e * ns + s * s, dtype)
    soft_f = Op(OpKind.SOFTMAX_CE, (ba * s, s), 2 * e * ns, dtype=dtype)
    soft_b = Op(OpKind.SOFTMAX_CE, (ba * s, s), 3 * e * ns, dtype=dtype)
    drop = spec.attn_dropout
    drop_f = (Op(OpKind.DROPOUT, (), 2 * e * ns + ns, dtype=dtype),) if drop else ()
    drop_b = (_ew(2 * e * ns + ns, dtype),) if drop else ()
    contig = _ew(2 * e * t * h, dtype)
    fwd = (*expand, qk, scale, mask, soft_f, *drop_f, pv, contig)
    bwd = (qk, pv, *drop_b, soft_b, mask, scale, pv, pv, *reduce)
    return fwd, bwd


def _megatron_block_ops(spec: ModelSpec, b: int, s: int, e: int, dtype: str,
                        flash: bool) -> tuple[tuple[Op, ...], tuple[Op, ...]]:
    """``fused-eager-attn``: :func:`_block_ops` (fused LayerNorm — apex ``FusedLayerNorm`` in
    abe36e2 / 03d2880, Megatron's ``MixedFusedLayerNorm`` later —, a single-kernel GeLU, the GEMMs)
    with :func:`_megatron_attention` unless ``flash``, and the residual dropout as its own kernel
    before the add (abe36e2 / 03d2880: ``self.output_dropout(output)`` / ``self.dropout(output)``
    in the attention and MLP, then ``hidden_states + attention_output`` in the layer)."""
    attn = None if flash else _megatron_attention(spec, b, s, e, dtype)
    fwd, bwd = _block_ops(spec, b, s, e, dtype, flash, attn)
    t, h = b * s, spec.hidden
    in_attn = {id(op) for op in attn[0]} if attn is not None else set()
    out: list[Op] = []
    for op in fwd:
        if op.kind == OpKind.DROPOUT and id(op) not in in_attn and op.n == 3 * e * t * h + t * h:
            # dropout (read e, write e and the 1-byte mask), then the residual add
            out.extend((Op(OpKind.DROPOUT, (), (2 * e + 1) * t * h, dtype=dtype), _ew(3 * e * t * h, dtype)))
        else:
            out.append(op)
    return tuple(out), bwd


def _embed(spec: ModelSpec, b: int, s: int, e: int, dtype: str, acts: memory.Activations) -> BlockWork:
    t, h, p = b * s, spec.hidden, spec.embed_width
    drop = 1 if spec.dropout else 0
    # gather: read 8-byte token ids and T rows, write T rows (of width p = h unless OPT-350m's
    # narrower embedding, which a bias-free p×h project_in GEMM then widens)
    fwd = [Op(OpKind.EMBED, (t, p), 8 * t + 2 * e * t * p, dtype=dtype)]
    # embedding backward: read ids and dY, zero-fill and scatter-add into the dense V×p gradient
    bwd = [Op(OpKind.EMBED, (t, p), 8 * t + 2 * e * t * p + e * spec.vocab * p, dtype=dtype)]
    if p != h:
        proj, proj_b = _linear(t, h, p, dtype)
        fwd.append(proj)
        bwd[:0] = proj_b
    if spec.embed_norm:  # BLOOM's word_embeddings_layernorm: read x, write y / read dy, x, write dx
        fwd.append(Op(_norm(spec), (), 2 * e * t * h, dtype=dtype))
        bwd.insert(0, Op(BWD_KIND[_norm(spec)], (), 3 * e * t * h, dtype=dtype))
    if spec.pos == "learned":
        # + pos rows (+ dropout: its random mask makes the op a DROPOUT)
        fwd.append(Op(OpKind.DROPOUT if drop else OpKind.ELEMENTWISE, (),
                      2 * e * t * h + e * s * h + drop * t * h, dtype=dtype))
        # dropout backward, then the position gradient: sum dY over the batch into s×h
        bwd.insert(0, _ew(drop * (2 * e + 1) * t * h + e * t * h + e * s * h, dtype))
    elif drop:
        fwd.append(Op(OpKind.DROPOUT, (), 2 * e * t * h + t * h, dtype=dtype))
        bwd.insert(0, _ew((2 * e + 1) * t * h, dtype))
    return _blockwork("embed", 0, spec.embed_params(), tuple(fwd), tuple(bwd), e,
                      acts.embed_act(), acts.embed_ckpt(), acts.embed_workspace())


def _head(spec: ModelSpec, b: int, s: int, e: int, dtype: str, acts: memory.Activations) -> BlockWork:
    t, h, v, p = b * s, spec.hidden, spec.vocab, spec.embed_width
    lm, lm_b = _linear(t, v, p, dtype)
    # OPT-350m: a bias-free h×p project_out GEMM before the LM head
    proj: tuple[Op, ...] = ()
    proj_b: tuple[Op, ...] = ()
    if p != h:
        f_op, b_ops = _linear(t, p, h, dtype)
        proj, proj_b = (f_op,), b_ops
    # Cross-entropy as PyTorch runs it on the logits (Hugging Face's ForCausalLMLoss and
    # torchtitan both call F.cross_entropy on logits.float()), one kernel per op, each a pass over
    # t·V elements counted by its compulsory traffic:
    #   forward:  the fp32 upcast (read e, write 4; absent in fp32 training), log_softmax (read 4,
    #             write the 4-byte log-probabilities it saves), nll_loss (gathers t log-probs by
    #             8-byte target ids: 12 B per token);
    #   backward: nll_loss_backward zero-fills the t×V fp32 gradient (ATen cuda/Loss.cu,
    #             nll_loss_backward_out_cuda: grad_input.zero_(), write 4) and scatters -1/N into t
    #             of its elements (read 8-byte ids, write 4), log_softmax_backward reads that
    #             gradient and the saved log-probabilities and writes the logit gradient (4 + 4 + 4;
    #             ATen cuda/SoftMax.cu host_softmax_backward), and the upcast's backward casts it
    #             back to e bytes (read 4, write e).
    up = e != 4
    ce_fwd = ((_ew((e + 4) * t * v, dtype),) if up else ()) + (
        Op(OpKind.SOFTMAX_CE, (t, v), 8 * t * v, dtype=dtype), _ew(12 * t, dtype))
    ce_bwd = (_ew(4 * t * v, dtype), _ew(12 * t, dtype),
              Op(OpKind.SOFTMAX_CE, (t, v), 12 * t * v, dtype=dtype)) + (
        (_ew((4 + e) * t * v, dtype),) if up else ())
    # the final norm, unless the family has none (OPT post-norm)
    norm_f = (Op(_norm(spec), (), 2 * e * t * h, dtype=dtype),) if spec.final_norm else ()
    norm_b = (Op(BWD_KIND[_norm(spec)], (), 3 * e * t * h, dtype=dtype),) if spec.final_norm else ()
    if spec.final_norm and acts.framework not in memory.FUSED_KERNELS and spec.norm == "rmsnorm":
        norm_f, norm_b = _hf_rmsnorm(t, h, e, dtype)    # Transformers' final LlamaRMSNorm
    fwd = (*norm_f, *proj, lm, *ce_fwd)
    bwd = (*ce_bwd, *lm_b, *proj_b, *norm_b)
    return _blockwork("head", spec.n_layers + 1, spec.head_params(), fwd, bwd, e,
                      acts.head_act(), acts.head_ckpt(), acts.head_workspace(),
                      tied_to=0 if spec.tied_embeddings else None)

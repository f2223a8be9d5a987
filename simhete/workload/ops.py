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
(:func:`kernels._attention`), which is what PyTorch runs where no fused kernel applies — on a CPU, SDPA
with attention dropout.

Each op is one kernel (or, for DROPOUT+residual, the pair a fused kernel replaces), so a profile
without curves for the new kinds prices exactly what it priced when they were ELEMENTWISE/NORM
(simhete/hw/cost/compute.py falls back RMSNORM → NORM, GELU/RELU/SWIGLU/DROPOUT/ROPE → ELEMENTWISE).

Per framework (``framework``; the op builders are in :mod:`simhete.workload.kernels`): ``fused``
is the above. The Hugging Face Transformers frameworks run some modules as chains of eager kernels
(transformers/models/*/modeling_*.py), each an ELEMENTWISE op here (``hf_rmsnorm``,
``_hf_gelu_new``, ``_hf_rope``, ``_eager_attention``): RMSNorm, GPT-2's gelu_new and rotary positions always; attention under
``hf-eager`` (and under ``attention: math``); residual dropout as its own kernel before the add.
``hf-sdpa`` / ``hf-flash2`` attention is the fused ATTN_FWD / ATTN_BWD. ``fused-eager-attn`` is
``fused`` with Megatron-LM's unfused attention ops (``_megatron_attention``) and its residual
dropout as a kernel of its own (``_megatron_block_ops``).

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
from simhete.workload import kernels, memory
from simhete.workload.kernels import ew, hf_rmsnorm, linear, norm_kind
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
                   lse_align: int = 1, precision: str = "mixed", cuda: bool = False,
                   recompute: str = "full") -> Workload:
    """The Workload of ``spec`` (a ModelSpec or a preset name); cached, so cheap to call again.
    ``framework``: which kernels run (:data:`memory.FRAMEWORKS`); ``flash_attention=False`` is
    the eager attention under ``hf-eager``, torch SDPA's math path otherwise; ``lse_align`` = 32
    for PyTorch's memory-efficient SDPA kernel (its padded log-sum-exp). ``cuda``: ATen's CUDA
    kernels run the block: in fp16, ``softmax(x, dtype=float32)`` is the fused half-to-float
    kernel (hf-eager's fp32 softmax; :func:`kernels._eager_attention`), and every softmax backward
    of an unfused attention runs its separate multiply (:func:`kernels.softmax_grad_mul`).
    ``precision``: ``mixed`` (fp32 master weights and Adam state) or ``pure`` (see :func:`_pure`).
    ``recompute``: what a checkpointed transformer block keeps and re-runs (:data:`RECOMPUTE`):
    ``full`` — its input, the whole forward; ``op`` — torchtitan's per-op selective checkpointing
    (:func:`kernels.op_sac_recompute`, :meth:`memory.Activations.block_op_sac`)."""
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
    for key, v in (("flash_attention", flash_attention), ("cuda", cuda)):
        if not isinstance(v, bool):
            raise ConfigError(None, key, v, allowed="true or false")
    if precision == "pure":
        return _pure(spec, micro_batch, seq_len, dtype, flash_attention, framework, lse_align, cuda,
                     recompute)
    return _build(spec, micro_batch, seq_len, dtype, flash_attention, framework, lse_align, cuda,
                  recompute)


@lru_cache(maxsize=4096)
def _build(spec: ModelSpec, b: int, s: int, dtype: str, flash: bool, framework: str = "fused",
           lse_align: int = 1, cuda: bool = False, recompute: str = "full") -> Workload:
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
    h2f = cuda and dtype == "fp16"   # ATen half_to_float softmax: a CUDA Half input only
    acts = memory.Activations(spec, b, s, e, flash, framework, lse_align, h2f, cuda)
    blocks = [_embed(spec, b, s, e, dtype, acts)]
    fwd, bwd = kernels.block_ops(spec, b, s, e, dtype, flash, framework, h2f, cuda)
    ckpt, rec = acts.block_ckpt(), None
    if recompute == "op":
        ckpt, rbytes = acts.block_op_sac()
        rec = (kernels.op_sac_recompute(fwd, spec, b * s, dtype), rbytes)
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
        key=(spec, b, s, dtype, flash, framework, lse_align, cuda, recompute, "mixed"))


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
          lse_align: int = 1, cuda: bool = False, recompute: str = "full") -> Workload:
    """The workload of :func:`_build` trained in pure low precision: the optimizer updates the working-dtype weights in
    place, with no fp32 master copy and no fp32 gradients, and keeps Adam m and v in that dtype.
    torch.optim.Adam/AdamW create their state with ``torch.zeros_like(p,
    memory_format=torch.preserve_format)`` (torch/optim/adam.py ``_init_group``), so it takes the
    parameter's dtype: a model loaded with ``torch_dtype=torch.bfloat16`` and trained with torch
    AdamW (Hugging Face Trainer's default optimizer; Lightning Fabric ``precision="bf16-true"``,
    whose HalfPrecision plugin converts the module to bf16) holds per parameter 2 B weights +
    2 B gradients + 2 B m + 2 B v = 8 B, against 16 B in mixed precision (ZeRO §3.1). In fp32
    nothing changes: mixed fp32 already has no master copy and keeps fp32 state."""
    wl = _build(spec, b, s, dtype, flash, framework, lse_align, cuda, recompute)
    if wl.dtype == "fp32":
        return wl
    e = DTYPE_BYTES[wl.dtype]
    blocks = tuple(replace(bw, master_bytes=0, optim_bytes=2 * e * bw.params, grad32_bytes=0)
                   for bw in wl.blocks)
    return replace(wl, blocks=blocks, optim_dtype=wl.dtype, key=(*wl.key[:-1], "pure"))


def _linear_flops(spec: ModelSpec, t: int) -> int:
    """Forward FLOPs of a block's linear layers (QKV, output, MLP) on t tokens: 2·t·in·out each
    (q = a·d is h unless the head dimension is set apart)."""
    h, f, kv, q = spec.hidden, spec.ffn_hidden, spec.kv_dim, spec.q_dim
    return 2 * t * h * ((q + 2 * kv) + q + spec.n_mlp_in * f + f)


def _embed(spec: ModelSpec, b: int, s: int, e: int, dtype: str, acts: memory.Activations) -> BlockWork:
    t, h, p = b * s, spec.hidden, spec.embed_width
    drop = 1 if spec.dropout else 0
    # gather: read 8-byte token ids and T rows, write T rows (of width p = h unless OPT-350m's
    # narrower embedding, which a bias-free p×h project_in GEMM then widens)
    fwd = [Op(OpKind.EMBED, (t, p), 8 * t + 2 * e * t * p, dtype=dtype)]
    # embedding backward: read ids and dY, zero-fill and scatter-add into the dense V×p gradient
    bwd = [Op(OpKind.EMBED, (t, p), 8 * t + 2 * e * t * p + e * spec.vocab * p, dtype=dtype)]
    if p != h:
        proj, proj_b = linear(t, h, p, dtype)
        fwd.append(proj)
        bwd[:0] = proj_b
    if spec.embed_norm:  # BLOOM's word_embeddings_layernorm: read x, write y / read dy, x, write dx
        fwd.append(Op(norm_kind(spec), (), 2 * e * t * h, dtype=dtype))
        bwd.insert(0, Op(BWD_KIND[norm_kind(spec)], (), 3 * e * t * h, dtype=dtype))
    if spec.pos == "learned":
        # + pos rows (+ dropout: its random mask makes the op a DROPOUT)
        fwd.append(Op(OpKind.DROPOUT if drop else OpKind.ELEMENTWISE, (),
                      2 * e * t * h + e * s * h + drop * t * h, dtype=dtype))
        # dropout backward, then the position gradient: sum dY over the batch into s×h
        bwd.insert(0, ew(drop * (2 * e + 1) * t * h + e * t * h + e * s * h, dtype))
    elif drop:
        fwd.append(Op(OpKind.DROPOUT, (), 2 * e * t * h + t * h, dtype=dtype))
        bwd.insert(0, ew((2 * e + 1) * t * h, dtype))
    return _blockwork("embed", 0, spec.embed_params(), tuple(fwd), tuple(bwd), e,
                      acts.embed_act(), acts.embed_ckpt(), acts.embed_workspace())


def _head(spec: ModelSpec, b: int, s: int, e: int, dtype: str, acts: memory.Activations) -> BlockWork:
    t, h, v, p = b * s, spec.hidden, spec.vocab, spec.embed_width
    lm, lm_b = linear(t, v, p, dtype)
    # OPT-350m: a bias-free h×p project_out GEMM before the LM head
    proj: tuple[Op, ...] = ()
    proj_b: tuple[Op, ...] = ()
    if p != h:
        f_op, b_ops = linear(t, p, h, dtype)
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
    ce_fwd = ((ew((e + 4) * t * v, dtype),) if up else ()) + (
        Op(OpKind.SOFTMAX_CE, (t, v), 8 * t * v, dtype=dtype), ew(12 * t, dtype))
    ce_bwd = (ew(4 * t * v, dtype), ew(12 * t, dtype),
              Op(OpKind.SOFTMAX_CE, (t, v), 12 * t * v, dtype=dtype)) + (
        (ew((4 + e) * t * v, dtype),) if up else ())
    # the final norm, unless the family has none (OPT post-norm)
    norm_f = (Op(norm_kind(spec), (), 2 * e * t * h, dtype=dtype),) if spec.final_norm else ()
    norm_b = (Op(BWD_KIND[norm_kind(spec)], (), 3 * e * t * h, dtype=dtype),) if spec.final_norm else ()
    if spec.final_norm and acts.framework not in memory.FUSED_KERNELS and spec.norm == "rmsnorm":
        norm_f, norm_b = hf_rmsnorm(t, h, e, dtype)    # Transformers' final LlamaRMSNorm
    fwd = (*norm_f, *proj, lm, *ce_fwd)
    bwd = (*ce_bwd, *lm_b, *proj_b, *norm_b)
    return _blockwork("head", spec.n_layers + 1, spec.head_params(), fwd, bwd, e,
                      acts.head_act(), acts.head_ckpt(), acts.head_workspace(),
                      tied_to=0 if spec.tied_embeddings else None)

"""Activation, checkpoint and workspace bytes per block (eager PyTorch autograd, fused kernels).

Starting point: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
Models", §4.1 eq. 1: a GPT layer saves s·b·h·(34 + 5·a·s/h) bytes in 16-bit without tensor or
sequence parallelism. Per token, in units of h bytes: attention 11 (QKV input 2, Q and K 4, V 2,
output-projection input 2, dropout mask 1) + 5·a·s/h (softmax output 2, dropout mask 1, dropout
output 2 per score); MLP 19 (fc1 input 2, GeLU input 8, fc2 input 8, dropout mask 1); two
LayerNorm inputs 4.

Adapted here to the model variant, with e bytes per element (2 for bf16/fp16) and t = b·s tokens:

- The LayerNorm inputs (e·h each) are counted as in eq. 1; so are their outputs, which are the
  QKV and fc1 GEMM inputs. Fused norms also save per-token fp32 statistics: mean and rstd for
  LayerNorm (8 bytes), rstd for RMSNorm (4 bytes) — eq. 1 omits these.
- Q, K, V are saved at their real widths: e·(h + 2·kv), kv = n_kv_heads·head_dim (GQA shrinks K,V).
- Attention output O: e·h, one tensor saved by both the attention kernel and the output GEMM.
- Flash attention (``flash_attention=True``, what torch SDPA runs on GPU): the s² softmax and
  dropout tensors are not stored (recomputed in backward, dropout from the RNG state); it saves a
  per-query, per-head fp32 log-sum-exp (4·a bytes per token). Without flash attention the s² term
  is e (softmax output) + (1 + e) (dropout mask and output) per score when the model has attention
  dropout, e without, and K, V are saved expanded to all heads (e·3h for Q, K, V).
- MLP: GeLU saves its input (fc1 output) and fc2 saves its input (GeLU output): 2·e·f. ReLU saves
  its output, which is also fc2's input: e·f. SwiGLU (eager: silu(g), then silu(g)·u) saves g,
  silu(g), u and the product (fc3 input): 4·e·f.
- Residual dropout masks (1 byte per element) after attention and after the MLP only if the model
  uses dropout (LLaMA does not).

Per framework (``framework``; measured with saved-tensor hooks by benchmarks/hf_saved_bytes.py,
reference values in tests/test_workload_framework.py). ``fused`` is the accounting above. The
Hugging Face Transformers frameworks (``hf-eager``, ``hf-sdpa``, ``hf-flash2``) differ where
Transformers runs a module as a chain of eager ops (transformers/models/*/modeling_*.py):

- RMSNorm (``LlamaRMSNorm.forward``: x.to(fp32); x.pow(2).mean(-1); x·rsqrt(var + eps);
  weight · y.to(input dtype)): pow and mul save the fp32 upcast (4·h), mul the fp32 rstd (4), the
  weight multiply the cast-back y (e·h); the output is saved by the next GEMM (e·h). The 16-bit
  input is not saved (the casts save nothing): 4·h + 4 + 2·e·h per norm, against fused's
  e·h + e·h + 4. LayerNorm is ``nn.LayerNorm`` (the fused kernel): unchanged.
- GeLU of GPT-2-style models (``activation_function: gelu_new``, Transformers'
  ``NewGELUActivation``: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))): pow saves x, tanh its
  output, the final multiply 0.5·x and 1 + tanh, fc2 the result: 5·e·f, against fused's 2·e·f.
  SiLU (``nn.SiLU``), ReLU and GPT-NeoX's/OPT's ``gelu`` (``F.gelu``) are single kernels: unchanged.
- Rotary positions (``apply_rotary_pos_emb``: q·cos + rotate_half(q)·sin): each multiply saves
  only its non-grad operand, the cos/sin tables shared by all layers (not counted per block).
- hf-sdpa / hf-flash2 attention: Q, K, V at their real widths (Transformers passes
  ``enable_gqa=True`` to SDPA without a mask, FlashAttention-2 takes grouped K/V), O and the fp32
  log-sum-exp: as fused. PyTorch's memory-efficient kernel (what SDPA runs below sm80) pads the
  log-sum-exp to a multiple of 32 queries (``lse_align``).
- hf-eager attention (``eager_attention_forward``): K and V expanded by ``repeat_kv`` (e·3h for
  Q, K, V); O made contiguous (e·h); per score the softmax output — fp32 for LLaMA/Mistral/OPT/
  GPT-NeoX (``softmax(..., dtype=torch.float32)``), e for GPT-2-style (``softmax`` in the working
  dtype) — then the probabilities PV multiplies when they are a tensor of their own: the e-byte
  cast of an fp32 softmax, or the dropout output (with a 1-byte mask on CUDA:
  ``native_dropout``). ``dropout(p=0)`` returns its input (ATen Dropout.cpp ``_dropout_impl``).

``fused-eager-attn`` is Megatron-LM's block with its attention as separate PyTorch ops (no flash
kernel, no fused softmax: the code of 2019–2020 and any Megatron-LM run in fp32; docs/scenarios.md
lists the commits). It saves what ``fused`` saves with ``flash=False``: Q and K (the scores GEMM),
the softmax output in the working dtype (``torch.nn.Softmax``), the attention dropout's 1-byte
mask and output (the PV GEMM's input), V, and O made contiguous (the output GEMM's input):
e + 1 + e per score; fused LayerNorm (apex ``FusedLayerNorm``) and a single-kernel GeLU keep the
fused terms.

Checkpointed (fully recomputed) block: keeps only its input, e·t·h bytes.

Workspace: the peak of transient tensors during the block's forward or backward that are not in
act_bytes (gradients in flight, kernel accumulators); documented per block below.
"""

from __future__ import annotations

from dataclasses import dataclass

from simhete.workload.spec import ModelSpec

FRAMEWORKS = ("fused", "hf-eager", "hf-sdpa", "hf-flash2", "fused-eager-attn")
FUSED_KERNELS = frozenset({"fused", "fused-eager-attn"})
"""Frameworks whose norms and activations are single fused kernels (Megatron-LM's): the accounting
above. ``fused-eager-attn`` differs from ``fused`` only in its attention (never flash: the s×s
softmax output, dropout mask and dropout output are saved, as the ``flash=False`` branch counts)."""
GPT2_STYLE = frozenset({"gpt2", "gpt3", "gpt-like"})
"""Families Transformers runs as GPT-2 (``GPT2Model``): softmax in the working dtype and the
``gelu_new`` activation (Python NewGELUActivation); the other families take an fp32 softmax."""


def hf_gelu_new(spec: ModelSpec) -> bool:
    """Transformers runs this model's GeLU as the unfused NewGELUActivation (GPT-2's gelu_new)."""
    return spec.mlp == "gelu" and spec.family in GPT2_STYLE


@dataclass(frozen=True, slots=True)
class Activations:
    spec: ModelSpec
    b: int
    s: int
    e: int
    flash: bool
    framework: str = "fused"
    lse_align: int = 1
    """Queries per padded log-sum-exp row: 32 for PyTorch's memory-efficient SDPA kernel (its
    logsumexp is (B, heads, ceil(M / 32) * 32): torch/_meta_registrations.py,
    ``meta__scaled_dot_product_efficient_attention``)."""
    half_to_float: bool = False
    """fp16 on CUDA: ATen's fp32 softmax of a Half input is one fused kernel whose backward writes
    the fp16 score gradient (aten/src/ATen/native/SoftMax.cpp ``softmax``; see block_workspace)."""
    cuda: bool = False
    """ATen's CUDA kernels: the softmax backward first writes ``grad * output`` to a tensor of its
    own (:func:`simhete.workload.kernels.softmax_grad_mul`), alive with the gradients it reads."""

    @property
    def t(self) -> int:
        return self.b * self.s

    def _norm_stats(self) -> int:
        """fp32 per-token statistics a fused norm saves: mean and rstd, or rstd only."""
        return 8 if self.spec.norm == "layernorm" else 4

    def _mlp_elems(self) -> int:
        """Elements of width f saved per token by the MLP activation (see module docstring)."""
        return {"gelu": 2, "relu": 1, "swiglu": 4}[self.spec.mlp]

    def block_act(self) -> int:
        """Bytes a transformer block saves for backward without recomputation."""
        if self.framework not in FUSED_KERNELS:
            return self._hf_block_act()
        sp, e, t = self.spec, self.e, self.t
        h, kv, f, a, q = sp.hidden, sp.kv_dim, sp.ffn_hidden, sp.n_heads, sp.q_dim
        drop = 1 if sp.dropout else 0
        per_token = (  # q = a·d is h unless the head dimension is set apart (Gemma, Qwen3)
            e * h + e * h                            # ln1 input, ln1 output (QKV GEMM input)
            + e * (q + 2 * (kv if self.flash else q))  # Q, K, V (math attention: K, V expanded)
            + e * q + drop * h                       # attention output O; dropout mask
            + e * h + e * h                          # ln2 input, ln2 output (fc1 input)
            + self._mlp_elems() * e * f + drop * h   # MLP activation tensors; dropout mask
            + 2 * self._norm_stats()                 # two norms' statistics
        )
        if self.flash:
            return t * (per_token + 4 * a)           # fp32 log-sum-exp per query and head
        s2 = e + (1 + e if sp.attn_dropout else 0)   # softmax output (+ dropout mask and output)
        return t * per_token + self.b * a * self.s * self.s * s2

    def _hf_block_act(self) -> int:
        """Hugging Face Transformers' block (see the module docstring, per framework)."""
        sp, e, t, b, s = self.spec, self.e, self.t, self.b, self.s
        h, kv, f, a, q = sp.hidden, sp.kv_dim, sp.ffn_hidden, sp.n_heads, sp.q_dim
        drop = 1 if sp.dropout else 0
        if sp.norm == "rmsnorm":
            # LlamaRMSNorm.forward (modeling_llama.py): fp32 upcast (saved by pow and mul), fp32
            # rstd, the cast-back y (saved by weight·y), the output (saved by the next GEMM)
            norm = 4 * h + 4 + 2 * e * h
        else:
            norm = 2 * e * h + 8                # nn.LayerNorm: input, fp32 mean + rstd; output
        # NewGELUActivation (activations.py): x, tanh(·), 0.5·x, 1 + tanh(·), output
        mlp = (5 if hf_gelu_new(sp) else self._mlp_elems()) * e * f
        eager = self.framework == "hf-eager" and not self.flash
        math = not self.flash and not eager    # torch SDPA's math path (CPU with dropout)
        qkv = e * (q + 2 * (q if (eager or math) else kv))   # q = a·d (h unless set apart: Gemma, Qwen3)
        per_token = 2 * norm + qkv + e * q + mlp + 2 * drop * h
        if self.flash:
            rows = -(-s // self.lse_align) * self.lse_align
            return t * per_token + 4 * a * b * rows
        if math:
            s2 = e + (1 + e if sp.attn_dropout else 0)
        else:
            # eager_attention_forward: softmax(..., dtype=torch.float32) saves its fp32 output
            # (GPT-2's softmax: e); PV saves the probabilities, a tensor of their own when cast
            # from fp32 or the dropout's output (+ its 1-byte CUDA mask); dropout(p=0) is a no-op
            fp32 = sp.family not in GPT2_STYLE and e < 4
            soft = 4 if sp.family not in GPT2_STYLE else e
            probs = (1 + e) if sp.attn_dropout else (e if fp32 else 0)
            s2 = soft + probs
        return t * per_token + b * a * s * s * s2

    def block_ckpt(self) -> int:
        """A checkpointed block keeps its input only."""
        return self.e * self.t * self.spec.hidden

    def block_op_sac(self) -> tuple[int, int]:
        """Per-op selective checkpointing (``train.recompute: op``): torchtitan's
        ``selective_ac_option = "op"`` (torchtitan/models/llama/parallelize_llama.py,
        ``_apply_ac_to_transformer_block``, 2024-12): in a checkpointed block the outputs of the
        attention kernel (``_scaled_dot_product_{flash,efficient}_attention``: O and the fp32
        log-sum-exp) and of every odd-numbered ``aten.mm`` are saved (``MUST_SAVE``), everything
        else is recomputed in backward from the block input (``PREFER_RECOMPUTE``). The count
        restarts in every block (the policy's ``meta`` is made per call of the checkpoint's
        ``context_fn``); the block's matmuls in module order are wq, wk, wv, wo, then w1 (gate),
        w3 (up), w2 (down) for a gated MLP or fc1, fc2 otherwise: wq, wv, the gate (fc1) and the
        down projection (w2) are saved.

        Returns (kept, recompute): ``kept`` = bytes held from forward to backward (the block
        input, which the recompute starts from, and the saved outputs); ``recompute`` = what the
        backward's recompute allocates on top: the block's saved-for-backward tensors
        (:meth:`block_act`) less those that are the very tensors already kept — V (the attention
        kernel's input), O and the log-sum-exp, the gate or fc1 output where the activation saves
        its input (SwiGLU, GeLU; ReLU saves its output), and the block input where the first
        norm saves it (a fused norm or ``nn.LayerNorm``; Transformers' RMSNorm saves its fp32
        upcast instead). wq's output (autograd saves Q after the rotary) and w2's (nothing in
        backward reads it) stay held besides. Needs a fused attention kernel (the save list names
        SDPA's fused kernels; unfused attention's products are ``bmm``, recomputed)."""
        sp, e, t, b, s = self.spec, self.e, self.t, self.b, self.s
        h, kv, f, a, q = sp.hidden, sp.kv_dim, sp.ffn_hidden, sp.n_heads, sp.q_dim
        # the fp32 log-sum-exp as block_act counts it (Transformers' path pads it: lse_align)
        lse = 4 * a * (t if self.framework in FUSED_KERNELS else b * (-(-s // self.lse_align) * self.lse_align))
        saved = t * e * (q + kv + q + f + h) + lse       # wq, wv, O, gate/fc1, w2 outputs + lse
        kept = self.block_ckpt() + saved
        input_in_act = self.framework in FUSED_KERNELS or sp.norm == "layernorm"
        overlap = t * e * (kv + q + (f if sp.mlp in ("swiglu", "gelu") else 0)) + lse \
            + (self.block_ckpt() if input_in_act else 0)
        return kept, self.block_act() - overlap

    def _mlp_side(self) -> int:
        """Bytes per token the second half of a sequential pre-norm block saves: the norm before
        the MLP (input or fp32 upcast, statistics, output), the MLP's tensors and its residual
        dropout mask. Autograd frees a node's saved tensors once its backward has run
        (``torch/csrc/autograd/engine.cpp``: ``fn.release_variables()`` after ``call_function``
        unless the graph is retained), and these nodes all run before the attention's. 0 where
        attention and MLP share one norm or the block has more norms (parallel or sandwich blocks,
        whose order is not modelled here)."""
        sp, e = self.spec, self.e
        if sp.norms_per_block != 2:
            return 0
        drop = sp.hidden if sp.dropout else 0
        if self.framework in FUSED_KERNELS:
            return 2 * e * sp.hidden + self._norm_stats() + self._mlp_elems() * e * sp.ffn_hidden + drop
        norm = 4 * sp.hidden + 4 + 2 * e * sp.hidden if sp.norm == "rmsnorm" else 2 * e * sp.hidden + 8
        return norm + (5 if hf_gelu_new(sp) else self._mlp_elems()) * e * sp.ffn_hidden + drop

    def block_workspace(self) -> int:
        """Peak of transient tensors during the block's backward, beyond act_bytes.

        MLP backward: incoming and residual gradient (2·e·h per token) plus the intermediate
        gradients alive at once: 2·e·f (GeLU/ReLU: d(fc2 input), d(fc1 output)), 3·e·f (SwiGLU:
        d(product) or d(silu g), du, dg). Attention backward: 2·e·h plus dQ, dK, dV at full head
        count (3·e·h) plus FlashAttention-2's fp32 dQ accumulator (4·h), or without flash the
        gradients of the probabilities and scores (2·e per score); by then the MLP half of the
        block has run its backward and its saved tensors are freed (:meth:`_mlp_side`), so the
        attention's figure is net of them. The forward's transients are smaller (its outputs are
        saved and so already in act_bytes), except the pre-softmax scores without flash (e per
        score), which the backward's 2·e per score exceeds.

        hf-eager with an fp32 softmax (``softmax(x, dtype=float32).to(dtype)``): PV's backward
        releases the e-byte probabilities, then the cast's backward makes the fp32 gradient of the
        softmax output and the softmax backward the fp32 gradient of the scores (ATen
        ``softmax``: the input is cast first; fp16 on CUDA takes the fused ``half_to_float``
        kernel, whose score gradient is fp16: e instead of 4) while its fp32 output is held:
        4 + 4 beyond act_bytes, less the e bytes of the released probabilities. On CUDA the
        softmax backward's ``grad * output`` tensor is alive with them (4 bytes per score in
        fp32, else e). Measured on one Transformers 4.33.3 LlamaDecoderLayer in bf16 on the CPU
        (profiler allocator events, benchmarks/hf_block_peak.py): act_bytes + block_workspace +
        the block's output is the block's forward + backward peak +4 % to +11 % at b·s = 256 to
        1024, h = 256 / 512 (it was +33 % to +47 % with the MLP's tensors and the probabilities
        counted as live).

        Attention dropout: PV's backward releases the dropout's output and the dropout's backward
        its 1-byte mask before the softmax backward runs (autograd frees a node's saved tensors
        once its backward has run, as above), so at the softmax backward 1 + e bytes per score of
        act_bytes are gone: with e-byte probabilities 2e − 1 beyond act_bytes on CUDA (e on the
        CPU, reached at PV's backward). Against the FlashAttention paper's PyTorch attention
        with dropout and mask (arXiv 2205.14135, Table 21, A100, fp16, b·h = 128, d = 64):
        17,024 MB at s = 4096 is 8.3 bytes per score (MiB), the 5 that the forward saves
        (probabilities, mask, dropout output) and these 3.
        """
        sp, e, t = self.spec, self.e, self.t
        h, f, q = sp.hidden, sp.ffn_hidden, sp.q_dim
        mlp = t * e * (2 * h + (3 if sp.mlp == "swiglu" else 2) * f)
        # per score at the softmax backward: the gradients of the softmax output and of the scores
        # (+ CUDA's grad·output), less what PV's and the dropout's backward have released of
        # act_bytes: the dropout's mask and output (1 + e), else an fp32 softmax's e-byte cast
        if self.framework == "hf-eager" and sp.family not in GPT2_STYLE:
            grads, tmp, released = 4 + (e if self.half_to_float else 4), 4, e if e < 4 else 0
        else:
            grads, tmp, released = 2 * e, e, 0
        if sp.attn_dropout:
            released = 1 + e
        per_score = grads + (tmp if self.cuda else 0) - released
        if sp.attn_dropout:   # … or earlier, PV's backward: its gradient (e) beside all of act_bytes
            per_score = max(per_score, e)
        if self.flash:  # dQ, dK, dV at full head count and the dQ accumulator are a·d = q wide
            attn = t * (e * (2 * h + 3 * q) + 4 * q)
        else:
            attn = t * e * (2 * h + 3 * q) + per_score * self.b * sp.n_heads * self.s * self.s
        return max(mlp, attn - t * self._mlp_side())

    def embed_act(self) -> int:
        """int64 token ids (needed by the embedding backward) and the dropout mask, if any; with a
        narrower embedding (OPT-350m) the project_in input (e·p per token), with an embedding
        norm (BLOOM) its input and statistics."""
        sp, e, t = self.spec, self.e, self.t
        extra = (e * sp.embed_width if sp.embed_width != sp.hidden else 0) + (
            e * sp.hidden + self._norm_stats() if sp.embed_norm else 0)
        return 8 * t + (t * sp.hidden if sp.dropout else 0) + t * extra

    def embed_ckpt(self) -> int:
        """The embedding's input: the int64 token ids."""
        return 8 * self.t

    def embed_workspace(self) -> int:
        """The gradient arriving at the embedding (its dense V×h weight gradient is grad_bytes)."""
        return self.e * self.t * self.spec.hidden

    def head_act(self) -> int:
        """Final norm input and statistics, its output (LM-head GEMM input), and the fp32
        log-probabilities the cross-entropy saves: t·V·4 bytes — usually the largest tensor of
        the whole model (e.g. LLaMA-3: V = 128256, so 0.5 MB per token)."""
        sp, e, t = self.spec, self.e, self.t
        if sp.embed_width != sp.hidden:  # OPT-350m: project_out input (h) and LM input (p), no final norm
            return t * (e * sp.hidden + e * sp.embed_width + (e * sp.hidden + self._norm_stats()
                                                              if sp.final_norm else 0) + 4 * sp.vocab)
        if not sp.final_norm:
            return t * (e * sp.hidden + 4 * sp.vocab)
        if self.framework not in FUSED_KERNELS and sp.norm == "rmsnorm":   # Transformers' LlamaRMSNorm
            return t * (4 * sp.hidden + 4 + 2 * e * sp.hidden + 4 * sp.vocab)
        return t * (2 * e * sp.hidden + self._norm_stats() + 4 * sp.vocab)

    def head_ckpt(self) -> int:
        """A recomputed head keeps its input (the last block's output)."""
        return self.e * self.t * self.spec.hidden

    def head_workspace(self) -> int:
        """Transient logit-sized tensors: forward holds the e-byte logits and their fp32 upcast
        ((e + 4)·t·V); backward holds the fp32 gradient of the log-probabilities and of the
        logits at once (8·t·V) — the larger of the two."""
        return max(self.e + 4, 8) * self.t * self.spec.vocab

"""Real transformer blocks for the replay, written as functions of explicit weight dicts.

The replay moves weights between host and device buffers itself, so a block is a pure function
``forward(weights, x)`` rather than an ``nn.Module`` that owns its parameters. Blocks match the
:class:`simhete.workload.ModelSpec` exactly (the parameter count equals ``block_params()``):

- ``embed``: token embedding ``wte`` (+ learned positions ``wpe``), dropout.
- transformer block (pre-norm, GPT-2 / LLaMA layout): norm → fused QKV projection → rotary
  positions (``rope``) → causal ``scaled_dot_product_attention`` (grouped K/V heads when
  ``n_kv_heads < n_heads``) → output projection → dropout → residual; norm → MLP (GeLU, ReLU or
  SwiGLU with separate gate and up projections, as Hugging Face LLaMA's ``gate_proj``/``up_proj``
  and the workload's two GEMMs) → dropout → residual.
- ``head``: final norm → LM head (the token embedding when tied) → cross-entropy in fp32.

Dropout (p = 0.1, GPT-2's rate; released config ``resid_pdrop``/``embd_pdrop``/``attn_pdrop``) is
torch's own (``F.dropout``, and ``dropout_p`` inside ``scaled_dot_product_attention`` when the
spec has attention dropout), with the default generator re-seeded from (seed, iteration,
micro-step, block, site) just before each site, so a recomputation reproduces the forward's masks
exactly, every micro-step of a gradient-accumulating iteration draws its own, and the plain
reference loop draws the same ones. Forward and recomputation run on one thread.

Gradient accumulation (``train.grad_accum`` = k): the data of an iteration is k micro-batches
(:func:`data`), micro-step m trains on the m-th, and the loss each backward starts from is the
micro-step's loss divided by k (:func:`scale_loss`), as DeepSpeed's ``engine.backward`` does with
``gradient_accumulation_steps`` > 1 (``_scale_loss_by_gas``); the loss reported for the iteration
is the sum of those scaled losses, the mean over its micro-steps (DeepSpeed's logged loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from simhete.workload.spec import ModelSpec

DROPOUT_P = 0.1
INIT_STD = 0.02   # GPT-2 / Megatron-LM initialisation std of every weight matrix
ROPE_BASE = 10000.0  # Su et al. 2021, "RoFormer", §3.2.2; LLaMA uses the same base
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

Weights = dict[str, torch.Tensor]


def kind_of(name: str) -> str:
    """``embed``, ``head`` or ``block`` for a workload block name."""
    return name if name in ("embed", "head") else "block"


def init_master(spec: ModelSpec, name: str, index: int, seed: int) -> Weights:
    """fp32 initial weights of one block, on the CPU, deterministic in (seed, index)."""
    g = torch.Generator().manual_seed(seed * 100_003 + index)
    h, f, kv = spec.hidden, spec.ffn_hidden, spec.kv_dim

    def mat(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(rows, cols, generator=g) * INIT_STD

    def norm(prefix: str) -> Weights:
        out = {f"{prefix}.w": torch.ones(h)}
        if spec.norm == "layernorm":
            out[f"{prefix}.b"] = torch.zeros(h)
        return out

    w: Weights = {}
    kind = kind_of(name)
    if kind == "embed":
        w["wte"] = mat(spec.vocab, h)
        if spec.pos == "learned":
            w["wpe"] = mat(spec.max_seq + spec.pos_offset, h)
    elif kind == "head":
        w.update(norm("lnf"))
        if not spec.tied_embeddings:
            w["lm"] = mat(spec.vocab, h)
    else:
        w.update(norm("ln1"))
        w["qkv.w"] = mat(h + 2 * kv, h)
        w["out.w"] = mat(h, h)
        w.update(norm("ln2"))
        mlp_in = ("gate", "up") if spec.mlp == "swiglu" else ("fc1",)
        for name in mlp_in:
            w[f"{name}.w"] = mat(f, h)
        w["fc2.w"] = mat(h, f)
        if spec.bias:
            w["qkv.b"] = torch.zeros(h + 2 * kv)
            w["out.b"] = torch.zeros(h)
            for name in mlp_in:
                w[f"{name}.b"] = torch.zeros(f)
            w["fc2.b"] = torch.zeros(h)
    return w


@dataclass(frozen=True)
class Step:
    """What a forward needs besides weights and input: where it is (for dropout seeds) and the data."""

    it: int
    index: int
    seed: int
    tokens: torch.Tensor     # (micro_batch, seq_len) int64, on the device
    targets: torch.Tensor    # (micro_batch, seq_len) int64, on the device
    m: int = 1               # micro-step of a gradient-accumulating iteration (1-based)


def batch_of(tokens: torch.Tensor, it: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of micro-step ``m`` of iteration ``it`` from :func:`data`'s tensor."""
    toks = tokens[it - 1, m - 1]
    return toks[:, :-1], toks[:, 1:]


def scale_loss(loss: torch.Tensor, micro_steps: int) -> torch.Tensor:
    """The loss a micro-step's backward starts from: divided by the micro-steps per iteration when
    there are several (DeepSpeed ``engine.backward``: ``loss = self._scale_loss_by_gas(loss.float())``
    when ``gradient_accumulation_steps() > 1``), unchanged otherwise."""
    return loss / micro_steps if micro_steps > 1 else loss


def iteration_loss(scaled: list[float]) -> float:
    """The loss reported for an iteration: the sum of its micro-steps' scaled losses (DeepSpeed
    adds each micro-step's scaled loss into ``self.losses``), i.e. their mean."""
    return sum(scaled)


def forward(spec: ModelSpec, name: str, w: Weights, x: torch.Tensor | None, step: Step,
            tied: Weights | None = None) -> torch.Tensor:
    """One block's forward; the head returns the scalar mean cross-entropy loss (fp32)."""
    kind = kind_of(name)
    if kind == "embed":
        s = step.tokens.shape[1]
        y = F.embedding(step.tokens, w["wte"])
        if "wpe" in w:
            y = y + w["wpe"][spec.pos_offset:spec.pos_offset + s]
        return _dropout(spec, y, step, 0)
    if kind == "head":
        h = _norm(spec, x, w, "lnf")
        lm = w["lm"] if "lm" in w else (tied or {}).get("wte")
        if lm is None:
            raise KeyError("wte")
        logits = F.linear(h, lm)
        return F.cross_entropy(logits.float().flatten(0, 1), step.targets.flatten())
    return _block(spec, w, x, step)


def _block(spec: ModelSpec, w: Weights, x: torch.Tensor, step: Step) -> torch.Tensor:
    b, s, hid = x.shape
    nh, nkv, d = spec.n_heads, spec.n_kv_heads, spec.head_dim
    h = _norm(spec, x, w, "ln1")
    qkv = F.linear(h, w["qkv.w"], w.get("qkv.b"))
    q, k, v = qkv.split([hid, nkv * d, nkv * d], dim=-1)
    q = q.view(b, s, nh, d).transpose(1, 2)
    k = k.view(b, s, nkv, d).transpose(1, 2)
    v = v.view(b, s, nkv, d).transpose(1, 2)
    if spec.pos == "rope":
        cos, sin = rope_tables(s, d, x.device, x.dtype)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    p = 0.0
    if spec.attn_dropout:
        _seed(step, 3)
        p = DROPOUT_P
    a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p, enable_gqa=nkv != nh)
    a = F.linear(a.transpose(1, 2).reshape(b, s, hid), w["out.w"], w.get("out.b"))
    x = x + _dropout(spec, a, step, 1)
    h = _norm(spec, x, w, "ln2")
    if spec.mlp == "swiglu":
        # Shazeer 2020, "GLU Variants Improve Transformer": silu(x·Wg) · (x·Wu), two GEMMs
        h = F.silu(F.linear(h, w["gate.w"], w.get("gate.b"))) * F.linear(h, w["up.w"], w.get("up.b"))
    else:
        h = F.linear(h, w["fc1.w"], w.get("fc1.b"))
        h = F.gelu(h, approximate="tanh") if spec.mlp == "gelu" else F.relu(h)  # GPT-2: tanh GeLU
    h = F.linear(h, w["fc2.w"], w.get("fc2.b"))
    return x + _dropout(spec, h, step, 2)


def _norm(spec: ModelSpec, x: torch.Tensor, w: Weights, prefix: str) -> torch.Tensor:
    if spec.norm == "layernorm":
        return F.layer_norm(x, (x.shape[-1],), w[f"{prefix}.w"], w[f"{prefix}.b"], eps=1e-5)
    return F.rms_norm(x, (x.shape[-1],), w[f"{prefix}.w"], eps=1e-5)


def _dropout(spec: ModelSpec, x: torch.Tensor, step: Step, site: int) -> torch.Tensor:
    if not spec.dropout:
        return x
    _seed(step, site)
    return F.dropout(x, DROPOUT_P, training=True)


MICRO_SEED_STRIDE = 0x9E3779B97F4A7C15   # 2^64 / golden ratio: micro-steps far apart in seed space


def _seed(step: Step, site: int) -> None:
    key = ((step.seed * 1_000_003 + step.it) * 4099 + step.index) * 4 + site
    # micro-step 1 keeps the seeds of a schedule without accumulation
    torch.manual_seed((key + (step.m - 1) * MICRO_SEED_STRIDE) % 2**63)


def rope_tables(s: int, d: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (ROPE_BASE ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))
    ang = torch.outer(torch.arange(s, device=device, dtype=torch.float32), inv)
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def data(spec: ModelSpec, iterations: int, micro_batch: int, seq_len: int, seed: int,
         micro_steps: int = 1) -> torch.Tensor:
    """Token ids (iterations, micro_steps, micro_batch, seq_len + 1) drawn uniformly, deterministic
    in seed: each iteration holds its ``micro_steps`` micro-batches in order (with one micro-step
    the ids are those of the same seed's earlier (iterations, micro_batch, seq_len + 1) tensor)."""
    g = torch.Generator().manual_seed(seed * 7919 + 17)
    return torch.randint(0, spec.vocab, (iterations, micro_steps, micro_batch, seq_len + 1), generator=g)


def n_params(w: Weights) -> int:
    return sum(t.numel() for t in w.values())


def adam_step(master: Weights, opt: torch.optim.Optimizer, grads: Weights) -> None:
    """One Adam step of a block's fp32 master weights with gradients ``grads`` (any precision:
    converted to fp32 here, as the replay's gradients arrive in the training dtype)."""
    with torch.no_grad():
        for k, m in master.items():
            m.grad = grads[k].to(torch.float32)
        opt.step()
        for m in master.values():
            m.grad = None


def adam(params: list[torch.Tensor], lr: float) -> torch.optim.Adam:
    """The optimizer the replay and the reference both use: torch's Adam, one instance per block
    over its fp32 master weights, with the fused implementation (the one calibration measures,
    calibrate/adam.py) where this torch has it for the device, else the foreach one."""
    try:
        opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    except (RuntimeError, ValueError):
        opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=True)
    return opt


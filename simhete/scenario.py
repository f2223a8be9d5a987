"""Scenario files: model + hardware + training shape + policy and knobs, as one YAML.

    name: LLaMA-2-13B on one H100 PCIe with ZeRO-Offload
    model: llama2-13b                 # preset | {preset: ..., n_layers: 4, ...} | {hf_config: path}
    hardware: h100-pcie               # profile name or path | {profile: ..., gpus: 4, host_memory: 512GiB}
    train: {micro_batch: 4, seq_len: 4096, dtype: bf16}
    iterations: 3
    policy: zero-offload
    knobs: {pin_memory: true}

Loaded in stages: parse YAML → validate the shape (pydantic) → resolve names (model preset,
hardware profile, policy) → validate the policy's knobs. Every error names the file and key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from simhete.config import Strict, load_yaml, parse_bytes, validate
from simhete.errors import ConfigError


class ModelRef(Strict):
    preset: str | None = None
    hf_config: str | None = None
    n_layers: int | None = Field(None, gt=0)
    hidden: int | None = Field(None, gt=0)
    n_heads: int | None = Field(None, gt=0)
    n_kv_heads: int | None = Field(None, gt=0)
    ffn_hidden: int | None = Field(None, gt=0)
    vocab: int | None = Field(None, gt=0)
    bias: bool | None = None
    """Biases on the blocks' linear layers (MPT and nanoGPT with ``bias=False`` have none)."""
    dropout: bool | None = None
    """Embedding and residual dropout (its 1-byte masks are saved for backward)."""
    attn_dropout: bool | None = None
    """Dropout on the attention probabilities."""
    tied_embeddings: bool | None = None


class HardwareRef(Strict):
    profile: str
    gpus: int | None = Field(None, ge=1, le=8)
    gpu_memory: int | None = Field(None, gt=0)
    host_memory: int | None = Field(None, gt=0)
    pcie_gbps: float | None = Field(None, gt=0)
    """What-if: pinned H2D/D2H bandwidth per direction (marked assumed in the output)."""

    @field_validator("gpu_memory", "host_memory", mode="before")
    @classmethod
    def _bytes(cls, v: Any) -> Any:
        return None if v is None else parse_bytes(v)


class TrainShape(Strict):
    micro_batch: int = Field(gt=0, le=4096)
    seq_len: int = Field(gt=0, le=1_048_576)
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    precision: Literal["mixed", "pure"] = "mixed"
    """Where the optimizer keeps its state: ``mixed`` (16-bit weights and gradients, fp32 master
    weights, fp32 Adam m and v: 16 B/param) or ``pure`` (the model itself in ``dtype``, e.g.
    loaded with ``torch_dtype=torch.bfloat16`` and trained with torch AdamW without a master copy,
    or Lightning ``precision="bf16-true"``: weights, gradients, m and v all in ``dtype``,
    8 B/param). With ``dtype: fp32`` both are fp32 training. Only policies whose optimizer runs
    as torch Adam on the GPU (gpu-only) accept ``pure``."""
    attention: Literal["auto", "flash", "math"] = "auto"
    """Attention kernel: ``flash`` (fused: no s×s scores stored), ``math`` (unfused: scores,
    softmax and dropout materialised), ``auto``: flash, except on a CPU device when the model has
    attention dropout — PyTorch's CPU fused SDPA kernel rejects dropout (``check_for_dropout`` in
    ATen's sdp_utils_cpp.cpp) and falls back to the math path."""
    attention_kernel: Literal["flash1"] | None = None
    """Which fused attention kernel the framework runs, when it is not the one the profile's
    ``gpu.attention`` describes (FlashAttention-2 on sm80 and newer): ``flash1``, FlashAttention
    v1 — flash-attn 1.x, torch SDPA's flash kernel before PyTorch 2.2 (its 2.2 release added
    FlashAttention-2), llm-foundry's ``attn_impl: triton`` (Tri Dao's Triton port of
    FlashAttention, "slightly slower than CUDA forward + backward" by its header). Priced with the
    profile's ``gpu.attention.kernels.flash1``; what the kernel saves is the same (O and the
    log-sum-exp). Absent: the profile's ``gpu.attention``."""
    recompute: Literal["full", "op"] = "full"
    """What a checkpointed transformer block (the policy's ``checkpointing`` knob picks which)
    keeps and re-runs: ``full`` — its input, and the whole forward again in backward; ``op`` —
    torchtitan's per-op selective checkpointing (``activation_checkpoint.mode = "selective"``,
    ``selective_ac_option = "op"``): the outputs of the fused attention kernel and of every second
    matmul (wq, wv, the gate, the down projection) are kept, the rest re-run. Needs a fused
    attention kernel."""
    grad_accum: int = Field(1, ge=1, le=4096)
    """Micro-steps of forward and backward per optimizer step (DeepSpeed
    ``gradient_accumulation_steps``); tokens and samples per iteration scale with it."""


class ScenarioFile(Strict):
    name: str = ""
    description: str = ""
    model: str | ModelRef
    hardware: str | HardwareRef
    train: TrainShape
    iterations: int = Field(3, ge=1, le=100)
    policy: str = "gpu-only"
    knobs: dict[str, Any] = Field(default_factory=dict)
    framework: Literal["fused", "hf-eager", "hf-sdpa", "hf-flash2", "fused-eager-attn"] = "hf-sdpa"
    """Which kernels run (and so what they save for backward): ``fused`` (Megatron-LM, torchtitan:
    fused norms and activations, flash attention, fused Adam), ``fused-eager-attn`` (Megatron-LM
    without flash or fused softmax: its attention as separate PyTorch ops, the s×s softmax
    saved — the 2019–2020 code, or fp32), ``hf-eager`` (Hugging Face
    Transformers, ``attn_implementation="eager"``), ``hf-sdpa`` (Transformers' default, torch
    SDPA), ``hf-flash2`` (Transformers with FlashAttention-2)."""
    replay: dict[str, Any] | None = None   # validated by simhete.replay (scaled-down shape for validate)
    published: dict[str, Any] | None = None
    """A published measurement of this setup (scenarios/published/): validated by
    ``simhete validate --published``; ignored by the other commands."""


@dataclass(frozen=True)
class Scenario:
    """A validated scenario; ``file`` is kept so later errors (knobs, replay) can name it."""

    data: ScenarioFile
    file: str | None

    @property
    def name(self) -> str:
        return self.data.name or (Path(self.file).stem if self.file else "scenario")

    def with_changes(self, **changes: Any) -> "Scenario":
        """A copy with top-level keys or dotted keys (``train.micro_batch``) replaced, re-validated."""
        raw = self.data.model_dump(exclude_none=True)
        for key, value in changes.items():
            set_dotted(raw, key, value)
        return Scenario(validate(ScenarioFile, raw, self.file), self.file)


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if isinstance(nxt, str) and p in ("model", "hardware"):
            nxt = {"preset" if p == "model" else "profile": nxt}
        if not isinstance(nxt, dict):
            nxt = {}
        cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def load_scenario(path: str | Path) -> Scenario:
    data = load_yaml(path, "scenario file")
    return Scenario(validate(ScenarioFile, data, str(path)), str(path))


def scenario_from_dict(data: dict[str, Any], file: str | None = None) -> Scenario:
    if not isinstance(data, dict):
        raise ConfigError(file, None, problem="expected a mapping")
    return Scenario(validate(ScenarioFile, data, file), file)

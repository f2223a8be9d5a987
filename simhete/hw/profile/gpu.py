"""The ``gpu:`` section of a hardware profile: peak rates, the GEMM and attention models, the
memory-bound rates per op kind and whole measured blocks (docs/profiles.md)."""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from simhete.config import Strict
from simhete.hw.gemm import quantised_flops
from simhete.hw.profile.quantity import (DTYPES, Bytes, BytesQ, Curve, DType, FractionQ, NonNegQ,
                                         PositiveQ, Provenance, SlowdownQ)

class PeakTflops(Strict):
    """Dense peak rates per dtype, 10^12 FLOP/s. Leave out a dtype the device cannot run."""

    bf16: PositiveQ | None = None
    fp16: PositiveQ | None = None
    tf32: PositiveQ | None = None
    fp32: PositiveQ | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> "PeakTflops":
        if not any(getattr(self, d) for d in DTYPES):
            raise ValueError("give at least one of " + ", ".join(DTYPES))
        return self

    def available(self) -> list[str]:
        return [d for d in DTYPES if getattr(self, d) is not None]


class GemmAnchor(Strict):
    """One measured GEMM that fixes ``max_efficiency``: ``tflops / (peak[dtype] · shape_factor)``."""

    m: int = Field(gt=0)
    n: int = Field(gt=0)
    k: int = Field(gt=0)
    dtype: DType = "bf16"
    tflops: PositiveQ


class GemmTable(Provenance):
    """Measured GEMM rates: ``points[dtype] = [[M, N, K, tflops], ...]`` (end-to-end per call)."""

    points: dict[DType, list[tuple[int, int, int, float]]]

    @field_validator("points")
    @classmethod
    def _positive(cls, v: dict[str, list[tuple[int, int, int, float]]]) -> Any:
        for dt, rows in v.items():
            if not rows:
                raise ValueError(f"{dt}: at least one [M, N, K, tflops] row")
            for row in rows:
                if min(row) <= 0:
                    raise ValueError(f"{dt}: every M, N, K, tflops must be > 0, got {list(row)}")
        return v


class GemmModel(Strict):
    """GEMM efficiency. ``roofline``: analytical (tile + wave quantisation, small-K penalty);
    ``table``: measured points, interpolated, with the roofline as fallback outside them.

    Roofline efficiency of an (M, N, K) product, after NVIDIA's "Matrix Multiplication
    Background User's Guide" (§3.1 tile quantisation, §3.2 wave quantisation)::

        tiles = ceil(M/tile_m) · ceil(N/tile_n);  waves = ceil(tiles / sms)
        shape_factor = M·N / (waves · sms · tile_m · tile_n) · K / (K + k_half)
        efficiency = max_efficiency · shape_factor
    """

    model: Literal["roofline", "table"] = "roofline"
    max_efficiency: FractionQ | None = None
    anchor: GemmAnchor | None = None
    tile_m: int = Field(128, gt=0)
    tile_n: int = Field(128, gt=0)
    k_half: NonNegQ
    # cuBLAS's fast tensor-core kernels need every leading dimension aligned to 16 bytes (8
    # elements of a 16-bit dtype, 4 of a 32-bit one); a GEMM with an M, N or K off that boundary
    # (an LM head over an unpadded vocabulary such as GPT-2's 50257: forward N, backward K and M)
    # falls back to a slower kernel. The roofline time of such a GEMM is multiplied by this.
    # Absent: no penalty. Measured tables are priced as measured.
    misaligned_slowdown: SlowdownQ | None = None
    table: GemmTable | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "GemmModel":
        if (self.max_efficiency is None) == (self.anchor is None):
            raise ValueError("give exactly one of max_efficiency or anchor")
        if self.model == "table" and self.table is None:
            raise ValueError("model table needs a table: {source, ref, points}")
        if self.model == "roofline" and self.table is not None:
            raise ValueError("a table is given but model is roofline; set model: table")
        return self


class AttnTable(Provenance):
    """Measured attention rates for exact shapes: ``fwd``/``bwd`` ``{dtype: [[b, h, sq, skv, d,
    causal, tflops], ...]}``. Shapes not listed use the efficiencies."""

    fwd: dict[DType, list[tuple[int, int, int, int, int, int, float]]] = Field(default_factory=dict)
    bwd: dict[DType, list[tuple[int, int, int, int, int, int, float]]] = Field(default_factory=dict)

    @field_validator("fwd", "bwd")
    @classmethod
    def _positive(cls, v: dict[str, list[tuple[int, ...]]]) -> Any:
        # a zero or non-finite rate would price a shape at infinite or zero time
        for dt, rows in v.items():
            for row in rows:
                b, h, sq, skv, d, causal, tflops = row
                if min(b, h, sq, skv, d) <= 0 or causal not in (0, 1) or not 0 < tflops < math.inf:
                    raise ValueError(f"{dt}: b, h, seq_q, seq_kv, head_dim and tflops must be > 0 "
                                     f"(tflops finite) and causal 0 or 1, got {list(row)}")
        return v


class AttentionKernel(Strict):
    """The rates of one named fused attention kernel (see :class:`AttentionKernels`)."""

    fwd_efficiency: FractionQ
    bwd_efficiency: FractionQ
    table: AttnTable | None = None


class AttentionKernels(Strict):
    """Fused attention kernels other than the one the profile's ``attention`` describes, that a
    scenario may name (``train.attention_kernel``): ``flash1``, FlashAttention v1 (Dao et al. 2022;
    the flash-attn 1.x CUDA kernels, the FlashAttention-1 code in torch SDPA before PyTorch 2.2,
    and Tri Dao's Triton port that llm-foundry's ``attn_impl: triton`` runs)."""

    flash1: AttentionKernel | None = None


class AttentionModel(Strict):
    """Fused attention: FLOPs (Op.flops) / (peak · efficiency), or a measured exact-shape rate.
    ``kernels``: other kernels' rates, used instead when a scenario names one."""

    fwd_efficiency: FractionQ
    bwd_efficiency: FractionQ
    table: AttnTable | None = None
    kernels: AttentionKernels | None = None


class BlockTable(Provenance):
    """Measured seconds of whole op sequences as a training step runs them (``simhete calibrate
    --shapes-from``, calibrate/blocks.py): ``entries = [[key, label, seconds], ...]``, ``key`` the
    :func:`simhete.hw.cost.ops_key` of a block's ``fwd_ops`` or ``bwd_ops`` tuple or of its
    optimizer step's one-op tuple. A task whose ops
    tuple has a key listed here is priced at that time instead of the sum of its ops."""

    entries: list[tuple[str, str, float]]

    @field_validator("entries")
    @classmethod
    def _entries(cls, v: list[tuple[str, str, float]]) -> Any:
        keys = set()
        for key, label, sec in v:
            if not re.fullmatch(r"[0-9a-f]{16}", key):
                raise ValueError(f"{label}: key must be 16 hex digits (simhete.hw.cost.ops_key), got {key!r}")
            if not sec > 0:
                raise ValueError(f"{label}: seconds must be > 0, got {sec}")
            if key in keys:
                raise ValueError(f"{label}: key {key} listed twice")
            keys.add(key)
        return v


class MemoryBoundRate(Strict):
    """Achieved bandwidth of one memory-bound OpKind (bytes read + written per second).

    Without a curve: ``overhead_us + n / bandwidth_gbps``; without ``overhead_us``, the device's
    eager dispatch ``launch_overhead_us`` overlapping the kernel (``max(launch, n / bandwidth)``
    on a GPU, their sum on a CPU device; :meth:`simhete.hw.cost.CostModel.dispatched`). With a measured ``curve`` (calls timed end to end, fixed cost
    included): time linear in n between its points, made non-decreasing in size; below its
    smallest size the smallest size's time; above its largest size the largest size's rate.
    """

    bandwidth_gbps: PositiveQ
    overhead_us: NonNegQ | None = None
    curve: Curve | None = None


class MemoryBoundKind(MemoryBoundRate):
    """A kind's rate, plus optional rates measured in other dtypes (``dtypes: {bf16: {...}}``): an
    op of a listed dtype uses its own entry (on a CPU a bf16 GeLU is not half the time of an fp32
    one, so one bytes/second rate cannot serve both); any other dtype uses the kind's own rate."""

    dtypes: dict[DType, MemoryBoundRate] | None = None

    def for_dtype(self, dtype: str) -> tuple[MemoryBoundRate, str]:
        """(the rate for ``dtype``, its dotted key suffix: ``""`` or ``".dtypes.<dtype>"``)."""
        if self.dtypes is not None and dtype in self.dtypes:
            return self.dtypes[dtype], f".dtypes.{dtype}"  # type: ignore[index]
        return self, ""


class MemoryBound(Strict):
    """Per-OpKind memory-bound pricing. A kind left out falls back (simhete/hw/cost/compute.py MB_FALLBACK): a
    backward kind (NORM_BWD, ...) to its forward; RMSNORM to NORM; GELU, RELU, SWIGLU, DROPOUT and
    ROPE to ELEMENTWISE; then mem_bandwidth_gbps × efficiency."""

    ELEMENTWISE: MemoryBoundKind | None = None
    NORM: MemoryBoundKind | None = None
    RMSNORM: MemoryBoundKind | None = None
    GELU: MemoryBoundKind | None = None
    RELU: MemoryBoundKind | None = None
    SWIGLU: MemoryBoundKind | None = None
    DROPOUT: MemoryBoundKind | None = None
    ROPE: MemoryBoundKind | None = None
    SOFTMAX_CE: MemoryBoundKind | None = None
    EMBED: MemoryBoundKind | None = None
    NORM_BWD: MemoryBoundKind | None = None
    RMSNORM_BWD: MemoryBoundKind | None = None
    GELU_BWD: MemoryBoundKind | None = None
    RELU_BWD: MemoryBoundKind | None = None
    SWIGLU_BWD: MemoryBoundKind | None = None
    ROPE_BWD: MemoryBoundKind | None = None


class Gpu(Strict):
    """The device. For ``device_type: cpu`` this describes the CPU acting as the device."""

    ref: str = Field(min_length=1, description="source of model, count, memory_bytes, sms")
    model: str
    # CUDA compute capability "major.minor" (NVIDIA's CUDA GPUs list), cited by ``ref``; it says
    # which kernels exist for the device (FlashAttention-2 needs 8.0 or later). Absent for a CPU
    # device. Read by the framework kernel choice, not by the pricing below.
    compute_capability: str | None = Field(None, pattern=r"^[0-9]+\.[0-9]+$")
    count: int = Field(ge=1, le=1024)   # GPUs of one profile (a server is 8-16): beyond is a typo
    memory_bytes: Bytes
    reserved_bytes: BytesQ
    sms: int = Field(ge=1)
    peak_tflops: PeakTflops
    mem_bandwidth_gbps: PositiveQ
    memory_bound_efficiency: FractionQ
    launch_overhead_us: NonNegQ
    # Tensor throughput a GPU holds under continuous full load, as a fraction of what short
    # benchmark bursts reach: a GEMM loop that runs for seconds draws the board to its power limit
    # and the SM clock settles below boost (maximum sustainable / maximum achievable matmul FLOPS,
    # MSMF / MAMF, measured by the same tool on the same GPU). A training step is such a load,
    # while the GEMM anchor and the attention efficiencies are burst measurements: the roofline's
    # compute term of GEMMs and attention is multiplied by this. Memory-bound kernels are not
    # (HBM's clock does not follow the SM clock); measured tables are priced as measured.
    # Absent: 1 (burst rates).
    sustained_clock_factor: FractionQ | None = None
    memory_bound: MemoryBound | None = None
    gemm: GemmModel
    attention: AttentionModel | None = None
    blocks: BlockTable | None = None

    @model_validator(mode="after")
    def _fits(self) -> "Gpu":
        if self.reserved_bytes.value >= self.memory_bytes:
            raise ValueError(f"reserved_bytes {self.reserved_bytes.value} must be below memory_bytes "
                             f"{self.memory_bytes}")
        a = self.gemm.anchor
        if a is not None:
            peak = getattr(self.peak_tflops, a.dtype)
            if peak is None:
                raise ValueError(f"gemm.anchor.dtype {a.dtype} has no peak_tflops entry")
            eff = self.anchor_efficiency()
            if eff > 1.0:
                raise ValueError(f"gemm.anchor implies efficiency {eff:.3f} > 1 of peak_tflops.{a.dtype}")
        return self

    def quantised_flops(self, m: int, n: int, k: int) -> float:
        """FLOPs the device spends on an (m, n, k) GEMM: every SM computes a full tile in every
        wave, and each tile pays ``k_half`` extra steps of K (see :class:`GemmModel`).
        Non-decreasing in m, n and k, so a bigger GEMM is never priced faster."""
        g = self.gemm
        return quantised_flops(m, n, k, g.tile_m, g.tile_n, self.sms, g.k_half.value)

    def quantised_flops_batched(self, m: int, n: int, k: int, batch: int) -> float:
        """:meth:`quantised_flops` of one batched launch of ``batch`` (m, n, k) GEMMs: the tiles of
        every entry fill the waves together (never more than ``batch`` separate launches)."""
        g = self.gemm
        return quantised_flops(m, n, k, g.tile_m, g.tile_n, self.sms, g.k_half.value, batch)

    def shape_factor(self, m: int, n: int, k: int) -> float:
        """Tile/wave quantisation × small-K factor in (0, 1]: useful / quantised FLOPs."""
        return 2.0 * m * n * k / self.quantised_flops(m, n, k)

    def anchor_efficiency(self) -> float:
        a = self.gemm.anchor
        assert a is not None
        peak = getattr(self.peak_tflops, a.dtype).value
        return a.tflops.value / (peak * self.shape_factor(a.m, a.n, a.k))

    def max_efficiency(self) -> tuple[float, Provenance, str]:
        """(value, its provenance, its dotted key) of the roofline's large-GEMM efficiency."""
        if self.gemm.anchor is not None:
            return self.anchor_efficiency(), self.gemm.anchor.tflops, "gpu.gemm.anchor.tflops"
        me = self.gemm.max_efficiency
        assert me is not None
        return me.value, me, "gpu.gemm.max_efficiency"

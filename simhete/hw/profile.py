"""Hardware profiles: the schema of ``hwprofiles/<name>.yaml`` and its loader.

Every number that is a fact about hardware is a :class:`Quantity` — a value with its provenance
(``measured`` with the raw data, ``datasheet``, ``paper``, ``reported`` with where it was reported,
or ``assumed`` with the reasoning). Only ``measured`` counts as calibrated.
Units live in key names: ``_gbps`` is 10^9 bytes/s, ``_us`` microseconds, ``_bytes`` bytes,
``tflops`` 10^12 FLOP/s. The full schema is documented in docs/profiles.md.
"""

from __future__ import annotations

import fnmatch
import math
import re
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal

from pydantic import BeforeValidator, Field, PrivateAttr, field_validator, model_validator

from simhete.config import Strict, load_yaml, parse_bytes, validate
from simhete.errors import ConfigError
from simhete.hw.gemm import quantised_flops

# measured:  timed on this device by a microbenchmark whose raw output is kept (raw, device, driver,
#            torch, date required)
# datasheet: a vendor's specification (a theoretical or rated figure)
# paper:     a peer-reviewed or archived paper (arXiv), cited in ``ref``
# reported:  a figure reported by a named public source that is neither a datasheet nor a paper — a
#            GitHub issue or discussion thread, a vendor blog, a team member's reading without the
#            raw benchmark output — with ``ref`` saying where
# assumed:   reasoning, given in ``ref``
Source = Literal["measured", "datasheet", "paper", "reported", "assumed"]
DType = Literal["bf16", "fp16", "tf32", "fp32"]
DTYPES: tuple[str, ...] = ("bf16", "fp16", "tf32", "fp32")
Bytes = Annotated[int, BeforeValidator(parse_bytes)]
_Num = Annotated[float, Field(strict=True, allow_inf_nan=False)]

# <repo>/hwprofiles, next to the package (editable install / source checkout).
PROFILES_DIR = Path(__file__).resolve().parents[2] / "hwprofiles"


MEASURED_KEYS: tuple[str, ...] = ("raw", "device", "driver", "torch", "date")


class Provenance(Strict):
    """Where a number (or a table of numbers) comes from.

    ``measured`` must name the raw data file (``raw``, relative to the profile file), the
    ``device``, the ``driver`` (for a CPU device: ``n/a (CPU device)``), the ``torch`` version and
    the ``date``; ``host`` is optional. Every source needs a ``ref``: the citation, where a
    ``reported`` figure was reported, or the reasoning behind an ``assumed`` one.
    """

    source: Source
    ref: str = Field(min_length=1)
    raw: str | None = None
    device: str | None = None
    driver: str | None = None
    torch: str | None = None
    date: str | None = None
    host: str | None = None

    @model_validator(mode="after")
    def _measured_has_raw(self) -> "Provenance":
        if self.source == "measured":
            missing = [k for k in MEASURED_KEYS if not getattr(self, k)]
            if missing:
                raise ValueError(f"source measured needs {', '.join(MEASURED_KEYS)}; missing: "
                                 + ", ".join(missing) + " (a figure without its raw benchmark output "
                                 "and full provenance is source reported, with ref saying where)")
        return self

    @property
    def calibrated(self) -> bool:
        """Only a number measured on this device is calibrated; datasheet, paper, reported and
        assumed numbers are listed as uncalibrated wherever a prediction rests on them."""
        return self.source == "measured"


class Quantity(Provenance):
    """A hardware number with provenance: ``{value, source, ref, ...}``."""

    value: _Num


class PositiveQ(Quantity):
    value: Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]


class NonNegQ(Quantity):
    value: Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]


class FractionQ(Quantity):
    """A fraction in (0, 1] (efficiencies, duplex factor)."""

    value: Annotated[float, Field(strict=True, gt=0, le=1, allow_inf_nan=False)]


class SlowdownQ(Quantity):
    """A slowdown factor ≥ 1."""

    value: Annotated[float, Field(strict=True, ge=1, allow_inf_nan=False)]


class BytesQ(Provenance):
    """A byte count with provenance; ``value`` accepts ``1GiB``-style strings."""

    value: Bytes


# ----------------------------------------------------------------------------------- GPU ----

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


class Curve(Provenance):
    """Size-dependent rate measured end to end: ``points = [[size, rate], ...]`` — bytes and GB/s
    for links and memory-bound ops."""

    points: list[tuple[int, float]] = Field(min_length=2)

    @field_validator("points")
    @classmethod
    def _sorted_positive(cls, v: list[tuple[int, float]]) -> Any:
        sizes = [p[0] for p in v]
        if any(b <= 0 or g <= 0 for b, g in v):
            raise ValueError("bytes and gbps must be > 0")
        if sizes != sorted(set(sizes)):
            raise ValueError("points must be sorted by bytes, without repeats")
        return v


class MemoryBoundRate(Strict):
    """Achieved bandwidth of one memory-bound OpKind (bytes read + written per second).

    Without a curve: ``overhead_us + n / bandwidth_gbps``; without ``overhead_us``, the device's
    eager dispatch ``launch_overhead_us`` overlapping the kernel (``max(launch, n / bandwidth)``
    on a GPU, their sum on a CPU device; :meth:`simhete.hw.cost.CostModel._dispatched`). With a measured ``curve`` (calls timed end to end, fixed cost
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
    """Per-OpKind memory-bound pricing. A kind left out falls back (simhete/hw/cost.py): a
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


# ---------------------------------------------------------------------------------- host ----

class AdamThreads(Provenance):
    """Measured CPU Adam throughput by thread count: ``points = [[threads, params_per_s], ...]``."""

    points: list[tuple[int, float]] = Field(min_length=1)

    @field_validator("points")
    @classmethod
    def _positive(cls, v: list[tuple[int, float]]) -> Any:
        # a zero or non-finite rate would price every Adam step at infinite or zero time
        if any(t < 1 or not 0 < r < math.inf for t, r in v):
            raise ValueError("threads must be at least 1 and params_per_s a finite number > 0")
        threads = [t for t, _ in v]
        if threads != sorted(set(threads)):
            raise ValueError("points must be sorted by threads, without repeats")
        return v


class AdamModel(Strict):
    """CPU Adam (DeepSpeedCPUAdam): one call over n parameters takes ``overhead_us + n / rate``.

    ``rate``, first that applies (docs/profiles.md "CPU Adam"):

    1. ``by_threads`` at ``threads`` (measured curve; linear in threads between measured points,
       the nearest end outside them) when both are given;
    2. ``params_per_s``: one whole-host rate (it wins over the per-core model, so a testbed that
       ``extends`` a profile with ``simd`` can state a measured host rate);
    3. the per-core model: ``per_core_params_per_s`` (or, absent, the cited rate of the ``simd``
       class, ADAM_PER_CORE) × min(``threads`` or ``host.cores``, ``host.cores``), capped at the
       DRAM-bound ceiling 0.7 × dram_bandwidth / 28 B. ``threads`` is the OpenMP threads summed
       over the ranks on the host (the ``cpu.optim`` stream is one per host: all ranks' partitions
       step on it at once);
    4. else the DRAM-bound ceiling alone, flagged as assumed.

    ``overhead_us`` (default 0) is the fixed cost of one call; a schedule issues one ADAM_CPU op
    per block, so it is paid once per block."""

    params_per_s: PositiveQ | None = None
    by_threads: AdamThreads | None = None
    threads: int | None = Field(None, ge=1)
    overhead_us: NonNegQ | None = None
    simd: Literal["avx512", "avx2"] | None = None
    per_core_params_per_s: PositiveQ | None = None

    @model_validator(mode="after")
    def _one_rate(self) -> "AdamModel":
        if self.per_core_params_per_s is not None and self.simd is None:
            raise ValueError("per_core_params_per_s needs simd (avx512 or avx2): the SIMD class of "
                             "the host the per-core rate stands for")
        return self


class Host(Strict):
    ref: str = Field(min_length=1, description="source of cpu_model, sockets, cores, memory_bytes")
    cpu_model: str
    sockets: int = Field(ge=1)
    cores: int = Field(ge=1)
    memory_bytes: Bytes
    dram_bandwidth_gbps: PositiveQ
    memcpy_gbps: PositiveQ
    pinned_limit_bytes: BytesQ | None = None   # absent: no pinned memory (a CPU device)
    adam: AdamModel = Field(default_factory=AdamModel)

    def adam_threads(self) -> int:
        """OpenMP threads stepping CPU Adam on this host, all ranks together: ``adam.threads``
        (default ``cores``), at most ``cores`` (more threads than cores time-share them)."""
        return min(self.adam.threads or self.cores, self.cores)

    def adam_per_core(self) -> PositiveQ | None:
        """The per-core Adam rate: ``adam.per_core_params_per_s``, or the cited rate of the
        ``adam.simd`` class (ADAM_PER_CORE), or None when neither is given."""
        if self.adam.per_core_params_per_s is not None:
            return self.adam.per_core_params_per_s
        if self.adam.simd is not None:
            return ADAM_PER_CORE[self.adam.simd]
        return None

    def adam_dram_ceiling(self) -> PositiveQ:
        """0.7 × DRAM bandwidth / 28 B per parameter: CPU Adam's DRAM-bound ceiling (assumed)."""
        d = self.dram_bandwidth_gbps
        return PositiveQ(value=d.value * 1e9 * DRAM_STREAM_FRACTION / ADAM_BYTES_PER_PARAM,
                         source="assumed",
                         ref=f"derived: {DRAM_STREAM_FRACTION} x host.dram_bandwidth_gbps ({d.source}) / "
                             f"{ADAM_BYTES_PER_PARAM} bytes per param, the DRAM-bound ceiling at "
                             "STREAM-class bandwidth")

    def adam_rate(self) -> tuple[PositiveQ, list[tuple[str, Provenance]], str | None]:
        """(whole-host Adam rate without ``by_threads``, the (dotted key, provenance) it rests on,
        the flag it raises when it is the assumed DRAM-bound default)."""
        a = self.adam
        if a.params_per_s is not None:
            return a.params_per_s, [("host.adam.params_per_s", a.params_per_s)], None
        ceiling = self.adam_dram_ceiling()
        pc = self.adam_per_core()
        if pc is None:
            return ceiling, [("host.dram_bandwidth_gbps", self.dram_bandwidth_gbps)], ADAM_DEFAULT_FLAG
        n = self.adam_threads()
        used: list[tuple[str, Provenance]] = [("host.adam.per_core_params_per_s", pc)]
        if pc.value * n > ceiling.value:      # the DRAM-bound ceiling binds: it rests on DRAM bandwidth
            used.append(("host.dram_bandwidth_gbps", self.dram_bandwidth_gbps))
            return ceiling, used, None
        return PositiveQ(value=pc.value * n, source=pc.source,
                         ref=f"derived: host.adam.per_core_params_per_s ({pc.source}) x {n} threads"), used, None

    def adam_params_per_s(self) -> PositiveQ:
        """The whole-host Adam throughput used for pricing when ``by_threads`` does not apply (see
        :class:`AdamModel`)."""
        return self.adam_rate()[0]


# Adam traffic per parameter: read p, g, m, v and write p, m, v = 7 tensor accesses, each of the
# state's dtype: 7 × 4 = 28 bytes for fp32 state (docs/references.md, "CPU Adam is DRAM-bound";
# ZeRO-Offload paper §4.2 keeps all four on the CPU). A GPU Adam over 16-bit state (pure bf16/fp16
# training) moves 7 × 2 = 14 bytes: torch's foreach and fused Adam/AdamW (torch/optim/adam.py
# _multi_tensor_adam, _fused_adam → torch._fused_adamw_; in torch 2.13 AdamW subclasses Adam) update
# p, m and v in place in the parameter's dtype, the state created by zeros_like(p).
ADAM_ACCESSES_PER_PARAM = 7
ADAM_BYTES_PER_PARAM = ADAM_ACCESSES_PER_PARAM * 4
# Fraction of theoretical DRAM bandwidth that streaming kernels (STREAM-class) reach. The default
# CPU Adam ceiling uses it so that Adam and host copies rest on one assumption: every shipped GPU
# profile prices host.memcpy_gbps at 0.35 x theoretical (= 0.7 / 2, a copy reads and writes each
# byte), so Adam at 1.0 x theoretical was priced at twice the bandwidth a copy reaches. Assumed.
DRAM_STREAM_FRACTION = 0.7
ADAM_DEFAULT_FLAG = f"host.adam.params_per_s (assumed: {DRAM_STREAM_FRACTION} x dram_bandwidth/28)"

# DeepSpeedCPUAdam per-core rate by SIMD class (docs/profiles.md "CPU Adam" has the measurements
# table). Mechanism (DeepSpeed csrc/includes/cpu_adam.h Step_AVX, csrc/includes/simd.h): the step
# walks the parameters in tiles of TILE = 128 Mi elements and, per tile, an OpenMP ``parallel for``
# over SIMD_WIDTH x span floats (AVX-512: 16 lanes, AVX2: 8; span 8 then 4 then 1) does ~10 SIMD
# ops per vector (2 mul, 4 fma, sqrt, div, fma, ...) over p, g, m, v: 28 B/param of fp32 traffic.
# The one published step time (below) is 1.41 G params/s = 40 GB/s on a 256 GB/s host: not
# DRAM-bound, and also more than an order of magnitude below both a core's SIMD issue rate
# (~25 cycles per 16 params, divide and square root dominating) and a core's streaming bandwidth
# (~10 GB/s); in 2021 the step also sent each tile's updated params to the GPU (launch_param_update). Which per-core
# resource sets it is not established, so the rate is taken as measured per core × the cores
# stepping (OpenMP parallel for; assumed linear in cores).
# avx512: Reza Yazdani Aminabadi, DeepSpeed PR #735 (2021-02-08): an 11.6B-parameter GPT-2
#   optimizer step in 8.2 s with DeepSpeedCPUAdam (56 s with torch Adam). The host is not stated;
#   the DeepSpeed team's ZeRO-Offload testbed is a DGX-2 (2x Xeon Platinum 8168, 48 cores, two
#   512-bit FMA units per core), taken as the host, all 48 cores (torch's default intra-op
#   threads: the physical cores): 11.6e9 / 8.2 / 48 = 2.947e7 params/s per core.
# avx2: no published DeepSpeedCPUAdam step time on a named AVX2 host with a known parameter count
#   was found. The avx512 rate is assumed: the published rate is not set by the vector width
#   (the current kernel, AVX2 build, steps 3.06e8 params/s on one AMD EPYC core of this project's
#   VM, ten times the per-core rate above; docs/profiles.md "CPU Adam"). Zen 4 (EPYC 9004,
#   Ryzen 7000) builds with AVX-512 but runs it on 256-bit units; whatever its class, the same rate.
ADAM_PER_CORE_AVX512 = 11.6e9 / 8.2 / 48
ADAM_PER_CORE: dict[str, PositiveQ] = {
    "avx512": PositiveQ(value=ADAM_PER_CORE_AVX512, source="reported",
                        ref="DeepSpeed PR #735 (2021-02-08): DeepSpeedCPUAdam steps 11.6B params in 8.2 s; "
                            "host assumed a DGX-2 (2x Xeon Platinum 8168, 48 cores): 11.6e9/8.2/48"),
    "avx2": PositiveQ(value=ADAM_PER_CORE_AVX512, source="assumed",
                      ref="the avx512 per-core rate (DeepSpeed PR #735 / 48 cores): the published step rate "
                          "is not set by the vector width (docs/profiles.md CPU Adam); assumed"),
}


# --------------------------------------------------------------------------------- links ----

class Link(Strict):
    """α-β link: T(n) = latency + n / bandwidth, or n / curve(n) inside a measured curve."""

    bandwidth_gbps: PositiveQ
    latency_us: NonNegQ
    curve: Curve | None = None


class Direction(Strict):
    pinned: Link
    pageable: Link


class Links(Strict):
    h2d: Direction
    d2h: Direction
    duplex_factor: FractionQ = Field(description="bandwidth fraction each direction keeps when both run")
    nvlink: Link | None = None


class Collectives(Strict):
    """nccl-tests bus-bandwidth model: T = latency + bytes · factor / bus_bandwidth, with factor
    2(r−1)/r for all-reduce and (r−1)/r for reduce-scatter and all-gather (nccl-tests
    doc/PERFORMANCE.md)."""

    bus_bandwidth_gbps: PositiveQ
    latency_us: NonNegQ


class Topology(Strict):
    ref: str = Field(min_length=1)
    gpus_per_pcie_switch: int = Field(1, ge=1)
    switch_uplink_gbps: PositiveQ | None = None
    """Bandwidth of one switch's link to the host; with it, GPUs of one switch that copy in the same
    direction at once slow each other down (CostModel.interference derives the rules)."""


class Interference(Strict):
    """While a task on a stream matching ``aggressor`` runs, tasks on ``victim`` run ``slowdown``× longer."""

    victim: str
    aggressor: str
    slowdown: SlowdownQ


# ------------------------------------------------------------------------------- profile ----

def _streams(gpus: int) -> list[str]:
    """Every stream name a schedule can use (simhete.schedule.model.STREAM_RE) for ``gpus`` GPUs."""
    out = [f"gpu{i}.{q}" for i in range(gpus) for q in ("compute", "h2d", "d2h", "comm")]
    return out + ["cpu.optim", "nvlink", "nvme"]


class HardwareProfile(Strict):
    name: str = Field(min_length=1)
    description: str = ""
    validated: bool = False
    device_type: Literal["cuda", "cpu"] = "cuda"
    gpu: Gpu
    host: Host
    links: Links | None = None
    collectives: Collectives | None = None
    topology: Topology | None = None
    # a plain default, which pydantic copies per instance: with default_factory=list, building the
    # schema asks inspect for list's signature, which compiles the tokenizer's regexes (~10 ms)
    interference: list[Interference] = []

    _file: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _checks(self) -> "HardwareProfile":
        if self.device_type == "cuda" and self.links is None:
            raise ValueError("device_type cuda needs links: {h2d, d2h, duplex_factor}")
        streams = _streams(self.gpu.count)
        for i, rule in enumerate(self.interference):
            for role in ("victim", "aggressor"):
                glob = getattr(rule, role)
                if not fnmatch.filter(streams, glob):
                    raise ValueError(f"interference[{i}].{role} {glob!r} matches no stream "
                                     f"(streams look like gpu0.compute, gpu0.h2d, cpu.optim)")
        return self

    @property
    def file(self) -> str | None:
        """The YAML file this profile was loaded from, if any."""
        return self._file

    # -- provenance ---------------------------------------------------------------------------

    def quantities(self) -> Iterator[tuple[str, Provenance]]:
        """Every provenance-carrying node (quantities and tables) with its dotted key."""
        yield from _walk(self, "")

    def provenance_flags(self) -> list[str]:
        """Every number not measured on the device, as ``"dotted.key (source)"``, sorted."""
        flags = {f"{k} ({p.source})" for k, p in self.quantities() if not p.calibrated}
        _, used, default = self.host.adam_rate()
        if default is not None:
            flags.add(default)
        for key, prov in used:      # e.g. a per-core rate taken from the simd class (not in the profile)
            if not prov.calibrated:
                flags.add(f"{key} ({prov.source})")
        return sorted(flags)

    # -- what-if ------------------------------------------------------------------------------

    def with_attention_kernel(self, name: str, file: str | None = None,
                              key: str = "train.attention_kernel") -> "HardwareProfile":
        """A copy whose ``gpu.attention`` rates are those of ``gpu.attention.kernels.<name>``
        (a scenario that names the attention kernel its framework runs); a one-line ConfigError
        naming ``file``/``key`` when this profile lists no such kernel."""
        att = self.gpu.attention
        kern = getattr(att.kernels, name, None) if att is not None and att.kernels is not None else None
        if kern is None:
            have = [k for k in AttentionKernels.model_fields
                    if att is not None and att.kernels is not None and getattr(att.kernels, k) is not None]
            raise ConfigError(file, key, name, allowed=(
                f"a kernel listed in {self.name}'s gpu.attention.kernels: {', '.join(have)}" if have
                else f"none: profile {self.name} lists no gpu.attention.kernels"))
        data = self.model_dump(exclude_none=True)
        data["gpu"]["attention"] = {**kern.model_dump(exclude_none=True),
                                    "kernels": att.kernels.model_dump(exclude_none=True)}
        out = validate(HardwareProfile, data, self._file)
        out._file = self._file
        return out

    def with_overrides(self, *, gpus: int | None = None, gpu_memory: int | None = None,
                       host_memory: int | None = None, pcie_gbps: float | None = None) -> "HardwareProfile":
        """A copy scaled for a what-if scenario, re-validated.

        ``pcie_gbps`` replaces the pinned H2D and D2H bandwidth (marked ``assumed``: a what-if is
        not a measurement); pageable links keep their values.
        """
        data = self.model_dump(exclude_none=True)
        if gpus is not None:
            data["gpu"]["count"] = gpus
        if gpu_memory is not None:
            data["gpu"]["memory_bytes"] = gpu_memory
        if host_memory is not None:
            data["host"]["memory_bytes"] = host_memory
        if pcie_gbps is not None:
            if data.get("links") is None:
                raise ConfigError(self._file, "hardware.pcie_gbps", pcie_gbps,
                                  allowed="only for device_type cuda profiles with links")
            for d in ("h2d", "d2h"):
                link = data["links"][d]["pinned"]
                link["bandwidth_gbps"] = {"value": float(pcie_gbps), "source": "assumed",
                                          "ref": f"what-if override pcie_gbps={pcie_gbps}"}
                link.pop("curve", None)
        out = validate(HardwareProfile, data, self._file)
        out._file = self._file
        return out


def _walk(node: Any, prefix: str) -> Iterator[tuple[str, Provenance]]:
    if isinstance(node, Provenance):
        yield prefix, node
        return
    if isinstance(node, Strict):
        for name in type(node).model_fields:
            yield from _walk(getattr(node, name), f"{prefix}.{name}" if prefix else name)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _walk(item, f"{prefix}[{i}]")


# -------------------------------------------------------------------------------- loader ----

def list_profiles() -> list[str]:
    """Profile names: ``hwprofiles/*.yaml`` by stem, calibrated ones as ``measured/<stem>``."""
    names = [p.stem for p in PROFILES_DIR.glob("*.yaml")]
    names += [f"measured/{p.stem}" for p in (PROFILES_DIR / "measured").glob("*.yaml")]
    return sorted(names)


def _is_file(p: Path) -> bool:
    """``p.is_file()``, False also for a name the OS refuses (too long, embedded NUL), which
    pathlib raises for: such a name is then reported as an unknown profile in one line."""
    try:
        return p.is_file()
    except (OSError, ValueError):
        return False


MAX_EXTENDS = 4   # a profile extends a profile that extends ...: at most this deep


def _with_base(data: dict, path: Path, seen: tuple[str, ...] = ()) -> dict:
    """``data`` with its ``extends: <profile name>`` resolved: the base profile's mapping (itself
    resolved) deep-merged under this one — mappings merge key by key, anything else (numbers,
    lists, quantities given as scalars) is replaced. A testbed (host, links, GPU count) thus
    states only what differs from the GPU's own profile, and the GPU's numbers live in one file.
    The base is looked up among the shipped profiles, then beside the extending file."""
    base_name = data.pop("extends", None)
    if base_name is None:
        return data
    if not isinstance(base_name, str) or not base_name:
        raise ConfigError(str(path), "extends", base_name, allowed="the name of another profile")
    here = str(path.resolve())
    if here in seen or len(seen) >= MAX_EXTENDS:
        raise ConfigError(str(path), "extends", base_name,
                          problem=f"extends {base_name!r} forms a cycle or a chain deeper than {MAX_EXTENDS}")
    cand = [PROFILES_DIR / f"{base_name}.yaml", path.parent / f"{base_name}.yaml", path.parent / base_name]
    base_path = next((c for c in cand if _is_file(c)), None)
    if base_path is None:
        raise ConfigError(str(path), "extends", base_name, allowed="a profile name: " + ", ".join(list_profiles()))
    base = _with_base(load_yaml(base_path, "hardware profile"), base_path, seen + (here,))
    return _deep_merge(base, data)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and "value" not in v:
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_profile(name_or_path: str | Path, file: str | None = None, key: str | None = None) -> HardwareProfile:
    """Load a profile by bare name (``h100-sxm``) or by path.

    ``file``/``key`` name where the reference came from (a scenario), for the error when the
    name is unknown.
    """
    s = str(name_or_path)
    valid = list_profiles()
    if s in valid:
        path = PROFILES_DIR / f"{s}.yaml"
    elif s.endswith((".yaml", ".yml")) or _is_file(Path(s)):
        path = Path(s)
    else:
        raise ConfigError(file, key, s, allowed="a profile path or one of: " + ", ".join(valid))
    data = _with_base(load_yaml(path, "hardware profile"), path)
    prof = validate(HardwareProfile, data, str(path))
    for k, p in prof.quantities():
        if p.raw is not None and not (path.parent / p.raw).is_file():
            raise ConfigError(str(path), f"{k}.raw", p.raw,
                              allowed="a raw data file that exists, relative to the profile file")
    prof._file = str(path)
    return prof

"""Hardware profiles: the schema of ``hwprofiles/<name>.yaml`` and its loader.

Every number that is a fact about hardware is a :class:`Quantity` — a value with its provenance
(``measured`` with the raw data, ``datasheet``, ``paper``, ``reported`` with where it was reported,
or ``assumed`` with the reasoning). Only ``measured`` counts as calibrated.
Units live in key names: ``_gbps`` is 10^9 bytes/s, ``_us`` microseconds, ``_bytes`` bytes,
``tflops`` 10^12 FLOP/s. The full schema is documented in docs/profiles.md.
"""

from __future__ import annotations

import fnmatch
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


class AttentionModel(Strict):
    """Fused attention: FLOPs (Op.flops) / (peak · efficiency), or a measured exact-shape rate."""

    fwd_efficiency: FractionQ
    bwd_efficiency: FractionQ
    table: AttnTable | None = None


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


class AdamModel(Strict):
    """CPU Adam: one call over n parameters takes ``overhead_us + n / rate``.

    ``rate`` is ``by_threads`` at ``threads`` — the intra-op threads the CPU optimizer runs with
    (linear in threads between measured points, the nearest end outside them) — when both are
    given, else ``params_per_s``. Without either it is derived as DRAM-bound: 0.7 × dram_bandwidth
    (DRAM_STREAM_FRACTION) / 28 bytes per parameter (reads p, g, m, v, writes p, m, v in fp32; docs/references.md "CPU Adam is
    DRAM-bound"), and flagged as assumed. ``overhead_us`` (default 0) is the fixed cost of one
    call; a schedule issues one ADAM_CPU op per block, so it is paid once per block."""

    params_per_s: PositiveQ | None = None
    by_threads: AdamThreads | None = None
    threads: int | None = Field(None, ge=1)
    overhead_us: NonNegQ | None = None


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

    def adam_params_per_s(self) -> PositiveQ:
        """The Adam throughput used for pricing (given, or derived DRAM-bound and marked assumed);
        ``by_threads`` at ``threads`` is :meth:`adam_rate`."""
        if self.adam.params_per_s is not None:
            return self.adam.params_per_s
        d = self.dram_bandwidth_gbps
        return PositiveQ(value=d.value * 1e9 * DRAM_STREAM_FRACTION / ADAM_BYTES_PER_PARAM,
                         source="assumed",
                         ref=f"derived: {DRAM_STREAM_FRACTION} x host.dram_bandwidth_gbps ({d.source}) / "
                             f"{ADAM_BYTES_PER_PARAM} bytes per param, the DRAM-bound ceiling at "
                             "STREAM-class bandwidth")


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
        if self.host.adam.params_per_s is None:
            flags.add(ADAM_DEFAULT_FLAG)
        return sorted(flags)

    # -- what-if ------------------------------------------------------------------------------

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
    base_path = next((c for c in cand if c.is_file()), None)
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
    elif s.endswith((".yaml", ".yml")) or Path(s).is_file():
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

"""The ``host:`` section of a hardware profile: the CPU, its memory, and CPU Adam's rate (the
measured curve, a whole-host rate, or the per-core model capped by DRAM bandwidth)."""

from __future__ import annotations

import bisect
import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from simhete.config import Strict
from simhete.hw.profile.quantity import Bytes, BytesQ, NonNegQ, PositiveQ, Provenance

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

    def adam_by_threads(self) -> tuple[float | None, str | None]:
        """(params/s from ``adam.by_threads`` at ``adam.threads``, flag if outside the measured
        threads), or (None, None) when either is absent. Linear in threads between measured
        counts; outside them the nearest measured count (flagged: the curve is not
        extrapolated)."""
        adam = self.adam
        if adam.threads is None or adam.by_threads is None:
            return None, None
        pts = sorted(adam.by_threads.points)
        th = adam.threads
        if th <= pts[0][0] or th >= pts[-1][0]:
            near = pts[0] if th <= pts[0][0] else pts[-1]
            flag = None if near[0] == th else (f"host.adam.by_threads (no point at {th} threads: "
                                               f"{near[0]} used)")
            return near[1], flag
        i = bisect.bisect_left([p[0] for p in pts], th)
        (t0, r0), (t1, r1) = pts[i - 1], pts[i]
        return r0 + (th - t0) / (t1 - t0) * (r1 - r0), None


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

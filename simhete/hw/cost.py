"""CostModel: seconds for an op, a task or a whole schedule, from a HardwareProfile. No torch.

Prices (per op, multiplied by ``op.count``; see docs/profiles.md for the full table):

- GEMM: FLOPs / rate inside a measured table (end to end per call); otherwise
  max(launch, FLOPs / rate, bytes / memory bandwidth) — a roofline whose compute rate is peak ×
  efficiency(M, N, K) (tile/wave quantisation, NVIDIA "Matrix Multiplication Background User's
  Guide" §3).
- ATTN_FWD/ATTN_BWD: an exact measured shape at its rate; a shape inside the measured table of
  its pass and dtype at the rate interpolated in (log batch·heads, log seq_q·seq_kv, log
  head_dim); else the same roofline with FLOPs from :attr:`Op.flops` and the attention efficiency.
- ELEMENTWISE/NORM/RMSNORM/GELU/RELU/SWIGLU/DROPOUT/ROPE/SOFTMAX_CE/EMBED: memory-bound. With a
  ``gpu.memory_bound`` entry for the kind (its ``dtypes.<dtype>`` rate where the op's dtype has
  one): its measured curve (time linear in n between points, never decreasing with size), else
  its measured overhead + n / its bandwidth. A kind without an entry uses the kind it was split
  from (RMSNORM → NORM; GELU, RELU, SWIGLU, DROPOUT, ROPE → ELEMENTWISE); with none: max(launch,
  n / (bandwidth × efficiency)).
- H2D/D2H: α-β on the pinned or pageable link (or n / curve(n) inside a measured curve); on a
  ``device_type: cpu`` profile without links they are host memcpys.
- D2D: max(launch, 2n / device bandwidth) (a copy reads and writes n bytes).
- "launch" is the CPU's per-op eager dispatch; it overlaps the previous kernel, so an op costs
  max(launch, kernel) on a GPU (CostModel._dispatched); on a ``device_type: cpu`` profile, where
  one thread dispatches and runs the kernel, launch + kernel.
- On a ``device_type: cpu`` profile the device is the host: D2D is a host memcpy and ADAM_GPU is
  priced as ADAM_CPU.
- MEMCPY_CPU: n / host memcpy bandwidth. ADAM_CPU: overhead + n / rate, the rate taken from
  ``host.adam.by_threads`` at ``host.adam.threads`` when both are given, else ``params_per_s``,
  else the per-core model min(per-core rate of the ``simd`` class × threads (default
  ``host.cores``, at most it), 0.7 × DRAM bandwidth / 28 B) (profile.AdamModel, ADAM_PER_CORE),
  else 0.7 × DRAM bandwidth / 28 B per parameter (profile.DRAM_STREAM_FRACTION), flagged assumed.
- ADAM_GPU: max(launch, 7 · e · n / (bandwidth × efficiency)), e the bytes of the op's dtype (the
  optimizer state's: fp32 in mixed precision, 28 B/param; bf16/fp16 in pure training, 14 B/param).
- ALLREDUCE/REDUCE_SCATTER/ALLGATHER: α + n · factor / bus bandwidth (nccl-tests factors).

A task whose ops tuple is listed in ``gpu.blocks`` (a block's forward, backward or optimizer step
measured whole, inside a training step: calibrate/blocks.py) is priced at that measured time;
every other task is the sum of its ops. ``task_seconds`` is cached by the task's ops tuple, so identical blocks are
priced once.

Provenance: pricing records, per op and per ops tuple, the uncalibrated numbers it rested on
(:meth:`CostModel.provenance`), so one model can price the tuples of many sweep points and give
each point exactly the flags a fresh model pricing only its tuples would report
(:meth:`CostModel.flags_with`). :attr:`CostModel.flags` is everything this model has priced.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from typing import Callable

from simhete.errors import ConfigError
from simhete.hw.gemm import GemmInterpolator
from simhete.hw.profile import (ADAM_ACCESSES_PER_PARAM, DTYPES, Curve, HardwareProfile,
                                Link, Provenance)
from simhete.opkinds import BWD_KIND, DTYPE_BYTES, OpKind
from simhete.schedule.model import Op, Schedule, Task

# Fused/multi-tensor GPU Adam reads p, g, m, v and writes p, m, v (ADAM_ACCESSES_PER_PARAM), each
# in the op's dtype: fp32 state moves the same 28 B/param as CPU Adam.

# A memory-bound kind without its own profile entry is priced as the kind it was split from
# (profiles calibrated before the op vocabulary had these kinds measured only the older ones).
MB_FALLBACK = {OpKind.RMSNORM: OpKind.NORM, OpKind.GELU: OpKind.ELEMENTWISE,
               OpKind.RELU: OpKind.ELEMENTWISE, OpKind.SWIGLU: OpKind.ELEMENTWISE,
               OpKind.DROPOUT: OpKind.ELEMENTWISE, OpKind.ROPE: OpKind.ELEMENTWISE,
               # a backward kind: its forward's entry (which older profiles fitted to the mean
               # call of both passes)
               **{bwd: fwd for fwd, bwd in BWD_KIND.items()}}


def ops_key(ops: tuple[Op, ...]) -> str:
    """A stable name (16 hex digits) for an op sequence: what ``gpu.blocks`` entries are keyed by.
    Equal tuples (every op's kind, shape, n, dtype, pinning and count) give equal keys, in every
    process (unlike ``hash``)."""
    text = ";".join(f"{op.kind.value},{'x'.join(map(str, op.shape))},{op.n},{op.dtype},"
                    f"{int(op.pinned)},{op.count}" for op in ops)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


# (flags, roofline GEMM shapes as (dtype, m, n, k)) that a price rests on; see CostModel.provenance
Provenance_ = tuple[frozenset[str], frozenset[tuple[str, int, int, int]]]
NO_PROVENANCE: Provenance_ = (frozenset(), frozenset())


# nccl-tests doc/PERFORMANCE.md: busbw = algbw × factor, with r ranks.
BUS_FACTOR: dict[OpKind, Callable[[int], float]] = {
    OpKind.ALLREDUCE: lambda r: 2.0 * (r - 1) / r,
    OpKind.REDUCE_SCATTER: lambda r: (r - 1) / r,
    OpKind.ALLGATHER: lambda r: (r - 1) / r,
}


class CostModel:
    """Prices ops against one profile. Cheap to build; caches everything it prices."""

    def __init__(self, profile: HardwareProfile) -> None:
        self.profile = profile
        # what depends on the profile alone (its numbers, tables, and caches of values derived
        # from it) is made once per profile object and shared by its models: a sweep builds a
        # model per point, and deriving it (a pydantic Quantity for a derived Adam rate among it)
        # was most of the model's construction
        self.__dict__.update(_derived(profile))
        self._op_cache: dict[Op, float] = {}
        self._task_cache: dict[tuple[Op, ...], float] = {}
        self._flags: set[str] = set()
        self._roofline_shapes: set[tuple[str, int, int, int]] = set()
        # per priced op / ops tuple: (flags, roofline GEMM shapes) its price rests on
        self._op_prov: dict[Op, Provenance_] = {}
        self._task_prov: dict[tuple[Op, ...], Provenance_] = {}

    @staticmethod
    def _derive(profile: HardwareProfile) -> dict[str, object]:
        """The model's attributes that depend on the profile alone (see ``__init__``)."""
        g, host = profile.gpu, profile.host
        out: dict[str, object] = {
            "_launch": g.launch_overhead_us.value * 1e-6,
            "_mem_bps": g.mem_bandwidth_gbps.value * 1e9,
            "_mb_eff": g.memory_bound_efficiency.value,
            "_adam": host.adam_rate(),
            "_mb_curves": {},       # key -> (sizes, times): filled as curves are first used
            "_tables": {},
            "_attn_interp": {},     # (kind, dtype, causal) -> interpolator: filled on first use
            "_interference": [],    # [(rules, flags)] once interference() has run
        }
        out["_max_eff"], out["_max_eff_prov"], out["_max_eff_key"] = g.max_efficiency()
        out["_sustain"] = g.sustained_clock_factor.value if g.sustained_clock_factor is not None else 1.0
        out["_adam_rate"], out["_adam_flag"] = _adam_by_threads(profile)
        if g.gemm.model == "table" and g.gemm.table is not None:
            out["_tables"] = {dt: GemmInterpolator(rows) for dt, rows in g.gemm.table.points.items()}
        attn_table = g.attention.table if g.attention else None
        attn_exact: dict[tuple[OpKind, str, tuple[int, ...]], float] = {}
        attn_rows: dict[tuple[OpKind, str, int], list[tuple[int, int, int, float]]] = {}
        if attn_table is not None:
            for kind, part in ((OpKind.ATTN_FWD, attn_table.fwd), (OpKind.ATTN_BWD, attn_table.bwd)):
                for dt, rows in part.items():
                    for r in rows:
                        b, h, sq, skv, d, causal = (int(x) for x in r[:6])
                        attn_exact[(kind, dt, (b, h, sq, skv, d, causal))] = float(r[6])
                        attn_rows.setdefault((kind, dt, causal), []).append((b * h, sq * skv, d, float(r[6])))
        out["_attn_exact"], out["_attn_rows"] = attn_exact, attn_rows
        blocks = g.blocks
        out["_blocks"] = {k: float(sec) for k, _, sec in blocks.entries} if blocks is not None else {}
        return out

    # -- public API ---------------------------------------------------------------------------

    def op_seconds(self, op: Op) -> float:
        """Seconds one op (``op.count`` repetitions included) takes on this hardware."""
        t = self._op_cache.get(op)
        if t is None:
            # price with empty flag sets, so what this op adds is recorded as its provenance, then
            # merge them into the model's (also when pricing raises: what it added so far stays)
            flags, shapes = self._flags, self._roofline_shapes
            self._flags, self._roofline_shapes = set(), set()
            try:
                t = _PRICE[op.kind](self, op) * op.count
                self._op_prov[op] = (frozenset(self._flags), frozenset(self._roofline_shapes))
            finally:
                flags |= self._flags
                shapes |= self._roofline_shapes
                self._flags, self._roofline_shapes = flags, shapes
            self._op_cache[op] = t
        return t

    def task_seconds(self, task: Task) -> float:
        """Sum of the task's ops; identical ops tuples share one cached value."""
        return self.ops_seconds(task.ops)

    def ops_seconds(self, ops: tuple[Op, ...]) -> float:
        """Sum of ``ops`` (a task's ops tuple); equal tuples share one cached value."""
        t = self._task_cache.get(ops)
        if t is None:
            t = self._blocks.get(ops_key(ops)) if self._blocks else None
            if t is None:
                t = math.fsum(self.op_seconds(op) for op in ops)
                provs = [self._op_prov[op] for op in ops]
                prov = NO_PROVENANCE if not provs else provs[0] if len(provs) == 1 else \
                    (frozenset().union(*(p[0] for p in provs)), frozenset().union(*(p[1] for p in provs)))
            else:
                blocks = self.profile.gpu.blocks
                assert blocks is not None
                self._use("gpu.blocks", blocks)
                prov = (frozenset() if blocks.calibrated else frozenset({f"gpu.blocks ({blocks.source})"}),
                        frozenset())
            self._task_prov[ops] = prov
            self._task_cache[ops] = t
        return t

    def provenance(self, ops: tuple[Op, ...]) -> Provenance_:
        """(flags, roofline GEMM shapes) that the price of ``ops`` rests on (priced if it was not):
        what pricing ``ops`` alone on a fresh model would add to its :attr:`flags`."""
        prov = self._task_prov.get(ops)
        if prov is None:
            self.ops_seconds(ops)
            prov = self._task_prov[ops]
        return prov

    def flags_with(self, *provs: Provenance_) -> set[str]:
        """:attr:`flags` as they would be had this model also priced what ``provs`` (from
        :meth:`provenance`, possibly of another model of the same profile) rest on."""
        flags, shapes = self._flags, self._roofline_shapes
        if provs:
            flags = flags.union(*(p[0] for p in provs))
            shapes = shapes.union(*(p[1] for p in provs))
        out = set(flags)
        if shapes:
            what = "roofline fallback" if self._tables else "roofline model"
            out.add(f"gpu.gemm ({what} for {len(shapes)} shapes)")
        return out

    def ops_sum_seconds(self, ops: tuple[Op, ...]) -> float:
        """Sum of ``ops`` priced one by one, never from ``gpu.blocks`` (what the op-level model
        gives for a measured block)."""
        return math.fsum(self.op_seconds(op) for op in ops)

    def durations(self, schedule: Schedule) -> list[float]:
        """Seconds for each task, in ``schedule.tasks`` order.

        Read from the schedule's table (its ops column). Policies share one ops tuple among
        identical tasks, so each distinct tuple *object* is priced once (hashing a tuple hashes
        every op in it) and the prices are gathered per task by the tuple's identity; the schedule
        holds every tuple for the whole call, so an id cannot be reused meanwhile.
        """
        ops = schedule.table.ops
        ids = list(map(id, ops))
        price = {k: self.ops_seconds(o) for k, o in dict(zip(ids, ops)).items()}
        return list(map(price.__getitem__, ids))

    def interference(self) -> tuple[tuple[str, str, float], ...]:
        """(victim glob, aggressor glob, slowdown factor) rules from the profile."""
        if self._interference:      # derived by a model of this profile before: the same rules and flags
            rules, used = self._interference[0]
            self._flags |= used
            return rules
        flags = self._flags
        self._flags = set()
        try:
            for i, r in enumerate(self.profile.interference):
                self._use(f"interference[{i}].slowdown", r.slowdown)
            rules = tuple((r.victim, r.aggressor, r.slowdown.value) for r in self.profile.interference) \
                + self._switch_rules()
            self._interference.append((rules, frozenset(self._flags)))
        finally:
            flags |= self._flags
            self._flags = flags
        return rules

    def _switch_rules(self) -> tuple[tuple[str, str, float], ...]:
        """Copies of GPUs that share a PCIe switch share its uplink to the host.

        With s GPUs per switch, each with a pinned link of B GB/s per direction, and an uplink of
        U GB/s, s copies in one direction at once each get U/s: a slowdown of s·B/U (at least 1)
        while another GPU of the same switch copies the same way. GPUs are grouped by index
        (0..s-1, s..2s-1, ...). Without ``switch_uplink_gbps`` no contention is assumed.
        """
        topo, links = self.profile.topology, self.profile.links
        n = self.profile.gpu.count
        if topo is None or topo.switch_uplink_gbps is None or topo.gpus_per_pcie_switch < 2 or n < 2 \
                or links is None:
            return ()
        s = topo.gpus_per_pcie_switch
        out = []
        for d in ("h2d", "d2h"):
            link = getattr(links, d).pinned.bandwidth_gbps
            f = max(1.0, s * link.value / topo.switch_uplink_gbps.value)
            if f == 1.0:
                continue
            self._use("topology.switch_uplink_gbps", topo.switch_uplink_gbps)
            self._use(f"links.{d}.pinned.bandwidth_gbps", link)
            for a in range(n):
                for b in range(n):
                    if a != b and a // s == b // s:
                        out.append((f"gpu{a}.{d}", f"gpu{b}.{d}", f))
        return tuple(out)

    @property
    def flags(self) -> set[str]:
        """Uncalibrated (not measured) numbers that the ops priced so far rest on."""
        return self.flags_with()

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s for ``dtype`` (for MFU)."""
        return self._peak(dtype)[0]

    # -- helpers ------------------------------------------------------------------------------

    def _use(self, key: str, prov: Provenance) -> None:
        if not prov.calibrated:
            self._flags.add(f"{key} ({prov.source})")

    def _peak(self, dtype: str) -> tuple[float, Provenance]:
        q = getattr(self.profile.gpu.peak_tflops, dtype, None) if dtype in DTYPES else None
        if q is None:
            raise ConfigError(self.profile.file, f"gpu.peak_tflops.{dtype}",
                              problem=f"profile {self.profile.name} has no peak rate for dtype "
                                      f"{dtype!r}; it has: "
                                      + ", ".join(self.profile.gpu.peak_tflops.available()))
        return q.value * 1e12, q

    def _launch_s(self) -> float:
        self._use("gpu.launch_overhead_us", self.profile.gpu.launch_overhead_us)
        return self._launch

    def _dispatched(self, kernel: float) -> float:
        """Seconds an op costs given its kernel time: on a GPU, max(dispatch, kernel). Eager
        PyTorch dispatches each op on the CPU (``launch_overhead_us``) and returns before its kernel
        runs, so the CPU enqueues the next op while this one's kernel runs: back to back, an op
        holds the stream for its kernel time unless the kernel is shorter than the dispatch, when
        the GPU waits for the CPU (flagos-ai/Torch-FL#27 on an A100: torch add of 512² submitted
        back to back 8 µs/op, host-bound; of 4096², 149 µs/op, the kernel's time). On a
        ``device_type: cpu`` profile the host thread that dispatches also runs the kernel: the
        two add."""
        launch = self._launch_s()
        if self.profile.device_type == "cpu":
            return launch + kernel
        return max(launch, kernel)

    def _mem_seconds(self, nbytes: float, efficiency: bool = True) -> float:
        g = self.profile.gpu
        self._use("gpu.mem_bandwidth_gbps", g.mem_bandwidth_gbps)
        if efficiency:
            self._use("gpu.memory_bound_efficiency", g.memory_bound_efficiency)
            return nbytes / (self._mem_bps * self._mb_eff)
        return nbytes / self._mem_bps

    def _roofline(self, flops: float, rate: float, nbytes: float) -> float:
        """launch + max(compute, memory); memory provenance is flagged only when it binds."""
        compute = flops / rate
        memory = nbytes / (self._mem_bps * self._mb_eff)
        if memory > compute:
            return self._dispatched(self._mem_seconds(nbytes))
        return self._dispatched(compute)

    # -- pricing per kind (one repetition) ----------------------------------------------------

    def _gemm(self, op: Op) -> float:
        m, n, k = op.shape
        flops = 2.0 * m * n * k  # one multiply-add per (m, n, k)
        nbytes = float(m * k + k * n + m * n) * DTYPE_BYTES[op.dtype]  # read A, B; write C
        table = self._tables.get(op.dtype)
        if table is not None:
            tflops = table.tflops(m, n, k)
            if tflops is not None:
                assert self.profile.gpu.gemm.table is not None
                self._use("gpu.gemm.table", self.profile.gpu.gemm.table)
                # Table rates are end to end per call (launch and memory traffic included): no
                # launch term and no memory bound (a bandwidth measured on other ops could only
                # price a measured point above its own measurement).
                return flops / (tflops * 1e12)
        # Roofline: quantised FLOPs at max_efficiency × peak (= FLOPs / (peak × efficiency(M, N, K)),
        # written without the M·N cancellation so rounding cannot make a bigger GEMM faster).
        g = self.profile.gpu
        peak, peak_q = self._peak(op.dtype)
        self._roofline_shapes.add((op.dtype, m, n, k))
        anchor = g.gemm.anchor
        if anchor is None or anchor.dtype != op.dtype:
            self._use(f"gpu.peak_tflops.{op.dtype}", peak_q)  # an anchor of this dtype cancels the peak
        self._use(self._max_eff_key, self._max_eff_prov)
        self._use("gpu.gemm.k_half", g.gemm.k_half)
        self._use_sustained()
        rate = peak * self._max_eff * self._sustain
        slow = g.gemm.misaligned_slowdown
        align = 16 // DTYPE_BYTES[op.dtype]     # elements in the 16 bytes cuBLAS's fast kernels need
        if slow is not None and (m % align or n % align or k % align):
            self._use("gpu.gemm.misaligned_slowdown", slow)
            rate /= slow.value
        return self._roofline(g.quantised_flops(m, n, k), rate, nbytes)

    def _use_sustained(self) -> None:
        q = self.profile.gpu.sustained_clock_factor
        if q is not None:
            self._use("gpu.sustained_clock_factor", q)

    def _attention(self, op: Op) -> float:
        b, h, sq, skv, d, causal = op.shape
        flops = op.flops / op.count
        db = DTYPE_BYTES[op.dtype]
        if op.kind is OpKind.ATTN_FWD:
            nbytes = float(b * h * d * (2 * sq + 2 * skv)) * db   # read Q, K, V; write O
        else:
            nbytes = float(b * h * d * (4 * sq + 4 * skv)) * db   # read Q, K, V, O, dO; write dQ, dK, dV
        att = self.profile.gpu.attention
        exact = self._attn_exact.get((op.kind, op.dtype, tuple(op.shape)))
        if exact is None:
            exact = self._attn_interpolated(op)
        if exact is not None and att is not None and att.table is not None:
            self._use("gpu.attention.table", att.table)
            return flops / (exact * 1e12)   # measured end to end, like the GEMM table
        peak, peak_q = self._peak(op.dtype)
        self._use(f"gpu.peak_tflops.{op.dtype}", peak_q)
        if att is None:
            self._flags.add(f"gpu.attention (absent: {self._max_eff_key} used)")
            self._use(self._max_eff_key, self._max_eff_prov)
            eff = self._max_eff
        else:
            key = "fwd_efficiency" if op.kind is OpKind.ATTN_FWD else "bwd_efficiency"
            q = getattr(att, key)
            self._use(f"gpu.attention.{key}", q)
            eff = q.value
        self._use_sustained()
        return self._roofline(flops, peak * eff * self._sustain, nbytes)

    def _attn_interpolated(self, op: Op) -> float | None:
        """TFLOP/s interpolated in the measured table of the op's pass, dtype and causality, over
        (log batch·heads, log seq_q·seq_kv, log head_dim), or None outside the measured hull."""
        b, h, sq, skv, d, causal = op.shape
        key = (op.kind, op.dtype, int(causal))
        rows = self._attn_rows.get(key)
        if rows is None:
            return None
        interp = self._attn_interp.get(key)
        if interp is None:
            # shapes with equal (batch·heads, seq², head_dim): the geometric mean of their rates
            same: dict[tuple[int, int, int], list[float]] = {}
            for bh, ss, dd, r in rows:
                same.setdefault((bh, ss, dd), []).append(math.log(r))
            interp = self._attn_interp[key] = GemmInterpolator(
                [(*k, math.exp(sum(v) / len(v))) for k, v in sorted(same.items())])
        return interp.tflops(b * h, sq * skv, d)

    def _memory_bound(self, op: Op) -> float:
        mb = self.profile.gpu.memory_bound
        kind, entry = op.kind, None
        while mb is not None:
            entry = getattr(mb, kind.value)
            if entry is not None or kind not in MB_FALLBACK:
                break
            kind = MB_FALLBACK[kind]
        if entry is None:
            return self._dispatched(self._mem_seconds(op.n))
        entry, suffix = entry.for_dtype(op.dtype)
        key = f"gpu.memory_bound.{kind.value}{suffix}"
        if entry.curve is not None:
            self._use(f"{key}.curve", entry.curve)
            return self._curve_seconds(key, entry.curve, op.n)
        self._use(f"{key}.bandwidth_gbps", entry.bandwidth_gbps)
        if entry.overhead_us is None:
            return self._dispatched(op.n / (entry.bandwidth_gbps.value * 1e9))
        # a measured per-call fixed cost: the calibrated law as it was measured
        self._use(f"{key}.overhead_us", entry.overhead_us)
        return entry.overhead_us.value * 1e-6 + op.n / (entry.bandwidth_gbps.value * 1e9)

    def _curve_seconds(self, key: str, curve: Curve, n: int) -> float:
        """Seconds for n bytes on a measured [bytes, GB/s] curve: the points' times made
        non-decreasing (a bigger op is never priced faster; noise can invert neighbours), linear in
        n between them (exact for a fixed cost + n / bandwidth law), the smallest time below them,
        the largest size's rate above them."""
        pts = self._mb_curves.get(key)
        if pts is None:
            sizes = [p[0] for p in curve.points]
            times: list[float] = []
            for b, g in curve.points:
                times.append(max(b / (g * 1e9), times[-1] if times else 0.0))
            pts = self._mb_curves[key] = (sizes, times)
        sizes, times = pts
        if n <= sizes[0]:
            return times[0]
        if n >= sizes[-1]:
            return times[-1] * (n / sizes[-1])
        i = bisect.bisect_right(sizes, n)
        (n0, n1), (t0, t1) = sizes[i - 1:i + 1], times[i - 1:i + 1]
        return min(max(t0 + (n - n0) * (t1 - t0) / (n1 - n0), t0), t1)   # clamp: float rounding

    def _transfer(self, op: Op) -> float:
        links = self.profile.links
        if links is None:  # device_type cpu without links: the "device" shares host memory
            return self._memcpy_cpu(op)
        direction = "h2d" if op.kind is OpKind.H2D else "d2h"
        kind = "pinned" if op.pinned else "pageable"
        link = getattr(getattr(links, direction), kind)
        return self._link_seconds(f"links.{direction}.{kind}", link, op.n)

    def _link_seconds(self, key: str, link: Link, nbytes: int) -> float:
        if link.curve is not None:
            self._use(f"{key}.curve", link.curve)
            pts = link.curve.points
            sizes = [p[0] for p in pts]
            if nbytes <= sizes[0]:
                return sizes[0] / (pts[0][1] * 1e9)  # below the curve: latency-bound floor
            if nbytes >= sizes[-1]:
                return nbytes / (pts[-1][1] * 1e9)
            i = bisect.bisect_right(sizes, nbytes)
            (b0, g0), (b1, g1) = pts[i - 1], pts[i]
            w = (math.log(nbytes) - math.log(b0)) / (math.log(b1) - math.log(b0))
            return nbytes / ((g0 + w * (g1 - g0)) * 1e9)
        self._use(f"{key}.latency_us", link.latency_us)
        self._use(f"{key}.bandwidth_gbps", link.bandwidth_gbps)
        return link.latency_us.value * 1e-6 + nbytes / (link.bandwidth_gbps.value * 1e9)

    def _d2d(self, op: Op) -> float:
        if self.profile.device_type == "cpu":   # the device is the host: a device copy is a memcpy
            return self._memcpy_cpu(op)
        return self._dispatched(self._mem_seconds(2.0 * op.n, efficiency=False))  # read + write

    def _memcpy_cpu(self, op: Op) -> float:
        q = self.profile.host.memcpy_gbps
        self._use("host.memcpy_gbps", q)
        return op.n / (q.value * 1e9)

    def _adam_cpu(self, op: Op) -> float:
        adam = self.profile.host.adam
        if self._adam_rate is not None:
            assert adam.by_threads is not None
            self._use("host.adam.by_threads", adam.by_threads)
            if self._adam_flag:
                self._flags.add(self._adam_flag)
            rate = self._adam_rate
        else:
            q, used, default = self._adam
            if default is not None:
                self._flags.add(default)
            for key, prov in used:
                self._use(key, prov)
            host = self.profile.host
            if adam.threads is not None and adam.threads > host.cores and used[0][0] != "host.adam.params_per_s":
                self._flags.add(f"host.adam.threads ({adam.threads} > host.cores {host.cores}: "
                                f"{host.cores} used)")
            rate = q.value
        fixed = 0.0
        if adam.overhead_us is not None:
            self._use("host.adam.overhead_us", adam.overhead_us)
            fixed = adam.overhead_us.value * 1e-6
        return fixed + op.n / rate

    def _adam_gpu(self, op: Op) -> float:
        if self.profile.device_type == "cpu":   # the device is the host: a device Adam is CPU Adam
            return self._adam_cpu(op)
        return self._dispatched(self._mem_seconds(float(op.n) * ADAM_ACCESSES_PER_PARAM
                                                  * DTYPE_BYTES[op.dtype]))

    def _collective(self, op: Op) -> float:
        (ranks,) = op.shape
        if ranks <= 1:
            return 0.0
        factor = BUS_FACTOR[op.kind](ranks)
        p = self.profile
        if p.collectives is not None:
            self._use("collectives.latency_us", p.collectives.latency_us)
            self._use("collectives.bus_bandwidth_gbps", p.collectives.bus_bandwidth_gbps)
            alpha, beta = p.collectives.latency_us.value, p.collectives.bus_bandwidth_gbps.value
        elif p.links is not None and p.links.nvlink is not None:
            self._flags.add("collectives (absent: links.nvlink used as bus bandwidth)")
            return self._link_seconds("links.nvlink", p.links.nvlink, round(op.n * factor))
        elif p.links is not None:
            # No NVLink: a ring over PCIe moves each byte D2H and H2D through the host.
            self._flags.add("collectives (absent: links.d2h.pinned used as bus bandwidth)")
            return self._link_seconds("links.d2h.pinned", p.links.d2h.pinned, round(op.n * factor))
        else:
            q = p.host.memcpy_gbps
            self._flags.add("collectives (absent: host.memcpy_gbps used as bus bandwidth)")
            self._use("host.memcpy_gbps", q)
            alpha, beta = 0.0, q.value
        return alpha * 1e-6 + op.n * factor / (beta * 1e9)


# The pricing method of each op kind, as plain functions of (model, op): a class-level table, not a
# dict of bound methods per model, which would make every model a reference cycle (model → dict →
# bound method → model) that only the cyclic garbage collector frees; a sweep makes one per point.
_PRICE: dict[OpKind, Callable[[CostModel, Op], float]] = {
    OpKind.GEMM: CostModel._gemm,
    OpKind.ATTN_FWD: CostModel._attention,
    OpKind.ATTN_BWD: CostModel._attention,
    **dict.fromkeys((OpKind.ELEMENTWISE, OpKind.NORM, OpKind.RMSNORM, OpKind.GELU, OpKind.RELU,
                     OpKind.SWIGLU, OpKind.DROPOUT, OpKind.ROPE, *BWD_KIND.values(), OpKind.SOFTMAX_CE,
                     OpKind.EMBED), CostModel._memory_bound),
    OpKind.H2D: CostModel._transfer,
    OpKind.D2H: CostModel._transfer,
    OpKind.D2D: CostModel._d2d,
    OpKind.MEMCPY_CPU: CostModel._memcpy_cpu,
    OpKind.ADAM_CPU: CostModel._adam_cpu,
    OpKind.ADAM_GPU: CostModel._adam_gpu,
    OpKind.ALLREDUCE: CostModel._collective,
    OpKind.REDUCE_SCATTER: CostModel._collective,
    OpKind.ALLGATHER: CostModel._collective,
}

_DERIVED: dict[int, tuple[HardwareProfile, dict[str, object]]] = {}   # id(profile) -> (profile, attributes)


def _derived(profile: HardwareProfile) -> dict[str, object]:
    """:meth:`CostModel._derive` of ``profile``, kept per profile object (the entry holds the
    profile, so its id stays its own; profiles are immutable)."""
    got = _DERIVED.get(id(profile))
    if got is None or got[0] is not profile:
        if len(_DERIVED) >= 64:
            _DERIVED.clear()
        got = _DERIVED[id(profile)] = (profile, CostModel._derive(profile))
    return got[1]


def _adam_by_threads(profile: HardwareProfile) -> tuple[float | None, str | None]:
    """(params/s from ``by_threads`` at ``threads``, flag if outside the measured threads), or
    (None, None) when either is absent. Linear in threads between measured counts; outside
    them the nearest measured count (flagged: the curve is not extrapolated)."""
    adam = profile.host.adam
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

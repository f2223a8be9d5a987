"""CostModel: seconds for an op, a task or a whole schedule, from a HardwareProfile; what each
price rests on (flags). The prices per op kind live in compute.py, copies.py and adam.py; the
values derived from the profile once, in :attr:`simhete.hw.profile.HardwareProfile.pricing`.
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable

from simhete.errors import ConfigError
from simhete.hw.cost import adam, compute, copies
from simhete.hw.cost.copies import switch_rules
from simhete.hw.profile import DTYPES, HardwareProfile, Provenance
from simhete.opkinds import BWD_KIND, OpKind
from simhete.schedule.model import Op, Schedule, Task


def ops_key(ops: tuple[Op, ...]) -> str:
    """A stable name (16 hex digits) for an op sequence: what ``gpu.blocks`` entries are keyed by.
    Equal tuples (every op's kind, shape, n, dtype, pinning and count) give equal keys, in every
    process (unlike ``hash``). ``batched`` is not part of the key: it says how the same
    computation is launched (priced), and a measured block's key names the computation."""
    text = ";".join(f"{op.kind.value},{'x'.join(map(str, op.shape))},{op.n},{op.dtype},"
                    f"{int(op.pinned)},{op.count}" for op in ops)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


# (flags, roofline GEMM shapes as (dtype, m, n, k)) that a price rests on; see CostModel.provenance
Provenance_ = tuple[frozenset[str], frozenset[tuple[str, int, int, int]]]
NO_PROVENANCE: Provenance_ = (frozenset(), frozenset())


class CostModel:
    """Prices ops against one profile. Cheap to build (what depends on the profile alone is
    :attr:`HardwareProfile.pricing`, shared by every model of the profile); caches everything it
    prices, with the flags each price rests on."""

    def __init__(self, profile: HardwareProfile) -> None:
        self.profile = profile
        self.tables = profile.pricing
        self._op_cache: dict[Op, float] = {}
        self._task_cache: dict[tuple[Op, ...], float] = {}
        self._flags: set[str] = set()
        self._roofline_shapes: set[tuple[str, int, int, int]] = set()
        # per priced op / ops tuple: (flags, roofline GEMM shapes) its price rests on
        self._op_prov: dict[Op, Provenance_] = {}
        self._task_prov: dict[tuple[Op, ...], Provenance_] = {}

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
                t = PRICE[op.kind](self, op) * op.count
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
            t = self.tables.blocks.get(ops_key(ops)) if self.tables.blocks else None
            if t is None:
                t = math.fsum(self.op_seconds(op) for op in ops)
                provs = [self._op_prov[op] for op in ops]
                prov = NO_PROVENANCE if not provs else provs[0] if len(provs) == 1 else \
                    (frozenset().union(*(p[0] for p in provs)), frozenset().union(*(p[1] for p in provs)))
            else:
                blocks = self.profile.gpu.blocks
                assert blocks is not None
                self.use("gpu.blocks", blocks)
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
            what = "roofline fallback" if self.tables.gemm else "roofline model"
            out.add(f"gpu.gemm ({what} for {len(shapes)} shapes)")
        return out

    def ops_sum_seconds(self, ops: tuple[Op, ...]) -> float:
        """Sum of ``ops`` priced one by one, never from ``gpu.blocks`` (what the op-level model
        gives for a measured block)."""
        return math.fsum(self.op_seconds(op) for op in ops)

    def durations(self, schedule: Schedule) -> list[float]:
        """Seconds for each task, in ``schedule.tasks`` order.

        Read from the schedule's table: policies share one ops tuple among identical tasks, so
        each entry of the table's distinct ops (``TaskTable.distinct_ops``) is priced once and the
        prices are gathered per task.
        """
        palette, at = schedule.table.distinct_ops()
        price = list(map(self.ops_seconds, palette))
        return list(map(price.__getitem__, at.tolist()))

    def interference(self) -> tuple[tuple[str, str, float], ...]:
        """(victim glob, aggressor glob, slowdown factor) rules from the profile."""
        memo = self.tables.interference
        if memo:      # derived by a model of this profile before: the same rules and flags
            rules, used = memo[0]
            self._flags |= used
            return rules
        flags = self._flags
        self._flags = set()
        try:
            for i, r in enumerate(self.profile.interference):
                self.use(f"interference[{i}].slowdown", r.slowdown)
            rules = tuple((r.victim, r.aggressor, r.slowdown.value) for r in self.profile.interference) \
                + switch_rules(self)
            memo.append((rules, frozenset(self._flags)))
        finally:
            flags |= self._flags
            self._flags = flags
        return rules

    @property
    def flags(self) -> set[str]:
        """Uncalibrated (not measured) numbers that the ops priced so far rest on."""
        return self.flags_with()

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s for ``dtype`` (for MFU)."""
        return self.peak_rate(dtype)[0]

    # -- accounting, used by the pricing functions (compute, copies, adam) ---------------------

    def use(self, key: str, prov: Provenance) -> None:
        """Record that a price rests on the number at ``key``: a flag unless it was measured."""
        if not prov.calibrated:
            self._flags.add(f"{key} ({prov.source})")

    def flag(self, text: str) -> None:
        """Record an uncalibrated assumption a price rests on (``"dotted.key (why)"``)."""
        self._flags.add(text)

    def roofline_shape(self, shape: tuple[str, int, int, int]) -> None:
        """Record a (dtype, m, n, k) GEMM priced by the roofline (counted in :attr:`flags`)."""
        self._roofline_shapes.add(shape)

    def peak_rate(self, dtype: str) -> tuple[float, Provenance]:
        q = getattr(self.profile.gpu.peak_tflops, dtype, None) if dtype in DTYPES else None
        if q is None:
            raise ConfigError(self.profile.file, f"gpu.peak_tflops.{dtype}",
                              problem=f"profile {self.profile.name} has no peak rate for dtype "
                                      f"{dtype!r}; it has: "
                                      + ", ".join(self.profile.gpu.peak_tflops.available()))
        return q.value * 1e12, q

    def launch_s(self) -> float:
        self.use("gpu.launch_overhead_us", self.profile.gpu.launch_overhead_us)
        return self.tables.launch

    def dispatched(self, kernel: float) -> float:
        """Seconds an op costs given its kernel time: on a GPU, max(dispatch, kernel). Eager
        PyTorch dispatches each op on the CPU (``launch_overhead_us``) and returns before its kernel
        runs, so the CPU enqueues the next op while this one's kernel runs: back to back, an op
        holds the stream for its kernel time unless the kernel is shorter than the dispatch, when
        the GPU waits for the CPU (flagos-ai/Torch-FL#27 on an A100: torch add of 512² submitted
        back to back 8 µs/op, host-bound; of 4096², 149 µs/op, the kernel's time). On a
        ``device_type: cpu`` profile the host thread that dispatches also runs the kernel: the
        two add."""
        launch = self.launch_s()
        if self.profile.device_type == "cpu":
            return launch + kernel
        return max(launch, kernel)

    def mem_seconds(self, nbytes: float, efficiency: bool = True) -> float:
        g = self.profile.gpu
        self.use("gpu.mem_bandwidth_gbps", g.mem_bandwidth_gbps)
        if efficiency:
            self.use("gpu.memory_bound_efficiency", g.memory_bound_efficiency)
            return nbytes / (self.tables.mem_bps * self.tables.mb_eff)
        return nbytes / self.tables.mem_bps

    def roofline(self, flops: float, rate: float, nbytes: float) -> float:
        """launch + max(compute, memory); memory provenance is flagged only when it binds."""
        compute = flops / rate
        memory = nbytes / (self.tables.mem_bps * self.tables.mb_eff)
        if memory > compute:
            return self.dispatched(self.mem_seconds(nbytes))
        return self.dispatched(compute)


# The pricing function of each op kind, of (model, op): a module-level table, not a dict of bound
# methods per model, which would make every model a reference cycle (model → dict → bound method →
# model) that only the cyclic garbage collector frees; a sweep makes one per point.
PRICE: dict[OpKind, Callable[[CostModel, Op], float]] = {
    OpKind.GEMM: compute.gemm,
    OpKind.ATTN_FWD: compute.attention,
    OpKind.ATTN_BWD: compute.attention,
    **dict.fromkeys((OpKind.ELEMENTWISE, OpKind.NORM, OpKind.RMSNORM, OpKind.GELU, OpKind.RELU,
                     OpKind.SWIGLU, OpKind.DROPOUT, OpKind.ROPE, *BWD_KIND.values(), OpKind.SOFTMAX_CE,
                     OpKind.EMBED), compute.memory_bound),
    OpKind.H2D: copies.transfer,
    OpKind.D2H: copies.transfer,
    OpKind.D2D: copies.d2d,
    OpKind.MEMCPY_CPU: copies.memcpy_cpu,
    OpKind.ADAM_CPU: adam.adam_cpu,
    OpKind.ADAM_GPU: adam.adam_gpu,
    OpKind.ALLREDUCE: copies.collective,
    OpKind.REDUCE_SCATTER: copies.collective,
    OpKind.ALLGATHER: copies.collective,
}

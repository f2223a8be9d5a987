"""What pricing reads from a profile, derived once per profile object
(:attr:`simhete.hw.profile.HardwareProfile.pricing`).

A sweep builds a cost model per point; deriving these (a pydantic Quantity for a derived Adam rate
among them, an interpolator per GEMM table) was most of a model's construction. They depend on the
profile's content alone, and a profile is immutable, so they live on the profile: no process-wide
cache, nothing keyed by identity, nothing to clear. The memo dicts at the end are filled by the
cost model as it first needs them (also functions of the profile alone).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simhete.hw.gemm import GemmInterpolator
from simhete.opkinds import OpKind

if TYPE_CHECKING:
    from simhete.hw.profile.quantity import Provenance
    from simhete.hw.profile.schema import HardwareProfile


class PricingTables:
    """Seconds, bytes/s and lookup tables of one profile, in the units pricing uses."""

    __slots__ = ("launch", "mem_bps", "mb_eff", "adam", "max_eff", "max_eff_prov", "max_eff_key",
                 "sustain", "adam_rate", "adam_flag", "gemm", "attn_exact", "attn_rows", "blocks",
                 "mb_curves", "attn_interp", "interference")

    def __init__(self, profile: HardwareProfile) -> None:
        g, host = profile.gpu, profile.host
        self.launch = g.launch_overhead_us.value * 1e-6          # seconds
        self.mem_bps = g.mem_bandwidth_gbps.value * 1e9          # bytes/s
        self.mb_eff = g.memory_bound_efficiency.value
        self.adam = host.adam_rate()    # (rate, [(key, provenance)], default flag) without by_threads
        self.max_eff: float
        self.max_eff_prov: Provenance
        self.max_eff_key: str
        self.max_eff, self.max_eff_prov, self.max_eff_key = g.max_efficiency()
        self.sustain = g.sustained_clock_factor.value if g.sustained_clock_factor is not None else 1.0
        self.adam_rate, self.adam_flag = host.adam_by_threads()
        # dtype -> interpolator of the measured GEMM table
        self.gemm: dict[str, GemmInterpolator] = {}
        if g.gemm.model == "table" and g.gemm.table is not None:
            self.gemm = {dt: GemmInterpolator(rows) for dt, rows in g.gemm.table.points.items()}
        # attention: TFLOP/s of exact measured shapes, and the rows to interpolate between
        attn_table = g.attention.table if g.attention else None
        self.attn_exact: dict[tuple[OpKind, str, tuple[int, ...]], float] = {}
        self.attn_rows: dict[tuple[OpKind, str, int], list[tuple[int, int, int, float]]] = {}
        if attn_table is not None:
            for kind, part in ((OpKind.ATTN_FWD, attn_table.fwd), (OpKind.ATTN_BWD, attn_table.bwd)):
                for dt, rows in part.items():
                    for r in rows:
                        b, h, sq, skv, d, causal = (int(x) for x in r[:6])
                        self.attn_exact[(kind, dt, (b, h, sq, skv, d, causal))] = float(r[6])
                        self.attn_rows.setdefault((kind, dt, causal), []).append(
                            (b * h, sq * skv, d, float(r[6])))
        # ops_key -> measured seconds of a whole block
        self.blocks = {k: float(sec) for k, _, sec in g.blocks.entries} if g.blocks is not None else {}
        # filled on first use by the cost model:
        self.mb_curves: dict[str, tuple[list[int], list[float]]] = {}   # dotted key -> (sizes, times)
        self.attn_interp: dict[tuple[OpKind, str, int], GemmInterpolator] = {}
        self.interference: list[tuple[tuple[tuple[str, str, float], ...], frozenset[str]]] = []

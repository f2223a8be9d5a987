"""What each suite measures at each level: ``full`` (a real calibration), ``quick`` (a reduced grid,
under a minute on a 2-core CPU) and ``tiny`` (tests only; chosen with SIMHETE_CALIBRATE_GRID=tiny).

Grids differ by device: a CPU standing in for the GPU gets smaller shapes and fp32/bf16 only.
Every sweep also names held-out points that the fits never see; the fit report gives the error of
each fit on them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from calibrate.timing import Methodology

LEVELS = ("full", "quick", "tiny")
GRID_ENV = "SIMHETE_CALIBRATE_GRID"

KiB, MiB, GiB = 2**10, 2**20, 2**30
# The three GEMM layouts of a linear layer (calibrate/gemm.py). GPU grids keep "nn" only: their
# run-time estimate (docs/calibration.md) is for one layout; layouts there are not measured yet.
LINEAR_LAYOUTS = ("nt", "nn", "tn")


@dataclass(frozen=True)
class Grid:
    level: str
    methodology: Methodology
    gemm_sizes: tuple[int, ...]            # the M, N and K axes (a full cartesian grid)
    gemm_dtypes: tuple[str, ...]
    gemm_holdout: int                      # off-grid shapes per dtype
    gemm_layouts: tuple[str, ...]          # operand layouts per shape (calibrate/gemm.py)
    attn_dtypes: tuple[str, ...]
    attn_shapes: tuple[tuple[int, int, int, int, int], ...]  # (batch, heads, kv_heads, seq,
    attn_holdout: tuple[tuple[int, int, int, int, int], ...]  # head_dim), causal; a full grid
    mem_dtypes: tuple[str, ...]            # the first is the profile's default; others → dtypes
    mem_hidden: int                        # row length of norm/softmax inputs
    mem_elems: tuple[int, ...]             # even index: fit, odd index: held out; the smallest
                                           # sizes time the per-op fixed cost (launch_overhead_us)
    copy_bytes: tuple[int, ...]            # even index: fit, odd index: held out
    duplex_bytes: tuple[int, ...]
    adam_params: tuple[int, ...]           # even index: fit, odd index: held out; small sizes
                                           # time the per-call overhead (one Adam call per block)
    adam_threads: tuple[int, ...]
    interf_gemm: int                       # square GEMM size of the compute stream
    interf_copy_bytes: int
    interf_adam_params: int
    coll_bytes: tuple[int, ...]
    # Shapes a scenario prices, measured exactly (``simhete calibrate --shapes-from``,
    # calibrate/targets.py): split "scenario", table points of the fit like "fit" points.
    gemm_extra: tuple[tuple[str, int, int, int], ...] = ()            # (dtype, M, N, K)
    attn_extra: tuple[tuple[str, int, int, int, int, int], ...] = ()  # (dtype, batch, heads,
                                                                      #  kv_heads, seq, head_dim)
    shapes_from: tuple[str, ...] = ()                                 # the scenario files
    block_scenarios: tuple[str, ...] = ()     # their paths: whole blocks (calibrate/blocks.py)


def _threads(cores: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to the core count, and the core count itself."""
    out, t = [], 1
    while t < cores:
        out.append(t)
        t *= 2
    return tuple(out + [cores])


def _attn_grid(bh: tuple[tuple[int, int], ...], seqs: tuple[int, ...],
               dims: tuple[int, ...]) -> tuple[tuple[int, int, int, int, int], ...]:
    """Every (batch, heads) × seq × head_dim, K/V heads = heads (held-out points add GQA: on the
    CPU flash kernel the K/V head count did not change the time of the same query shape)."""
    return tuple((b, h, h, s, d) for b, h in bh for s in seqs for d in dims)


def _pow4(lo: int, hi: int) -> tuple[int, ...]:
    out, x = [], lo
    while x <= hi:
        out.append(x)
        x *= 4
    return tuple(out)


def grid(level: str, device_type: str, cores: int | None = None) -> Grid:
    """The grid for ``level`` on a ``cuda`` or ``cpu`` device; ``SIMHETE_CALIBRATE_GRID`` overrides."""
    level = os.environ.get(GRID_ENV, level)
    if level not in LEVELS:
        raise ValueError(f"{GRID_ENV}={level!r}; allowed: {', '.join(LEVELS)}")
    cores = cores or os.cpu_count() or 1
    if level == "tiny":
        return Grid("tiny", Methodology(warmup=1, repeats=3, min_sample_s=2e-4, noise_threshold=0.5),
                    gemm_sizes=(32, 128), gemm_dtypes=("fp32",), gemm_holdout=1,
                    gemm_layouts=("nn", "tn"),
                    attn_dtypes=("fp32",), attn_shapes=((1, 2, 2, 64, 32), (1, 2, 2, 128, 32)),
                    attn_holdout=((1, 2, 1, 96, 32),),
                    mem_dtypes=("fp32",), mem_hidden=256, mem_elems=(2**12, 2**14, 2**16),
                    copy_bytes=(4 * KiB, 64 * KiB, MiB), duplex_bytes=(MiB,),
                    adam_params=(2**12, 2**14, 2**16), adam_threads=(1,),
                    interf_gemm=128, interf_copy_bytes=MiB, interf_adam_params=2**16,
                    coll_bytes=(MiB,))
    if device_type == "cpu":
        if level == "quick":
            return Grid("quick", Methodology(warmup=1, repeats=5, min_sample_s=2e-3,
                                             noise_threshold=0.15),
                        gemm_sizes=(64, 256, 1024), gemm_dtypes=("fp32", "bf16"), gemm_holdout=3,
                        gemm_layouts=LINEAR_LAYOUTS,
                        attn_dtypes=("fp32", "bf16"), attn_shapes=_attn_grid(
                            ((2, 4), (4, 8)), (64, 256), (32, 128)),
                        attn_holdout=((2, 8, 8, 128, 64), (2, 8, 2, 128, 64), (1, 16, 4, 96, 48)),
                        mem_dtypes=("fp32", "bf16"), mem_hidden=1024,
                        mem_elems=tuple(2**i for i in range(6, 22)),
                        copy_bytes=_pow4(4 * KiB, 64 * MiB), duplex_bytes=(16 * MiB,),
                        adam_params=(2**12, 2**14, 2**16, 2**18, 2**20, 2**21, 2**22),
                        adam_threads=_threads(cores),
                        interf_gemm=512, interf_copy_bytes=16 * MiB, interf_adam_params=2**20,
                        coll_bytes=(MiB,))
        return Grid("full", Methodology(warmup=2, repeats=10, min_sample_s=5e-3,
                                        noise_threshold=0.10),
                    gemm_sizes=(64, 128, 256, 512, 1024, 2048), gemm_dtypes=("fp32", "bf16"),
                    gemm_holdout=8, gemm_layouts=LINEAR_LAYOUTS, attn_dtypes=("fp32", "bf16"),
                    attn_shapes=_attn_grid(((1, 4), (4, 8), (8, 16)), (64, 256, 1024),
                                           (32, 64, 128)),
                    attn_holdout=((2, 8, 8, 128, 64), (2, 8, 2, 128, 64), (2, 8, 8, 768, 96),
                                  (1, 16, 4, 512, 48)),
                    mem_dtypes=("fp32", "bf16"), mem_hidden=1024,
                    mem_elems=tuple(2**i for i in range(6, 27)),
                    copy_bytes=_pow4(4 * KiB, 256 * MiB), duplex_bytes=(16 * MiB, 64 * MiB),
                    adam_params=(2**12, 2**14, 2**16, 2**18, 2**20, 2**22, 2**24),
                    adam_threads=_threads(cores),
                    interf_gemm=1024, interf_copy_bytes=64 * MiB, interf_adam_params=2**22,
                    coll_bytes=(MiB,))
    if level == "quick":
        return Grid("quick", Methodology(warmup=2, repeats=5, min_sample_s=1e-3,
                                         noise_threshold=0.10),
                    gemm_sizes=(256, 1024, 4096), gemm_dtypes=("bf16", "fp16", "tf32", "fp32"),
                    gemm_holdout=3, gemm_layouts=("nn",), attn_dtypes=("bf16", "fp32"),
                    attn_shapes=_attn_grid(((4, 16),), (512, 2048), (128,)),
                    attn_holdout=((4, 16, 16, 1024, 128), (4, 16, 4, 1024, 128)),
                    mem_dtypes=("bf16", "fp32"), mem_hidden=4096, mem_elems=_pow4(2**10, 2**26),
                    copy_bytes=_pow4(4 * KiB, 256 * MiB), duplex_bytes=(64 * MiB,),
                    adam_params=(2**16, 2**18, 2**20, 2**22, 2**24),
                    adam_threads=(1, cores),
                    interf_gemm=4096, interf_copy_bytes=256 * MiB, interf_adam_params=2**22,
                    coll_bytes=_pow4(MiB, 64 * MiB))
    return Grid("full", Methodology(warmup=3, repeats=10, min_sample_s=1e-3, noise_threshold=0.05),
                gemm_sizes=(256, 512, 1024, 2048, 4096, 8192, 16384),
                gemm_dtypes=("bf16", "fp16", "tf32", "fp32"), gemm_holdout=10, gemm_layouts=("nn",),
                attn_dtypes=("bf16", "fp32"),   # fp32: what `simhete validate` replays by default
                attn_shapes=_attn_grid(((1, 32), (8, 16)), (512, 1024, 2048, 4096, 8192), (64, 128)),
                attn_holdout=((2, 32, 32, 1536, 128), (4, 16, 16, 3072, 64), (1, 32, 32, 6144, 128),
                              (2, 32, 8, 2048, 128)),
                mem_dtypes=("bf16", "fp32"), mem_hidden=4096, mem_elems=_pow4(2**8, 2**28),
                copy_bytes=_pow4(4 * KiB, GiB), duplex_bytes=(64 * MiB, 256 * MiB, GiB),
                adam_params=(2**14, 2**16, 2**18, 2**20, 2**22, 2**24, 2**26),
                adam_threads=_threads(cores),
                interf_gemm=8192, interf_copy_bytes=GiB, interf_adam_params=2**24,
                coll_bytes=_pow4(MiB, GiB))

"""Fitting raw calibration data into a hardware profile. No torch: a profile is refitted anywhere.

Raw data is one CSV per suite (written by :mod:`calibrate`), each starting with ``# key: value``
provenance lines (suite, device, driver, torch, host, date, methodology), then a header row and one
row per measured point with its timing statistics and ``status`` (``ok`` or ``missing: <why>``).
Points are split into ``fit`` and ``holdout``; fits use only ``fit`` rows, and the error of the
fitted profile *as priced by* :class:`simhete.hw.cost.CostModel` is reported on the held-out rows.

Fits (docs/calibration.md has the details):

- GEMM: the measured rates as a table (interpolated in log space by
  :class:`simhete.hw.gemm.GemmInterpolator`); peak = best measured rate; the roofline fallback's
  ``k_half`` by least squares in log space.
- Attention: the measured exact shapes as a table; fwd/bwd efficiency = median of rate / peak.
- Memory-bound ops: per OpKind the measured (bytes, GB/s) curve → ``gpu.memory_bound``; the
  ELEMENTWISE rate at the largest size → ``mem_bandwidth_gbps``; α of an α-β fit over the
  smallest add/mul → ``launch_overhead_us``.
- Links and host memcpy: α-β per direction and memory kind, plus the measured curve.
- CPU Adam: α-β per thread count (β → ``by_threads``; at the calibration's threads per stream
  β → ``params_per_s``, α → ``overhead_us``, and ``threads`` records that count).
- Interference: slowdown = median(victim with aggressor) / median(victim alone).

Every fitted number is a ``measured`` quantity carrying the raw file, device, driver, torch
version, host and date of the data it came from. Output is deterministic: the same raw files give

Modules: raw (the CSV format), common (shared state and the α-β fit), compute (GEMM, attention,
blocks), membw (memory-bound ops), host (copies, links, Adam, interference, collectives), refit
(the whole fit and its report).
"""

from simhete.hw.fit.common import Fit, alpha_beta
from simhete.hw.fit.raw import SUITES, SYSTEM, RawTable, read_raw, write_raw
from simhete.hw.fit.refit import fit, refit

__all__ = ["SUITES", "SYSTEM", "Fit", "RawTable", "alpha_beta", "fit", "read_raw", "refit", "write_raw"]

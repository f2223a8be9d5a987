"""Timing one benchmark point: warm-up, repeats, median with spread, and a noise check.

On the GPU each sample is bracketed by CUDA events on the current stream and read after a
synchronisation; on the CPU by ``time.perf_counter`` (monotonic). A sample times ``inner``
back-to-back calls, chosen during warm-up so that a sample lasts at least ``min_sample_s`` (short
kernels would otherwise measure the clock, not the kernel). A point whose relative spread
(IQR / median) exceeds ``noise_threshold`` is measured again with twice the repeats; if it is still
that noisy it is flagged ``unstable`` — kept, never dropped, and counted in the fit report.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

STAT_COLUMNS = ("median_s", "q1_s", "q3_s", "min_s", "max_s", "repeats", "inner",
                "remeasured", "unstable")


@dataclass(frozen=True)
class Methodology:
    """How every point of one run is measured; written into each raw CSV header."""

    warmup: int = 3
    repeats: int = 10
    min_sample_s: float = 2e-3
    max_inner: int = 1000
    noise_threshold: float = 0.10

    def header(self) -> dict[str, object]:
        return {"warmup": self.warmup, "repeats": self.repeats, "min_sample_s": self.min_sample_s,
                "noise_threshold": self.noise_threshold,
                "statistic": "median of repeats; spread = q1..q3 and min..max; seconds per call"}


@dataclass(frozen=True)
class Stat:
    median_s: float
    q1_s: float
    q3_s: float
    min_s: float
    max_s: float
    repeats: int
    inner: int
    remeasured: bool
    unstable: bool

    @property
    def spread(self) -> float:
        """Relative inter-quartile range."""
        return (self.q3_s - self.q1_s) / self.median_s if self.median_s > 0 else math.inf

    def row(self) -> dict[str, object]:
        return {"median_s": self.median_s, "q1_s": self.q1_s, "q3_s": self.q3_s,
                "min_s": self.min_s, "max_s": self.max_s, "repeats": self.repeats,
                "inner": self.inner, "remeasured": int(self.remeasured),
                "unstable": int(self.unstable)}


def _sample(fn: Callable[[], object], cuda: torch.device | None, inner: int,
            before: Callable[[], object] | None = None) -> float:
    """Seconds per call of ``inner`` back-to-back calls, device work included. With ``before``
    (host timing only): ``before()`` runs ahead of every call, untimed, and only the calls count."""
    if before is not None and cuda is None:
        total = 0.0
        for _ in range(inner):
            before()
            t0 = time.perf_counter()
            fn()
            total += time.perf_counter() - t0
        return total / inner
    if cuda is not None:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(cuda)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / inner  # elapsed_time is in milliseconds
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def _stats(samples: list[float], inner: int, remeasured: bool, unstable: bool) -> Stat:
    a = np.asarray(samples, dtype=float)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return Stat(float(med), float(q1), float(q3), float(a.min()), float(a.max()), len(samples),
                inner, remeasured, unstable)


def measure(fn: Callable[[], object], m: Methodology, cuda: torch.device | None = None,
            before: Callable[[], object] | None = None) -> Stat:
    """Time ``fn`` per the methodology.

    With ``cuda`` set, ``fn`` must enqueue its work on the current stream of that device (or make the
    current stream wait for the streams it uses) and CUDA events time it; otherwise ``fn`` runs on
    the host and must return when its work is done. ``before`` (host timing only): work run ahead
    of every timed call and not timed — the op a model runs before this one.
    """
    inner = 1
    for _ in range(max(1, m.warmup)):
        t = _sample(fn, cuda, 1, before)
        if 0 < t < m.min_sample_s:
            inner = min(m.max_inner, max(inner, math.ceil(m.min_sample_s / t)))
    first = _stats([_sample(fn, cuda, inner, before) for _ in range(m.repeats)], inner, False, False)
    if first.spread <= m.noise_threshold:
        return first
    again = [_sample(fn, cuda, inner, before) for _ in range(2 * m.repeats)]
    second = _stats(again, inner, True, False)
    return _stats(again, inner, True, second.spread > m.noise_threshold)

"""Summary metrics of a Timeline: iteration time, throughput, MFU, stream busy, PCIe bytes, memory.

Every figure is derived from the flat :class:`~simhete.engine.timeline.Timeline` record type plus
what the caller knows about the workload (tokens, FLOPs per iteration) and the hardware (peak
FLOP/s, pool capacities). Definitions, formulas and units are in ``docs/reports.md``.

The steady-state window the rates are taken over, and each stream's busy fraction of it, are
computed in :mod:`simhete.report.window`; the PCIe bytes in :mod:`simhete.report.pcie`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from simhete.engine.timeline import Timeline
from simhete.report.pcie import pcie_bytes
from simhete.report.window import steady_window, stream_busy

SIG_DIGITS = 6          # floats in to_dict() are rounded to this many significant digits


@dataclass(frozen=True, slots=True)
class PoolPeak:
    """Peak memory of one pool: bytes at the peak, capacity, and the peak's MemClass breakdown."""

    capacity_bytes: int
    peak_bytes: int
    peak_by_class_bytes: dict[str, int]


@dataclass(frozen=True, slots=True)
class Summary:
    """The figures reported for one Timeline. Rates are ``None`` when the run does not fit."""

    fits: bool
    oom: str | None
    window_start_s: float | None
    window_end_s: float | None
    iter_time_s: float | None
    tokens_per_s: float | None
    samples_per_s: float | None
    tflops_per_gpu: float | None
    tflops_total: float | None
    mfu: float | None
    stream_busy_frac: dict[str, float] | None
    pcie_bytes_per_iter: dict[str, int] | None
    memory: dict[str, PoolPeak]
    uncalibrated: tuple[str, ...]
    tokens_per_iter: int
    samples_per_iter: int
    model_flops_per_iter: float
    peak_flops_per_gpu: float
    n_gpus: int
    meta: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: field order as declared, nested keys sorted, floats rounded."""
        # what _json_safe gives, with the summary's known shapes spelled out (a sweep calls this for
        # every point: a call of _json_safe per leaf was most of its time)
        out: dict[str, Any] = {}
        for name in _SUMMARY_FIELDS:
            v = getattr(self, name)
            t = type(v)
            if t is float:                       # the common leaves first (as _json_safe does them)
                out[name] = _round(v)
            elif t is int or t is str or t is bool or v is None:
                out[name] = v
            elif name == "memory":
                out[name] = {str(p): {"capacity_bytes": _leaf(m.capacity_bytes), "peak_bytes": _leaf(m.peak_bytes),
                                      "peak_by_class_bytes": _leaves(dict(sorted(m.peak_by_class_bytes.items())))}
                             for p, m in sorted(v.items())}
            elif t is dict:                      # stream busy, PCIe bytes, meta: flat mappings
                out[name] = _leaves(v)
            elif t is tuple:                     # uncalibrated: strings
                out[name] = [x if type(x) is str else _json_safe(x) for x in v]
            else:
                out[name] = _json_safe(v)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Summary:
        """Inverse of :meth:`to_dict` (up to float rounding), e.g. to compare saved summaries."""
        kw = dict(d)
        kw["memory"] = {p: PoolPeak(**m) for p, m in d["memory"].items()}
        kw["uncalibrated"] = tuple(d["uncalibrated"])
        return cls(**kw)


_SUMMARY_FIELDS = tuple(f.name for f in fields(Summary))


def summarize(timeline: Timeline, *, tokens_per_iter: int, samples_per_iter: int,
              model_flops_per_iter: float, peak_flops_per_gpu: float, n_gpus: int,
              pool_capacity: Mapping[str, int], task_bytes: Mapping[str, int] | None = None,
              flags: tuple[str, ...] | list[str] = (),
              meta: Mapping[str, Any] | None = None) -> Summary:
    """Summarize ``timeline``.

    ``task_bytes`` maps task name to bytes moved (see :func:`copy_bytes`); with it, records on
    ``*.h2d`` / ``*.d2h`` streams of the steady iteration are summed per direction into
    ``pcie_bytes_per_iter``; without it that figure is ``None``. ``flags`` are the cost model's
    provenance flags (numbers not calibrated by measurement); they are reported sorted, once each.
    """
    if n_gpus < 1 or peak_flops_per_gpu <= 0:
        raise ValueError(f"n_gpus must be >= 1 and peak_flops_per_gpu > 0, "
                         f"got {n_gpus} and {peak_flops_per_gpu}")
    memory = _memory(timeline, pool_capacity)
    merged_meta = dict(timeline.meta)
    if timeline.engine:
        merged_meta["engine"] = timeline.engine
    merged_meta.update({k: str(v) for k, v in (meta or {}).items()})
    common = dict(memory=memory, uncalibrated=tuple(sorted(set(flags))),
                  tokens_per_iter=tokens_per_iter, samples_per_iter=samples_per_iter,
                  model_flops_per_iter=float(model_flops_per_iter),
                  peak_flops_per_gpu=float(peak_flops_per_gpu), n_gpus=n_gpus,
                  meta=dict(sorted(merged_meta.items())))
    # a run that did not fit reports no rates: its window is not needed (nor derived)
    window = steady_window(timeline) if timeline.oom is None else None
    # Timeline.steady_iteration_time() is the window's length, computed the same way (its end minus
    # its start; the makespan itself when the window starts at 0.0)
    t = window[1] - window[0] if window is not None else 0.0
    if timeline.oom is not None or window is None or t <= 0:
        return Summary(fits=timeline.oom is None,
                       oom=timeline.oom.message() if timeline.oom is not None else None,
                       window_start_s=None, window_end_s=None, iter_time_s=None,
                       tokens_per_s=None, samples_per_s=None, tflops_per_gpu=None,
                       tflops_total=None, mfu=None, stream_busy_frac=None,
                       pcie_bytes_per_iter=None, **common)
    flops_per_s = model_flops_per_iter / t
    return Summary(
        fits=True, oom=None, window_start_s=window[0], window_end_s=window[1], iter_time_s=t,
        tokens_per_s=tokens_per_iter / t, samples_per_s=samples_per_iter / t,
        tflops_per_gpu=flops_per_s / n_gpus / 1e12, tflops_total=flops_per_s / 1e12,
        mfu=flops_per_s / (n_gpus * peak_flops_per_gpu),
        stream_busy_frac=stream_busy(timeline, window),
        pcie_bytes_per_iter=None if task_bytes is None else pcie_bytes(timeline, task_bytes),
        **common)


def _memory(timeline: Timeline, pool_capacity: Mapping[str, int]) -> dict[str, PoolPeak]:
    missing = sorted(set(timeline.peak) - set(pool_capacity))
    if missing:
        raise ValueError(f"pool_capacity has no entry for pool(s) {', '.join(missing)}")
    return {pool: PoolPeak(capacity_bytes=int(cap), peak_bytes=int(timeline.peak.get(pool, 0)),
                           peak_by_class_bytes=dict(sorted(
                               timeline.peak_by_class.get(pool, {}).items())))
            for pool, cap in sorted(pool_capacity.items())}


_ROUNDED = f"%.{SIG_DIGITS}g"       # the format spelled once (an f-string with a nested spec builds it per call)


def _round(x: float) -> float:
    return float(_ROUNDED % x)


def _leaf(x: Any) -> Any:
    """:func:`_json_safe` of ``x``, the leaves inline."""
    t = type(x)
    if t is float:
        return _round(x)
    if t is int or t is str or t is bool or x is None:
        return x
    return _json_safe(x)


def _leaves(d: Mapping[Any, Any]) -> dict[str, Any]:
    """:func:`_json_safe` of a mapping, the leaves inline."""
    out = {}
    for k, x in d.items():
        t = type(x)
        out[str(k)] = _round(x) if t is float else x if t is int or t is str or t is bool or x is None \
            else _json_safe(x)
    return out


def _json_safe(v: Any) -> Any:
    t = type(v)
    if t is str or t is int or t is bool or v is None:      # exact types first: isinstance on ABCs is slow
        return v
    if t is float:
        return _round(v)
    if t is dict:
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        return _round(v)
    if isinstance(v, Mapping):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    raise TypeError(f"not JSON-safe: {v!r}")

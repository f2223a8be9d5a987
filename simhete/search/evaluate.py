"""Evaluate sweep points (runs in the workers): scenario → simulation → one flat result row.

A row is what the results store keeps and every sweep report is derived from. Failures are rows
too: ``status`` is ``ok`` (fits), ``oom`` (the engine's out-of-memory verdict), ``invalid`` (the
combination cannot be built: a knob foreign to the policy, a multi-GPU profile for a single-GPU
policy, ...) or ``error`` (anything else; the reason names the exception).

Workers keep the hardware profiles they loaded (keyed by the scenario's hardware reference), so a
sweep reads each profile file once per worker, and run with ``memo=True`` (policy structures,
prices and timelines remembered: docs/sweeps.md); each is exact, so a row
never depends on which points a worker ran before it.
"""

from __future__ import annotations

import gc
import json
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from simhete.errors import ConfigError, SimheteError
from simhete.scenario import Scenario

STATUSES = ("ok", "oom", "invalid", "error")


@dataclass(frozen=True)
class Row:
    """One point's result. Column meanings are in docs/sweeps.md."""

    id: str
    idx: int
    params: str                     # JSON of the axis values, keys in axis order
    status: str
    reason: str
    policy: str
    tokens_per_s: float | None
    samples_per_s: float | None
    iter_time_s: float | None
    mfu: float | None
    peak_gpu_bytes: int | None      # largest peak over the GPU pools
    gpu_capacity_bytes: int | None
    peak_host_bytes: int | None
    host_capacity_bytes: int | None
    uncalibrated: str               # JSON list of provenance flags behind the numbers
    summary: str                    # JSON of Summary.to_dict(); "" when nothing was simulated

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


COLUMNS: tuple[str, ...] = tuple(Row.__dataclass_fields__)

_PROFILES: dict[str, Any] = {}


def _profile(s: Scenario) -> Any:
    from simhete.sim import resolve_profile

    h = s.data.hardware
    key = (s.file or "") + "|" + (h if isinstance(h, str) else json.dumps(h.model_dump(mode="json"), sort_keys=True))
    prof = _PROFILES.get(key)
    if prof is None:
        prof = _PROFILES[key] = resolve_profile(s)
    return prof


def failed_row(pid: str, idx: int, params: dict[str, Any], status: str, reason: str, policy: str) -> Row:
    return Row(pid, idx, params_json(params), status, reason, policy, None, None, None, None,
               None, None, None, None, "[]", "")


# json.dumps with any non-default argument builds a new JSONEncoder per call; a row makes three
# encodings, so the encoders are made once (the same text: json.dumps is this encoder's encode)
_PARAMS = json.JSONEncoder(separators=(",", ":"), default=str).encode
_SUMMARY = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


def params_json(params: dict[str, Any]) -> str:
    return _PARAMS(params)


def evaluate(pid: str, idx: int, params: dict[str, Any], s: Scenario, engine: str = "fast") -> Row:
    """Simulate one point; every failure becomes a row with its reason."""
    from simhete.sim import run

    policy = s.data.policy
    try:
        res = run(s, engine=engine, profile=_profile(s), check=False, memo=True)
    except ConfigError as e:
        return failed_row(pid, idx, params, "invalid", str(e), policy)
    except SimheteError as e:
        return failed_row(pid, idx, params, "error", str(e), policy)
    except Exception as e:  # a bug in a policy or the engine: record it, keep the sweep going
        return failed_row(pid, idx, params, "error", f"internal error: {type(e).__name__}: {e}", policy)
    return summary_row(pid, idx, params, policy, res.summary)


def summary_row(pid: str, idx: int, params: dict[str, Any], policy: str, summary: Any) -> Row:
    d = summary.to_dict()
    mem = d["memory"]
    gpus = [m for p, m in mem.items() if p.startswith("gpu")]
    host = mem.get("cpu")
    peak_gpu = max(gpus, key=lambda m: m["peak_bytes"]) if gpus else None
    return Row(
        pid, idx, params_json(params), "ok" if summary.fits else "oom", summary.oom or "", policy,
        summary.tokens_per_s, summary.samples_per_s, summary.iter_time_s, summary.mfu,
        peak_gpu["peak_bytes"] if peak_gpu else None, peak_gpu["capacity_bytes"] if peak_gpu else None,
        host["peak_bytes"] if host else None, host["capacity_bytes"] if host else None,
        json.dumps(list(summary.uncalibrated)), _SUMMARY(d))


def evaluate_chunk(chunk: Sequence[tuple[str, int, dict[str, Any], Scenario]], engine: str = "fast") -> list[Row]:
    """The unit of work a backend ships: a few points, evaluated in order.

    The cyclic garbage collector is paused for the chunk: a point allocates tens of thousands of
    objects that reference counting frees (tasks, names, arrays), and each collection would walk
    the process's whole heap for none of them; it runs again as usual after the chunk."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return [evaluate(pid, idx, params, s, engine) for pid, idx, params, s in chunk]
    finally:
        if enabled:
            gc.enable()

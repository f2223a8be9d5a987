"""What every suite's fit shares: the state of one refit (raw tables, report sections, held-out
points), measured quantities carrying their raw file's provenance, the α-β fit and error text."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from scipy.optimize import lsq_linear

from simhete.hw.fit.raw import SYSTEM, RawTable
from simhete.schedule.model import Op

SIG = 4             # significant digits kept in fitted numbers (measurements are noisier)

# Splits whose points are table points: the grid's "fit" points and the exact shapes of the
# scenarios named with `simhete calibrate --shapes-from` ("scenario"); "holdout" never.
TABLE_SPLITS = ("fit", "scenario")


def sig(x: float) -> float:
    return float(f"{x:.{SIG}g}")


def alpha_beta(sizes: list[float], times: list[float]) -> tuple[float, float]:
    """Least squares of T = α + n/β in relative error (each row divided by its T).

    0 ≤ α ≤ the fastest measured time (a fixed cost cannot exceed a whole call). If the fit still
    leaves no per-unit cost (noise made a larger size as fast as a smaller one), β comes from the
    largest size alone, through the origin. Returns (α seconds, β units per second).
    """
    n = np.asarray(sizes, dtype=float)
    t = np.asarray(times, dtype=float)
    big = int(np.argmax(n))
    if len(n) == 1:
        return 0.0, float(n[big] / t[big])
    a = np.column_stack([1.0 / t, n / t])
    res = lsq_linear(a, np.ones_like(t), bounds=([0.0, 0.0], [float(t.min()), np.inf]),
                     method="bvls")
    alpha, inv_beta = (float(x) for x in res.x)
    if inv_beta * n[big] < 1e-6 * t[big]:
        return 0.0, float(n[big] / t[big])
    return alpha, 1.0 / inv_beta


def rel_errors(pred: Iterable[float], meas: Iterable[float]) -> list[float]:
    return [abs(p - m) / m for p, m in zip(pred, meas)]


def err_text(errs: list[float]) -> str:
    if not errs:
        return "no held-out points"
    return (f"median {100 * float(np.median(errs)):.1f}%, max {100 * max(errs):.1f}% "
            f"over {len(errs)} held-out points")


def num(r: dict[str, str], k: str) -> float:
    return float(r[k])


@dataclass
class Fit:
    """The fitted profile (a dict ready for YAML) and the fit report (Markdown)."""

    profile: dict[str, Any]
    report: str
    # held-out relative errors as the report's table has them: (suite, op label or "", errors)
    errors: list[tuple[str, str, list[float]]] = field(default_factory=list)


@dataclass
class FitState:
    raw_dir: Path
    profile_dir: Path
    tables: dict[str, RawTable]
    sections: list[str] = field(default_factory=list)
    holdout: dict[str, list[tuple[Op, float]]] = field(default_factory=dict)
    holdout_by: dict[str, list[str]] = field(default_factory=dict)   # a label per held-out point

    def q(self, suite: str, value: float, ref: str) -> dict[str, Any]:
        """A measured Quantity backed by ``suite``'s raw file."""
        t = self.tables[suite]
        m = t.meta
        raw = os.path.relpath(t.path, self.profile_dir).replace(os.sep, "/")
        out: dict[str, Any] = {"value": value, "source": "measured", "ref": ref, "raw": raw,
                               "device": m.get("device", "?"), "driver": m.get("driver", "?"),
                               "torch": m.get("torch", "?"), "date": m.get("date", "?"),
                               "host": m.get("host", "?")}
        return out

    def prov(self, suite: str, ref: str) -> dict[str, Any]:
        out = self.q(suite, 0.0, ref)
        del out["value"]
        return out


def system_info(st: FitState) -> dict[str, str]:
    t = st.tables[SYSTEM]
    return {r["item"]: r["value"] for r in t.rows}


def scenario_note(rows: list[dict[str, str]]) -> str:
    n = sum(r["split"] == "scenario" for r in rows)
    return f"; plus {n} rows at scenario shapes (--shapes-from)" if n else ""

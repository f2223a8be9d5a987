"""Raw calibration data: one CSV per suite, written by ``simhete calibrate`` and read by the fit.

Each file starts with ``# key: value`` provenance lines (suite, device, driver, torch, host, date,
methodology), then a header row and one row per measured point with its timing statistics and
``status`` (``ok`` or ``missing: <why>``).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from simhete.errors import ConfigError

SUITES = ("gemm", "attention", "membw", "copy", "adam", "interference", "collectives", "blocks")
SYSTEM = "system"   # facts queried from the OS/driver, not timed; always written


@dataclass(frozen=True)
class RawTable:
    """One raw CSV: provenance header, column names, and rows of strings."""

    meta: dict[str, str]
    columns: tuple[str, ...]
    rows: tuple[dict[str, str], ...]
    path: Path

    def ok(self, **match: str) -> list[dict[str, str]]:
        """Rows measured successfully whose columns equal ``match``."""
        return [r for r in self.rows if r["status"] == "ok"
                and all(r[k] == v for k, v in match.items())]


def _fmt(v: object) -> str:
    return repr(v) if isinstance(v, float) else str(v)  # repr round-trips floats exactly


def write_raw(path: str | Path, meta: dict[str, str], columns: Iterable[str],
              rows: Iterable[dict[str, object]]) -> None:
    cols = list(columns)
    buf = io.StringIO()
    buf.write("# simhete raw calibration data (docs/calibration.md)\n")
    for k, v in meta.items():
        buf.write(f"# {k}: {' '.join(str(v).split())}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([_fmt(r.get(c, "")) for c in cols])
    Path(path).write_text(buf.getvalue())


def read_raw(path: str | Path) -> RawTable:
    p = Path(path)
    meta: dict[str, str] = {}
    lines = p.read_text().splitlines()
    body = []
    for line in lines:
        if line.startswith("#"):
            key, sep, val = line[1:].partition(":")
            if sep and not body:
                meta[key.strip()] = val.strip()
        else:
            body.append(line)
    reader = csv.reader(body)
    try:
        columns = tuple(next(reader))
    except StopIteration:
        raise ConfigError(str(p), None, problem="raw CSV has no header row") from None
    rows = []
    for i, rec in enumerate(reader):
        if len(rec) != len(columns):
            raise ConfigError(str(p), f"row {i + 1}", problem=f"has {len(rec)} fields, header has "
                                                               f"{len(columns)}")
        rows.append(dict(zip(columns, rec)))
    if "status" not in columns:
        raise ConfigError(str(p), None, problem="raw CSV lacks the status column")
    return RawTable(meta, columns, tuple(rows), p)

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
from simhete.opkinds import BWD_KIND, OpKind

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
    if p.stem == "membw" and "op" in columns:     # written before rows were named by OpKind
        columns, rows = _membw_by_kind(columns, rows)
    return RawTable(meta, columns, tuple(rows), p)


# Memory-bound rows written before calibrate named them by OpKind (columns op, pass): op → (the
# forward OpKind, variant). Translated here, where the file is read, and nowhere else.
LEGACY_MEMBW_OPS = {"add": ("ELEMENTWISE", "add"), "mul": ("ELEMENTWISE", "mul"), "layernorm": ("NORM", ""),
                    "rmsnorm": ("RMSNORM", ""), "softmax": ("SOFTMAX_CE", ""), "embedding": ("EMBED", ""),
                    "gelu": ("GELU", ""), "relu": ("RELU", ""), "silu": ("SWIGLU", ""),
                    "dropout": ("DROPOUT", "residual"), "attn_dropout": ("DROPOUT", "attention"),
                    "rope": ("ROPE", "")}


def _membw_by_kind(columns: tuple[str, ...], rows: list[dict[str, str]]
                   ) -> tuple[tuple[str, ...], list[dict[str, str]]]:
    """Old membw rows (op, pass) as rows of the current format (kind, variant); an op without a
    mapping keeps its name as its kind, which no fit reads."""
    out = []
    for r in rows:
        kind, variant = LEGACY_MEMBW_OPS.get(r["op"], (r["op"], ""))
        if (r.get("pass") or "fwd") == "bwd" and kind in OpKind.__members__:   # no pass: forward
            kind = BWD_KIND.get(OpKind(kind), OpKind(kind)).value
        new = {"kind": kind, "variant": variant}
        new.update((k, v) for k, v in r.items() if k not in ("op", "pass"))
        out.append(new)
    return ("kind", "variant", *(c for c in columns if c not in ("op", "pass"))), out

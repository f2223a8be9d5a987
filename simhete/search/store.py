"""The results store: one SQLite file per sweep, one row per point, written as each point finishes.

Rows are committed in small transactions as workers return them, with SQLite's write-ahead log,
so killing the sweep at any moment (even SIGKILL) loses at most the points still in flight;
``--resume`` reads the finished ids and skips them. The table is keyed by the point id (a hash of
the resolved configuration, :mod:`simhete.search.points`), so a point is stored exactly once.

Exports: CSV always; Parquet when ``pyarrow`` is importable.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from operator import attrgetter
from pathlib import Path
from typing import Any, Iterable, Iterator

from simhete.errors import SimheteError
from simhete.search.evaluate import COLUMNS, Row

SCHEMA_VERSION = "1"
_ROW_VALUES = attrgetter(*COLUMNS)      # a Row's values in column order, as a tuple
_TYPES = {"idx": "INTEGER", "tokens_per_s": "REAL", "samples_per_s": "REAL", "iter_time_s": "REAL",
          "mfu": "REAL", "peak_gpu_bytes": "INTEGER", "gpu_capacity_bytes": "INTEGER",
          "peak_host_bytes": "INTEGER", "host_capacity_bytes": "INTEGER"}


class ResultStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")   # durable across process kills
            cols = ", ".join(f"{c} {_TYPES.get(c, 'TEXT')}" + (" PRIMARY KEY" if c == "id" else "")
                             for c in COLUMNS)
            self.db.execute(f"CREATE TABLE IF NOT EXISTS points ({cols})")
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        except sqlite3.DatabaseError as e:
            raise SimheteError(f"{self.path}: not a simhete results store ({e})") from None
        have = [r[1] for r in self.db.execute("PRAGMA table_info(points)")]
        if have != list(COLUMNS):
            raise SimheteError(f"{self.path}: results store has columns {have}, expected {list(COLUMNS)}; "
                               "it was written by another simhete version — use a new --out")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- meta -----------------------------------------------------------------------------------

    def set_meta(self, **items: Any) -> None:
        with self._tx():
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in items.items()])

    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    # -- points ---------------------------------------------------------------------------------

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM points").fetchone()[0]

    def done_ids(self, ids: Iterable[str]) -> set[str]:
        ids = list(ids)
        out: set[str] = set()
        for k in range(0, len(ids), 900):   # SQLite's bound-parameter limit
            part = ids[k:k + 900]
            q = f"SELECT id FROM points WHERE id IN ({','.join('?' * len(part))})"
            out.update(r[0] for r in self.db.execute(q, part))
        return out

    def put(self, rows: Iterable[Row]) -> None:
        """Insert finished rows in one transaction; a row already present is left as it is."""
        q = f"INSERT OR IGNORE INTO points VALUES ({','.join('?' * len(COLUMNS))})"
        with self._tx():
            self.db.executemany(q, list(map(_ROW_VALUES, rows)))

    def drop(self, ids: Iterable[str]) -> None:
        """Remove rows (so that they can be run again)."""
        with self._tx():
            self.db.executemany("DELETE FROM points WHERE id = ?", [(i,) for i in ids])

    def get(self, ids: Iterable[str]) -> dict[str, Row]:
        ids = list(ids)
        out: dict[str, Row] = {}
        for k in range(0, len(ids), 900):
            part = ids[k:k + 900]
            q = f"SELECT {','.join(COLUMNS)} FROM points WHERE id IN ({','.join('?' * len(part))})"
            out.update((r[0], Row(*r)) for r in self.db.execute(q, part))
        return out

    def rows(self) -> list[Row]:
        """Every row, in point order (idx, then id)."""
        q = f"SELECT {','.join(COLUMNS)} FROM points ORDER BY idx, id"
        return [Row(*r) for r in self.db.execute(q)]

    def _tx(self) -> "_Tx":
        return _Tx(self.db)

    # -- export ---------------------------------------------------------------------------------

    def to_csv(self, path: str | Path) -> None:
        from simhete.fileio import write_atomic

        write_atomic(Path(path), csv_text(self.rows()), "--csv")

    def to_parquet(self, path: str | Path) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise SimheteError("Parquet export needs pyarrow, which is not installed "
                               "(pip install pyarrow); use --csv instead") from None
        rows = self.rows()
        table = pa.table({c: [getattr(r, c) for r in rows] for c in COLUMNS})
        pq.write_table(table, str(path))


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def csv_text(rows: Iterable[Row]) -> str:
    """Rows as CSV with a header, summary JSON left out (it is in the store)."""
    cols = [c for c in COLUMNS if c != "summary"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow(["" if getattr(r, c) is None else getattr(r, c) for c in cols])
    return buf.getvalue()


def iter_params(rows: Iterable[Row]) -> Iterator[tuple[Row, dict[str, Any]]]:
    for r in rows:
        yield r, json.loads(r.params)

"""The results store's file format, and the read-only check that an existing file is a sound store
of that format (the store opened for writing or reading: :mod:`simhete.search.store`).

Layout (results-store format 2; docs/sweeps.md has the columns):

- ``results``: one row per *point id* (the SHA-256 of the point's resolved configuration,
  :mod:`simhete.search.points`) with what the simulation gave. A result depends only on its id, so
  it is reused by any sweep whose point resolves to the same configuration, whatever its grid
  position or axis values.
- ``members``: the current sweep's grid points that have a result: grid index → id and the axis
  values (``params``). Cleared when a run starts and filled as points are found or computed, so it
  always describes the sweep file of the last run, never a previous one.
- ``points`` (a view): the current sweep's rows, one per distinct id (the lowest grid index of the
  points sharing it), with the current grid index and axis values: what reports and exports read.
- ``meta``: the store's format, the sweep's name, file and axis keys, and the simhete version.

A result of a point no longer in the sweep stays in ``results`` (it is used again if the point
comes back) but is not part of ``points``, the report or the exports.

Safety: an existing file is checked before anything is written to it, through a read-only SQLite
connection: the application id simhete stamps in the header of its stores and the format number
in ``user_version`` (another application's database, garbage, or a store of a newer format is
refused there), then ``PRAGMA quick_check``, the schema, the format row of ``meta`` and every
stored value (its type, its JSON, its UTF-8); only then is it opened for writing. A refused file
is left byte-identical (a ``-wal``/``-shm`` file the read-only look had to create for a WAL-mode
database is removed again).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

from simhete.errors import SimheteError
from simhete.search.evaluate import COLUMNS

FORMAT = 2                      # results-store format; bump with any change of tables or columns
APPLICATION_ID = 0x53484554     # "SHET", SQLite's application_id header field (offset 68)

RESULT_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c not in ("idx", "params"))
MEMBER_COLUMNS = ("idx", "id", "params")
_TYPES = {"idx": "INTEGER", "tokens_per_s": "REAL", "samples_per_s": "REAL", "iter_time_s": "REAL",
          "mfu": "REAL", "peak_gpu_bytes": "INTEGER", "gpu_capacity_bytes": "INTEGER",
          "peak_host_bytes": "INTEGER", "host_capacity_bytes": "INTEGER"}
_SELECT_POINTS = ", ".join("m." + c if c in MEMBER_COLUMNS else "r." + c for c in COLUMNS)
SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE results ({", ".join(f"{c} {_TYPES.get(c, 'TEXT')}" + (" PRIMARY KEY" if c == "id" else "")
                                  for c in RESULT_COLUMNS)});
CREATE TABLE members (idx INTEGER PRIMARY KEY, id TEXT NOT NULL, params TEXT NOT NULL);
CREATE INDEX members_by_id ON members (id, idx);
CREATE VIEW points AS SELECT {_SELECT_POINTS} FROM members m JOIN results r ON r.id = m.id
    WHERE m.idx = (SELECT MIN(idx) FROM members WHERE id = m.id);
"""


class StoreRefused(SimheteError):
    """An existing file is not a results store this simhete may write; it was left untouched."""


def _header_problem(app: int, fmt: int) -> str | None:
    """Why a database with these header fields (``application_id``, ``user_version``) is not a
    simhete store this simhete may write (None: it is one)."""
    if app != APPLICATION_ID:
        return ("is an SQLite database of another application (or a store of a simhete older than "
                f"results-store format {FORMAT}), not a simhete results store")
    if fmt > FORMAT:
        return (f"was written by a newer simhete (results-store format {fmt}; this one reads format "
                f"{FORMAT}): use that simhete")
    if fmt != FORMAT:
        return f"is a simhete results store of format {fmt}, which this simhete (format {FORMAT}) cannot continue"
    return None


def _json_of(col: str, kind: str) -> str:
    return f"(CASE WHEN json_valid({col}) THEN json_type({col}) END) IS NOT '{kind}'"


def _values_problem(con: sqlite3.Connection) -> str | None:
    """The first stored value this format cannot hold (a byte changed on disk, a row edited by
    hand), or None. SQL scans check each column's type and JSON; then every row is read once, which
    fails on text that is not UTF-8. It costs a pass over the store, before anything is written."""
    rules: list[tuple[str, str, str]] = []
    for c in RESULT_COLUMNS:
        t = _TYPES.get(c, "TEXT")
        allowed = {"REAL": "'integer', 'real', 'null'", "INTEGER": "'integer', 'null'", "TEXT": "'text'"}[t]
        rules.append(("results", f"typeof({c}) NOT IN ({allowed})",
                      f"{c} is {'not a number' if t != 'TEXT' else 'not text'}"))
    rules += [("results", _json_of("uncalibrated", "array"), "uncalibrated is not a JSON list"),
              ("results", "summary != '' AND " + _json_of("summary", "object"), "summary is not a JSON object"),
              ("members", "typeof(idx) != 'integer' OR typeof(id) != 'text' OR typeof(params) != 'text'",
               "a value of the wrong type"),
              ("members", _json_of("params", "object"), "params is not a JSON object")]
    for table, where, what in rules:
        row = con.execute(f"SELECT rowid FROM {table} WHERE {where} LIMIT 1").fetchone()
        if row is not None:
            return f"{table} row {row[0]}: {what}"
    for table in ("results", "members", "meta"):
        for _ in con.execute(f"SELECT * FROM {table}"):
            pass
    return None


def _sidecars(path: Path) -> dict[str, bool]:
    return {s: Path(f"{path}{s}").exists() for s in ("-wal", "-shm")}


def inspect_store(path: Path, keep_open: bool = False) -> tuple[int, dict[str, Any], sqlite3.Connection | None]:
    """(number of stored results, meta, the read-only connection if ``keep_open``) of the store at
    ``path``, read without writing to it; StoreRefused (one line) when it is not a sound simhete
    store of this format, after removing any ``-wal``/``-shm`` file the look created.

    Only SQLite opens the file (read-only): a plain open() and close() of a database file would
    drop the POSIX locks every SQLite connection of this process holds on it."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise StoreRefused(f"{path}: cannot be read ({e.strerror})") from None
    if not os.access(path, os.R_OK):
        raise StoreRefused(f"{path}: cannot be read (permission denied)")
    if size == 0:
        raise StoreRefused(f"{path}: is an empty file, not a simhete results store; it was left "
                           "untouched: give another --out")
    before = _sidecars(path)
    con = None
    try:
        con = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, isolation_level=None)
        why = _header_problem(con.execute("PRAGMA application_id").fetchone()[0],
                              con.execute("PRAGMA user_version").fetchone()[0])
        if why is not None:
            raise StoreRefused(f"{path}: {why}; it was left untouched: give another --out")
        check = [r[0] for r in con.execute("PRAGMA quick_check")]
        if check != ["ok"]:
            raise sqlite3.DatabaseError(check[0])
        for table, cols in (("results", RESULT_COLUMNS), ("members", MEMBER_COLUMNS),
                            ("points", COLUMNS), ("meta", ("key", "value"))):
            have = tuple(r[1] for r in con.execute(f"PRAGMA table_info({table})"))
            if have != cols:
                raise sqlite3.DatabaseError(f"table {table} has columns {list(have)}, "
                                            f"format {FORMAT} has {list(cols)}")
        meta = {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta")}
        bad = _values_problem(con)
        if bad is not None:
            raise sqlite3.DatabaseError(bad)
        if meta.get("format") != FORMAT:
            raise sqlite3.DatabaseError(f"its meta table gives format {meta.get('format')!r}, "
                                        f"its header {FORMAT}")
        n = con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except BaseException as e:
        if con is not None:
            con.close()
        for s, had in before.items():       # what the read-only look created, and nothing else
            if not had:
                Path(f"{path}{s}").unlink(missing_ok=True)
        if isinstance(e, sqlite3.DatabaseError) and "file is not a database" in str(e):
            raise StoreRefused(f"{path}: is not a simhete results store (not an SQLite database); "
                               "it was left untouched: give another --out") from None
        if isinstance(e, (sqlite3.DatabaseError, ValueError)):  # ValueError: meta that is not JSON
            msg = " ".join(str(e).split())
            raise StoreRefused(f"{path}: a damaged simhete results store ({msg}); it was left "
                               "untouched: give another --out") from None
        raise
    if not keep_open:
        con.close()
        con = None
    return n, meta, con

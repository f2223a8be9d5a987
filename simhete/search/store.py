"""The results store: one SQLite file per ``--out``, results keyed by the point's content.

Its format (the ``results`` and ``members`` tables, the ``points`` view, ``meta``) and the
read-only check of an existing file before anything is written to it are in
:mod:`simhete.search.storefile`. A new store is built in a temporary file and linked into place, so
``--out`` never names a half-made store. One process writes a store at a time: a ``<store>.lock``
file held with ``flock`` (the kernel releases it when the holder dies, SIGKILL included, so a stale
lock file never blocks).

Rows are committed in small transactions as workers return them, with SQLite's write-ahead log,
so killing the sweep at any moment (even SIGKILL) loses at most the points still in flight.

Exports: CSV always; Parquet when ``pyarrow`` is importable.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import sqlite3
import tempfile
from operator import attrgetter
from pathlib import Path
from typing import Any, Iterable

from simhete.errors import SimheteError
from simhete.search.evaluate import COLUMNS, Row
from simhete.search.storefile import APPLICATION_ID, FORMAT, RESULT_COLUMNS, SCHEMA, StoreRefused, inspect_store

_RESULT_VALUES = attrgetter(*RESULT_COLUMNS)   # a Row's result values in column order, id first


class StoreLock:
    """The one-writer lock of a store: ``<store>.lock``, held with ``flock`` for the writer's life.

    The kernel drops an ``flock`` when its holder exits however it exits, so a lock file left by a
    killed sweep is simply taken over. The holder removes the file when it is done, while still
    holding it; a process that locked a file that was removed meanwhile tries again. A forked
    sweep worker closes its copy (:meth:`forget_in_child`), so that only the writer holds the lock."""

    _held: set[int] = set()       # this process's lock file descriptors

    @classmethod
    def forget_in_child(cls) -> None:
        """In a forked child: close the inherited descriptors (the parent's lock stays held)."""
        for fd in cls._held:
            os.close(fd)
        cls._held.clear()

    def __init__(self, store: Path) -> None:
        import fcntl

        self.path = Path(f"{store}.lock")
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise SimheteError(f"{store}: cannot create its lock file {self.path}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").split()
                os.close(fd)
                who = f" (pid {holder[0]} on {holder[1]})" if len(holder) >= 2 else ""
                raise SimheteError(f"{store}: another simhete sweep{who} is writing this results store; "
                                   "wait for it to finish (then --resume), or give another --out") from None
            try:
                st, now = os.fstat(fd), os.stat(self.path)
                if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)        # the previous holder removed the file between our open and flock
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self.fd: int | None = fd
        self._held.add(fd)

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            self._held.discard(self.fd)
            os.close(self.fd)
            self.fd = None


def _create(path: Path) -> None:
    """A new, empty store at ``path``, built beside it and linked into place (never half made)."""
    from simhete.fileio import _umask

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".new")
    os.close(fd)
    try:
        con = sqlite3.connect(tmp, isolation_level=None)
        try:
            con.execute(f"PRAGMA application_id={APPLICATION_ID}")
            con.execute(f"PRAGMA user_version={FORMAT}")
            con.execute("BEGIN")
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    con.execute(stmt)
            con.execute("INSERT INTO meta VALUES ('format', ?)", (json.dumps(FORMAT),))
            con.execute("COMMIT")
            con.execute("PRAGMA journal_mode=WAL")
        finally:
            con.close()
        os.chmod(tmp, 0o666 & ~_umask())
        try:
            os.link(tmp, path)                  # fails if something appeared at path meanwhile
        except FileExistsError:
            raise StoreRefused(f"{path}: appeared while the store was being created; "
                               "it was left untouched: give another --out") from None
        except OSError:                         # a filesystem without hard links
            if path.exists():
                raise StoreRefused(f"{path}: appeared while the store was being created; "
                                   "it was left untouched: give another --out") from None
            os.replace(tmp, path)
    finally:
        for s in ("", "-wal", "-shm", "-journal"):
            Path(tmp + s).unlink(missing_ok=True)


class ResultStore:
    """A results store opened for writing (``readonly=False``, the default: takes the store's lock,
    checks an existing file read-only first, creates a missing one) or for reading only."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.lock: StoreLock | None = None
        if readonly:
            self.db = inspect_store(self.path, keep_open=True)[2]
            return
        self.lock = StoreLock(self.path)
        try:
            if self.path.exists():
                inspect_store(self.path)
                if not os.access(self.path, os.W_OK):
                    raise StoreRefused(f"{self.path}: is not writable; it was left untouched")
            else:
                _create(self.path)
            self.db = sqlite3.connect(self.path, isolation_level=None)
            self.db.execute("PRAGMA synchronous=NORMAL")   # with WAL: durable across process kills
        except BaseException:
            self.lock.release()
            raise

    def close(self) -> None:
        try:
            self.db.close()
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- meta -----------------------------------------------------------------------------------

    def set_meta(self, **items: Any) -> None:
        if "format" in items:
            raise ValueError("the store's format is not set by hand")
        with self._tx():
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in items.items()])

    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    # -- results and the current sweep's points ----------------------------------------------------

    def count(self) -> int:
        """Results stored, of this sweep's points or any earlier sweep's."""
        return self.db.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def count_members(self) -> int:
        """Grid points of the current sweep that have their result."""
        return self.db.execute("SELECT COUNT(*) FROM members").fetchone()[0]

    def begin_sweep(self) -> None:
        """Forget which grid points made up the previous sweep (its results stay)."""
        with self._tx():
            self.db.execute("DELETE FROM members")

    def results(self, ids: Iterable[str]) -> dict[str, tuple[Any, ...]]:
        """Stored results by id: the values of RESULT_COLUMNS after ``id`` (status ... summary)."""
        ids = list(dict.fromkeys(ids))
        out: dict[str, tuple[Any, ...]] = {}
        cols = ",".join(RESULT_COLUMNS)
        for k in range(0, len(ids), 900):   # SQLite's bound-parameter limit
            part = ids[k:k + 900]
            q = f"SELECT {cols} FROM results WHERE id IN ({','.join('?' * len(part))})"
            out.update((r[0], r[1:]) for r in self.db.execute(q, part))
        return out

    def put(self, rows: Iterable[Row]) -> None:
        """Record rows in one transaction: each row's result under its id (a result already stored
        is left as it is) and its grid point as a point of the current sweep."""
        rows = list(rows)
        q = f"INSERT OR IGNORE INTO results VALUES ({','.join('?' * len(RESULT_COLUMNS))})"
        with self._tx():
            self.db.executemany(q, list(map(_RESULT_VALUES, rows)))
            self.db.executemany("INSERT OR REPLACE INTO members VALUES (?, ?, ?)",
                                [(r.idx, r.id, r.params) for r in rows])

    def drop(self, ids: Iterable[str]) -> None:
        """Remove results (so that they can be run again)."""
        with self._tx():
            self.db.executemany("DELETE FROM results WHERE id = ?", [(i,) for i in ids])

    def rows(self) -> list[Row]:
        """The current sweep's rows in grid order: one per distinct id, at its lowest grid index."""
        q = f"SELECT {','.join(COLUMNS)} FROM points ORDER BY idx"
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

"""Results stores: keyed by the point's content (resume after the sweep file changed gives the rows
of a fresh run), refused untouched unless a sound simhete store of this format, one writer at a
time, and SIGTERM / Ctrl-C stopping a sweep with one line and nothing lost."""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from simhete.errors import SimheteError
from simhete.search.backends import LocalBackend
from simhete.search.evaluate import Row
from simhete.search.runner import Runner, SweepOutcome
from simhete.search.space import load_sweep
from simhete.search.store import ResultStore, StoreLock, csv_text
from simhete.search.storefile import FORMAT, StoreRefused
from simhete.search.strategies import decode

REPO = Path(__file__).resolve().parents[1]
TINY = {"name": "tiny", "model": "gpt-like-h256-l4-a4", "hardware": "h100-pcie",
        "train": {"micro_batch": 1, "seq_len": 256, "dtype": "bf16"}, "iterations": 2,
        "policy": "zero-offload", "knobs": {"checkpointing": "none"}}


def write_sweep(d: Path, axes: dict, base: dict | None = None, name: str = "sweep.yaml", **extra) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "base.yaml").write_text(yaml.safe_dump(base or TINY))
    p = d / name
    p.write_text(yaml.safe_dump({"name": "s", "base": "base.yaml", "axes": axes, **extra}, sort_keys=False))
    return p


def run_into(path: Path, db: Path) -> tuple[SweepOutcome, list[Row]]:
    with ResultStore(db) as st:
        out = Runner(load_sweep(path), st, LocalBackend(1)).run()
        return out, st.rows()


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simhete.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


# -- resume after the sweep file changed --------------------------------------------------------------

BEFORE = {"train.micro_batch": [1, 2], "knobs.checkpointing": ["none", "full"]}
CHANGES = {   # name: (axes after, base after, simulated on resume, reused, old results no longer reported)
    "value appended": ({"train.micro_batch": [1, 2, 3], "knobs.checkpointing": ["none", "full"]}, None, 2, 4, 0),
    "value prepended": ({"train.micro_batch": [4, 1, 2], "knobs.checkpointing": ["none", "full"]}, None, 2, 4, 0),
    # delayed_update defaults to false for zero-offload: its false points are the old points
    "axis added": ({"knobs.delayed_update": [True, False], **BEFORE}, None, 4, 4, 0),
    "axis removed": ({"train.micro_batch": [1, 2]}, None, 0, 2, 2),
    "value removed": ({"train.micro_batch": [2], "knobs.checkpointing": ["none", "full"]}, None, 0, 2, 2),
    "axes reordered": ({"knobs.checkpointing": ["full", "none"], "train.micro_batch": [2, 1]}, None, 0, 4, 0),
    "base iterations changed": (BEFORE, {**TINY, "iterations": 3}, 4, 0, 4),
    # a repeated value: two grid points, one configuration (one row, at the lower index)
    "value repeated": ({"train.micro_batch": [2, 1, 2], "knobs.checkpointing": ["none", "full"]}, None, 0, 6, 0),
}


@pytest.mark.parametrize("change", CHANGES)
def test_resume_after_a_sweep_file_change_gives_the_rows_of_a_fresh_run(tmp_path, change):
    axes, base, ran, reused, others = CHANGES[change]
    db = tmp_path / "r.sqlite"
    first, _ = run_into(write_sweep(tmp_path / "a", BEFORE), db)
    assert (first.ran, first.skipped) == (4, 0)
    after = write_sweep(tmp_path / "b", axes, base)
    resumed, rows = run_into(after, db)
    fresh, fresh_rows = run_into(after, tmp_path / "fresh.sqlite")
    assert (resumed.ran, resumed.skipped) == (ran, reused)
    assert rows == fresh_rows == resumed.rows == fresh.rows     # ids, grid indices, axis values, results
    assert csv_text(rows) == csv_text(fresh_rows)
    sw = load_sweep(after)
    assert [r.idx for r in rows] == sorted({r.idx for r in rows}) and len({r.id for r in rows}) == len(rows)
    assert len(rows) == {"value repeated": 4}.get(change, sw.grid_size)
    with ResultStore(db) as st:
        # the results of points no longer in the sweep are kept, outside the sweep's rows
        assert st.count() == len(rows) + others
    for r in rows:        # each row's axis values are this sweep's values at its grid index
        at = decode(r.idx, [len(v) for _, v in sw.axes])
        assert json.loads(r.params) == {k: vals[j] for (k, vals), j in zip(sw.axes, at)}
        assert list(json.loads(r.params)) == list(axes)


def test_value_prepended_with_invalid_combinations_keeps_their_reasons(tmp_path):
    # gpu-only has no overlap_comm knob: those points are invalid combinations, recorded with the reason
    before = {"policy": ["zero-offload", "gpu-only"], "knobs.overlap_comm": [True, False]}
    after = {"policy": ["gpu-only", "zero-offload"], "knobs.overlap_comm": [False, True]}
    db = tmp_path / "r.sqlite"
    run_into(write_sweep(tmp_path / "a", before), db)
    p = write_sweep(tmp_path / "a", after, name="after.yaml")
    out, rows = run_into(p, db)
    _, fresh = run_into(p, tmp_path / "fresh.sqlite")
    assert rows == fresh and (out.ran, out.skipped) == (0, 4)
    assert [(json.loads(r.params), r.status) for r in rows] == [
        ({"policy": "gpu-only", "knobs.overlap_comm": False}, "invalid"),
        ({"policy": "gpu-only", "knobs.overlap_comm": True}, "invalid"),
        ({"policy": "zero-offload", "knobs.overlap_comm": False}, "ok"),
        ({"policy": "zero-offload", "knobs.overlap_comm": True}, "ok")]
    # the same configurations from a base file elsewhere: the simulated results are reused, the
    # invalid combinations' reasons name the new file (the file is not part of a point's id)
    q = write_sweep(tmp_path / "b", after)
    out, rows = run_into(q, db)
    _, fresh = run_into(q, tmp_path / "fresh-b.sqlite")
    assert rows == fresh and (out.ran, out.skipped) == (2, 2)
    assert all(r.reason.startswith(f"{tmp_path / 'b' / 'base.yaml'}: knobs.overlap_comm: unknown key")
               for r in rows[:2])


def test_cli_resume_after_a_change_says_what_it_kept_and_exports_only_this_sweep(tmp_path):
    db = tmp_path / "r.sqlite"
    a = write_sweep(tmp_path, {"train.micro_batch": [1, 2, 3]}, name="a.yaml")
    assert cli("sweep", str(a), "--out", str(db), "--quiet").returncode == 0
    b = write_sweep(tmp_path, {"train.micro_batch": [3, 4]}, name="b.yaml")
    res = cli("sweep", str(b), "--out", str(db), "--quiet", "--resume", "--csv", str(tmp_path / "b.csv"))
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    assert "2 points (2 ok); 1 simulated, 1 already in the store" in text
    assert "2 stored results of points not in this sweep kept, not reported" in text
    exported = list(csv.DictReader((tmp_path / "b.csv").open()))
    assert [(int(r["idx"]), json.loads(r["params"])) for r in exported] == [
        (0, {"train.micro_batch": 3}), (1, {"train.micro_batch": 4})]
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT COUNT(*), COUNT(DISTINCT idx), COUNT(DISTINCT id) FROM points").fetchone() == (2, 2, 2)
        assert c.execute("SELECT COUNT(*) FROM results").fetchone() == (4,)
    c.close()


# -- refusing what is not a simhete store ---------------------------------------------------------------

def _listing(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def _foreign(path: Path, wal: bool) -> None:
    c = sqlite3.connect(path)
    if wal:
        c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE contacts (name TEXT, phone TEXT)")
    c.execute("INSERT INTO contacts VALUES ('ada', '123')")
    c.commit()
    c.close()


def _store(path: Path, tmp: Path) -> None:
    p = write_sweep(tmp / "src", {"train.micro_batch": [1, 2, 3, 4]})
    run_into(p, path)


def _future(path: Path, tmp: Path) -> None:
    _store(path, tmp)
    c = sqlite3.connect(path)
    c.execute(f"PRAGMA user_version={FORMAT + 1}")
    c.commit()
    c.close()


def _truncated(path: Path, tmp: Path) -> None:
    _store(path, tmp)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _damaged(path: Path, tmp: Path) -> None:
    _store(path, tmp)
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[2 * page:3 * page] = bytes(random.Random(0).randrange(256) for _ in range(page))   # page 3
    path.write_bytes(bytes(data))


def _edited(sql: str):  # type: ignore[no-untyped-def]
    """A sound store with one of its values changed the way a flipped byte or a hand edit does:
    quick_check passes, so the values themselves are checked."""
    def make(path: Path, tmp: Path) -> None:
        _store(path, tmp)
        c = sqlite3.connect(path)
        c.execute(sql)
        c.commit()
        c.close()
    return make


CASES = {
    "a number that is text": (_edited("UPDATE results SET iter_time_s = 'fast' WHERE rowid = 2"),
                              "results row 2: iter_time_s is not a number"),
    "a summary that is not JSON": (_edited("UPDATE results SET summary = '{\"a\": 1' WHERE rowid = 3"),
                                   "results row 3: summary is not a JSON object"),
    "text that is not UTF-8": (_edited("UPDATE results SET reason = CAST(X'6f6bff' AS TEXT) WHERE rowid = 1"),
                               "Could not decode to UTF-8 column 'reason'"),
    "another application's database": (lambda p, t: _foreign(p, False), "is an SQLite database of another application"),
    "another application's WAL database": (lambda p, t: _foreign(p, True), "is an SQLite database of another application"),
    "garbage": (lambda p, t: p.write_bytes(bytes(random.Random(1).randrange(256) for _ in range(5000))),
                "is not a simhete results store (not an SQLite database)"),
    "text": (lambda p, t: p.write_text("name: not a database\n" * 20), "not an SQLite database"),
    "empty file": (lambda p, t: p.write_bytes(b""), "is an empty file"),
    "truncated store": (_truncated, "a damaged simhete results store"),
    "damaged page": (_damaged, "a damaged simhete results store"),
    "future format": (_future, f"was written by a newer simhete (results-store format {FORMAT + 1}"),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("resume", [False, True])
def test_a_foreign_or_damaged_store_is_refused_in_one_line_and_left_byte_identical(tmp_path, case, resume):
    make, message = CASES[case]
    d = tmp_path / "out"
    d.mkdir()
    db = d / "r.sqlite"
    make(db, tmp_path)
    before = _listing(d)
    sw = write_sweep(tmp_path, {"train.micro_batch": [1]})
    res = cli("sweep", str(sw), "--out", str(db), "--quiet", *(["--resume"] if resume else []))
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(f"simhete: error: --out {db}: "), res.stderr
    assert message in res.stderr and "left untouched" in res.stderr
    assert _listing(d) == before      # same files (no -wal, -shm or lock file), same bytes


def test_the_library_refuses_the_same_way_and_opens_read_only_without_a_trace(tmp_path):
    db = tmp_path / "r.sqlite"
    _foreign(db, True)
    before = _listing(tmp_path)
    with pytest.raises(StoreRefused, match="another application"):
        ResultStore(db)
    with pytest.raises(StoreRefused, match="another application"):
        ResultStore(db, readonly=True)
    assert _listing(tmp_path) == before
    good = tmp_path / "good" / "s.sqlite"
    good.parent.mkdir()
    _store(good, tmp_path)
    before = good.read_bytes()
    with ResultStore(good, readonly=True) as st:
        assert len(st.rows()) == 4 and st.meta()["format"] == FORMAT
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            st.db.execute("DELETE FROM results")
    # the store is unchanged and not locked (SQLite's read-only connection may leave its empty
    # -wal/-shm files beside a WAL-mode store; the next writer removes them)
    assert good.read_bytes() == before
    assert set(_listing(good.parent)) <= {"s.sqlite", "s.sqlite-wal", "s.sqlite-shm"}
    assert _listing(good.parent).get("s.sqlite-wal", b"") == b""
    with ResultStore(good) as st:
        assert st.count() == 4
    assert set(_listing(good.parent)) == {"s.sqlite"}


def test_a_new_store_is_stamped_and_made_with_the_users_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with ResultStore(tmp_path / "n.sqlite") as st:
            assert st.db.execute("PRAGMA application_id").fetchone()[0] == 0x53484554
            assert st.db.execute("PRAGMA user_version").fetchone()[0] == FORMAT
            assert st.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert (tmp_path / "n.sqlite.lock").exists()
    finally:
        os.umask(old)
    assert (tmp_path / "n.sqlite").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.sqlite"]   # lock removed, no temporary left


# -- one writer per store -------------------------------------------------------------------------------

def test_a_second_writer_is_refused_with_one_line_and_the_first_finishes_alone(tmp_path):
    # points of many depths (each a new structure to build): long enough for the others to start
    models = [f"gpt-like-h256-l{n}-a4" for n in range(16, 640, 8)]
    p = write_sweep(tmp_path, {"model": models, "knobs.checkpointing": ["none", "full"]})
    db = tmp_path / "r.sqlite"
    cmd = [sys.executable, "-m", "simhete.cli", "sweep", str(p), "--out", str(db), "--quiet"]
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "r.sqlite.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        # a second sweep on the same --out, resuming or not: refused by the lock, in one line
        others = [subprocess.Popen(cmd + extra, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for extra in (["--resume"], [])]
        for second in others:
            _, err = second.communicate(timeout=120)
            assert second.returncode == 2, err
            assert re.fullmatch(
                rf"simhete: error: --out {re.escape(str(db))}: another simhete sweep \(pid {first.pid} on \S+\) "
                r"is writing this results store; wait for it to finish \(then --resume\), or give another --out\n",
                err), err
        assert first.poll() is None, "the first sweep finished before the others were tried: make it longer"
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    total = 2 * len(models)
    assert f"{total} simulated, 0 already in the store" in " ".join(out.split())
    assert not (tmp_path / "r.sqlite.lock").exists()
    with ResultStore(db, readonly=True) as st:
        assert len(st.rows()) == st.count() == total


def test_in_one_process_too_and_a_lock_left_by_a_killed_writer_is_taken_over(tmp_path):
    db = tmp_path / "r.sqlite"
    with ResultStore(db):
        with pytest.raises(SimheteError, match=rf"another simhete sweep \(pid {os.getpid()} on"):
            ResultStore(db)
    # a writer killed with SIGKILL leaves its lock file, with its (dead) pid in it: not a lock
    (tmp_path / "r.sqlite.lock").write_text("999999999 elsewhere\n")
    with ResultStore(db) as st:
        assert st.count() == 0
    assert not (tmp_path / "r.sqlite.lock").exists()
    assert StoreLock._held == set()


# -- SIGTERM and Ctrl-C ---------------------------------------------------------------------------------

STOP_AXES = {"train.micro_batch": {"range": {"start": 1, "stop": 40, "step": 1}},
             "knobs.checkpointing": ["none", "full"], "knobs.delayed_update": [False, True]}


@pytest.fixture(scope="module")
def stop_reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    return run_into(write_sweep(d, STOP_AXES), d / "ref.sqlite")[1]


@pytest.mark.parametrize("sig, group, code, workers", [
    (signal.SIGTERM, True, 143, 2), (signal.SIGINT, True, 130, 2), (signal.SIGTERM, False, 143, 2),
    (signal.SIGINT, True, 130, 1)],
    ids=["SIGTERM to the group", "Ctrl-C (SIGINT to the group)", "SIGTERM to the sweep", "Ctrl-C, in-process"])
def test_a_stopped_sweep_says_so_in_one_line_and_resume_completes_it(tmp_path, stop_reference, sig, group, code,
                                                                     workers):
    p = write_sweep(tmp_path, STOP_AXES)
    db = tmp_path / "r.sqlite"
    total = 40 * 4
    cmd = [sys.executable, "-m", "simhete.cli", "sweep", str(p), "--out", str(db), "--workers", str(workers),
           "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        seen = 0
        while time.monotonic() < deadline and proc.poll() is None and seen < 10:
            if db.exists():
                try:
                    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                    seen = c.execute("SELECT COUNT(*) FROM members").fetchone()[0]
                    c.close()
                except sqlite3.OperationalError:
                    pass
            time.sleep(0.005)
        assert proc.poll() is None, "the sweep ended before it could be stopped"
        if group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == code, err
    m = re.fullmatch(rf"simhete: stopped: (\d+) of {total} points stored in {re.escape(str(db))}; "
                     r"--resume continues\n", err)
    assert m, err                      # one line: no traceback from the sweep or its workers
    stored = int(m.group(1))
    assert 10 <= stored < total
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)         # no worker outlives the sweep
    with ResultStore(db, readonly=True) as st:
        assert len(st.rows()) == stored and st.count() == stored
        assert all(r == stop_reference[r.idx] for r in st.rows())
    res = subprocess.run(cmd + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{total - stored} simulated, {stored} already in the store" in " ".join(res.stdout.split())
    with ResultStore(db, readonly=True) as st:
        assert st.rows() == stop_reference


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")
def test_a_worker_killed_on_its_own_ends_the_sweep_in_one_line_and_resume_completes_it(tmp_path, stop_reference):
    p = write_sweep(tmp_path, STOP_AXES)
    db = tmp_path / "r.sqlite"
    cmd = [sys.executable, "-m", "simhete.cli", "sweep", str(p), "--out", str(db), "--workers", "2", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None and not (db.exists() and len(workers) == 2):
            workers = _children(proc.pid)
            time.sleep(0.005)
        assert proc.poll() is None and len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)      # as the kernel's out-of-memory killer would
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 2 and err.count("\n") == 1, err
    assert err.startswith("simhete: error: a sweep worker process died (killed by signal 9;"), err
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)
    res = subprocess.run(cmd + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    with ResultStore(db, readonly=True) as st:
        assert st.rows() == stop_reference

"""Sweeps: sweep-file checks, axes, strategies, the results store, resume after SIGKILL, backends."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from simhete.errors import ConfigError, SimheteError
from simhete.search import analysis
from simhete.search.backends import LocalBackend
from simhete.search.evaluate import COLUMNS, Row
from simhete.search.points import Resolver
from simhete.search.runner import Runner
from simhete.search.space import Limits, load_sweep, sweep_from_dict
from simhete.search.store import ResultStore, csv_text
from simhete.search.strategies import coordinate_search, decode, encode, random_sample

REPO = Path(__file__).resolve().parents[1]
TINY = {"name": "tiny", "model": "gpt-like-h256-l4-a4", "hardware": "h100-pcie",
        "train": {"micro_batch": 1, "seq_len": 256, "dtype": "bf16"}, "iterations": 2,
        "policy": "zero-offload", "knobs": {"checkpointing": "none"}}


def sweep_file(tmp_path: Path, axes: dict, **extra) -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY))
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump({"base": "base.yaml", "axes": axes, **extra}, sort_keys=False))
    return p


def run_local(path: Path, db: Path, workers: int = 1) -> list[Row]:
    sweep = load_sweep(path)
    backend = LocalBackend(workers)
    try:
        with ResultStore(db) as st:
            Runner(sweep, st, backend).run()
            return st.rows()
    finally:
        backend.close()


# -- sweep files ----------------------------------------------------------------------------------

def test_axes_expand_lists_ranges_and_seeded_samples(tmp_path):
    p = sweep_file(tmp_path, {
        "train.micro_batch": {"range": {"start": 1, "stop": 16, "factor": 2}},
        "train.seq_len": {"range": {"start": 128, "stop": 512, "step": 128}},
        "knobs.reduce_bucket_size": {"sample": {"low": 1e6, "high": 1e8, "n": 3, "log": True, "seed": 7}},
        "policy": ["gpu-only", "zero-offload"]})
    s = load_sweep(p)
    axes = dict(s.axes)
    assert axes["train.micro_batch"] == (1, 2, 4, 8, 16)
    assert axes["train.seq_len"] == (128, 256, 384, 512)
    samples = axes["knobs.reduce_bucket_size"]
    assert len(samples) == 3 and all(1e6 <= v <= 1e8 for v in samples)
    assert load_sweep(p).axes == s.axes            # same seed, same values
    assert s.grid_size == 5 * 4 * 3 * 2


@pytest.mark.parametrize("axes, extra, key", [
    ({"train.microbatch": [1]}, {}, "axes.train.microbatch"),
    ({"train.micro_batch": [1, 0]}, {}, r"axes.train.micro_batch\[1\]"),
    ({"policy": ["gpu-only", "zero-ofload"]}, {}, r"axes.policy\[1\]"),
    ({"model": ["llama9-1b"]}, {}, r"axes.model\[0\]"),
    ({"hardware": ["h100-pcie", "nosuch-gpu"]}, {}, r"axes.hardware\[1\]"),
    ({"train.micro_batch": []}, {}, "axes.train.micro_batch"),
    ({"train.micro_batch": {"range": {"start": 1, "stop": 4}}}, {}, "axes.train.micro_batch"),
    ({"policy": ["gpu-only"]}, {"strategy": {"name": "random"}}, "strategy"),
    ({"policy": ["gpu-only"]}, {"stratgy": "grid"}, "stratgy"),
])
def test_sweep_file_errors_are_one_line_with_file_and_dotted_key(tmp_path, axes, extra, key):
    p = sweep_file(tmp_path, axes, **extra)
    with pytest.raises(ConfigError, match=rf"^{p}: {key}") as e:
        load_sweep(p)
    assert "\n" not in str(e.value)


def test_missing_base_is_a_config_error(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("base: nope.yaml\naxes: {policy: [gpu-only]}\n")
    with pytest.raises(ConfigError, match=rf"^{p}: base: bad value 'nope.yaml'"):
        load_sweep(p)


# -- point identity -------------------------------------------------------------------------------

def test_point_id_is_the_resolved_config_default_knobs_included(tmp_path):
    sw = sweep_from_dict({"base": TINY, "axes": {"knobs.overlap_comm": [True]}}, str(tmp_path / "x.yaml"))
    r = Resolver(sw.base, ["knobs.overlap_comm"])
    explicit = r.point(0, [True])            # overlap_comm defaults to True for zero-offload
    implicit = Resolver(sw.base, []).point(0, [])
    assert explicit.id == implicit.id and explicit.scenario is not None
    assert r.point(0, [False]).id != explicit.id


def test_base_knobs_foreign_to_the_policy_are_dropped_axis_knobs_make_invalid_points():
    base = {**TINY, "knobs": {"checkpointing": "full", "delayed_update": True}}
    sw = sweep_from_dict({"base": base, "axes": {"policy": ["gpu-only"]}})
    p = Resolver(sw.base, ["policy"]).point(0, ["gpu-only"])
    assert p.scenario is not None and p.scenario.data.knobs == {"checkpointing": "full"}
    bad = Resolver(sw.base, ["policy", "knobs.delayed_update"]).point(0, ["gpu-only", True])
    assert bad.scenario is None and "knobs.delayed_update" in bad.error and "unknown key" in bad.error


# -- strategies -----------------------------------------------------------------------------------

def test_mixed_radix_encoding_round_trips():
    sizes = [3, 1, 4, 2]
    assert [encode(decode(i, sizes), sizes) for i in range(24)] == list(range(24))
    assert decode(1, sizes) == (0, 0, 0, 1)           # last axis fastest


def test_random_sample_is_distinct_seeded_and_sorted():
    a = [i for b in random_sample([10, 10], 30, seed=3) for i in b]
    assert len(set(a)) == 30 and a == sorted(a) and all(0 <= i < 100 for i in a)
    assert a == [i for b in random_sample([10, 10], 30, seed=3) for i in b]
    assert a != [i for b in random_sample([10, 10], 30, seed=4) for i in b]


def test_coordinate_search_finds_the_optimum_of_a_separable_objective_cheaply():
    sizes = [7, 6, 5]
    target = (5, 1, 3)

    def f(v):
        return -sum((x - t) ** 2 for x, t in zip(v, target))
    calls = []

    def score(idxs):
        calls.extend(idxs)
        return [f(decode(i, sizes)) for i in idxs]
    best, seen = coordinate_search(sizes, score, (0, 0, 0), budget=1000)
    assert decode(best, sizes) == target
    assert len(calls) == len(set(calls)) == len(seen) < math.prod(sizes) // 3


def test_coordinate_search_respects_budget_and_infeasible_points():
    sizes = [10, 10]

    def score(idxs):      # only the last column is feasible; the best is (9, 9)
        return [float(sum(decode(i, sizes))) if decode(i, sizes)[1] == 9 else -math.inf for i in idxs]
    # start (0, 0), then 9 more along axis 0 (all infeasible), then axis 1 from (0, 0): the 9th is feasible
    best, seen = coordinate_search(sizes, score, (0, 0), budget=15)
    assert len(seen) == 15 and best is None
    best, seen = coordinate_search(sizes, score, (0, 0), budget=19)
    assert decode(best, sizes) == (0, 9)
    best_all, _ = coordinate_search(sizes, score, (0, 0), budget=100)
    assert decode(best_all, sizes) == (9, 9)


# -- running, store, resume -------------------------------------------------------------------------

AXES = {"policy": ["gpu-only", "zero-offload"], "train.micro_batch": [1, 2],
        "knobs.overlap_comm": [True, False]}


def test_sweep_records_every_point_once_with_failures_as_results(tmp_path):
    rows = run_local(sweep_file(tmp_path, AXES), tmp_path / "r.sqlite")
    assert [r.idx for r in rows] == [0, 1, 2, 3, 4, 5, 6, 7]
    gpu_only = [r for r in rows if json.loads(r.params)["policy"] == "gpu-only"]
    # gpu-only has no overlap_comm knob: an invalid combination, recorded with the reason
    assert {r.status for r in gpu_only} == {"invalid"}
    assert all("knobs.overlap_comm" in r.reason for r in gpu_only)
    zo = [r for r in rows if json.loads(r.params)["policy"] == "zero-offload"]
    assert {r.status for r in zo} == {"ok"}
    for r in zo:
        s = json.loads(r.summary)
        assert r.tokens_per_s == s["tokens_per_s"] or math.isclose(r.tokens_per_s, s["tokens_per_s"], rel_tol=1e-5)
        assert r.peak_gpu_bytes == s["memory"]["gpu0"]["peak_bytes"]
        assert r.peak_host_bytes == s["memory"]["cpu"]["peak_bytes"]
    # the row equals a direct simulation of the same scenario
    from simhete.sim import run
    sw = load_sweep(tmp_path / "sweep.yaml")
    direct = run(Resolver(sw.base, sw.keys).point(4, ["zero-offload", 1, True]).scenario).summary
    assert zo[0].tokens_per_s == direct.tokens_per_s


def test_a_sweep_restores_the_collector_and_its_points_leave_no_reference_cycles(tmp_path):
    # Runner.run collects rarely during a sweep (SWEEP_GC_THRESHOLD) on the premise that a point
    # leaves nothing for the cyclic collector; the caller's settings come back afterwards
    import gc

    sw = load_sweep(sweep_file(tmp_path, {"train.micro_batch": [1, 2], "knobs.checkpointing": ["none", "full"]}))
    before = gc.get_threshold(), gc.get_freeze_count(), gc.isenabled()
    with ResultStore(tmp_path / "r.sqlite") as st:
        Runner(sw, st, LocalBackend(1)).run()
        assert (gc.get_threshold(), gc.get_freeze_count(), gc.isenabled()) == before
        from simhete.search.evaluate import evaluate
        p = Runner(sw, st, LocalBackend(1)).point(3)
        evaluate(p.id, p.idx, p.params, p.scenario)   # imports and caches made once
        gc.collect()
        enabled = gc.isenabled()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)      # what a collection finds is kept in gc.garbage
        try:
            for i in range(4):
                p = Runner(sw, st, LocalBackend(1)).point(i)
                evaluate(p.id, p.idx, p.params, p.scenario)
            gc.collect()
            # simhete's objects only: another thread of the test process may leave its own garbage
            assert [o for o in gc.garbage if type(o).__module__.startswith("simhete")] == []
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            if enabled:
                gc.enable()


def test_oom_is_a_recorded_result(tmp_path):
    rows = run_local(sweep_file(tmp_path, {"hardware": [{"profile": "h100-pcie", "host_memory": "100MiB"}]}),
                     tmp_path / "r.sqlite")
    # zero-offload keeps 16 B/param of fp32 state on the host: ~13 M params need ~200 MB
    assert len(rows) == 1 and rows[0].status == "oom" and rows[0].reason.startswith("out of memory in cpu")
    assert rows[0].tokens_per_s is None


def test_resume_skips_finished_points_and_pool_equals_in_process(tmp_path):
    p = sweep_file(tmp_path, AXES)
    ref = run_local(p, tmp_path / "ref.sqlite")
    db = tmp_path / "pool.sqlite"
    with ResultStore(db) as st:          # pretend an earlier run stored the first three points
        st.put(ref[:3])
    sweep = load_sweep(p)
    backend = LocalBackend(2)
    try:
        with ResultStore(db) as st:
            out = Runner(sweep, st, backend).run()
            rows = st.rows()
    finally:
        backend.close()
    assert (out.skipped, out.ran) == (3, 5)
    assert rows == ref


def test_csv_export_and_parquet_message(tmp_path):
    rows = run_local(sweep_file(tmp_path, {"train.micro_batch": [1, 2]}), tmp_path / "r.sqlite")
    text = csv_text(rows)
    lines = text.splitlines()
    assert lines[0].split(",") == [c for c in COLUMNS if c != "summary"]
    assert len(lines) == 3
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with ResultStore(tmp_path / "r.sqlite") as st, pytest.raises(SimheteError, match="needs pyarrow"):
            st.to_parquet(tmp_path / "r.parquet")


def _row(idx, tps, gpu, host, status="ok"):
    return Row(f"id{idx}", idx, "{}", status, "", "p", tps, None, 1.0, 0.5, gpu, 100, host, 100, "[]", "")


def test_best_and_pareto_fronts_by_hand():
    rows = [_row(0, 10.0, 5, 50), _row(1, 20.0, 8, 40), _row(2, 15.0, 9, 10), _row(3, 30.0, 12, 60),
            _row(4, 25.0, 12, 5), _row(5, 99.0, 1, 1, status="oom"), _row(6, 20.0, 8, 40)]
    lim = Limits()
    assert [r.idx for r in analysis.best(rows, lim, 3)] == [3, 4, 1]
    assert [r.idx for r in analysis.pareto(rows, lim, "peak_gpu_bytes")] == [0, 1, 3]
    assert [r.idx for r in analysis.pareto(rows, lim, "peak_host_bytes")] == [4, 3]
    capped = Limits(gpu_memory=10)
    assert [r.idx for r in analysis.best(rows, capped, 10)] == [1, 6, 2, 0]


def test_optimize_strategy_matches_grid_best_and_stores_the_same_rows(tmp_path):
    axes = {"train.micro_batch": [1, 2, 4], "knobs.checkpointing": ["none", "full"],
            "knobs.delayed_update": [False, True]}
    grid_rows = run_local(sweep_file(tmp_path, axes), tmp_path / "grid.sqlite")
    p = sweep_file(tmp_path, axes, strategy={"name": "optimize", "budget": 12})
    sweep = load_sweep(p)
    backend = LocalBackend(1)
    with ResultStore(tmp_path / "opt.sqlite") as st:
        out = Runner(sweep, st, backend).run()
    by_id = {r.id: r for r in grid_rows}
    assert all(by_id[r.id] == r for r in out.rows)
    grid_best = analysis.best(grid_rows, Limits(), 1)[0]
    assert out.best_idx == grid_best.idx


# -- killed and resumed -----------------------------------------------------------------------------

def test_sigkill_mid_sweep_then_resume_gives_every_point_once_with_uninterrupted_values(tmp_path):
    axes = {"train.micro_batch": {"range": {"start": 1, "stop": 48, "step": 1}},
            "knobs.checkpointing": ["none", "full"], "knobs.delayed_update": [False, True]}
    p = sweep_file(tmp_path, axes)
    total = 48 * 4
    db = tmp_path / "killed.sqlite"
    cmd = [sys.executable, "-m", "simhete.cli", "sweep", str(p), "--out", str(db), "--workers", "2", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    seen = 0
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                try:
                    with sqlite3.connect(db) as c:
                        seen = c.execute("SELECT COUNT(*) FROM points").fetchone()[0]
                except sqlite3.OperationalError:
                    seen = 0
                if seen >= 10:
                    break
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)      # the sweep's own process group: CLI + its pool
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    with ResultStore(db) as st:
        partial = st.count()
    assert 10 <= partial < total
    res = subprocess.run(cmd + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{total - partial} simulated, {partial} already in the store" in res.stdout.replace("\n", " ")
    with ResultStore(db) as st:
        resumed = st.rows()
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT COUNT(*), COUNT(DISTINCT idx) FROM points").fetchone() == (total, total)
    reference = run_local(p, tmp_path / "ref.sqlite")
    assert resumed == reference


def test_resume_runs_points_that_ended_in_an_internal_error_again(tmp_path):
    """An 'error' row is a crash, not a result: resuming re-runs it (oom and invalid rows stay)."""
    from dataclasses import replace
    p = sweep_file(tmp_path, AXES)
    ref = run_local(p, tmp_path / "ref.sqlite")
    db = tmp_path / "r.sqlite"
    with ResultStore(db) as st:
        st.put([replace(ref[0], status="error", reason="worker died")] + ref[1:])
    with ResultStore(db) as st:
        out = Runner(load_sweep(p), st, LocalBackend(1)).run()
        rows = st.rows()
    assert (out.ran, out.skipped) == (1, len(ref) - 1)
    assert rows == ref


def test_resume_refuses_results_of_another_simhete(tmp_path, capsys):
    from simhete.cli import main
    p = sweep_file(tmp_path, {"train.micro_batch": [1]})
    db = tmp_path / "r.sqlite"
    assert main(["sweep", str(p), "--out", str(db), "--quiet"]) == 0
    with ResultStore(db) as st:
        st.set_meta(code="0.0.1+000000000000")
    capsys.readouterr()
    assert main(["sweep", str(p), "--out", str(db), "--quiet", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "come from simhete 0.0.1+000000000000" in err and "--resume-stale" in err and err.count("\n") == 1
    assert main(["sweep", str(p), "--out", str(db), "--quiet", "--resume-stale"]) == 0


def test_cli_refuses_to_overwrite_without_resume(tmp_path):
    from simhete.cli import main
    p = sweep_file(tmp_path, {"train.micro_batch": [1]})
    db = tmp_path / "r.sqlite"
    assert main(["sweep", str(p), "--out", str(db), "--quiet"]) == 0
    assert main(["sweep", str(p), "--out", str(db), "--quiet"]) == 2
    assert main(["sweep", str(p), "--out", str(db), "--quiet", "--resume"]) == 0
    assert (tmp_path / "r.pareto.png").stat().st_size > 1000


# -- Ray ------------------------------------------------------------------------------------------

@pytest.mark.ray
def test_ray_backend_gives_the_same_rows_as_the_local_backend(tmp_path):
    pytest.importorskip("ray")
    from simhete.search.backends import RayBackend
    p = sweep_file(tmp_path, AXES)
    ref = run_local(p, tmp_path / "local.sqlite")
    backend = RayBackend(2)
    try:
        with ResultStore(tmp_path / "ray.sqlite") as st:
            out = Runner(load_sweep(p), st, backend).run()
            rows = st.rows()
    finally:
        backend.close()
    assert out.ran == len(ref) and rows == ref


def test_a_grid_over_the_point_limit_is_refused_before_any_work(tmp_path, capsys):
    from simhete.cli import main
    p = sweep_file(tmp_path, {"train.micro_batch": [1, 2, 3], "knobs.checkpointing": ["none", "full"]})
    db = tmp_path / "r.sqlite"
    assert main(["sweep", str(p), "--out", str(db), "--max-points", "5", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and (f"{p}: 6 points to evaluate (grid over 3 train.micro_batch x 2 "
                                     "knobs.checkpointing), over the limit of 5;") in err
    assert not db.exists()
    # strategy random evaluates only its samples: within the limit
    q = sweep_file(tmp_path, {"train.micro_batch": [1, 2, 3], "knobs.checkpointing": ["none", "full"]},
                   strategy={"name": "random", "samples": 2})
    assert main(["sweep", str(q), "--out", str(db), "--max-points", "5", "--quiet"]) == 0

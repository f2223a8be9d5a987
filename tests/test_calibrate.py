"""`simhete calibrate`: the measuring run on a tiny grid, its outputs, and its refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from simhete.cli import main
from simhete.hw.cost import CostModel
from simhete.hw.fit import SUITES, read_raw, refit
from simhete.hw.profile import load_profile
from simhete.opkinds import OpKind
from simhete.schedule.model import Op

RAW = Path(__file__).resolve().parents[1] / "hwprofiles" / "measured" / "cpu-local.raw"
PROVENANCE = ("suite", "device_type", "device", "driver", "torch", "host", "host_cpu", "date",
              "torch_threads")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One calibration of the CPU device on the test-only tiny grid (a few seconds)."""
    pytest.importorskip("torch")
    mp = pytest.MonkeyPatch()
    mp.setenv("SIMHETE_CALIBRATE_GRID", "tiny")
    out = tmp_path_factory.mktemp("cal") / "tiny.yaml"
    try:
        rc = main(["calibrate", "--quick", "--device", "cpu", "--out", str(out)])
    finally:
        mp.undo()
    return rc, out


@pytest.mark.torch
def test_tiny_calibration_writes_a_profile_the_cost_model_prices(tiny_run):
    rc, out = tiny_run
    assert rc == 0
    prof = load_profile(out)
    assert (prof.name, prof.device_type, prof.gpu.count) == ("tiny", "cpu", 1)
    cm = CostModel(prof)
    for op in (Op(OpKind.GEMM, (100, 100, 100), dtype="fp32"), Op(OpKind.H2D, n=10**5),
               Op(OpKind.D2H, n=10**5), Op(OpKind.ADAM_CPU, n=10**5),
               Op(OpKind.ELEMENTWISE, n=10**5)):
        assert cm.op_seconds(op) > 0
    assert {(r.victim, r.aggressor) for r in prof.interference} >= {
        ("gpu*.compute", "gpu*.h2d"), ("gpu*.h2d", "gpu*.compute"), ("cpu.optim", "gpu*.d2h"),
        ("gpu*.compute", "cpu.optim"), ("cpu.optim", "gpu*.compute")}


@pytest.mark.torch
def test_tiny_calibration_raw_data_carries_provenance_and_refits_to_the_profile(tiny_run):
    _, out = tiny_run
    raw = out.with_suffix(".raw")
    # blocks measures only the scenarios of --shapes-from: without them it writes nothing
    measured = [s for s in SUITES if s != "blocks"]
    assert sorted(p.stem for p in raw.glob("*.csv")) == sorted((*measured, "system"))
    for suite in measured:
        t = read_raw(raw / f"{suite}.csv")
        assert all(t.meta.get(k) for k in PROVENANCE), suite
        assert t.meta["suite"] == suite and t.meta["grid"] == "tiny"
        assert t.meta["repeats"] == "3" and t.meta["warmup"] == "1"
        for r in t.ok():
            assert float(r["min_s"]) <= float(r["q1_s"]) <= float(r["median_s"]) \
                <= float(r["q3_s"]) <= float(r["max_s"])
    coll = read_raw(raw / "collectives.csv")
    assert {r["status"] for r in coll.rows} == {"missing: needs 2 GPUs (found 0)"}
    copies = read_raw(raw / "copy.csv")
    pinned = [r for r in copies.rows if r["memory"] == "pinned"]
    assert pinned and all(r["status"].startswith("missing: not applicable") for r in pinned)
    assert refit(raw, "tiny") == yaml.safe_load(out.read_text())
    report = out.with_suffix(".fit.md").read_text()
    assert "held-out error" in report and "| gemm | median " in report


@pytest.mark.torch
def test_cuda_requested_without_cuda_is_a_clean_refusal(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "g.yaml"
    assert main(["calibrate", "--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("simhete: error: --device cuda: cannot calibrate a GPU here: ")
    assert err.count("\n") == 1 and "use --device cpu" in err
    assert list(tmp_path.iterdir()) == []   # nothing written, no staging left behind


def test_existing_out_without_force_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    out.write_text("mine\n")
    assert main(["calibrate", "--quick", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"simhete: error: {out} exists; pass --force to replace "
                                       "it (nothing was changed)\n")
    assert out.read_text() == "mine\n"


def test_existing_raw_dir_without_force_is_refused(tmp_path, capsys):
    (tmp_path / "p.raw").mkdir()
    assert main(["calibrate", "--out", str(tmp_path / "p.yaml")]) == 2
    assert "p.raw exists; pass --force" in capsys.readouterr().err


@pytest.mark.parametrize("suites, msg", [
    ("gemm,bogus,copy,membw", "--suites: unknown suite 'bogus'; allowed: gemm, attention, "
                              "membw, copy, adam, interference, collectives, blocks"),
    ("adam", "--suites adam: a profile needs gemm, membw, copy; add gemm, membw, copy"),
])
def test_bad_suites_is_a_one_line_error(tmp_path, capsys, suites, msg):
    assert main(["calibrate", "--suites", suites, "--out", str(tmp_path / "p.yaml")]) == 2
    assert capsys.readouterr().err == f"simhete: error: {msg}\n"


@pytest.mark.parametrize("sub", ["missing-dir/p.yaml", "afile/p.yaml"])
def test_unwritable_out_is_a_one_line_error(tmp_path, capsys, sub):
    (tmp_path / "afile").write_text("")
    out = tmp_path / sub
    assert main(["calibrate", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"simhete: error: --out {out}: {out.parent} is not an existing directory\n"


def test_out_must_be_yaml(tmp_path, capsys):
    assert main(["calibrate", "--out", str(tmp_path / "p.json")]) == 2
    assert "a profile file ends in .yaml or .yml" in capsys.readouterr().err


def test_holdout_gemm_shapes_lie_inside_the_grid_and_off_it():
    pytest.importorskip("torch")
    from calibrate.gemm import holdout_shapes
    sizes = (64, 256, 1024)
    shapes = holdout_shapes(sizes, 3)
    assert shapes == holdout_shapes(sizes, 3)   # fixed seed
    assert len(set(shapes)) == 3
    for s in shapes:
        assert all(64 < x < 1024 and x not in sizes and x % 16 == 0 for x in s)


@pytest.mark.torch
def test_noisy_point_is_remeasured_and_flagged():
    pytest.importorskip("torch")
    import time

    from calibrate.timing import Methodology, measure
    calls = []

    def bimodal() -> None:   # every other call sleeps 2 ms: IQR/median far above 10 %
        calls.append(1)
        if len(calls) % 2:
            time.sleep(0.002)
    m = Methodology(warmup=1, repeats=6, min_sample_s=1e-9, noise_threshold=0.10)
    stat = measure(bimodal, m)
    assert (stat.remeasured, stat.unstable, stat.repeats, stat.inner) == (True, True, 12, 1)
    assert len(calls) == 1 + 6 + 12
    assert stat.min_s <= stat.q1_s <= stat.median_s <= stat.q3_s <= stat.max_s


@pytest.mark.torch
def test_shapes_from_measures_a_scenarios_exact_shapes_and_prices_them_as_measured(tmp_path):
    """--shapes-from: every GEMM and attention shape of the scenario's (replay-scaled) workload
    is measured (split "scenario"), becomes a table point, and is priced at its measured time."""
    pytest.importorskip("torch")
    from calibrate.targets import scenario_shapes

    scen = ["scenarios/small-gpt_cpu_gpu-only.yaml", "scenarios/small-llama_cpu_swap.yaml"]
    want = scenario_shapes(scen, "cpu")
    assert ("fp32", 512, 768, 256) in want.gemm          # GPT's qkv at the replay shape (T = 4·128)
    assert ("bf16", 4, 8, 2, 128, 32) in want.attn       # LLaMA's GQA flash attention, 2 K/V heads
    out = tmp_path / "s.yaml"
    mp = pytest.MonkeyPatch()
    mp.setenv("SIMHETE_CALIBRATE_GRID", "tiny")
    try:
        rc = main(["calibrate", "--device", "cpu", "--out", str(out), "--suites",
                   "gemm,membw,copy,attention", "--shapes-from", *scen])
    finally:
        mp.undo()
    assert rc == 0
    cm = CostModel(load_profile(out))
    raw = out.with_suffix(".raw")
    gemm = read_raw(raw / "gemm.csv")
    assert gemm.meta["shapes_from"] == "small-gpt_cpu_gpu-only.yaml small-llama_cpu_swap.yaml"
    scen_rows = [r for r in gemm.ok() if r["split"] == "scenario"]
    measured: dict[tuple, list[float]] = {}
    for r in scen_rows:
        measured.setdefault((r["dtype"], int(r["M"]), int(r["N"]), int(r["K"])), []).append(float(r["median_s"]))
    # the tiny grid measures fp32 only: every fp32 scenario shape that is not a grid shape
    grid_fp32 = {(int(r["M"]), int(r["N"]), int(r["K"])) for r in gemm.ok() if r["split"] != "scenario"}
    assert set(measured) == {k for k in want.gemm if k[0] == "fp32" and k[1:] not in grid_fp32}
    for (dt, m, n, k), times in measured.items():
        mean = sum(times) / len(times)       # the table's rate: mean time over the layouts
        assert cm.op_seconds(Op(OpKind.GEMM, (m, n, k), dtype=dt)) == pytest.approx(mean, rel=1e-3)
    attn = [r for r in read_raw(raw / "attention.csv").ok() if r["split"] == "scenario"]
    assert {(r["dtype"], int(r["batch"]), int(r["heads"]), int(r["kv_heads"]), int(r["seq"]),
             int(r["head_dim"])) for r in attn} == set(want.attn)
    for r in attn:
        kind = OpKind.ATTN_FWD if r["pass"] == "fwd" else OpKind.ATTN_BWD
        b, h, s, d = (int(r[c]) for c in ("batch", "heads", "seq", "head_dim"))
        op = Op(kind, (b, h, s, s, d, 1), dtype=r["dtype"])
        assert cm.op_seconds(op) == pytest.approx(float(r["median_s"]), rel=1e-3)


def test_a_bad_shapes_from_scenario_is_a_one_line_error(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "p.yaml"
    assert main(["calibrate", "--device", "cpu", "--out", str(out), "--shapes-from",
                 str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.yaml" in err
    assert not out.exists() and not out.with_suffix(".raw").exists()


@pytest.mark.torch
def test_passes_measure_every_point_in_each_pass_and_keep_the_median_of_their_medians(tmp_path):
    pytest.importorskip("torch")
    import statistics

    out = tmp_path / "p.yaml"
    mp = pytest.MonkeyPatch()
    mp.setenv("SIMHETE_CALIBRATE_GRID", "tiny")
    try:
        assert main(["calibrate", "--device", "cpu", "--out", str(out), "--suites", "gemm,membw,copy",
                     "--passes", "3"]) == 0
    finally:
        mp.undo()
    for suite in ("gemm", "membw", "copy"):
        t = read_raw(out.with_suffix(".raw") / f"{suite}.csv")
        assert t.meta["passes"].startswith("3,")
        rows = t.ok()
        assert rows
        for r in rows:
            passes = [float(x) for x in r["pass_medians_s"].split()]
            assert len(passes) == 3
            assert float(r["median_s"]) == pytest.approx(statistics.median(passes), rel=1e-5)
            # (pass medians are written to 6 significant digits)
            assert float(r["min_s"]) <= min(passes) * (1 + 1e-5) and float(r["max_s"]) >= max(passes) * (1 - 1e-5)
    assert CostModel(load_profile(out)).op_seconds(Op(OpKind.GEMM, (100, 100, 100), dtype="fp32")) > 0


def test_passes_must_be_positive(tmp_path, capsys):
    assert main(["calibrate", "--passes", "0", "--out", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--passes" in err and "bad value 0" in err


def test_measure_runs_before_ahead_of_every_call_and_does_not_time_it():
    pytest.importorskip("torch")
    import time as _time

    from calibrate.timing import Methodology, measure

    calls = {"before": 0, "fn": 0}

    def before():
        calls["before"] += 1
        _time.sleep(2e-3)                 # 2 ms of preceding work, never timed

    def fn():
        assert calls["before"] == calls["fn"] + 1     # every call right after its own before()
        calls["fn"] += 1

    st = measure(fn, Methodology(warmup=1, repeats=3, min_sample_s=1e-4, noise_threshold=10.0),
                 before=before)
    assert calls["fn"] == calls["before"] >= 4
    assert st.median_s < 1e-3                     # the 2 ms before() is not in the time


@pytest.mark.torch
def test_blocks_are_measured_whole_and_price_exactly_the_tasks_with_their_ops(tmp_path):
    """Suite blocks (--shapes-from): each distinct forward/backward op sequence of the scenario's
    replay-scaled workload is one raw row, a ``gpu.blocks`` entry keyed by ``ops_key``, and the
    price of exactly the simulated tasks with those ops (other tasks keep their op-level price)."""
    pytest.importorskip("torch")
    from calibrate.targets import scenario_workload
    from simhete import sim
    from simhete.hw.cost import ops_key
    from simhete.replay.config import scaled_scenario
    from simhete.scenario import load_scenario

    scen = "scenarios/small-gpt_cpu_recompute.yaml"
    out = tmp_path / "b.yaml"
    mp = pytest.MonkeyPatch()
    mp.setenv("SIMHETE_CALIBRATE_GRID", "tiny")
    try:
        rc = main(["calibrate", "--device", "cpu", "--out", str(out), "--suites",
                   "gemm,membw,copy,blocks", "--shapes-from", scen])
    finally:
        mp.undo()
    assert rc == 0
    _, wl = scenario_workload(scen, "cpu")
    want = {(ops_key(ops), p) for b in wl.blocks for p, ops in (("fwd", b.fwd_ops), ("bwd", b.bwd_ops))}
    adam = {(ops_key((Op(kind, n=b.params, dtype="fp32"),)), p) for b in wl.blocks if b.params
            for p, kind in (("optim_cpu", OpKind.ADAM_CPU), ("optim_gpu", OpKind.ADAM_GPU))}
    assert len(adam) == 6      # embed, block, head (the GPT head's weights are tied: a norm only)
    want |= adam
    raw = read_raw(out.with_suffix(".raw") / "blocks.csv")
    assert raw.meta["shapes_from"] == "small-gpt_cpu_recompute.yaml"
    assert {(r["key"], r["pass"]) for r in raw.ok()} == want
    assert len(raw.rows) == len(want) == 12         # embed, the (shared) transformer block, head
    for r in raw.ok():
        assert int(r["repeats"]) >= 3 and float(r["min_s"]) <= float(r["median_s"]) <= float(r["max_s"])
    by = {(r["block"], r["pass"]): r for r in raw.ok()}
    for blk in ("embed", "b0", "head"):     # a CPU device: one step measured, priced for both kinds
        assert by[(blk, "optim_cpu")]["median_s"] == by[(blk, "optim_gpu")]["median_s"]
    prof = load_profile(out)
    assert prof.gpu.blocks is not None and prof.gpu.blocks.calibrated
    measured = {k: s for k, _, s in prof.gpu.blocks.entries}
    assert set(measured) == {k for k, _ in want}
    assert refit(out.with_suffix(".raw"), "b", tmp_path)["gpu"]["blocks"]["entries"] == [
        list(e) for e in prof.gpu.blocks.entries]
    report = out.with_suffix(".fit.md").read_text()
    assert "## blocks: measured whole vs the op-level price" in report
    # a refit (no torch needed) gives the same comparison when told the scenarios
    again = tmp_path / "again.yaml"
    assert main(["calibrate", "--refit", str(out.with_suffix(".raw")), "--out", str(again),
                 "--shapes-from", scen, "--force"]) == 0
    assert report.split("## blocks: measured whole")[1] in out.with_suffix(".fit.md").read_text()
    # what `simhete validate` simulates for the scenario: every F, R and B task of a block is
    # priced at its measured time; copies and optimizer steps from their own curves
    res = sim.run(scaled_scenario(load_scenario(scen)), profile=prof)
    cm = CostModel(prof)
    cats = set()
    for t, d in zip(res.schedule.tasks, res.context.cost.durations(res.schedule)):
        k = ops_key(t.ops)
        what = t.name.split(".")[1]
        if what in ("F", "R", "B", "ADAM"):
            assert d == measured[k], t.name
            cats.add(what)
        else:
            assert k not in measured and d == cm.ops_sum_seconds(t.ops), t.name
    assert cats == {"F", "R", "B", "ADAM"}


@pytest.mark.torch
def test_blocks_refuse_a_scenario_too_large_to_run_whole_here(monkeypatch):
    """A 13B scenario at its training shape is recorded as missing (memory), never run; one that
    fits but would exceed the time budget likewise; a model deeper than the stack is measured on
    its first STACK transformer blocks."""
    pytest.importorskip("torch")
    from calibrate import blocks
    from calibrate.common import Ctx
    from calibrate.device import select
    from calibrate.grids import grid

    ctx = Ctx(select("cpu"), grid("tiny", "cpu"), 1)
    rows = blocks.run(ctx, {"scenario": "scenarios/llama2-13b_h100-pcie_zero-offload.yaml", "split": "scenario"})
    assert rows and all(r["status"].startswith("missing: too large to run whole here: needs about")
                        for r in rows)
    monkeypatch.setattr(blocks, "BUDGET_S", 0.0)
    rows = blocks.run(ctx, {"scenario": "scenarios/small-gpt_cpu_gpu-only.yaml", "split": "scenario"})
    assert rows and all("budget 0 s" in r["status"] for r in rows)
    from calibrate.targets import scenario_workload
    _, wl = scenario_workload("scenarios/small-gpt_cpu_gpu-only.yaml", "cpu")
    monkeypatch.setattr(blocks, "STACK", 2)
    assert [b.name for b in blocks._stack(wl)] == ["embed", "b0", "b1", "head"]


@pytest.mark.torch
def test_host_copies_cycle_a_cold_ring_whose_sources_another_thread_writes():
    """Each timed host copy moves the next of ``sets`` disjoint pairs spanning at least the
    requested bytes per side, from a source another thread has just written (calibrate/copies.py:
    a copy in a training step finds its data out of the copying core's cache)."""
    pytest.importorskip("torch")
    import threading

    import torch

    from calibrate.copies import MAX_SETS, Ring
    from calibrate.grids import grid
    from calibrate.common import Ctx
    from calibrate.device import select
    from calibrate import copies

    writers = set()

    class Spy:
        def submit(self, fn, *args):
            def run():
                writers.add(threading.get_ident())
                fn(*args)
            t = threading.Thread(target=run)
            t.start()
            t.join()

            class Done:
                def result(self):
                    return None
            return Done()

    ring = Ring(1024, 64 * 1024 * 4, Spy())
    assert ring.sets == 64                               # 256 KiB of 4 KiB copies
    starts = {s.data_ptr() for _, s in ring.pairs} | {d.data_ptr() for d, _ in ring.pairs}
    assert len(starts) == 2 * ring.sets                  # disjoint pairs
    for k in range(2 * ring.sets):
        d, s = ring.pairs[k % ring.sets]
        before = s.clone()
        ring.produce()
        assert torch.equal(s, before + 1.0)              # the next source, rewritten
        ring.copy()
        assert torch.equal(d, s)                          # copied into its own destination
    assert writers and threading.get_ident() not in writers
    assert Ring(1, 1 << 30, Spy()).sets == MAX_SETS      # tiny copies: bounded ring
    assert Ring(1 << 20, 1, Spy()).sets == 2             # huge copies: still two pairs alternate
    row = copies.run(Ctx(select("cpu"), grid("tiny", "cpu"), 1, llc=1 << 20),
                     {"kind": "memcpy", "memory": "host", "bytes": 4096, "split": "fit"})
    assert row["status"] == "ok" and row["median_s"] > 0


@pytest.mark.torch
def test_blocks_time_a_sub_group_optimizer_step_whole_as_the_replay_reads_its_blocks():
    """ZeRO-Infinity's sub-group step (one Adam op over several blocks' parameters) is a row of
    its own, keyed by the schedule task's ops and measured over exactly the blocks the replay
    steps for that task; a policy that steps per block adds no such row."""
    pytest.importorskip("torch")
    from calibrate import blocks
    from calibrate.common import Ctx
    from calibrate.device import select
    from calibrate.grids import grid
    from calibrate.targets import optimizer_groups
    from simhete import sim
    from simhete.hw.cost import ops_key
    from simhete.replay.config import scaled_scenario
    from simhete.replay.subgroups import subgroup_blocks
    from simhete.scenario import load_scenario

    zi = "scenarios/small-llama_cpu_zero-infinity.yaml"
    res = sim.run(scaled_scenario(load_scenario(zi)))
    steps = [t for t in res.schedule.tasks if ".ADAM.cpu.s" in t.name]
    assert steps
    want = {ops_key(t.ops): subgroup_blocks(t, res.context.workload) for t in steps}
    got = optimizer_groups(zi)
    assert {ops_key(ops): grp for _, ops, grp, _ in got} == want
    assert all(p == "optim_cpu" and name.startswith("s") for p, _, _, name in got)
    assert sorted(i for grp in want.values() for i in grp) == [b.index for b in res.context.workload.blocks
                                                              if b.params]
    assert optimizer_groups("scenarios/small-gpt_cpu_zero-offload.yaml") == []
    # the same model as small-llama_cpu_swap: measured again for its sub-group steps
    import dataclasses
    swap = "scenarios/small-llama_cpu_swap.yaml"
    g = dataclasses.replace(grid("tiny", "cpu"), block_scenarios=(swap, zi, swap))
    assert [p["scenario"] for p in blocks.points(Ctx(select("cpu"), g, 1))] == [swap, zi]
    rows = blocks.run(Ctx(select("cpu"), grid("tiny", "cpu"), 1, llc=1 << 20),
                      {"scenario": zi, "split": "scenario"})
    sub = [r for r in rows if r["key"] in want]
    assert len(sub) == len(want) and all(r["status"] == "ok" and r["pass"] == "optim_cpu" for r in sub)
    assert all(int(r["repeats"]) >= 3 and r["median_s"] > 0 for r in sub)


def _calibrate_then(tmp_path, signum: int):
    """A tiny calibration of the CPU device in a child process, sent ``signum`` as soon as its
    working folder exists (while it measures); returns (exit status, stderr, that folder)."""
    import glob
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "SIMHETE_CALIBRATE_GRID": "tiny", "PYTHONPATH": str(root)}
    p = subprocess.Popen(
        [sys.executable, "-m", "simhete.cli", "calibrate", "--quick", "--device", "cpu", "--suites",
         "gemm,membw,copy", "--passes", "3", "--out", str(tmp_path / "x.yaml")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Ctrl-C as a terminal sends it, even where the test runner ignores SIGINT (its children
        # would inherit that)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not (found := glob.glob(str(tmp_path / ".calibrate-*" / "owner"))):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.01)
    p.send_signal(signum)
    _, err = p.communicate(timeout=60)
    return p.returncode, err, Path(found[0]).parent


@pytest.mark.torch
@pytest.mark.parametrize("name,code,how", [("SIGTERM", 143, "SIGTERM"), ("SIGINT", 130, "Ctrl-C (SIGINT)")])
def test_a_stopped_calibration_removes_its_working_folder_and_says_so(tmp_path, name, code, how):
    import signal
    pytest.importorskip("torch")
    rc, err, stage = _calibrate_then(tmp_path, getattr(signal, name))
    assert rc == code, err
    assert err.splitlines()[-1] == (f"simhete: calibrate stopped by {how}: removed its working folder "
                                    f"{stage}; nothing was written")
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []              # no folder, no profile, no raw data


@pytest.mark.torch
def test_the_next_calibration_removes_the_folder_of_one_killed_outright(tmp_path, capsys):
    """SIGKILL cannot be caught: the working folder stays, with its owner's pid; the next calibrate
    writing beside it (here a refit, no torch) removes it, saying so in one line."""
    import signal
    pytest.importorskip("torch")
    rc, _, stage = _calibrate_then(tmp_path, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    pid = int((stage / "owner").read_text().split()[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == [stage.name]
    alive = tmp_path / ".calibrate-alive"               # one of a run still going: left alone
    alive.mkdir()
    from simhete.commands.calibrate import _start_time
    import os
    import socket
    (alive / "owner").write_text(f"{os.getpid()} {socket.gethostname()} {_start_time(os.getpid())}\n")
    assert main(["calibrate", "--refit", str(RAW), "--out", str(tmp_path / "y.yaml")]) == 0
    err = capsys.readouterr().err
    assert err == (f"simhete: removed {stage}, the working folder of a calibration (pid {pid}) that "
                   "was killed before it finished\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".calibrate-alive", "y.fit.md", "y.yaml"]


def test_stale_working_folders_are_told_by_their_owner(tmp_path, monkeypatch):
    """Removed: an owner on this host that no longer runs, or whose pid now belongs to a process
    started at another time. Kept: a live owner, another host's, a folder with no owner file."""
    import os
    import socket
    import subprocess
    import sys

    from simhete.commands import calibrate as cal
    host = socket.gethostname()
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    gone = int(done.stdout)                              # a pid that has exited (and was reaped)
    me = f"{os.getpid()} {host} {cal._start_time(os.getpid())}"
    folders = {"dead": f"{gone} {host} 12345", "reused": f"{os.getppid()} {host} 1", "alive": me,
               "elsewhere": f"{gone} not-{host} 12345", "unknown": None}
    for name, owner in folders.items():
        (tmp_path / f".calibrate-{name}").mkdir()
        if owner is not None:
            (tmp_path / f".calibrate-{name}" / "owner").write_text(owner + "\n")
    cal._remove_stale(tmp_path)
    left = sorted(p.name.removeprefix(".calibrate-") for p in tmp_path.iterdir())
    assert left == ["alive", "elsewhere", "unknown"]

"""simhete simulate as a user runs it: table, JSON, trace, plot, schedule, --set, --deepspeed."""

from __future__ import annotations

import json

from conftest import ROOT, SCENARIOS
from simhete.cli import main
from simhete.schedule import check_schedule, parse_schedule

SCEN = str(SCENARIOS / "llama2-7b_rtx4090_zero-offload.yaml")


def test_table_names_every_figure(capsys):
    assert main(["simulate", SCEN]) == 0
    out = capsys.readouterr().out
    for figure in ("fits", "iteration time", "tokens/s", "samples/s", "MFU", "busy cpu.optim",
                   "busy gpu0.compute", "busy gpu0.h2d", "busy gpu0.d2h", "PCIe H2D per iteration",
                   "peak gpu0 memory", "gpu0 weights", "cpu optim", "uncalibrated"):
        assert figure in out, figure


def test_json_trace_plot_schedule(tmp_path, capsys):
    paths = {k: tmp_path / "sub" / n for k, n in
             (("trace", "t.json"), ("plot", "t.png"), ("schedule", "s.txt"))}
    argv = ["simulate", SCEN, "--json"] + [x for k, p in paths.items() for x in (f"--{k}", str(p))]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["fits"] is True and summary["iter_time_s"] > 0
    trace = json.loads(paths["trace"].read_text())
    names = {e["name"] for e in trace["traceEvents"] if e.get("ph") == "X"}
    sched = parse_schedule(paths["schedule"].read_text())
    assert names == {t.name for t in sched.tasks}          # the trace joins on task names
    assert check_schedule(sched) == []
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_engines_print_the_same_summary(capsys):
    main(["simulate", SCEN, "--json"])
    fast = json.loads(capsys.readouterr().out)
    main(["simulate", SCEN, "--json", "--engine", "simpy"])
    ref = json.loads(capsys.readouterr().out)
    assert fast.pop("meta")["engine"] == "fast" and ref.pop("meta")["engine"] == "simpy"
    assert fast == ref


def test_set_overrides(capsys):
    main(["simulate", SCEN, "--json"])
    base = json.loads(capsys.readouterr().out)
    main(["simulate", SCEN, "--json", "--set", "train.micro_batch=2", "--set", "hardware.pcie_gbps=8"])
    changed = json.loads(capsys.readouterr().out)
    assert changed["samples_per_iter"] == 2 * base["samples_per_iter"]
    assert "links.h2d.pinned.bandwidth_gbps (assumed)" in changed["uncalibrated"]
    assert changed["iter_time_s"] > base["iter_time_s"]


def test_deepspeed_config_sets_policy_and_knobs(capsys):
    ds = ROOT / "tests" / "data" / "deepspeed" / "no_offload.json"
    assert main(["simulate", SCEN, "--json", "--deepspeed", str(ds)]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["meta"]["policy"] == "gpu-only"
    assert "deepspeed:" in out.err

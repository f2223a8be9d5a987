"""Output a person reads: titles after --set, OOM runs drawn and tabled as what they are, tables
that fit an 80-column terminal."""

from __future__ import annotations

from matplotlib.lines import Line2D
from rich.console import Console

from conftest import SCENARIOS
from simhete.cli import main
from simhete.report.metrics import summarize
from simhete.report.plot import OOM_COLOUR, iteration_ends, timeline_figure
from simhete.report.table import render_comparison, render_summary
from test_report_data import GIB, POOLS, TASK_BYTES, oom_timeline, two_iterations
from test_report_table import ARGS, row

from simhete.engine.timeline import OOMReport, Timeline

SMALL = str(SCENARIOS / "small-gpt_cpu_gpu-only.yaml")
BIG_OOM = str(SCENARIOS / "llama2-13b_h100-pcie_gpu-only.yaml")     # gpu-only: 171.7 GiB of 80


def text(renderable, width: int) -> str:
    con = Console(record=True, width=width, color_system=None)
    con.print(renderable)
    return con.export_text()


def never_started() -> Timeline:
    oom = OOMReport(task="(initial)", pool="gpu0", asked=12 * GIB, free=8 * GIB, capacity=8 * GIB,
                    holders=(("w.b0", 6 * GIB), ("w.b1", 6 * GIB)), time=0.0,
                    by_class=(("optim", 8 * GIB), ("weights", 4 * GIB)))
    return Timeline(records=(), mem_events={"gpu0": (), "cpu": ()}, peak={"gpu0": 0, "cpu": 0},
                    peak_by_class={"gpu0": {}, "cpu": {}}, oom=oom)


# --- 1. titles follow --set --------------------------------------------------------------------

def test_set_model_and_hardware_change_the_titles(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "100")
    titles = []
    import simhete.report.plot as plot
    real = plot.plot_timeline
    monkeypatch.setattr(plot, "plot_timeline", lambda *a, **k: titles.append(k["title"]) or real(*a, **k))
    assert main(["simulate", SMALL, "--set", "model=gpt3-125m", "--plot", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].strip() == "gpt3-125m on cpu-local, gpu-only"
    assert "small GPT" not in out
    assert titles == ["gpt3-125m on cpu-local, gpu-only"]
    assert main(["simulate", SMALL, "--set", "hardware={profile: h100-pcie}", "--set", "policy=gpu-only"]) == 0
    assert capsys.readouterr().out.splitlines()[0].strip() == "gpt-like-h768-l12 on h100-pcie, gpu-only"


def test_other_sets_keep_the_scenario_name(capsys):
    assert main(["simulate", SMALL, "--set", "train.micro_batch=2"]) == 0
    assert capsys.readouterr().out.splitlines()[0].strip() == "small GPT, gpu-only (validation on the local device)"


# --- 2. OOM runs -----------------------------------------------------------------------------

def test_never_started_plot_is_the_request_against_capacity():
    fig = timeline_figure(never_started(), pools=POOLS, title="t")
    (ax,) = fig.axes
    assert "did not start: out of memory in gpu0" in ax.get_title()
    assert "need 12.00 GiB, capacity 8.00 GiB" in ax.get_title()
    widths = [p.get_width() for p in ax.patches]
    assert widths == [8.0, 4.0]                                    # stacked by memory class
    cap = [ln for ln in ax.get_lines() if ln.get_color() == OOM_COLOUR]
    assert [ln.get_xdata()[0] for ln in cap] == [8.0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["gpu0 capacity 8.00 GiB", "optim 8.00 GiB", "weights 4.00 GiB"]
    assert ax.get_xlim()[1] > 12.0                                 # not a -0.04..0.04 axis


def test_oom_mid_run_is_marked_not_an_iteration_end():
    tl = oom_timeline()
    assert tl.iteration_ends() == {1: 1.0}
    assert iteration_ends(tl) == []                                # the unfinished iteration
    fig = timeline_figure(tl, pools=POOLS)
    gantt, gpu = fig.axes
    legend = [t.get_text() for t in gantt.get_legend().get_texts()]
    assert "iteration end" not in legend
    assert legend[-1] == "out of memory in gpu0: it1.F.b1 asks 4.00 GiB, 2.00 GiB free of 8.00 GiB"
    for ax in (gantt, gpu):
        red = [ln for ln in ax.get_lines() if ln.get_color() == OOM_COLOUR and ln.get_linestyle() == "-"]
        assert [ln.get_xdata()[0] for ln in red] == [1.0]
    dotted = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_linestyle() == ":"]
    assert dotted == []
    need = [ln for ln in gpu.get_lines() if isinstance(ln, Line2D) and ln.get_marker() == "x"]
    assert list(need[0].get_ydata()) == [10.0]                     # 8 - 2 free + 4 asked
    assert "w.b0 6.00 GiB" in " ".join(t.get_text() for t in gpu.texts)


def test_finished_run_keeps_its_iteration_ends():
    assert iteration_ends(two_iterations()) == [4.0, 8.0]


def test_tables_say_did_not_run():
    s = summarize(never_started(), **ARGS)
    out = text(render_summary(s), 80)
    assert row(out, "fits") == ["NO (out of memory at start)"]
    assert row(out, "peak gpu0 memory") == ["did not run"]
    assert row(out, "peak cpu memory") == ["did not run"]
    assert "0.00 GiB" not in out
    mid = summarize(oom_timeline(), **ARGS)                        # mid-run: its peak is real
    assert row(text(render_summary(mid), 80), "peak gpu0 memory") == ["6.00 / 8.00 GiB (75.0%)"]


# --- 3. 80 columns ---------------------------------------------------------------------------

def widest(out: str) -> int:
    return max(len(line.rstrip()) for line in out.splitlines())


def test_six_columns_split_to_fit_80():
    ok = summarize(two_iterations(), task_bytes=TASK_BYTES, flags=["pcie:datasheet"], **ARGS)
    names = ["zero-offload", "autohete", "chunked", "gpu-only", "stronghold", "zero-infinity"]
    sums = {n: (summarize(never_started(), **ARGS) if n == "gpu-only" else ok) for n in names}
    out = text(render_comparison(sums, title="six"), 80)
    assert widest(out) <= 80
    titles = [line.strip() for line in out.splitlines() if line.startswith("six")]
    assert titles == ["six (1/3)", "six (2/3)", "six (3/3)"]
    headers = [line for line in out.splitlines() if line.startswith("┃ figure")]
    assert [[c.strip() for c in h.strip("┃ ").split("┃")][1:] for h in headers] == [
        names[0:2], names[2:4], names[4:6]]
    # every cell whole: the peak of each column, wrapped at most before its percentage
    assert out.count("did not run") == 2
    wide = text(render_comparison(sums, title="six"), 200)      # one table where it fits
    assert [line.strip() for line in wide.splitlines() if line.startswith("six")] == ["six"]


def test_cli_tables_fit_80_columns(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["simulate", BIG_OOM]) == 0
    out = capsys.readouterr().out
    assert widest(out) <= 80
    assert row(out, "peak gpu0 memory") == ["did not run"]
    assert main(["compare", str(SCENARIOS / "small-gpt_cpu_zero-offload.yaml"), "--no-largest"]) == 0
    out = capsys.readouterr().out
    assert widest(out) <= 80
    assert "(1/" in out                                           # six policies do not fit in one


# --- 3/4. the sweep: hardware by name, a table within 80 columns, a labelled Pareto plot ---------

def test_sweep_table_names_hardware_and_the_pareto_plot_is_labelled(tmp_path, monkeypatch):
    import json

    import yaml

    from simhete.search import analysis
    from test_sweep import TINY, run_local

    monkeypatch.setenv("COLUMNS", "80")
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": "base.yaml", "axes": {
        "hardware": ["h100-pcie", {"profile": "h200-sxm", "gpus": 1}],
        "policy": ["zero-offload", "chunked"], "train.micro_batch": [1, 2]},
        "limits": {"gpu_memory": "60GiB"}}, sort_keys=False))
    rows = run_local(sweep, tmp_path / "r.sqlite")
    keys = list(json.loads(rows[0].params))
    out = text(analysis.rows_table(analysis.best(rows, analysis.Limits(gpu_memory=60 * GIB)), keys, "best"), 80)
    assert widest(out) <= 80
    assert "h200-sxm" in out and "gpus=1" in out and "{" not in out and "…" not in out
    assert "zero-offload" in out and "micro_batch" in out
    assert analysis._short({"profile": "a100-80gb-sxm", "gpus": 1, "host_memory": "512GiB"}) == \
        "a100-80gb-sxm gpus=1 host_memory=512GiB"
    assert [analysis.point_hardware(r) for r in rows[:2]] == ["h100-pcie", "h100-pcie"]

    seen = {}
    from matplotlib.figure import Figure
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: seen.setdefault("fig", self) and real(self, *a, **k))
    analysis.plot_fronts(rows, analysis.Limits(gpu_memory=60 * GIB), tmp_path / "p.png", title="t")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    fig = seen["fig"]
    gpu_ax, host_ax = fig.axes
    assert (gpu_ax.get_xlabel(), gpu_ax.get_ylabel()) == ("peak GPU memory (GiB)", "throughput (tokens/s)")
    assert host_ax.get_xlabel() == "peak host memory (GiB)"
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["policy chunked", "policy zero-offload", "h100-pcie", "h200-sxm gpus=1",
                      "Pareto front", "sweep limit"]
    # one scatter per (policy, hardware) with the policy's colour and the hardware's marker
    colours = {tuple(c.get_facecolor()[0][:3]) for c in gpu_ax.collections if len(c.get_offsets()) and
               c.get_facecolor().size}
    assert len(colours) == 2
    limit = [ln for ln in gpu_ax.get_lines() if ln.get_linestyle() == "--"]
    assert [ln.get_xdata()[0] for ln in limit] == [60.0]

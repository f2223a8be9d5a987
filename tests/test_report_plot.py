from matplotlib.collections import PolyCollection

from simhete.engine.timeline import Timeline
from simhete.opkinds import TaskCat
from simhete.report.plot import CAT_COLOURS, plot_timeline, timeline_figure
from test_report_data import GIB, POOLS, rec, two_iterations

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def bars(ax) -> list[tuple[float, float]]:
    """(start, width) of every Gantt bar, from the axes' PolyCollections."""
    out = []
    for coll in ax.collections:
        if isinstance(coll, PolyCollection):
            for path in coll.get_paths():
                xs = path.vertices[:, 0]
                out.append((float(xs.min()), float(xs.max() - xs.min())))
    return out


def test_one_bar_per_record_and_one_axes_per_pool():
    tl = two_iterations()
    fig = timeline_figure(tl, pools=POOLS)
    gantt, *mem = fig.axes
    assert len(mem) == len(tl.mem_events) == 2
    assert sorted(bars(gantt)) == sorted((r.start, r.dur) for r in tl.records)
    assert [t.get_text() for t in gantt.get_yticklabels()] == [
        "gpu0.compute", "gpu0.h2d", "gpu0.d2h", "cpu.optim"]
    legend = [t.get_text() for t in gantt.get_legend().get_texts()]
    assert legend == ["fwd", "bwd", "h2d", "d2h", "optim_cpu", "iteration end"]


def test_bars_coloured_by_category():
    fig = timeline_figure(two_iterations())
    colours = {tuple(round(c, 3) for c in coll.get_facecolor()[0])
               for coll in fig.axes[0].collections}
    assert len(colours) == len({r.cat for r in two_iterations().records}) == 5
    assert len(set(CAT_COLOURS.values())) == len(TaskCat)


def test_memory_axes_show_usage_capacity_and_iteration_ends():
    fig = timeline_figure(two_iterations(), pools=POOLS)
    cpu, gpu = fig.axes[1], fig.axes[2]                 # pools in sorted order
    assert gpu.get_ylabel() == "gpu0 (GiB)"
    step, cap, *ends = gpu.get_lines()
    assert list(step.get_xdata()) == [0.0, 1.0, 3.0, 5.0, 7.0, 8.0]   # held to the makespan
    assert list(step.get_ydata()) == [2, 6, 2, 6, 2, 2]
    assert list(cap.get_ydata()) == [POOLS["gpu0"] / GIB] * 2
    assert [line.get_xdata()[0] for line in ends] == [4.0, 8.0]
    assert cpu.get_ylabel() == "cpu (GiB)"


def test_png_written_deterministic_and_reasonable(tmp_path):
    a = plot_timeline(two_iterations(), tmp_path / "a.png", pools=POOLS, title="t")
    b = plot_timeline(two_iterations(), tmp_path / "b.png", pools=POOLS, title="t")
    data = a.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert 10_000 < len(data) < 1_000_000
    assert data == b.read_bytes()


def test_many_records_grouped_into_few_collections():
    recs = tuple(rec(f"it1.t{i}", "gpu0.compute" if i % 2 else "gpu0.h2d",
                     TaskCat.FWD if i % 3 else TaskCat.H2D, 1, i * 1e-3, i * 1e-3 + 5e-4)
                 for i in range(3000))
    tl = Timeline(records=recs, mem_events={}, peak={}, peak_by_class={})
    fig = timeline_figure(tl)
    assert len(fig.axes) == 1
    assert len(fig.axes[0].collections) == 4            # (stream, category) pairs
    assert len(bars(fig.axes[0])) == 3000

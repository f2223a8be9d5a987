import json

from simhete.engine.timeline import Timeline
from simhete.opkinds import TaskCat
from simhete.report.trace import trace_events, write_trace
from test_report_data import oom_timeline, rec, two_iterations


def of(events, ph):
    return [e for e in events if e["ph"] == ph]


def test_one_complete_event_per_record_in_microseconds(tmp_path):
    tl = two_iterations()
    path = write_trace(tmp_path / "t.json", tl)
    events = json.loads(path.read_text())["traceEvents"]
    xs = of(events, "X")
    assert [e["name"] for e in xs] == [r.name for r in tl.records]
    assert [(e["ts"], e["dur"]) for e in xs][:6] == [
        (0.0, 1e6), (0.0, 5e5), (1e6, 2e6), (2e6, 1.5e6), (3.5e6, 5e5), (3.75e6, 5e5)]
    assert [e["cat"] for e in xs][:5] == ["fwd", "h2d", "bwd", "d2h", "optim_cpu"]
    assert xs[5]["args"] == {"it": 2, "block": 1}


def test_processes_per_device_threads_per_stream():
    events = trace_events(two_iterations())["traceEvents"]
    procs = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert procs == {1: "gpu0", 2: "cpu"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e["name"] == "thread_name"}
    assert threads == {(1, 1): "gpu0.compute", (1, 2): "gpu0.h2d", (1, 3): "gpu0.d2h",
                       (2, 4): "cpu.optim"}
    for e in of(events, "X"):
        assert threads[(e["pid"], e["tid"])] == next(
            r.stream for r in two_iterations().records if r.name == e["name"])
    assert {e["name"] for e in of(events, "M")} == {
        "process_name", "process_sort_index", "thread_name", "thread_sort_index"}


def test_counters_match_mem_events():
    tl = two_iterations()
    events = trace_events(tl)["traceEvents"]
    pid = {e["args"]["name"]: e["pid"] for e in events if e["name"] == "process_name"}
    for pool, changes in tl.mem_events.items():
        cs = [e for e in of(events, "C") if e["name"] == f"mem {pool}"]
        assert [(e["ts"], e["args"]["bytes"]) for e in cs] == [(t * 1e6, n) for t, n in changes]
        assert {e["pid"] for e in cs} == {pid[pool]}


def test_two_timelines_side_by_side(tmp_path):
    path = write_trace(tmp_path / "both.json",
                       {"simulated": two_iterations(), "measured": two_iterations()})
    events = json.loads(path.read_text())["traceEvents"]
    procs = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert procs == {1: "simulated gpu0", 2: "simulated cpu", 3: "measured gpu0",
                     4: "measured cpu"}
    xs = of(events, "X")
    n = len(two_iterations().records)
    assert len(xs) == 2 * n
    assert {e["pid"] for e in xs[:n]} == {1, 2} and {e["pid"] for e in xs[n:]} == {3, 4}
    assert [e["name"] for e in xs[:n]] == [e["name"] for e in xs[n:]]


def test_output_is_deterministic(tmp_path):
    a = write_trace(tmp_path / "a.json", {"simulated": two_iterations()}).read_bytes()
    b = write_trace(tmp_path / "b.json", {"simulated": two_iterations()}).read_bytes()
    assert a == b
    assert a.startswith(b'{"displayTimeUnit":"ms","traceEvents":[')


def test_float_noise_is_rounded_to_nanoseconds():
    tl = Timeline(records=(rec("a", "gpu0.compute", TaskCat.FWD, 1, 0.1, 0.3),),
                  mem_events={}, peak={}, peak_by_class={})
    (x,) = of(trace_events(tl)["traceEvents"], "X")
    assert (x["ts"], x["dur"]) == (100000.0, 200000.0)   # 0.1*1e6 == 100000.00000000001


def test_oom_is_an_instant_event_on_the_pool_device():
    events = trace_events(oom_timeline())["traceEvents"]
    (i,) = of(events, "i")
    assert i["ts"] == 1e6 and i["pid"] == 1
    assert i["args"]["message"].startswith("out of memory in gpu0")

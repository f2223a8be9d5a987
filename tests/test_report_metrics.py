import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simhete.engine.timeline import Timeline
from simhete.opkinds import MemClass, OpKind, TaskCat
from simhete.report.metrics import Summary, summarize
from simhete.report.pcie import copy_bytes
from simhete.report.window import steady_window, stream_busy
from simhete.schedule.model import Alloc, Op, Schedule, Task
from test_report_data import GIB, POOLS, TASK_BYTES, oom_timeline, rec, two_iterations

ARGS = dict(tokens_per_iter=4096, samples_per_iter=8, model_flops_per_iter=8e12,
            peak_flops_per_gpu=1e13, n_gpus=1, pool_capacity=POOLS)


def test_steady_state_figures_by_hand():
    s = summarize(two_iterations(), task_bytes=TASK_BYTES, **ARGS)
    assert s.fits and s.oom is None
    # window: end of it1 (4 s) .. end of it2 (8 s)
    assert (s.window_start_s, s.window_end_s, s.iter_time_s) == (4.0, 8.0, 4.0)
    assert s.tokens_per_s == 4096 / 4 == 1024.0
    assert s.samples_per_s == 8 / 4 == 2.0
    assert s.tflops_total == 8e12 / 4 / 1e12 == 2.0
    assert s.tflops_per_gpu == 2.0
    assert s.mfu == 2e12 / 1e13 == 0.2
    assert s.stream_busy_frac == {
        "cpu.optim": 0.5 / 4,            # it2 Adam [7.5, 8]
        "gpu0.compute": 3.0 / 4,         # it2 F [4, 5] + B [5, 7]
        "gpu0.d2h": 1.5 / 4,             # it2 D2H [6, 7.5]
        "gpu0.h2d": 0.25 / 4,            # it2 prefetch [3.75, 4.25] clipped to [4, 4.25]
    }
    # only the steady iteration's copies count: it2 H2D 1 GB (not it1's 7 GB), it2 D2H 3 GB
    assert s.pcie_bytes_per_iter == {"h2d": 10**9, "d2h": 3 * 10**9}
    assert s.memory["gpu0"].peak_bytes == 6 * GIB
    assert s.memory["gpu0"].capacity_bytes == 8 * GIB
    assert s.memory["cpu"].peak_by_class_bytes == {"grads32": 2 * GIB, "master": 2 * GIB,
                                                   "optim": 8 * GIB}
    assert s.meta == {"engine": "simpy", "policy": "zero-offload"}


def test_multi_gpu_divides_tflops_and_mfu():
    s = summarize(two_iterations(), **{**ARGS, "n_gpus": 4})
    assert s.tflops_total == 2.0
    assert s.tflops_per_gpu == 0.5
    assert s.mfu == 2e12 / (4 * 1e13)


def test_single_iteration_window_is_whole_run():
    tl = Timeline(records=(rec("it1.F.b0", "gpu0.compute", TaskCat.FWD, 1, 0.5, 2.0),
                           rec("it1.B.b0", "gpu0.compute", TaskCat.BWD, 1, 2.0, 2.5)),
                  mem_events={}, peak={}, peak_by_class={})
    s = summarize(tl, **ARGS)
    assert (s.window_start_s, s.window_end_s, s.iter_time_s) == (0.0, 2.5, 2.5)
    assert s.stream_busy_frac == {"gpu0.compute": 2.0 / 2.5}
    assert s.pcie_bytes_per_iter is None


def test_busy_is_union_of_overlapping_records():
    tl = Timeline(records=(rec("a", "cpu.optim", TaskCat.OPTIM_CPU, 1, 0.0, 2.0),
                           rec("b", "cpu.optim", TaskCat.OPTIM_CPU, 1, 1.0, 3.0),
                           rec("c", "cpu.optim", TaskCat.OPTIM_CPU, 1, 1.5, 2.5),
                           rec("d", "gpu0.compute", TaskCat.FWD, 1, 0.0, 8.0)),
                  mem_events={}, peak={}, peak_by_class={})
    assert stream_busy(tl, steady_window(tl)) == {"cpu.optim": 3.0 / 8, "gpu0.compute": 1.0}
    assert stream_busy(tl, (2.0, 4.0)) == {"cpu.optim": 0.5, "gpu0.compute": 1.0}


def test_no_copies_means_zero_pcie_bytes():
    tl = Timeline(records=(rec("it1.F.b0", "gpu0.compute", TaskCat.FWD, 1, 0.0, 1.0),),
                  mem_events={}, peak={}, peak_by_class={})
    assert summarize(tl, task_bytes={}, **ARGS).pcie_bytes_per_iter == {"h2d": 0, "d2h": 0}


def test_copy_record_without_bytes_is_an_error():
    with pytest.raises(ValueError, match="no entry for copy task 'it2.D2H.g.b0' on gpu0.d2h"):
        summarize(two_iterations(), task_bytes={"it2.H2D.w.b1": 1}, **ARGS)


def test_pool_without_capacity_is_an_error():
    with pytest.raises(ValueError, match="no entry for pool.*cpu"):
        summarize(two_iterations(), **{**ARGS, "pool_capacity": {"gpu0": 8 * GIB}})


def test_oom_does_not_fit_and_has_no_rates():
    s = summarize(oom_timeline(), **ARGS)
    assert not s.fits
    assert s.oom == oom_timeline().oom.message()
    assert s.oom.startswith("out of memory in gpu0 at t=1.000000s: task it1.F.b1 asks 4.00 GiB")
    assert (s.iter_time_s, s.tokens_per_s, s.mfu, s.stream_busy_frac) == (None, None, None, None)
    assert s.memory["gpu0"].peak_bytes == 6 * GIB
    assert s.memory["cpu"].peak_bytes == 0          # a pool with capacity but no use


def test_flags_sorted_once_each():
    s = summarize(two_iterations(), flags=["pcie:datasheet", "gemm:datasheet", "pcie:datasheet"],
                  **ARGS)
    assert s.uncalibrated == ("gemm:datasheet", "pcie:datasheet")


def test_to_dict_is_json_safe_ordered_and_rounded():
    s = summarize(two_iterations(), task_bytes=TASK_BYTES, meta={"model": "tiny"}, **ARGS)
    d = s.to_dict()
    assert list(d)[:6] == ["fits", "oom", "window_start_s", "window_end_s", "iter_time_s",
                           "tokens_per_s"]
    assert list(d["memory"]) == ["cpu", "gpu0"]
    assert d["memory"]["gpu0"] == {"capacity_bytes": 8 * GIB, "peak_bytes": 6 * GIB,
                                   "peak_by_class_bytes": {"activations": 4 * GIB,
                                                           "weights": 2 * GIB}}
    assert d["meta"] == {"engine": "simpy", "model": "tiny", "policy": "zero-offload"}
    # floats keep 6 significant digits
    tl = Timeline(records=(rec("x", "gpu0.compute", TaskCat.FWD, 1, 0.0, 3.0),),
                  mem_events={}, peak={}, peak_by_class={})
    d3 = summarize(tl, **ARGS).to_dict()
    assert d3["tokens_per_s"] == 1365.33      # 4096 / 3 = 1365.333...
    assert d3["mfu"] == 0.266667              # 8e12 / 3 / 1e13 = 0.2666...


def test_json_is_byte_identical_and_round_trips():
    def dump(s: Summary) -> str:
        return json.dumps(s.to_dict(), indent=2)
    a = summarize(two_iterations(), task_bytes=TASK_BYTES, flags=["x"], **ARGS)
    b = summarize(two_iterations(), task_bytes=TASK_BYTES, flags=["x"], **ARGS)
    assert dump(a) == dump(b)
    back = Summary.from_dict(json.loads(dump(a)))
    assert back == a                           # all values here are exact in 6 digits
    assert dump(back) == dump(a)


def test_copy_bytes_from_schedule():
    sched = Schedule(
        tasks=(Task("it1.H2D.w.b0", "gpu0.h2d", TaskCat.H2D,
                    ops=(Op(OpKind.H2D, n=1000, count=3),),
                    allocs=(Alloc("w.b0", "gpu0", 3000, MemClass.WEIGHTS),)),
               Task("it1.F.b0", "gpu0.compute", TaskCat.FWD, ops=(Op(OpKind.GEMM, (2, 2, 2)),)),
               Task("it1.D2H.g.b0", "gpu0.d2h", TaskCat.D2H,
                    ops=(Op(OpKind.D2H, n=500), Op(OpKind.D2H, n=250)))),
        pools={"gpu0": 10**6})
    assert copy_bytes(sched) == {"it1.H2D.w.b0": 3000, "it1.D2H.g.b0": 750}


intervals = st.lists(st.tuples(st.integers(0, 100), st.integers(0, 30)), min_size=1, max_size=20)


@given(intervals, st.integers(0, 100), st.integers(1, 100))
def test_busy_matches_a_unit_grid_count(spans, t0, length):
    """Integer endpoints: busy time equals the number of unit cells [k, k+1) covered by any record
    inside the window, an independent count of the union."""
    recs = tuple(rec(f"t{i}", "gpu0.compute", TaskCat.FWD, 1, float(a), float(a + d))
                 for i, (a, d) in enumerate(spans))
    tl = Timeline(records=recs, mem_events={}, peak={}, peak_by_class={})
    covered = {k for a, d in spans for k in range(a, a + d) if t0 <= k < t0 + length}
    busy = stream_busy(tl, (float(t0), float(t0 + length)))["gpu0.compute"]
    assert busy == pytest.approx(len(covered) / length, abs=1e-12)
    assert 0.0 <= busy <= 1.0


def test_pcie_bytes_follow_the_ops_not_the_stream():
    """A pageable copy runs on the compute stream; its bytes still count, by the op's direction."""
    from simhete.report.pcie import pcie_task_bytes
    sched = Schedule(
        tasks=(Task("it1.H2D.w.b0", "gpu0.compute", TaskCat.H2D, ops=(Op(OpKind.H2D, n=1000, pinned=False),)),
               Task("it1.D2H.g.b0", "gpu0.compute", TaskCat.D2H, ops=(Op(OpKind.D2H, n=300, count=2),)),
               Task("it1.F.b0", "gpu0.compute", TaskCat.FWD, ops=(Op(OpKind.GEMM, (2, 2, 2)),))),
        pools={"gpu0": 10**6})
    tb = pcie_task_bytes(sched)
    assert tb == {"it1.H2D.w.b0": (1000, 0), "it1.D2H.g.b0": (0, 600)}
    tl = Timeline(records=(rec("it1.H2D.w.b0", "gpu0.compute", TaskCat.H2D, 1, 0.0, 1.0),
                           rec("it1.D2H.g.b0", "gpu0.compute", TaskCat.D2H, 1, 1.0, 2.0),
                           rec("it1.F.b0", "gpu0.compute", TaskCat.FWD, 1, 2.0, 3.0)),
                  mem_events={}, peak={}, peak_by_class={})
    assert summarize(tl, task_bytes=tb, **ARGS).pcie_bytes_per_iter == {"h2d": 1000, "d2h": 600}


@given(st.lists(st.tuples(st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0]),
                          st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5])), min_size=1, max_size=30),
       st.sampled_from([(0.0, 4.0), (0.5, 2.0), (1.0, 1.5), (2.0, 5.0)]))
def test_stream_busy_from_columns_equals_the_record_loop(spans, window):
    """The fast engine's column path (array operations) gives the record loop's floats exactly,
    overlapping, nested, touching, zero-length and out-of-window intervals included."""
    import numpy as np

    from simhete.engine.timeline import Columns
    from simhete.schedule.model import TaskTable

    tasks = tuple(Task(f"t{k}", "gpu0.compute" if k % 3 else "gpu0.h2d", TaskCat.FWD, it=1)
                  for k in range(len(spans)))
    starts = [s * 1.1 for s, _ in spans]
    ends = [s + d for s, (_, d) in zip(starts, spans)]
    recs = tuple(rec(t.name, t.stream, TaskCat.FWD, 1, s, e) for t, s, e in zip(tasks, starts, ends))
    streams = tuple(dict.fromkeys(t.stream for t in tasks))
    cols = Columns(TaskTable.of(tasks), np.arange(len(tasks)), streams,
                   np.array([streams.index(t.stream) for t in tasks]), np.ones(len(tasks), dtype=np.int64),
                   np.array(starts), np.array(ends))
    arrays = Timeline(mem_events={}, peak={}, peak_by_class={}, columns=cols)
    records = Timeline(recs, {}, {}, {})
    assert stream_busy(arrays, window) == stream_busy(records, window)


def test_simulating_and_summarizing_does_not_load_numpy_ma():
    # np.unique without return_index imports numpy.ma on first use (~15 ms of a sweep process's
    # start); the summary gets its distinct labels otherwise
    import subprocess
    import sys

    from conftest import SCENARIOS

    code = (f"import sys; from simhete.scenario import load_scenario; from simhete.sim import run; "
            f"run(load_scenario({str(SCENARIOS / 'llama2-13b_h100-pcie_zero-offload.yaml')!r}), check=False, memo=True); "
            f"print('numpy.ma' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "False"

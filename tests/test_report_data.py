"""Hand-built Timelines shared by the report tests (imported by tests/test_report_*.py)."""

from simhete.engine.timeline import OOMReport, Record, Timeline
from simhete.opkinds import TaskCat

GIB = 2**30


def rec(name, stream, cat, it, start, end, block=0):
    return Record(name=name, stream=stream, cat=cat, it=it, block=block, start=start, end=end)


def two_iterations() -> Timeline:
    """Two iterations; iteration 1 ends at 4 s, iteration 2 at 8 s, so the window is [4, 8].

    it2's H2D prefetch starts at 3.75 s, inside iteration 1's time, and is clipped to [4, 4.25].
    """
    records = (
        rec("it1.F.b0", "gpu0.compute", TaskCat.FWD, 1, 0.0, 1.0),
        rec("it1.H2D.w.b1", "gpu0.h2d", TaskCat.H2D, 1, 0.0, 0.5, block=1),
        rec("it1.B.b0", "gpu0.compute", TaskCat.BWD, 1, 1.0, 3.0),
        rec("it1.D2H.g.b0", "gpu0.d2h", TaskCat.D2H, 1, 2.0, 3.5),
        rec("it1.ADAM.cpu.b0", "cpu.optim", TaskCat.OPTIM_CPU, 1, 3.5, 4.0),
        rec("it2.H2D.w.b1", "gpu0.h2d", TaskCat.H2D, 2, 3.75, 4.25, block=1),
        rec("it2.F.b0", "gpu0.compute", TaskCat.FWD, 2, 4.0, 5.0),
        rec("it2.B.b0", "gpu0.compute", TaskCat.BWD, 2, 5.0, 7.0),
        rec("it2.D2H.g.b0", "gpu0.d2h", TaskCat.D2H, 2, 6.0, 7.5),
        rec("it2.ADAM.cpu.b0", "cpu.optim", TaskCat.OPTIM_CPU, 2, 7.5, 8.0),
    )
    mem = {
        "gpu0": ((0.0, 2 * GIB), (1.0, 6 * GIB), (3.0, 2 * GIB), (5.0, 6 * GIB), (7.0, 2 * GIB)),
        "cpu": ((0.0, 10 * GIB), (3.5, 12 * GIB), (4.0, 10 * GIB)),
    }
    return Timeline(records=records, mem_events=mem,
                    peak={"gpu0": 6 * GIB, "cpu": 12 * GIB},
                    peak_by_class={"gpu0": {"weights": 2 * GIB, "activations": 4 * GIB},
                                   "cpu": {"optim": 8 * GIB, "master": 2 * GIB,
                                           "grads32": 2 * GIB}},
                    engine="simpy", meta={"policy": "zero-offload"})


TASK_BYTES = {"it1.H2D.w.b1": 7 * 10**9, "it2.H2D.w.b1": 10**9,
              "it1.D2H.g.b0": 3 * 10**9, "it2.D2H.g.b0": 3 * 10**9}

POOLS = {"gpu0": 8 * GIB, "cpu": 64 * GIB}


def oom_timeline() -> Timeline:
    records = (rec("it1.F.b0", "gpu0.compute", TaskCat.FWD, 1, 0.0, 1.0),)
    oom = OOMReport(task="it1.F.b1", pool="gpu0", asked=4 * GIB, free=2 * GIB,
                    capacity=8 * GIB, holders=(("w.b0", 6 * GIB),), time=1.0)
    return Timeline(records=records, mem_events={"gpu0": ((0.0, 6 * GIB),)},
                    peak={"gpu0": 6 * GIB}, peak_by_class={"gpu0": {"weights": 6 * GIB}},
                    oom=oom)


def test_hand_timeline_has_the_stated_window():
    tl = two_iterations()
    assert tl.iteration_ends() == {1: 4.0, 2: 8.0}
    assert tl.steady_iteration_time() == 4.0

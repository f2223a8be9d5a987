"""simhete.search.candidates: the generic simulate-and-pick of a policy's candidate schedules
(Policy.candidates), on schedules whose answers are known: the fastest that fits wins, the first of
equals, a candidate that runs out of memory never wins, and ``otherwise`` when none fits."""

from __future__ import annotations

from types import SimpleNamespace

from simhete.opkinds import MemClass, TaskCat
from simhete.policy.base import Candidates, Policy
from simhete.schedule import Alloc, Schedule, Task
from simhete.search.candidates import choose_schedule


def sched(label: str, seconds: float, gib: int = 1) -> Schedule:
    """Two iterations of one task of ``seconds`` each, holding ``gib`` of a 4-GiB pool."""
    tasks = tuple(Task(f"it{i}.T", "gpu0.compute", TaskCat.FWD, it=i, deps=(f"it{i - 1}.T",) if i > 1 else (),
                       allocs=(Alloc(f"x{i}", "gpu0", gib * 2**30, MemClass.ACTIVATIONS),), frees=(f"x{i}",))
                  for i in (1, 2))
    return Schedule(tasks, {"gpu0": 4 * 2**30}, (), 2, {"label": label, "seconds": str(seconds)})


# the cost model prices every task of a schedule at the seconds its metadata names
CTX = SimpleNamespace(cost=SimpleNamespace(durations=lambda s: [float(s.meta["seconds"])] * len(s.tasks),
                                           interference=lambda: ()))


class Offers(Policy):
    def __init__(self, offered: list[Schedule], otherwise: Schedule) -> None:
        super().__init__(None)
        self.offered, self.otherwise = offered, otherwise

    def candidates(self, ctx):
        return Candidates(iter(self.offered), lambda: self.otherwise)


def picked(offered: list[Schedule], otherwise: Schedule = sched("otherwise", 9.0)) -> str:
    return choose_schedule(Offers(offered, otherwise), CTX).meta["label"]


def test_the_fastest_that_fits_wins():
    assert picked([sched("slow", 3.0), sched("fast", 2.0), sched("middle", 2.5)]) == "fast"


def test_a_candidate_that_runs_out_of_memory_never_wins():
    assert picked([sched("slow", 3.0), sched("too big", 1.0, gib=5)]) == "slow"


def test_the_first_of_equals_wins():
    assert picked([sched("first", 2.0), sched("second", 2.0)]) == "first"


def test_otherwise_when_none_fits_or_none_is_offered():
    assert picked([sched("too big", 1.0, gib=5)]) == "otherwise"
    assert picked([]) == "otherwise"


def test_a_policy_without_candidates_is_built():
    class One(Policy):
        def build(self, ctx):
            return sched("built", 1.0)
    assert choose_schedule(One(None), CTX).meta["label"] == "built"

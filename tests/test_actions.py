"""Every task a policy emits carries its action and coordinates, and its name is derived from them.

Task names are the join key between simulated and measured timelines and appear in goldens, so
``Action.name`` must give exactly the strings the policies have always used; the replay dispatches
on the action (tests/test_replay.py), never on the name.
"""

from __future__ import annotations

from collections import Counter

import pytest

from conftest import SCENARIOS
from simhete.opkinds import Action, At, TaskCat, at
from simhete.policy import get_policy
from simhete.scenario import load_scenario
from simhete.sim import resolve, resolve_profile

POLICIES = ["zero-infinity", "stronghold", "chunked", "autohete", "gpu-only", "zero-offload"]


def test_names_have_the_documented_form():
    assert Action.FORWARD.task_name(At(1, "b12")) == "it1.F.b12"
    assert Action.WEIGHTS_H2D.task_name(At(1, "b13")) == "it1.H2D.w.b13"
    assert Action.BACKWARD.task_name(At(2, "b3", m=3)) == "it2.m3.B.b3"
    assert Action.ADAM_CPU.task_name(At(2, "b3")) == "it2.ADAM.cpu.b3"
    assert Action.GRADS_D2H.task_name(at(1, "k2", gpu=1, n_gpus=4)) == "it1.D2H.g.k2@g1"
    assert Action.GRADS_D2H.task_name(at(1, "k2", gpu=0, n_gpus=1)) == "it1.D2H.g.k2"
    assert Action.WEIGHTS_H2D_FWD_AG.task_name(at(3, "b0", 2, 4, 2, "2")) == "it3.m2.H2D.wf2.ag.b0@g2"
    assert Action.CHUNK_D2H.task_name(at(1, "chunk", 0, 8, variant="3r2")) == "it1.D2H.c3r2.chunk@g0"
    assert Action.BACKWARD_JOIN.task_name(at(1, "", 5, 8)) == "it1.BWD.end.@g5"
    assert Action.HOST_PASS.task_name(At(4, "cast")) == "it4.STEP.cast"


def test_each_action_has_one_category_and_a_distinct_meaning():
    assert Action.ADAM_CPU.cat is TaskCat.OPTIM_CPU and Action.GRADS_D2H_RS.cat is TaskCat.COMM
    # two actions share a name pattern only where they differ in category (a CPU pass vs a join)
    same = [p for p, n in Counter(a.pattern for a in Action).items() if n > 1]
    assert same == ["STEP"]
    assert {a.cat for a in Action if a.pattern == "STEP"} == {TaskCat.OPTIM_CPU, TaskCat.OTHER}


def _policy_schedules(path):
    s = load_scenario(path)
    prof = resolve_profile(s)
    for name in POLICIES:
        pol = get_policy(name)
        if prof.gpu.count > 1 and not pol.multi_gpu:
            continue
        kn = {k: v for k, v in s.data.knobs.items() if k in pol.Knobs.model_fields}
        kn |= {"verify": False} if name == "autohete" else {}
        for ga in (1, 2) if pol.accumulates else (1,):
            ctx, p = resolve(s.with_changes(policy=name, knobs=kn, **{"train.grad_accum": ga}), prof)
            yield f"{name} grad_accum={ga}", p.build(ctx)


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_task_is_named_by_its_action(path):
    seen: set[Action] = set()
    for label, sched in _policy_schedules(path):
        tab = sched.table
        assert len(tab.action) == len(tab.name), label
        for name, cat, action, where in zip(tab.name, tab.cat, tab.action, tab.at):
            assert isinstance(action, Action) and isinstance(where, At), (label, name)
            assert action.task_name(where) == name, (label, name)
            assert cat is action.cat, (label, name)
            seen.add(action)
        # the Task objects carry the same action and coordinates as the table
        t = sched.tasks[-1]
        assert t.action is tab.action[-1] and t.at == tab.at[-1]
    assert {Action.FORWARD, Action.BACKWARD, Action.ADAM_GPU} <= seen

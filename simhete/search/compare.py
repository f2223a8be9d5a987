"""Run one scenario under every applicable policy (``simhete compare`` and the demo).

Policies that cannot run the scenario's shape (several GPUs, gradient accumulation, pure
low-precision training) are left out.
Knobs the scenario sets carry over to each policy that has a knob of that name (activation
checkpointing, pin_memory, ...); knobs foreign to a policy are dropped for it.

Like the rest of simhete.search it sits above the simulator: it varies a scenario (here its
policy) and runs each variation through simhete.sim.
"""

from __future__ import annotations

from typing import Any

from simhete.policy import get_policy, list_policies
from simhete.scenario import Scenario


def knobs_for(s: Scenario, policy: str) -> dict[str, Any]:
    fields = get_policy(policy).Knobs.model_fields
    return {k: v for k, v in s.data.knobs.items() if k in fields}


def compare_policies(s: Scenario, engine: str = "fast", policies: list[str] | None = None,
                     refused: dict[str, str] | None = None) -> dict[str, Any]:
    """{policy: Result} for every policy that can run this scenario, the scenario's own first.
    With ``refused`` (a dict), a policy other than the scenario's own whose knobs or limits refuse
    this setup (e.g. chunked's default chunk size on a 70B model) is recorded there with its
    one-line reason instead of ending the whole comparison; the scenario's own policy still
    raises (that error is the user's to fix)."""
    from simhete.errors import ConfigError
    from simhete.sim import resolve_profile, run

    names = policies or [s.data.policy] + [p for p in list_policies() if p != s.data.policy]
    prof = resolve_profile(s)
    tr = s.data.train
    pure = tr.precision == "pure" and tr.dtype != "fp32"
    out: dict[str, Any] = {}
    for name in names:
        cls = get_policy(name)
        if (prof.gpu.count > 1 and not cls.multi_gpu) or (tr.grad_accum > 1 and not cls.accumulates) \
                or (pure and cls.pure_precision):
            continue
        try:
            # check=False: no dry-run schedule check, as plan's trials and sweeps (every policy is
            # property-tested to build valid schedules; the engine still refuses a malformed one);
            # on a 4-GPU 70B setup the checker was over half of a compare
            out[name] = run(s.with_changes(policy=name, knobs=knobs_for(s, name)), engine=engine, profile=prof,
                            check=False)
        except ConfigError as e:
            if refused is None or name == s.data.policy:
                raise
            refused[name] = str(e)
    return out

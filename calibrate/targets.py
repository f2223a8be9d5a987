"""The shapes a scenario prices, as extra calibration points (``simhete calibrate --shapes-from``).

A grid interpolates between measured shapes, and some kernels are not smooth between them: on the
2-core development CPU the bf16 flash-attention backward of (4, 8, 128, 32) took ~30 ms while the
grid's neighbours (4, 8, 64, 32) and (4, 8, 256, 32) took 7.9 and 20.7 ms, so interpolation
priced it at 12.8 ms (2026-11-22). Measuring the exact GEMM and attention shapes a scenario
will price removes that interpolation error, as an operator profiler for one model does (Vidur
profiles each operator at the model's own dimensions). These are still microbenchmarks of single
operators, never of a scenario end to end.

Which shapes: those of the scenario's workload at its training shape, or, when the scenario has a
``replay:`` section, at the scaled shape ``simhete validate`` simulates and replays. Attention is
measured as the workload prices it on this device (flash or the math path's GEMMs, see
``train.attention``), with the model's K/V head count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from simhete.hw.cost import ops_key
from simhete.opkinds import OpKind
from simhete.schedule.model import Op


@dataclass
class Shapes:
    gemm: dict[tuple[str, int, int, int], None] = field(default_factory=dict)        # ordered sets
    attn: dict[tuple[str, int, int, int, int, int], None] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def scenario_workload(path, device_type: str):  # type: ignore[no-untyped-def]
    """(model spec, workload) of a scenario (a file, or a loaded Scenario) as it is priced on a
    ``device_type`` device: at its ``replay:`` shape when it has one (what ``simhete validate``
    simulates), else at its own."""
    from simhete.sim import flash_attention, resolve_model
    from simhete.workload import build_workload

    s = _as_priced(path)
    spec = resolve_model(s)
    tr = s.data.train
    return spec, build_workload(spec, tr.micro_batch, tr.seq_len, tr.dtype,
                                flash_attention=flash_attention(tr.attention, device_type, spec))


def _as_priced(path):  # type: ignore[no-untyped-def]
    """The scenario (a file, or a loaded Scenario) at its ``replay:`` shape when it has one."""
    from simhete.replay.config import scaled_scenario
    from simhete.scenario import Scenario, load_scenario

    s = path if isinstance(path, Scenario) else load_scenario(path)
    return scaled_scenario(s) if s.data.replay is not None else s


def optimizer_groups(path) -> list[tuple[str, tuple[Op, ...], list[int], str]]:  # type: ignore[no-untyped-def]
    """The distinct optimizer steps of the scenario's own schedule that span several blocks
    (ZeRO-Infinity's sub-groups, ``it2.ADAM.cpu.s0``), as (pass, ops, block indices, label): the
    policy builds the schedule at the shape :func:`scenario_workload` prices, on the scenario's own
    hardware (sub-groups follow the policy's knobs, not prices); each sub-group's blocks are read
    as the replay reads them (:func:`simhete.replay.subgroups.subgroup_blocks`). Empty when the
    schedule cannot be built here (e.g. the scenario's profile is not on this machine)."""
    from simhete.errors import SimheteError
    from simhete.opkinds import TaskCat
    from simhete.replay.subgroups import subgroup_blocks
    from simhete.policy.structures import build_schedule
    from simhete.sim import resolve

    try:
        ctx, policy = resolve(_as_priced(path), None)
        sched = build_schedule(policy, ctx)
    except SimheteError:
        return []
    names = {b.name for b in ctx.workload.blocks}
    adam = (OpKind.ADAM_CPU, OpKind.ADAM_GPU)
    out: dict[str, tuple[str, tuple[Op, ...], list[int], str]] = {}
    for t in sched.tasks:
        label = t.name.rsplit(".", 1)[-1]
        if (t.cat not in (TaskCat.OPTIM_CPU, TaskCat.OPTIM_GPU) or label in names
                or not any(op.kind in adam for op in t.ops)):
            continue
        k = ops_key(t.ops)
        if k in out:
            continue
        try:
            grp = subgroup_blocks(t, ctx.workload)
        except ValueError:
            continue
        out[k] = ("optim_cpu" if t.cat is TaskCat.OPTIM_CPU else "optim_gpu", t.ops, grp, label)
    return list(out.values())


def scenario_shapes(paths: list[str], device_type: str) -> Shapes:
    """Every distinct GEMM (dtype, M, N, K) and causal attention (dtype, batch, heads, kv_heads,
    seq, head_dim) the scenarios' workloads price on a ``device_type`` device."""
    out = Shapes()
    for path in paths:
        spec, wl = scenario_workload(path, device_type)
        for blk in wl.blocks:
            for op in (*blk.fwd_ops, *blk.bwd_ops):
                if op.kind is OpKind.GEMM:
                    out.gemm[(op.dtype, *op.shape)] = None
                elif op.kind in (OpKind.ATTN_FWD, OpKind.ATTN_BWD):
                    b, h, sq, skv, d, causal = op.shape
                    if causal and sq == skv:      # what the attention suite measures
                        out.attn[(op.dtype, b, h, spec.n_kv_heads, sq, d)] = None
        out.files.append(Path(path).name)
    return out


def optim_ops(b) -> list[tuple[str, tuple[Op, ...]]]:  # type: ignore[no-untyped-def]
    """The single-op tuples the policies give a block's optimizer step (simhete/policy/*.py)."""
    if not b.params:
        return []
    return [("optim_cpu", (Op(OpKind.ADAM_CPU, n=b.params, dtype="fp32"),)),
            ("optim_gpu", (Op(OpKind.ADAM_GPU, n=b.params, dtype="fp32"),))]


def comparison(profile: dict[str, object], paths: list[str], device_type: str) -> str:
    """A fit-report section: each measured block beside the op-level price of the same ops (the
    fitted curves and tables, ``gpu.blocks`` left out), so the report shows what the op-level
    model misses inside a step; empty when the profile has no ``gpu.blocks``."""
    from simhete.config import validate
    from simhete.hw.cost import CostModel
    from simhete.hw.profile import HardwareProfile

    prof = validate(HardwareProfile, profile, "fitted profile")
    if prof.gpu.blocks is None:
        return ""
    measured = {k: (label, sec) for k, label, sec in prof.gpu.blocks.entries}
    cm = CostModel(prof)
    lines = ["## blocks: measured whole vs the op-level price of the same ops\n",
             "| block | measured | op-level | op-level error |", "|---|---:|---:|---:|"]
    done: set[str] = set()
    for path in paths:
        _, wl = scenario_workload(path, device_type)
        groups = [ops for _, ops, _, _ in optimizer_groups(path)]
        for b in (*wl.blocks, None):
            seqs = (b.fwd_ops, b.bwd_ops, *(o for _, o in optim_ops(b))) if b is not None else groups
            for ops in seqs:
                k = ops_key(ops)
                if k in measured and k not in done:
                    done.add(k)
                    label, sec = measured[k]
                    op = cm.ops_sum_seconds(ops)
                    lines.append(f"| {label} | {sec * 1e3:.3f} ms | {op * 1e3:.3f} ms | "
                                 f"{100 * (op / sec - 1):+.1f}% |")
    return "\n".join(lines) + "\n"

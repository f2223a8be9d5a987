"""Whole blocks as a training step runs them (``simhete calibrate --shapes-from``, suite ``blocks``).

The op-level suites time one operator at a time, each on inputs of its own. Inside a training step
an operator runs after other work, on activations that were just written, next to tens of MB of
live activations of the blocks before it, and torch runs ops the workload folds into others (on a
CPU ``addmm`` first copies the broadcast bias into its new output; layer norm and dropout allocate;
dropout seeds its generator). On the 2-core development CPU a GPT block's forward summed from the
op-level curves was 17.4 ms against 32.0 ms inside a step (docs/validation.md, 2026-11-22).

This suite measures what an operator profiler of a model measures when it profiles whole layers:
for each scenario given to ``--shapes-from`` (at its ``replay:`` shape when it has one), the
scenario's own model is built with :mod:`simhete.replay.model` — the code the replay runs — with
distinct weights for every block, and whole training steps run: every block's forward in order
with its graph kept (as a training forward keeps its activations until the backward), then every
block's backward in reverse (``torch.autograd.grad`` of the block's output, as the replay's
backward task does). Each block's forward and backward call is timed on its own; a point is one
distinct op sequence (the workload's ``fwd_ops`` or ``bwd_ops`` tuple of a block: the transformer
blocks of a model share one), its samples are all its calls over all timed steps.

The fit keeps each point as ``gpu.blocks``: the cost model prices a task whose ops tuple is exactly
that sequence at the measured time (``simhete.hw.cost.ops_key`` names it), and every other task
from the op-level curves. The same point is priced from those curves in the fit report, so the
report shows how far the op-level model is from the block as it runs. Still a microbenchmark of a
component: one block at a time, no copies, no optimizer and no schedule; never a scenario end to
end. A recomputation runs the same forward and is priced the same.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from simhete.hw.cost import ops_key

from calibrate.common import Ctx, missing, ok
from calibrate.targets import scenario_workload
from calibrate.timing import _stats

NAME = "blocks"
COLUMNS = ("scenario", "block", "pass", "key", "n_ops", "flops", "split")
SEED = 1234


def points(ctx: Ctx) -> list[dict[str, object]]:
    """One point per scenario whose model and shape no earlier scenario has (its rows are the
    distinct op sequences of its blocks); none without ``--shapes-from``."""
    out: list[dict[str, object]] = []
    seen: set[tuple[str, ...]] = set()
    for path in ctx.grid.block_scenarios:
        _, wl = scenario_workload(path, ctx.target.kind)
        keys = tuple(ops_key(ops) for b in wl.blocks for ops in (b.fwd_ops, b.bwd_ops))
        if keys in seen:
            continue
        seen.add(keys)
        out.append({"scenario": path, "split": "scenario"})
    return out


def _sync(ctx: Ctx) -> None:
    if ctx.target.is_cuda:
        torch.cuda.synchronize(ctx.target.device)


def run(ctx: Ctx, p: dict[str, object]) -> list[dict[str, object]]:
    """Rows for every distinct (op sequence, pass) of the scenario's blocks, in block order."""
    from simhete.replay.model import TORCH_DTYPES, Step, batch_of, data, forward, init_master

    path = str(p["scenario"])
    spec, wl = scenario_workload(path, ctx.target.kind)
    dev, dt = ctx.target.device, TORCH_DTYPES[wl.dtype]
    rows: dict[tuple[str, str], dict[str, object]] = {}
    for b in wl.blocks:
        for pas, ops in (("fwd", b.fwd_ops), ("bwd", b.bwd_ops)):
            k = ops_key(ops)
            if (k, pas) not in rows:
                rows[(k, pas)] = {"scenario": Path(path).name, "block": b.name, "pass": pas, "key": k,
                                  "n_ops": len(ops), "flops": int(sum(op.flops for op in ops)),
                                  "split": "scenario"}
    try:
        w = {b.index: {k: v.to(device=dev, dtype=dt, copy=True).requires_grad_()
                       for k, v in init_master(spec, b.name, b.index, SEED).items()}
             for b in wl.blocks}
        embed = next((b.index for b in wl.blocks if b.name == "embed"), None)
        m = ctx.grid.methodology
        steps = max(1, m.warmup // 2) + m.repeats
        tokens = data(spec, steps, wl.micro_batch, wl.seq_len, SEED).to(dev)
        samples: dict[tuple[str, str], list[float]] = {k: [] for k in rows}
        for it in range(1, steps + 1):
            inp, tgt = batch_of(tokens, it, 1)
            graph = []
            x = None
            for b in wl.blocks:
                tied = w.get(embed) if b.name == "head" and spec.tied_embeddings else None
                if x is not None:
                    x = x.detach().requires_grad_()
                _sync(ctx)
                t0 = time.perf_counter()
                y = forward(spec, b.name, w[b.index], x, Step(it, b.index, SEED, inp, tgt), tied)
                _sync(ctx)
                t = time.perf_counter() - t0
                graph.append((b, x, y, t, tied))
                x = y
            g = None
            tf = {}
            for b, xin, y, t, tied in reversed(graph):
                inputs = ([xin] if xin is not None else []) + list(w[b.index].values())
                if tied is not None:
                    inputs.append(tied["wte"])
                _sync(ctx)
                t0 = time.perf_counter()
                grads = torch.autograd.grad(y, inputs, g)
                _sync(ctx)
                tb = time.perf_counter() - t0
                g = grads[0] if xin is not None else None
                tf[b.index] = (t, tb)
            del graph, grads, g
            if it > steps - m.repeats:          # the first steps warm up
                for b in wl.blocks:
                    samples[(ops_key(b.fwd_ops), "fwd")].append(tf[b.index][0])
                    samples[(ops_key(b.bwd_ops), "bwd")].append(tf[b.index][1])
    except (RuntimeError, NotImplementedError) as e:
        why = f"block step failed here ({str(e).splitlines()[0][:80]})"
        return [missing(r, why) for r in rows.values()]
    out = []
    for k, r in rows.items():
        st = _stats(samples[k], 1, False, False)
        out.append(ok(r, _stats(samples[k], 1, False, st.spread > m.noise_threshold)))
    return out


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
        for b in wl.blocks:
            for ops in (b.fwd_ops, b.bwd_ops):
                k = ops_key(ops)
                if k in measured and k not in done:
                    done.add(k)
                    label, sec = measured[k]
                    op = cm.ops_sum_seconds(ops)
                    lines.append(f"| {label} | {sec * 1e3:.3f} ms | {op * 1e3:.3f} ms | "
                                 f"{100 * (op / sec - 1):+.1f}% |")
    return "\n".join(lines) + "\n"

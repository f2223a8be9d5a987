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
with its graph kept (as a training forward keeps its activations until the backward; at most
``STACK`` transformer blocks, which share one op sequence), then every block's backward in reverse (``torch.autograd.grad`` of the block's output, as the replay's
backward task does; each forward under the replay's saved-tensor hooks, :func:`_saving`, whose
unpacking the backward then runs). Each block's forward and backward call is timed on its own, and so is
each block's optimizer step after the backward, as the replay runs it (:func:`simhete.replay.model.adam_step`:
the block's gradients in the training dtype converted to fp32, torch's fused Adam over the block's
fp32 master tensors, then, in mixed precision, the new weights written to their working-precision
copy). A row is one distinct op sequence and pass: the workload's ``fwd_ops`` or ``bwd_ops`` tuple
of a block (the transformer blocks of a model share one), or the one-op tuple a policy gives the
block's step (``ADAM_CPU``/``ADAM_GPU`` of its parameter count; on a CPU device both are the
same step on the same memory and share the measurement); its samples are all its calls over all
timed steps. An optimizer task of the scenario's own schedule that spans several blocks
(ZeRO-Infinity's sub-group step ``ADAM.cpu.s0``: one Adam op over the sub-group's parameters,
plus the 16-bit copy into the weights' host home) is its own row: its blocks' steps run one after
another and are timed as one call, as the replay runs that task (a transformer block beyond the
stack stands in by one of the stack with the same op sequence). Every optimizer call is timed **cold**:
a buffer of twice the last-level cache is written (untimed) before it, as a whole iteration of
forward and backward runs between two steps of a block in training (on the development VM the
sub-group step of the small LLaMA took 7.3–8.3 ms warm, 8.7–10.2 ms cold, and 13–19 ms inside the
replay, 2026-11-22 06:17 UTC). A scenario whose steps would not fit in free memory, or would take longer than
``BUDGET_S`` at the device's GEMM rate, is recorded as missing (a 13B block at its training shape
on a CPU), never run.

The fit keeps each point as ``gpu.blocks``: the cost model prices a task whose ops tuple is exactly
that sequence at the measured time (``simhete.hw.cost.ops_key`` names it), and every other task
from the op-level curves. The same point is priced from those curves in the fit report, so the
report shows how far the op-level model is from the block as it runs. Still a microbenchmark of a
component: one block at a time, on one stream, with no copies, no other stream running and no
schedule; never a scenario end to end. A recomputation runs the same forward and is priced the same.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from simhete.hw.cost import ops_key

from calibrate.common import Ctx, missing, ok
from calibrate.copies import RING_LLC
from calibrate.targets import optim_ops as _optim_ops
from calibrate.targets import optimizer_groups, scenario_workload
from calibrate.timing import _stats

NAME = "blocks"
COLUMNS = ("scenario", "block", "pass", "key", "n_ops", "flops", "split")
SEED = 1234
STACK = 4          # transformer blocks per step at most (they share one op sequence): enough for
                   # the blocks before one to keep activations alive, without a 40-layer model
BUDGET_S = 120.0   # at most this long estimated for one scenario's steps, else refused (a 13B block
                   # at its training shape on a CPU would take hours)


def _stack(wl):  # type: ignore[no-untyped-def]
    """The blocks one step runs: embedding, the first STACK transformer blocks, the head."""
    blocks = [b for b in wl.blocks if b.name in ("embed", "head")]
    body = [b for b in wl.blocks if b.name not in ("embed", "head")][:STACK]
    return [b for b in wl.blocks if b in blocks or b in body]


def _saving(weights: list[torch.Tensor]):  # type: ignore[no-untyped-def]
    """(pack, unpack) saved-tensor hooks that do what the replay's do around a forward
    (``saving``, simhete/replay/compute.py): a saved weight is kept as a reference to its
    leaf (looked up by storage) and re-viewed from it in the backward, anything else is appended
    to the block's list of saved activations (which the replay swaps and counts). Autograd calls
    them once per saved tensor, from C++ into Python: on the development CPU a LLaMA block's
    forward took 9.9 ms with them and 9.2 ms without, its backward 38.4 and 35.7 ms (2026-11-22)."""
    leaves = {v.untyped_storage().data_ptr(): v for v in weights}
    saved: list[torch.Tensor] = []

    def pack(x: torch.Tensor) -> object:
        leaf = leaves.get(x.untyped_storage().data_ptr())
        if leaf is not None:
            return ("w", leaf, x.size(), x.stride(), x.storage_offset())
        saved.append(x)
        return ("a", len(saved) - 1)

    def unpack(p: tuple) -> torch.Tensor:
        return p[1].as_strided(p[2], p[3], p[4]) if p[0] == "w" else saved[p[1]]

    return pack, unpack


def _representatives(wl, stack) -> dict[int, int]:  # type: ignore[no-untyped-def]
    """Block index -> the block of the stack that stands in for it: itself, or the stack's
    transformer block with the same forward op sequence and parameter count."""
    by = {(ops_key(b.fwd_ops), b.params): b.index for b in stack}
    return {b.index: by[(ops_key(b.fwd_ops), b.params)] for b in wl.blocks
            if (ops_key(b.fwd_ops), b.params) in by}


def _steps(ctx: Ctx, opt: dict, grads: dict, home: str, blocks: list[int], evict: torch.Tensor) -> float:
    """Seconds of the optimizer steps of ``blocks`` one after another, each as the replay runs it
    (:func:`simhete.replay.model.adam_step`, then the working-precision copy of the new weights),
    with their states out of the cache first: ``evict`` (twice the last-level cache) is written,
    untimed, as a training iteration's traffic does between two steps of a block."""
    from simhete.replay.model import adam_step

    evict.add_(1.0)
    work = []
    for i in blocks:
        master, o, back = opt[(home, i)]
        where = next(iter(master.values())).device
        work.append((master, o, back, {k: v.to(where) for k, v in grads[i].items()}))
    _sync(ctx)
    t0 = time.perf_counter()
    for master, o, back, gr in work:
        adam_step(master, o, gr)
        if back is not None:
            with torch.no_grad():
                for k, v in back.items():
                    v.copy_(master[k])
    _sync(ctx)
    return time.perf_counter() - t0


def _too_big(ctx: Ctx, wl, steps: int) -> str | None:  # type: ignore[no-untyped-def]
    """Why the scenario's steps cannot run here (memory, or estimated time), or None."""
    from simhete.hostinfo import mem_available_bytes

    stack = _stack(wl)
    # working weights, gradients, saved activations, workspace, fp32 master and Adam states on the
    # device (workload/memory.py's byte counts)
    need = sum(b.weight_bytes + b.grad_bytes + b.act_bytes + b.workspace_bytes + 4 * b.params
               + b.optim_bytes for b in stack)
    if not ctx.target.is_cuda:
        need += RING_LLC * ctx.llc          # the optimizer steps' cache-evicting buffer (host)
    free = (torch.cuda.mem_get_info(ctx.target.device)[0] if ctx.target.is_cuda
            else mem_available_bytes())
    if need > 0.8 * free:
        return f"needs about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free here"
    flops = sum(b.fwd_flops + b.bwd_flops for b in stack) * steps
    n = 1024 if ctx.target.is_cuda else 512
    a = torch.randn(n, n, device=ctx.target.device)
    _sync(ctx)
    t0 = time.perf_counter()
    for _ in range(3):
        a @ a
    _sync(ctx)
    rate = 3 * 2 * n ** 3 / max(time.perf_counter() - t0, 1e-9)
    if flops / rate > BUDGET_S:
        return (f"{flops / 1e12:.1f} TFLOP of steps, about {flops / rate:.0f} s at this device's "
                f"fp32 GEMM rate (budget {BUDGET_S:.0f} s)")
    return None


def points(ctx: Ctx) -> list[dict[str, object]]:
    """One point per scenario whose model and shape, and sub-group optimizer steps, no earlier
    scenario has (its rows are the distinct op sequences of its blocks and of those steps); none
    without ``--shapes-from``."""
    out: list[dict[str, object]] = []
    seen: set[tuple[str, ...]] = set()
    for path in ctx.grid.block_scenarios:
        _, wl = scenario_workload(path, ctx.target.kind)
        keys = tuple(ops_key(ops) for b in wl.blocks for ops in (b.fwd_ops, b.bwd_ops)) + tuple(
            ops_key(ops) for _, ops, _, _ in optimizer_groups(path))
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
    from simhete.replay.model import (TORCH_DTYPES, Step, adam, batch_of, data, forward,
                                      init_master)

    path = p["scenario"]            # a file, or a loaded Scenario (simhete validate --fresh-blocks)
    spec, wl = scenario_workload(path, ctx.target.kind)
    label = Path(str(getattr(path, "file", None) or getattr(path, "name", path))).name
    dev, dt = ctx.target.device, TORCH_DTYPES[wl.dtype]
    rows: dict[tuple[str, str], dict[str, object]] = {}
    for b in wl.blocks:
        for pas, ops in (("fwd", b.fwd_ops), ("bwd", b.bwd_ops), *_optim_ops(b)):
            k = ops_key(ops)
            if (k, pas) not in rows:
                rows[(k, pas)] = {"scenario": label, "block": b.name, "pass": pas, "key": k,
                                  "n_ops": len(ops), "flops": int(sum(op.flops for op in ops)),
                                  "split": "scenario"}
    groups = optimizer_groups(path)
    for pas, ops, grp, name in groups:
        k = ops_key(ops)
        if (k, pas) not in rows:
            rows[(k, pas)] = {"scenario": label, "block": name, "pass": pas, "key": k,
                              "n_ops": len(ops), "flops": int(sum(op.flops for op in ops)),
                              "split": "scenario"}
    m = ctx.grid.methodology
    steps = max(1, m.warmup // 2) + m.repeats
    samples: dict[tuple[str, str], list[float]] = {k: [] for k in rows}
    why = _too_big(ctx, wl, steps)
    if why is not None:
        return [missing(r, f"too large to run whole here: {why}") for r in rows.values()]
    stack = _stack(wl)
    keys = {b.index: (ops_key(b.fwd_ops), ops_key(b.bwd_ops)) for b in stack}
    rep = _representatives(wl, stack)
    try:
        init = {b.index: init_master(spec, b.name, b.index, SEED) for b in stack}
        w = {i: {k: v.to(device=dev, dtype=dt, copy=True).requires_grad_() for k, v in ws.items()}
             for i, ws in init.items()}
        # the optimizer's fp32 master weights: on the host for ADAM_CPU, on the device for
        # ADAM_GPU (one and the same memory on a CPU device: measured once, priced for both)
        homes = {"optim_cpu": torch.device("cpu")}
        if ctx.target.is_cuda:
            homes["optim_gpu"] = dev
        opt = {}
        for pas, where in homes.items():
            for i, ws in init.items():
                if ws:
                    ms = {k: v.to(where, copy=True) for k, v in ws.items()}
                    # mixed precision: the step also writes the working-precision copy of the new
                    # weights beside the master (the replay: the host copy, or the device weights)
                    back = {k: v.to(where, dt) for k, v in ws.items()} if dt != torch.float32 else None
                    opt[(pas, i)] = (ms, adam(list(ms.values()), 1e-4), back)
        evict = torch.ones(max(1, RING_LLC * ctx.llc // 4))   # host memory: what Adam's states use
        embed = next((b.index for b in stack if b.name == "embed"), None)
        tokens = data(spec, steps, wl.micro_batch, wl.seq_len, SEED).to(dev)
        for it in range(1, steps + 1):
            keep = it > steps - m.repeats          # the first steps warm up
            inp, tgt = batch_of(tokens, it, 1)
            graph = []
            x = None
            for b in stack:
                tied = w.get(embed) if b.name == "head" and spec.tied_embeddings else None
                if x is not None:
                    x = x.detach().requires_grad_()
                hooks = _saving([*w[b.index].values(), *(tied or {}).values()])
                _sync(ctx)
                t0 = time.perf_counter()
                with torch.autograd.graph.saved_tensors_hooks(*hooks):
                    y = forward(spec, b.name, w[b.index], x, Step(it, b.index, SEED, inp, tgt), tied)
                _sync(ctx)
                t = time.perf_counter() - t0      # read before the key is hashed: not timed
                if keep:
                    samples[(keys[b.index][0], "fwd")].append(t)
                graph.append((b, x, y, tied))
                x = y
            g = None
            grads = {}
            for b, xin, y, tied in reversed(graph):
                inputs = ([xin] if xin is not None else []) + list(w[b.index].values())
                if tied is not None:
                    inputs.append(tied["wte"])
                _sync(ctx)
                t0 = time.perf_counter()
                out = torch.autograd.grad(y, inputs, g)
                _sync(ctx)
                t = time.perf_counter() - t0
                if keep:
                    samples[(keys[b.index][1], "bwd")].append(t)
                g = out[0] if xin is not None else None
                grads[b.index] = dict(zip(w[b.index], out[1 if xin is not None else 0:]))
            del graph, out, g
            for b in stack:
                for pas, ops in _optim_ops(b):
                    if (pas, b.index) not in opt:
                        continue
                    t = _steps(ctx, opt, grads, pas, [b.index], evict)
                    if keep:
                        samples[(ops_key(ops), pas)].append(t)
                        if not ctx.target.is_cuda:   # a CPU device: ADAM_GPU is the same step
                            samples[(ops_key(_optim_ops(b)[1][1]), "optim_gpu")].append(t)
            for pas, ops, grp, _ in groups:          # a sub-group's step: its blocks' steps in turn
                home = pas if ctx.target.is_cuda else "optim_cpu"
                reps = [rep.get(i) for i in grp]
                if keep and all(r is not None and (home, r) in opt for r in reps):
                    samples[(ops_key(ops), pas)].append(_steps(ctx, opt, grads, home, reps, evict))
    except (RuntimeError, NotImplementedError) as e:
        why = f"block step failed here ({str(e).splitlines()[0][:80]})"
        return [missing(r, why) for r in rows.values()]
    out_rows = []
    for k, r in rows.items():
        if not samples[k]:     # a block beyond the stack whose op sequence no block in it has
            out_rows.append(missing(r, f"not among the {STACK} transformer blocks measured"))
            continue
        st = _stats(samples[k], 1, False, False)
        out_rows.append(ok(r, _stats(samples[k], 1, False, st.spread > m.noise_threshold)))
    return out_rows

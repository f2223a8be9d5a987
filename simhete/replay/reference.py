"""The plain training loop the replay is checked against: the same blocks, weights, data, dropout
masks and optimizer, everything in device memory, one autograd graph per iteration, no schedule.

Mixed precision as the replay does it: working-precision weights for forward and backward, fp32
master weights updated by Adam and cast back (with fp32 the working weights are the master).
"""

from __future__ import annotations

import torch

from simhete.replay.model import TORCH_DTYPES, Step, adam, data, forward, init_master


def reference_losses(workload, iterations: int, *, seed: int = 0, lr: float = 1e-2,
                     device: str | torch.device = "cpu", threads: int | None = None) -> list[float]:
    """Losses per iteration. ``threads``: intra-op threads to run with (the replay's, so CPU
    reductions split the same way); unset keeps torch's setting."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(workload, iterations, seed, lr, torch.device(device))
    finally:
        torch.set_num_threads(before)


def _train(workload, iterations: int, seed: int, lr: float, dev: torch.device) -> list[float]:
    spec = workload.spec
    dtype = TORCH_DTYPES[workload.dtype]
    blocks = [b for b in workload.blocks if b.params]
    master = {b.index: {k: v.to(dev) for k, v in init_master(spec, b.name, b.index, seed).items()}
              for b in blocks}
    if dtype == torch.float32:
        work = {i: {k: v.requires_grad_() for k, v in m.items()} for i, m in master.items()}
    else:
        work = {i: {k: v.to(dtype).requires_grad_() for k, v in m.items()} for i, m in master.items()}
    opts = {i: adam(list(m.values()), lr) for i, m in master.items()}
    tokens = data(spec, iterations, workload.micro_batch, workload.seq_len, seed).to(dev)
    embed = next((b.index for b in workload.blocks if b.name == "embed"), None)
    losses = []
    for it in range(1, iterations + 1):
        toks = tokens[it - 1]
        x = None
        for b in workload.blocks:
            tied = work.get(embed) if b.name == "head" and spec.tied_embeddings else None
            x = forward(spec, b.name, work.get(b.index, {}), x, Step(it, b.index, seed, toks[:, :-1], toks[:, 1:]),
                        tied)
        x.backward()
        losses.append(float(x.detach()))
        with torch.no_grad():
            for i, m in master.items():
                for k, p in m.items():
                    g = work[i][k].grad
                    work[i][k].grad = None
                    p.grad = g.to(torch.float32)
                opts[i].step()
                for k, p in m.items():
                    p.grad = None
                    if work[i][k] is not p:
                        work[i][k].copy_(p)
    return losses

"""The plain training loop the replay is checked against: the same blocks, weights, data, dropout
masks and optimizer, everything in device memory, one autograd graph per micro-step, no schedule.

Mixed precision as the replay does it: working-precision weights for forward and backward, fp32
master weights updated by Adam and cast back (with fp32 the working weights are the master).

Gradient accumulation (``grad_accum`` = k micro-steps per iteration) as PyTorch and DeepSpeed do
it: each micro-step's backward starts from its loss divided by k and adds into the parameters'
``.grad`` (autograd accumulates into an existing ``.grad``); one optimizer step follows the k-th.
"""

from __future__ import annotations

import torch

from simhete.replay.model import (TORCH_DTYPES, Step, adam, batch_of, data, forward, init_master,
                                  iteration_loss, scale_loss)


def reference_losses(workload, iterations: int, *, seed: int = 0, lr: float = 1e-2,
                     device: str | torch.device = "cpu", threads: int | None = None,
                     grad_accum: int = 1) -> list[float]:
    """Losses per iteration (with ``grad_accum`` > 1 the mean over its micro-steps).
    ``threads``: intra-op threads to run with (the replay's, so CPU reductions split the same
    way); unset keeps torch's setting."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(workload, iterations, seed, lr, torch.device(device), grad_accum)
    finally:
        torch.set_num_threads(before)


def _train(workload, iterations: int, seed: int, lr: float, dev: torch.device, k: int) -> list[float]:
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
    tokens = data(spec, iterations, workload.micro_batch, workload.seq_len, seed, k).to(dev)
    embed = next((b.index for b in workload.blocks if b.name == "embed"), None)
    losses = []
    for it in range(1, iterations + 1):
        scaled = []
        for m in range(1, k + 1):
            inp, tgt = batch_of(tokens, it, m)
            x = None
            for b in workload.blocks:
                tied = work.get(embed) if b.name == "head" and spec.tied_embeddings else None
                x = forward(spec, b.name, work.get(b.index, {}), x, Step(it, b.index, seed, inp, tgt, m), tied)
            loss = scale_loss(x, k)
            loss.backward()
            scaled.append(float(loss.detach()))
        losses.append(iteration_loss(scaled))
        with torch.no_grad():
            for i, m in master.items():
                for name, p in m.items():
                    g = work[i][name].grad
                    work[i][name].grad = None
                    p.grad = g.to(torch.float32)
                opts[i].step()
                for name, p in m.items():
                    p.grad = None
                    if work[i][name] is not p:
                        work[i][name].copy_(p)
    return losses

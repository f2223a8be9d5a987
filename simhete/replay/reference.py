"""The plain training loop the replay is checked against: the same blocks, weights, data, dropout
masks and optimizer, everything in device memory, one autograd graph per micro-step, no schedule.

Mixed precision as the replay does it: working-precision weights for forward and backward, fp32
master weights updated by Adam and cast back (with fp32 the working weights are the master).

Gradient accumulation (``grad_accum`` = k micro-steps per iteration) as PyTorch and DeepSpeed do
it: each micro-step's backward starts from its loss divided by k and adds into the parameters'
``.grad`` (autograd accumulates into an existing ``.grad``); one optimizer step follows the k-th.

Delayed parameter update (``delayed_update``, ZeRO-Offload's DPU, as the ``zero-offload`` policy
schedules it and the schedule's ``meta["delayed_update"] == "true"`` says): iteration k computes
its gradients with the current weights, then applies the step of iteration k−1 (Adam with
iteration k−1's gradients), and keeps its own gradients pending; iteration 1 applies none. So
iterations 1 and 2 both compute with the initial weights and iteration k ≥ 3 with the weights
after steps 1 … k−2 — in the schedule, iteration k's first forward waits for the weight refresh
(``H2D.w``) of iteration k−2 and for none of iteration k−1, and each step of iteration k reads its
own gradients (stale by one step when it is applied). The schedule runs a step in every
iteration, the last one's included (``it<N>.ADAM.cpu`` and ``it<N>.H2D.w`` exist), so after the
last iteration the pending step N is applied too: the final weights and Adam states are those
after N steps, as without DPU; only the losses differ (from iteration 2 on).
"""

from __future__ import annotations

import torch

from simhete.replay.model import (TORCH_DTYPES, Step, adam, batch_of, data, forward, init_master,
                                  iteration_loss, scale_loss)


def reference_losses(workload, iterations: int, *, seed: int = 0, lr: float = 1e-2,
                     device: str | torch.device = "cpu", threads: int | None = None,
                     grad_accum: int = 1, delayed_update: bool = False) -> list[float]:
    """Losses per iteration (with ``grad_accum`` > 1 the mean over its micro-steps).
    ``threads``: intra-op threads to run with (the replay's, so CPU reductions split the same
    way); unset keeps torch's setting. ``delayed_update``: DPU (module docstring)."""
    return reference_run(workload, iterations, seed=seed, lr=lr, device=device, threads=threads,
                         grad_accum=grad_accum, delayed_update=delayed_update)[0]


def reference_run(workload, iterations: int, *, seed: int = 0, lr: float = 1e-2,
                  device: str | torch.device = "cpu", threads: int | None = None,
                  grad_accum: int = 1, delayed_update: bool = False
                  ) -> tuple[list[float], dict[int, dict[str, torch.Tensor]]]:
    """:func:`reference_losses` and the fp32 master weights per block index after the run."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(workload, iterations, seed, lr, torch.device(device), grad_accum, delayed_update)
    finally:
        torch.set_num_threads(before)


def _train(workload, iterations: int, seed: int, lr: float, dev: torch.device, k: int,
           delayed: bool) -> tuple[list[float], dict[int, dict[str, torch.Tensor]]]:
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
    pending = None   # DPU: the previous iteration's gradients, not yet applied
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
        grads = {}
        for i, m in master.items():
            grads[i] = {}
            for name in m:
                grads[i][name] = work[i][name].grad.detach().to(torch.float32)
                work[i][name].grad = None
        if not delayed:
            _step(master, work, opts, grads)
        else:   # apply iteration it−1's step now, keep this iteration's gradients for the next
            if pending is not None:
                _step(master, work, opts, pending)
            pending = grads
    if delayed and pending is not None:   # the last iteration's step runs in the schedule too
        _step(master, work, opts, pending)
    return losses, master


def _step(master, work, opts, grads) -> None:
    """One Adam step of every block with ``grads``, then the working copies refreshed."""
    with torch.no_grad():
        for i, m in master.items():
            for name, p in m.items():
                p.grad = grads[i][name]
            opts[i].step()
            for name, p in m.items():
                p.grad = None
                if work[i][name] is not p:
                    work[i][name].copy_(p)

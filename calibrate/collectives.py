"""GPU↔GPU: peer copies and NCCL all-reduce / reduce-scatter / all-gather, only with ≥ 2 GPUs.

Peer copies run in this process (cuda:0 → cuda:1, timed on the host clock after synchronising
both devices). Collectives run one process per GPU (torch.multiprocessing, NCCL over localhost);
rank 0 reports the median over repeats, each repeat fenced by a barrier and a synchronisation.
``bytes`` is the full tensor per rank (simhete.opkinds convention).
"""

from __future__ import annotations

import socket
import time

import numpy as np
import torch

from calibrate.common import Ctx, missing, ok, rand, seed
from calibrate.timing import Methodology, Stat, measure

NAME = "collectives"
COLUMNS = ("op", "ranks", "bytes", "split")
OPS = ("peer_copy", "all_reduce", "reduce_scatter", "all_gather")


def points(ctx: Ctx) -> list[dict[str, object]]:
    ranks = max(ctx.target.gpu_count, 1)
    return [{"op": op, "ranks": ranks, "bytes": b, "split": "fit" if i % 2 == 0 else "holdout"}
            for op in OPS for i, b in enumerate(ctx.grid.coll_bytes)]


def run(ctx: Ctx, p: dict[str, object]) -> dict[str, object]:
    if ctx.target.gpu_count < 2:
        return missing(p, f"needs 2 GPUs (found {ctx.target.gpu_count})")
    seed()
    n = int(p["bytes"]) // 4
    if p["op"] == "peer_copy":
        d0, d1 = torch.device("cuda", 0), torch.device("cuda", 1)
        src, dst = rand(n, torch.float32, d0), torch.empty(n, device=d1)

        def fn() -> None:
            dst.copy_(src)
            torch.cuda.synchronize(d0)
            torch.cuda.synchronize(d1)
        return ok(p, measure(fn, ctx.grid.methodology, None))
    stat = _spawn(str(p["op"]), int(p["ranks"]), n, ctx.grid.methodology)
    return ok(p, stat)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(op: str, ranks: int, n: int, m: Methodology) -> Stat:
    import torch.multiprocessing as mp
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, ranks, port, op, n, m, q)) for r in range(ranks)]
    for pr in procs:
        pr.start()
    stat = q.get()
    for pr in procs:
        pr.join()
    if isinstance(stat, str):
        raise RuntimeError(stat)
    return stat


def _worker(rank: int, ranks: int, port: int, op: str, n: int, m: Methodology, q) -> None:
    import torch.distributed as dist
    try:
        dev = torch.device("cuda", rank)
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=ranks)
        seed()
        x = rand(n, torch.float32, dev)
        if op == "all_reduce":
            fn = lambda: dist.all_reduce(x)  # noqa: E731
        elif op == "reduce_scatter":
            out = torch.empty(n // ranks, device=dev)
            fn = lambda: dist.reduce_scatter_tensor(out, x)  # noqa: E731
        else:
            out = torch.empty(n * ranks, device=dev)
            x = rand(n // ranks, torch.float32, dev)  # each rank contributes 1/ranks of the tensor
            fn = lambda: dist.all_gather_into_tensor(out, x)  # noqa: E731
        times = []
        for i in range(m.warmup + m.repeats):
            dist.barrier()
            torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize(dev)
            if i >= m.warmup:
                times.append(time.perf_counter() - t0)
        if rank == 0:
            a = np.asarray(times)
            q1, med, q3 = np.percentile(a, [25, 50, 75])
            spread = (q3 - q1) / med
            q.put(Stat(float(med), float(q1), float(q3), float(a.min()), float(a.max()), len(a), 1,
                       False, bool(spread > m.noise_threshold)))
        dist.destroy_process_group()
    except Exception as e:  # report to the parent instead of hanging it
        if rank == 0:
            q.put(f"{op} on {ranks} ranks failed: {e}")
        raise

"""Host↔device copies and host memory bandwidth.

Rows (``kind``, ``memory``): ``h2d``/``d2h`` × ``pinned``/``pageable`` (one direction, on the copy
engine via ``copy_(non_blocking=True)`` for pinned memory); ``duplex``/``pinned`` (an H2D and a D2H
of the same size at once, on two streams; time until both finish); ``memcpy``/``host`` (host to
host ``copy_``); ``duplex``/``host`` (two host memcpys at once on two threads); ``stream_add``/
``host`` (STREAM "add" on host fp32 tensors, 3·n·4 bytes: host DRAM bandwidth).

On a CPU device there is no copy engine and no pinned memory: H2D and D2H are host memcpy, and the
h2d/d2h rows are recorded as missing with that reason.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from calibrate.common import Ctx, missing, ok, rand, seed
from calibrate.timing import measure

NAME = "copy"
COLUMNS = ("kind", "memory", "bytes", "split")
_CPU = torch.device("cpu")


def points(ctx: Ctx) -> list[dict[str, object]]:
    g = ctx.grid
    out: list[dict[str, object]] = []
    sweeps = [("h2d", "pinned"), ("h2d", "pageable"), ("d2h", "pinned"), ("d2h", "pageable"),
              ("memcpy", "host"), ("stream_add", "host")]
    for kind, mem in sweeps:
        if not ctx.target.is_cuda and kind in ("h2d", "d2h"):
            out.append({"kind": kind, "memory": mem, "bytes": "", "split": ""})
            continue
        out += [{"kind": kind, "memory": mem, "bytes": b, "split": "fit" if i % 2 == 0 else "holdout"}
                for i, b in enumerate(g.copy_bytes)]
    dmem = "pinned" if ctx.target.is_cuda else "host"
    out += [{"kind": "duplex", "memory": dmem, "bytes": b, "split": "fit"} for b in g.duplex_bytes]
    return out


def run(ctx: Ctx, p: dict[str, object]) -> dict[str, object]:
    kind, mem = p["kind"], p["memory"]
    if p["bytes"] == "":
        return missing(p, "not applicable: the device is the CPU (no copy engine, no pinned "
                          "memory); H2D/D2H there are host memcpy, see kind=memcpy")
    n = int(p["bytes"]) // 4
    seed()
    meth, dev = ctx.grid.methodology, ctx.target.device
    pin = mem == "pinned"
    try:
        if kind == "h2d":
            src, dst = rand(n, torch.float32, _CPU, pin), torch.empty(n, device=dev)
            return ok(p, measure(lambda: dst.copy_(src, non_blocking=pin), meth, ctx.cuda))
        if kind == "d2h":
            src = rand(n, torch.float32, dev)
            dst = torch.empty(n, pin_memory=pin)
            return ok(p, measure(lambda: dst.copy_(src, non_blocking=pin), meth, ctx.cuda))
        if kind == "duplex" and mem == "pinned":
            return ok(p, measure(_duplex_cuda(n, dev), meth, ctx.cuda))
        if kind == "duplex":
            return _duplex_host(ctx, p, n)
        if kind == "stream_add":
            a, b = rand(n, torch.float32, _CPU), rand(n, torch.float32, _CPU)
            c = torch.empty(n)
            return ok(p, measure(lambda: torch.add(a, b, out=c), meth, None))
        src, dst = rand(n, torch.float32, _CPU), torch.empty(n)
        return ok(p, measure(lambda: dst.copy_(src), meth, None))
    except RuntimeError as e:  # pinning can fail (limit reached); record it, never invent
        return missing(p, f"copy failed: {str(e).splitlines()[0][:100]}")


def _duplex_cuda(n: int, dev: torch.device):
    """An H2D on one stream and a D2H on another, both pinned; the current stream waits for both."""
    h_src, d_dst = rand(n, torch.float32, _CPU, True), torch.empty(n, device=dev)
    d_src, h_dst = rand(n, torch.float32, dev), torch.empty(n, pin_memory=True)
    s1, s2 = torch.cuda.Stream(dev), torch.cuda.Stream(dev)

    def fn() -> None:
        cur = torch.cuda.current_stream(dev)
        s1.wait_stream(cur)
        s2.wait_stream(cur)
        with torch.cuda.stream(s1):
            d_dst.copy_(h_src, non_blocking=True)
        with torch.cuda.stream(s2):
            h_dst.copy_(d_src, non_blocking=True)
        cur.wait_stream(s1)
        cur.wait_stream(s2)
    return fn


def _duplex_host(ctx: Ctx, p: dict[str, object], n: int) -> dict[str, object]:
    """Two host memcpys of ``n`` floats at once on two threads (torch releases the GIL in copy_)."""
    pairs = [(rand(n, torch.float32, _CPU), torch.empty(n)) for _ in range(2)]
    with ThreadPoolExecutor(max_workers=2, initializer=torch.set_num_threads,
                            initargs=(ctx.threads,)) as pool:
        def fn() -> None:
            futs = [pool.submit(d.copy_, s) for s, d in pairs]
            for f in futs:
                f.result()
        return ok(p, measure(fn, ctx.grid.methodology, None))

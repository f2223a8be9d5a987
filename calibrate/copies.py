"""Host↔device copies and host memory bandwidth.

Rows (``kind``, ``memory``): ``h2d``/``d2h`` × ``pinned``/``pageable`` (one direction, on the copy
engine via ``copy_(non_blocking=True)`` for pinned memory); ``duplex``/``pinned`` (an H2D and a D2H
of the same size at once, on two streams; time until both finish); ``memcpy``/``host`` (host to
host ``copy_``); ``duplex``/``host`` (two host memcpys at once on two threads); ``stream_add``/
``host`` (STREAM "add" on host fp32 tensors, 3·n·4 bytes: host DRAM bandwidth).

On a CPU device there is no copy engine and no pinned memory: H2D and D2H are host memcpy, and the
h2d/d2h rows are recorded as missing with that reason.

**Host copies are timed cold, as a training step finds their data.** A copy in a step moves a
tensor written long before (an activation swapped out after later blocks ran, a gradient, host
weights) into memory not touched since, and the copying thread has just woken from waiting on
another stream. Copying one buffer pair over and over times it from the cache instead: on the
development VM (2 MiB L2 per core, 105 MiB shared L3) a 5.1 MiB bf16 copy took 0.63 ms back to
back, 1.57 ms after writing 64 MiB of other memory, 1.65 ms after a 2 ms sleep, and 2.4–3.0 ms as
the replay's swap-out of a LLaMA block's activations (a 1.6 MiB copy: 0.20 / 0.53 / 0.46 ms, and
0.45–0.55 ms replayed; a source just written by another thread: 0.47 ms; 2026-11-22 06:15 UTC).
So the host-to-host rows (``memcpy``, and ``duplex`` on a CPU target) copy from a **ring** of
source/destination pairs (:class:`Ring`) that spans at least ``RING_LLC`` × the last-level cache,
each call the next pair, whose source a second thread rewrites just before the call (untimed), as
the stream that produced the data would; its destination was last touched a ring round ago.
``stream_add`` keeps its single buffers (STREAM's arrays are sized past the cache instead). The h2d/d2h rows of a GPU keep theirs too: the copy engine reads and writes host memory
by DMA, not through the copying core's cache.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch

from calibrate.common import Ctx, missing, ok, rand, seed
from calibrate.timing import measure

NAME = "copy"
COLUMNS = ("kind", "memory", "bytes", "split")
_CPU = torch.device("cpu")
RING_LLC = 2        # a ring round spans at least this many last-level caches
MAX_SETS = 4096     # pairs per ring at most (tiny copies: bounded Python set-up)


class Ring:
    """``sets`` source/destination pairs of ``n`` floats, views into one source and one destination
    region of at least ``span`` bytes each (module docstring). :meth:`produce` (untimed) has
    ``producer``, another thread, write the next pair's source, as the stream that made the data
    would; :meth:`copy` (timed) copies that pair on the calling thread and moves on."""

    def __init__(self, n: int, span: int, producer: ThreadPoolExecutor | None = None) -> None:
        self.sets = max(2, min(MAX_SETS, math.ceil(span / (4 * n))))
        stride = max(n, math.ceil(span / 4 / self.sets))
        # the destination written once first: the copies then find mapped pages, as a training
        # step's allocator hands out reused memory (first-touch page faults are not a copy's cost)
        src, dst = rand(stride * self.sets, torch.float32, _CPU), torch.ones(stride * self.sets)
        self.pairs = [(dst[k * stride:k * stride + n], src[k * stride:k * stride + n])
                      for k in range(self.sets)]
        self.k = 0
        self.producer = producer

    def produce(self) -> None:
        assert self.producer is not None, "Ring.produce needs a producer thread"
        self.producer.submit(self.pairs[self.k][1].add_, 1.0).result()

    def copy(self) -> None:
        d, s = self.pairs[self.k]
        self.k = (self.k + 1) % self.sets
        d.copy_(s)


def _producer(ctx: Ctx) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, initializer=torch.set_num_threads,
                              initargs=(ctx.threads,))


def ring_note(llc: int) -> str:
    """The raw file's header line for the host copies' ring (the methodology, with this LLC)."""
    return (f"host memcpy and duplex rows copy from a ring of source/destination pairs spanning >= "
            f"{RING_LLC}x the last-level cache ({llc} B), at most {MAX_SETS} pairs, each call the "
            "next pair, its source written just before (untimed) by another thread, as a training "
            "step's copies find their data; stream_add rows do not")


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
        if kind == "memcpy":
            with _producer(ctx) as producer:
                ring = Ring(n, RING_LLC * ctx.llc, producer)
                return ok(p, measure(ring.copy, meth, None, before=ring.produce))
        if kind == "stream_add":
            a, b = rand(n, torch.float32, _CPU), rand(n, torch.float32, _CPU)
            c = torch.empty(n)
            return ok(p, measure(lambda: torch.add(a, b, out=c), meth, None))
        raise AssertionError(f"copy suite: no measurement for kind {kind!r}")
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
    """Two host memcpys of ``n`` floats at once on two threads (torch releases the GIL in copy_),
    each from its own cold ring."""
    with ThreadPoolExecutor(max_workers=2, initializer=torch.set_num_threads,
                            initargs=(ctx.threads,)) as pool, _producer(ctx) as producer:
        rings = [Ring(n, RING_LLC * ctx.llc, producer) for _ in range(2)]

        def fn() -> None:
            futs = [pool.submit(r.copy) for r in rings]
            for f in futs:
                f.result()

        def before() -> None:
            for r in rings:
                r.produce()
        return ok(p, measure(fn, ctx.grid.methodology, None, before=before))

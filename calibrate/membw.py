"""Memory-bound ops on the device → achievable bandwidth per op kind and per-op overhead.

Bytes counted are the tensor bytes each op must read and write once (its minimum DRAM/HBM
traffic): ``add``/``mul`` read two operands and write one (3·n·elem); ``layernorm``, ``rmsnorm``
and ``softmax`` read one row-major (rows, hidden) input and write one output (2·n·elem; the
hidden-sized weights are negligible). Same accounting as the STREAM benchmark's "add" kernel.
``embedding`` gathers ``rows`` rows of a (2·rows, hidden) table by int64 index: it reads the
indices and the gathered rows and writes them (8·rows + 2·n·elem), the accounting of
simhete/workload/ops.py for OpKind.EMBED. Op → OpKind: :data:`KINDS`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from calibrate.common import TORCH_DTYPES, Ctx, ok, rand, seed
from calibrate.timing import measure

NAME = "membw"
COLUMNS = ("op", "dtype", "elems", "bytes", "split")
OPS = ("add", "mul", "layernorm", "rmsnorm", "softmax", "embedding")
_TENSORS = {"add": 3, "mul": 3, "layernorm": 2, "rmsnorm": 2, "softmax": 2,
            "embedding": 2}  # read + written
INDEX_BYTES = 8  # int64 index per gathered row (embedding)


def _rows(n: int, hidden: int) -> int:
    return max(1, n // hidden)


def points(ctx: Ctx) -> list[dict[str, object]]:
    g = ctx.grid
    es = torch.finfo(TORCH_DTYPES[g.mem_dtype]).bits // 8
    return [{"op": op, "dtype": g.mem_dtype, "elems": n,
             "bytes": _TENSORS[op] * n * es + (INDEX_BYTES * _rows(n, g.mem_hidden)
                                               if op == "embedding" else 0),
             "split": "fit" if i % 2 == 0 else "holdout"}
            for op in OPS for i, n in enumerate(g.mem_elems)]


def run(ctx: Ctx, p: dict[str, object]) -> dict[str, object]:
    dev, dt = ctx.target.device, TORCH_DTYPES[str(p["dtype"])]
    n, hidden = int(p["elems"]), ctx.grid.mem_hidden
    rows = _rows(n, hidden)
    seed()
    x = rand((rows, n // rows), dt, dev)
    y = rand((rows, n // rows), dt, dev)
    w = rand(n // rows, dt, dev)
    bias = rand(n // rows, dt, dev)
    out = torch.empty_like(x)
    op = p["op"]
    if op == "add":
        fn = lambda: torch.add(x, y, out=out)  # noqa: E731
    elif op == "mul":
        fn = lambda: torch.mul(x, y, out=out)  # noqa: E731
    elif op == "layernorm":
        fn = lambda: F.layer_norm(x, (x.shape[1],), w, bias)  # noqa: E731
    elif op == "rmsnorm":
        fn = lambda: F.rms_norm(x, (x.shape[1],), w)  # noqa: E731
    elif op == "embedding":
        table = rand((2 * rows, n // rows), dt, dev)
        idx = torch.randint(0, 2 * rows, (rows,), device=dev)
        fn = lambda: F.embedding(idx, table)  # noqa: E731
    else:
        fn = lambda: torch.softmax(x, dim=-1)  # noqa: E731
    with torch.no_grad():
        return ok(p, measure(fn, ctx.grid.methodology, ctx.cuda))

"""Memory-bound ops on the device → a curve per op kind and dtype, and the per-op overhead.

Each row is named by the OpKind it prices (column ``kind``, simhete/opkinds.py: the vocabulary
the workload emits and the cost model prices, so the fit reads it as is) and, where one kind is
timed by more than one microbenchmark, by ``variant``. Each op is measured the way a model runs
it, forward and (where the model has one) backward, in every dtype of the grid. Bytes are the
tensor bytes each call must read and write once, in the accounting of simhete/workload/ops.py for
that OpKind, so a fitted curve prices the workload's ops at the bytes they are given:

- ELEMENTWISE, variants ``add`` and ``mul``: read two operands and write one: 3·n·elem (the
  STREAM "add" accounting), into a new output as a model's residual add does.
- NORM (LayerNorm), RMSNORM, GELU (GPT-2's tanh approximation), RELU, SWIGLU (the SiLU of
  SwiGLU's gate, Shazeer 2020): forward reads x and writes y (2·n·elem); the backward kind
  (NORM_BWD, ...) reads dy and x and writes dx (3·n·elem; a norm's backward also produces its
  weight gradients, which are negligible bytes). Inputs are rows of ``mem_hidden``.
- SOFTMAX_CE (softmax): 2·n·elem. EMBED gathers ``rows`` rows of a (2·rows, hidden) table by int64
  index: 8·rows + 2·n·elem.
- DROPOUT, variant ``residual``: dropout (p = 0.1, GPT-2's ``resid_pdrop``) of one tensor added to
  another, the residual site a model's DROPOUT op stands for: reads two, writes one, plus a 1-byte
  mask in the workload's accounting: 3·n·elem + n. Its backward is a masked scale (no random
  numbers), which the workload prices as ELEMENTWISE, so it is not measured here.
- DROPOUT, variant ``attention``: dropout of attention probabilities alone, the math path's site
  (torch's ``_scaled_dot_product_attention_math`` calls ``dropout`` on the softmax output):
  reads and writes the scores plus a 1-byte mask: 2·n·elem + n. Its time is the per-element
  random draw, as at the residual site, so per byte it is ~(3e+1)/(2e+1) slower; both variants
  are one kind, so the fit takes their mean call at each size (simhete/hw/fit/membw.py).
- ROPE: the replay's rotary embedding (simhete/replay/model.py ``rotate``: rotate-half with chunk,
  neg, cat, two multiplies and an add) on (·, seq, head_dim) rows, forward and backward
  (ROPE_BWD): reads x (dy), writes the rotated x (dx): 2·n·elem in both passes — the workload's
  accounting of its ROPE and ROPE_BWD ops.

Each backward is its own OpKind (BWD_KIND: NORM_BWD, RMSNORM_BWD, GELU_BWD, RELU_BWD,
SWIGLU_BWD, ROPE_BWD), fitted from its own rows alone.

Backwards are timed alone, by re-running autograd over a retained graph (calibrate/attention.py).

**As a model runs them, not from cache.** In a model's forward every op's output is a new tensor
that stays alive (autograd saves it) and its inputs were written by earlier ops, so they are no
longer in the core's L2 cache. Timing one op over and over on the same input, writing the same
freed output, measures it hot: on the development CPU (2 MiB L2 per core, one thread) the residual
add of (4, 128, 256) fp32 took 0.040 ms hot, 0.131 ms over a ring of inputs and kept outputs, and
0.178 ms inside a replayed GPT block (torch profiler); tanh-GeLU of (4, 128, 1024) 1.41 / 2.01 /
2.43 ms; LayerNorm of (4, 128, 256) 0.13 / 0.19 / 0.17 ms (2026-11-22 01:40 UTC, machine loaded).
So each point runs over a **ring** of ``ring`` independent input sets (:func:`ring_size`: one
round spans at least ``RING_L2`` × the L2 cache, at most ``MAX_RING`` sets), calls cycling through
it, and every call's output is kept in the ring slot until the call one round later replaces it.
Large sizes get a ring of one: they stream from memory anyway.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from calibrate.common import TORCH_DTYPES, Ctx, ok, rand, seed
from calibrate.timing import measure
from simhete.opkinds import BWD_KIND, OpKind
from simhete.replay.model import rope_tables, rotate

NAME = "membw"
COLUMNS = ("kind", "variant", "dtype", "elems", "bytes", "split", "ring")
# The forward microbenchmarks: (the OpKind a row prices, which benchmark of that kind: "" where
# the kind has one). A kind with a backward kind (BWD_KIND) is also timed backward.
FORWARD: tuple[tuple[OpKind, str], ...] = (
    (OpKind.ELEMENTWISE, "add"), (OpKind.ELEMENTWISE, "mul"), (OpKind.NORM, ""), (OpKind.RMSNORM, ""),
    (OpKind.SOFTMAX_CE, ""), (OpKind.EMBED, ""), (OpKind.GELU, ""), (OpKind.RELU, ""),
    (OpKind.SWIGLU, ""), (OpKind.DROPOUT, "residual"), (OpKind.DROPOUT, "attention"), (OpKind.ROPE, ""))
FWD_OF = {bwd: fwd for fwd, bwd in BWD_KIND.items()}   # a backward kind -> the forward it differentiates
ROPE_SEQ, ROPE_HEAD_DIM = 128, 64   # rows of a rope input: (·, seq, head_dim) as in the replay
RING_L2 = 4         # a ring round spans at least this many L2 caches (inputs evicted from L2)
MAX_RING = 64       # input sets per ring at most (small ops: enough to leave L2, bounded memory)
INDEX_BYTES = 8     # int64 index per gathered row (EMBED)
DROPOUT_P = 0.1     # GPT-2's resid_pdrop; simhete/replay/model.py DROPOUT_P


def ring_size(call_bytes: int, l2: int) -> int:
    """Input sets in the ring of a point moving ``call_bytes`` per call (see the module docstring)."""
    return max(1, min(MAX_RING, math.ceil(RING_L2 * l2 / max(1, call_bytes))))


def ring_note(l2: int) -> str:
    """The raw file's header line for the ring (the methodology, with this device's L2)."""
    return (f"inputs rotated over a ring spanning >= {RING_L2}x L2 ({l2} B), at most {MAX_RING} "
            "sets; outputs kept until the ring comes round (column ring)")


def benchmarks() -> list[tuple[OpKind, str]]:
    """Every (kind, variant) measured: each forward, then its backward kind where it has one."""
    return [kv for kind, var in FORWARD
            for kv in ((kind, var), *(((BWD_KIND[kind], var),) if kind in BWD_KIND else ()))]


def _rows(n: int, hidden: int) -> int:
    return max(1, n // hidden)


def nbytes(kind: OpKind, variant: str, n: int, elem: int, hidden: int) -> int:
    """Bytes read + written by one call (the accounting of simhete/workload/ops.py)."""
    if kind is OpKind.ELEMENTWISE:
        return 3 * n * elem
    if kind is OpKind.DROPOUT:
        return (3 if variant == "residual" else 2) * n * elem + n
    if kind is OpKind.EMBED:
        return INDEX_BYTES * _rows(n, hidden) + 2 * n * elem
    if kind in (OpKind.ROPE, OpKind.ROPE_BWD):
        return 2 * n * elem       # either pass reads one tensor and writes one
    return (3 if kind in FWD_OF else 2) * n * elem


def points(ctx: Ctx) -> list[dict[str, object]]:
    g = ctx.grid
    out: list[dict[str, object]] = []
    for dt in g.mem_dtypes:
        es = torch.finfo(TORCH_DTYPES[dt]).bits // 8
        for kind, var in benchmarks():
            for i, n in enumerate(g.mem_elems):
                b = nbytes(kind, var, n, es, g.mem_hidden)
                out.append({"kind": kind.value, "variant": var, "dtype": dt, "elems": n, "bytes": b,
                            "split": "fit" if i % 2 == 0 else "holdout", "ring": ring_size(b, ctx.l2)})
    return out


def _forward(kind: OpKind, variant: str, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
             bias: torch.Tensor, rows: int) -> Callable[[], torch.Tensor]:
    if kind is OpKind.ELEMENTWISE:
        return (lambda: x + y) if variant == "add" else (lambda: x * y)
    if kind is OpKind.NORM:
        return lambda: F.layer_norm(x, (x.shape[1],), w, bias)
    if kind is OpKind.RMSNORM:
        return lambda: F.rms_norm(x, (x.shape[1],), w)
    if kind is OpKind.GELU:
        return lambda: F.gelu(x, approximate="tanh")
    if kind is OpKind.RELU:
        return lambda: F.relu(x)
    if kind is OpKind.SWIGLU:
        return lambda: F.silu(x)
    if kind is OpKind.DROPOUT and variant == "residual":
        return lambda: F.dropout(x, DROPOUT_P, training=True) + y
    if kind is OpKind.DROPOUT:
        return lambda: F.dropout(x, DROPOUT_P, training=True)
    if kind is OpKind.ROPE:
        d = min(ROPE_HEAD_DIM, x.numel())
        s = max(1, min(ROPE_SEQ, x.numel() // d))
        xr = x.reshape(-1, s, d)
        cos, sin = rope_tables(s, d, x.device, x.dtype)
        return lambda: rotate(xr, cos, sin)
    if kind is OpKind.EMBED:
        table = rand((2 * rows, x.shape[1]), x.dtype, x.device)
        idx = torch.randint(0, 2 * rows, (rows,), device=x.device)
        return lambda: F.embedding(idx, table)
    return lambda: torch.softmax(x, dim=-1)   # SOFTMAX_CE


def run(ctx: Ctx, p: dict[str, object]) -> dict[str, object]:
    dev, dt = ctx.target.device, TORCH_DTYPES[str(p["dtype"])]
    n, hidden = int(p["elems"]), ctx.grid.mem_hidden
    rows = _rows(n, hidden)
    kind, var = OpKind(str(p["kind"])), str(p["variant"])
    k = int(p.get("ring") or 1)
    seed()
    w = rand(n // rows, dt, dev)
    bias = rand(n // rows, dt, dev)
    sets = [(rand((rows, n // rows), dt, dev), rand((rows, n // rows), dt, dev)) for _ in range(k)]
    kept: list[object] = [None] * k       # each call's output lives until the ring comes round
    at = [0]

    def nxt() -> int:
        j = at[0] = (at[0] + 1) % k
        return j

    if kind in FWD_OF:
        fwd = FWD_OF[kind]
        graphs = []
        for x, y in sets:
            leaves = (x, w, bias) if fwd is OpKind.NORM else (x, w) if fwd is OpKind.RMSNORM else (x,)
            for t in leaves:
                t.requires_grad_(True)
            o = _forward(fwd, var, x, y, w, bias, rows)()
            graphs.append((o, leaves, rand(tuple(o.shape), dt, dev)))

        def fn() -> None:
            j = nxt()
            o, leaves, go = graphs[j]
            kept[j] = torch.autograd.grad(o, leaves, go, retain_graph=True)
        return ok(p, measure(fn, ctx.grid.methodology, ctx.cuda))
    fns = [_forward(kind, var, x, y, w, bias, rows) for x, y in sets]

    def fn() -> None:
        j = nxt()
        kept[j] = fns[j]()
    with torch.no_grad():
        return ok(p, measure(fn, ctx.grid.methodology, ctx.cuda))

"""Causal fused attention forward and backward (torch scaled_dot_product_attention).

Shapes are (batch, heads, kv_heads, seq, head_dim) with seq_q = seq_kv, in every dtype of the grid
(on a CPU the bf16 backward runs several times slower than the fp32 one of the same shape, so one
efficiency cannot serve both). kv_heads < heads is grouped-query attention (``enable_gqa``); an
attention Op carries no K/V head count, so such points are held out: they show whether GQA changes
the time of the same query shape. FLOPs follow simhete.schedule.Op.flops (4·b·h·s²·d halved for
causal; backward 2.5× forward). The backward is timed alone, by re-running autograd over a
retained graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from simhete.opkinds import OpKind
from simhete.schedule.model import Op

from calibrate.common import TORCH_DTYPES, Ctx, missing, ok, preceding_op, rand, seed
from calibrate.timing import measure

NAME = "attention"
COLUMNS = ("pass", "dtype", "batch", "heads", "kv_heads", "seq", "head_dim", "causal", "flops",
           "split")


def points(ctx: Ctx) -> list[dict[str, object]]:
    g = ctx.grid
    out: list[dict[str, object]] = []
    plan = [(dt, shape, split) for dt in g.attn_dtypes
            for shapes, split in ((g.attn_shapes, "fit"), (g.attn_holdout, "holdout")) for shape in shapes]
    # a scenario's exact shapes (--shapes-from), unless the grid measures that shape already
    plan += [(dt, shape, "scenario") for dt, *shape in g.attn_extra
             if (dt, tuple(shape), "fit") not in plan and (dt, tuple(shape), "holdout") not in plan]
    for dt, (b, h, kv, s, d), split in plan:
        for pas, kind in (("fwd", OpKind.ATTN_FWD), ("bwd", OpKind.ATTN_BWD)):
            flops = Op(kind, (b, h, s, s, d, 1)).flops
            out.append({"pass": pas, "dtype": dt, "batch": b, "heads": h, "kv_heads": kv,
                        "seq": s, "head_dim": d, "causal": 1, "flops": int(flops), "split": split})
    return out


def run(ctx: Ctx, p: dict[str, object]) -> dict[str, object]:
    dev, dt = ctx.target.device, TORCH_DTYPES[str(p["dtype"])]
    b, h, kv, s, d = (int(p[c]) for c in ("batch", "heads", "kv_heads", "seq", "head_dim"))
    gqa = kv != h
    seed()
    grad = p["pass"] == "bwd"
    q = rand((b, h, s, d), dt, dev).requires_grad_(grad)       # (B, nh, T, hs)
    k, v = (rand((b, kv, s, d), dt, dev).requires_grad_(grad) for _ in range(2))
    try:
        if p["pass"] == "fwd":
            with torch.no_grad():
                fn = lambda: F.scaled_dot_product_attention(  # noqa: E731
                    q, k, v, is_causal=True, enable_gqa=gqa)
                fn()
        else:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
            go = rand((b, h, s, d), dt, dev)
            fn = lambda: torch.autograd.grad(o, (q, k, v), go, retain_graph=True)  # noqa: E731
            fn()
    except (RuntimeError, NotImplementedError) as e:
        return missing(p, f"attention unsupported here ({str(e).splitlines()[0][:80]})")
    return ok(p, measure(fn, ctx.grid.methodology, ctx.cuda, preceding_op((b, h, s, d), dt, ctx.target)))

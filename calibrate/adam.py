"""CPU Adam(W) step on fp32 CPU tensors, over parameter counts and thread counts.

One flat fp32 parameter (like ZeRO-Offload's flat CPU master buffer) with a random gradient; the
step uses torch's fused CPU AdamW where this torch has it, else the foreach path (``impl``
column). The first step (state allocation) falls in the warm-up.
"""

from __future__ import annotations

import torch

from calibrate.common import Ctx, missing, ok, rand, seed
from calibrate.timing import measure

NAME = "adam"
COLUMNS = ("impl", "threads", "params", "split")
_CPU = torch.device("cpu")


def make_step(params: int) -> tuple[str, object]:
    """(impl, step function) of an AdamW over ``params`` fp32 parameters."""
    p = torch.nn.Parameter(rand(params, torch.float32, _CPU))
    p.grad = rand(params, torch.float32, _CPU) * 1e-3
    try:
        opt = torch.optim.AdamW([p], lr=1e-4, fused=True)
        opt.step()
        impl = "fused"
    except (RuntimeError, ValueError):
        opt = torch.optim.AdamW([p], lr=1e-4, foreach=True)
        opt.step()
        impl = "foreach"
    return impl, opt.step


def points(ctx: Ctx) -> list[dict[str, object]]:
    g = ctx.grid
    return [{"impl": "", "threads": t, "params": n, "split": "fit" if i % 2 == 0 else "holdout"}
            for t in g.adam_threads for i, n in enumerate(g.adam_params)]


def run(ctx: Ctx, p: dict[str, object]) -> dict[str, object]:
    before = torch.get_num_threads()
    seed()
    try:
        torch.set_num_threads(int(p["threads"]))
        impl, step = make_step(int(p["params"]))
        return ok({**p, "impl": impl}, measure(step, ctx.grid.methodology, None))
    except RuntimeError as e:
        return missing(p, f"adam step failed: {str(e).splitlines()[0][:100]}")
    finally:
        torch.set_num_threads(before)

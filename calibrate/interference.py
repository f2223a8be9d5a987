"""Interference: how much longer a stream's work takes while another stream's work runs.

Each pair is measured twice back to back: the victim alone, then the victim while an aggressor
loops on a background thread (on its own CUDA stream when it is device work). The fit turns the
ratio of the medians into a slowdown factor for the simulator. On a CPU device every "stream" runs
on the same cores, so the pairs are GEMM (gpuN.compute), host memcpy (stand-in for gpuN.h2d and
gpuN.d2h) and CPU AdamW (cpu.optim). The host memcpy cycles a ring of buffer pairs spanning twice
the last-level cache (:class:`calibrate.copies.Ring`), as the copy suite times it: a copy in a
training step moves data from and to memory, not from the cache, and takes memory bandwidth from
the work beside it.
"""

from __future__ import annotations

import threading
from typing import Callable

import torch

from calibrate.adam import make_step
from calibrate.common import TORCH_DTYPES, Ctx, ok, rand, seed
from calibrate.copies import RING_LLC, Ring
from calibrate.timing import measure

NAME = "interference"
COLUMNS = ("victim", "aggressor", "condition", "split")
_CPU = torch.device("cpu")
CUDA_PAIRS = (("gemm", "h2d_pinned"), ("gemm", "d2h_pinned"), ("h2d_pinned", "gemm"),
              ("d2h_pinned", "gemm"), ("adam", "h2d_pinned"), ("adam", "h2d_pageable"),
              ("h2d_pinned", "adam"), ("h2d_pageable", "adam"), ("d2h_pinned", "adam"))
CPU_PAIRS = (("gemm", "memcpy"), ("memcpy", "gemm"), ("adam", "memcpy"), ("memcpy", "adam"),
             ("gemm", "adam"), ("adam", "gemm"))


def points(ctx: Ctx) -> list[dict[str, object]]:
    pairs = CUDA_PAIRS if ctx.target.is_cuda else CPU_PAIRS
    return [{"victim": v, "aggressor": a, "condition": c, "split": "fit"}
            for v, a in pairs for c in ("alone", "concurrent")]


def _work(ctx: Ctx, name: str) -> tuple[Callable[[], object], bool]:
    """(function, runs on the device?) for one workload of the grid's interference sizes."""
    g, dev = ctx.grid, ctx.target.device
    n = g.interf_copy_bytes // 4
    if name == "gemm":
        dt = TORCH_DTYPES["bf16" if ctx.target.is_cuda else "fp32"]
        a, b = rand((g.interf_gemm,) * 2, dt, dev), rand((g.interf_gemm,) * 2, dt, dev)
        c = torch.empty_like(a)
        return (lambda: torch.mm(a, b, out=c)), ctx.target.is_cuda
    if name == "adam":
        return make_step(g.interf_adam_params)[1], False
    if name == "memcpy":   # cold, as the copy suite times host copies (calibrate/copies.py)
        return Ring(n, RING_LLC * ctx.llc).copy, False
    direction, mem = name.split("_")
    pin = mem == "pinned"
    if direction == "h2d":
        src, dst = rand(n, torch.float32, _CPU, pin), torch.empty(n, device=dev)
    else:
        src, dst = rand(n, torch.float32, dev), torch.empty(n, pin_memory=pin)
    return (lambda: dst.copy_(src, non_blocking=pin)), True


class _Aggressor:
    """Loops ``fn`` on a background thread (and its own CUDA stream) until the block exits."""

    def __init__(self, fn: Callable[[], object], device: torch.device | None, threads: int) -> None:
        self.fn, self.device, self.threads = fn, device, threads
        self.stop, self.started = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        torch.set_num_threads(self.threads)  # a new thread does not inherit the caller's setting
        if self.device is None:
            while not self.stop.is_set():
                self.fn()
                self.started.set()
            return
        stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(stream):
            while not self.stop.is_set():
                self.fn()
                stream.synchronize()
                self.started.set()

    def __enter__(self) -> "_Aggressor":
        self.thread.start()
        self.started.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def run(ctx: Ctx, p: dict[str, object]) -> dict[str, object]:
    seed()
    victim, v_dev = _work(ctx, str(p["victim"]))
    clock = ctx.cuda if v_dev else None
    if p["condition"] == "alone":
        return ok(p, measure(victim, ctx.grid.methodology, clock))
    aggressor, a_dev = _work(ctx, str(p["aggressor"]))
    with _Aggressor(aggressor, ctx.target.device if a_dev else None, ctx.threads):
        return ok(p, measure(victim, ctx.grid.methodology, clock))

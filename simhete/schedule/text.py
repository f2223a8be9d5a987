"""Compact text form of a Schedule and its exact inverse.

    # simhete schedule v1
    iterations 3
    meta policy zero-offload
    pool gpu0 85899345920
    init w16.b0 gpu0 268435456 weights
    work W0 GEMM:4096x4096x5120:0:bf16:p:3 ATTN_FWD:4x32x4096x4096x128x1:0:bf16:p:1
    task it1.F.b0 gpu0.compute fwd it=1 block=0 prio=10 work=W0 deps=a,b alloc=buf/gpu0/123/activations free=x,y

Ops are ``KIND:SHAPE:N:DTYPE:PIN:COUNT`` with SHAPE ``-`` when empty and PIN ``p`` (pinned) or
``u`` (pageable). Identical op tuples share one ``work`` line. An ``alloc`` with a trailing
``/persist`` outlives the simulated window. ``parse(format(s)) == s`` for every schedule.
"""

from __future__ import annotations

from simhete.errors import SimheteError
from simhete.opkinds import MemClass, OpKind, TaskCat
from simhete.schedule.model import Alloc, Op, Schedule, Task

HEADER = "# simhete schedule v1"


def _fmt_op(op: Op) -> str:
    shape = "x".join(str(s) for s in op.shape) if op.shape else "-"
    # a batched op (one launch for its count) is marked by a 7th field; others keep 6 fields
    return (f"{op.kind.value}:{shape}:{op.n}:{op.dtype}:{'p' if op.pinned else 'u'}:{op.count}"
            + (":b" if op.batched else ""))


def _parse_op(s: str) -> Op:
    kind, shape, n, dtype, pin, count, *batched = s.split(":")
    if batched not in ([], ["b"]):
        raise ValueError(f"op {s!r}: a 7th field must be 'b' (batched)")
    return Op(OpKind(kind), () if shape == "-" else tuple(int(x) for x in shape.split("x")),
              int(n), dtype, pin == "p", int(count), bool(batched))


def _fmt_alloc(a: Alloc) -> str:
    return f"{a.buf}/{a.pool}/{a.bytes}/{a.cls.value}" + ("/persist" if a.persist else "")


def _parse_alloc(s: str) -> Alloc:
    parts = s.split("/")
    return Alloc(parts[0], parts[1], int(parts[2]), MemClass(parts[3]), len(parts) > 4 and parts[4] == "persist")


def format_schedule(s: Schedule) -> str:
    out = [HEADER, f"iterations {s.iterations}"]
    out += [f"meta {k} {v}" for k, v in s.meta.items()]
    out += [f"pool {p} {c}" for p, c in s.pools.items()]
    out += [f"init {_fmt_alloc(a)}" for a in s.initial]
    works: dict[tuple[Op, ...], str] = {}
    body: list[str] = []
    for t in s.tasks:
        if t.ops and t.ops not in works:
            works[t.ops] = f"W{len(works)}"
            out.append(f"work {works[t.ops]} " + " ".join(_fmt_op(o) for o in t.ops))
        line = f"task {t.name} {t.stream} {t.cat.value} it={t.it} block={t.block} prio={t.prio}"
        if t.ops:
            line += f" work={works[t.ops]}"
        if t.deps:
            line += " deps=" + ",".join(t.deps)
        if t.allocs:
            line += " alloc=" + ",".join(_fmt_alloc(a) for a in t.allocs)
        if t.frees:
            line += " free=" + ",".join(t.frees)
        body.append(line)
    return "\n".join(out + body) + "\n"


def parse_schedule(text: str, source: str = "<schedule>") -> Schedule:
    iterations, meta, pools, initial = 1, {}, {}, []
    works: dict[str, tuple[Op, ...]] = {}
    tasks: list[Task] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            head, *rest = line.split(" ")
            if head == "iterations":
                iterations = int(rest[0])
            elif head == "meta":
                meta[rest[0]] = " ".join(rest[1:])
            elif head == "pool":
                pools[rest[0]] = int(rest[1])
            elif head == "init":
                initial.append(_parse_alloc(rest[0]))
            elif head == "work":
                works[rest[0]] = tuple(_parse_op(x) for x in rest[1:])
            elif head == "task":
                name, stream, cat, *kvs = rest
                kw = dict(kv.split("=", 1) for kv in kvs)
                tasks.append(Task(
                    name=name, stream=stream, cat=TaskCat(cat),
                    ops=works[kw["work"]] if "work" in kw else (),
                    deps=tuple(kw["deps"].split(",")) if "deps" in kw else (),
                    prio=int(kw.get("prio", 0)),
                    allocs=tuple(_parse_alloc(a) for a in kw["alloc"].split(",")) if "alloc" in kw else (),
                    frees=tuple(kw["free"].split(",")) if "free" in kw else (),
                    it=int(kw.get("it", 0)), block=int(kw.get("block", -1)),
                ))
            else:
                raise ValueError(f"unknown line kind {head!r}")
        except (ValueError, KeyError, IndexError) as e:
            raise SimheteError(f"{source}:{lineno}: cannot parse schedule line {line[:60]!r}: {e}") from None
    return Schedule(tuple(tasks), pools, tuple(initial), iterations, meta)

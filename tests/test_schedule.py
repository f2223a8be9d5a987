"""The Schedule contract: exact text round trip, one-line parse errors, and every checker finding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from simhete.errors import SimheteError
from simhete.opkinds import MemClass, OpKind, TaskCat
from simhete.schedule import Alloc, Op, Schedule, Task, check_schedule, format_schedule, parse_schedule
from test_engine_strategies import schedules

W = MemClass.WEIGHTS


def sched(*tasks, pools=None, initial=()):
    return Schedule(tuple(tasks), pools or {"gpu0": 100, "cpu": 1000}, tuple(initial))


def test_text_form_exact():
    gemm = (Op(OpKind.GEMM, (4096, 4096, 5120), count=3), Op(OpKind.ATTN_FWD, (4, 32, 4096, 4096, 128, 1)))
    s = Schedule((
        Task("it1.F.b0", "gpu0.compute", TaskCat.FWD, gemm, prio=10, it=1, block=0,
             allocs=(Alloc("act.b0", "gpu0", 123, MemClass.ACTIVATIONS),)),
        Task("it1.D2H.g.b0", "gpu0.d2h", TaskCat.D2H, (Op(OpKind.D2H, n=64, pinned=False),),
             deps=("it1.F.b0",), prio=-1, it=1, block=0, frees=("act.b0",),
             allocs=(Alloc("g32", "cpu", 7, MemClass.GRADS32, persist=True),)),
        Task("it1.F.b1", "gpu0.compute", TaskCat.FWD, gemm, deps=("it1.F.b0",), it=1, block=1),
    ), {"gpu0": 85899345920, "cpu": 1 << 40}, (Alloc("w16.b0", "gpu0", 268435456, W),), 3,
        {"policy": "zero-offload", "model": "llama2 13b"})
    text = format_schedule(s)
    assert text == (
        "# simhete schedule v1\n"
        "iterations 3\n"
        "meta policy zero-offload\n"
        "meta model llama2 13b\n"
        "pool gpu0 85899345920\n"
        "pool cpu 1099511627776\n"
        "init w16.b0/gpu0/268435456/weights\n"
        "work W0 GEMM:4096x4096x5120:0:bf16:p:3 ATTN_FWD:4x32x4096x4096x128x1:0:bf16:p:1\n"
        "work W1 D2H:-:64:bf16:u:1\n"
        "task it1.F.b0 gpu0.compute fwd it=1 block=0 prio=10 work=W0 alloc=act.b0/gpu0/123/activations\n"
        "task it1.D2H.g.b0 gpu0.d2h d2h it=1 block=0 prio=-1 work=W1 deps=it1.F.b0 "
        "alloc=g32/cpu/7/grads32/persist free=act.b0\n"
        "task it1.F.b1 gpu0.compute fwd it=1 block=1 prio=0 work=W0 deps=it1.F.b0\n")
    assert parse_schedule(text) == s
    assert check_schedule(s) == []


@settings(max_examples=120, deadline=None)
@given(schedules(with_ops=True))
def test_round_trip_is_exact(s):
    text = format_schedule(s)
    back = parse_schedule(text)
    assert back == s
    assert format_schedule(back) == text


@pytest.mark.parametrize("line, why", [
    ("task a gpu0.compute fwd prio=x", "invalid literal for int"),
    ("task a gpu0.compute nonsense", "'nonsense' is not a valid TaskCat"),
    ("task a gpu0.compute fwd work=W7", "'W7'"),
    ("task a gpu0.compute fwd deps", "length 1; 2 is required"),
    ("work W0 GEMM:1x2", "not enough values to unpack"),
    ("work W0 MATMUL:-:0:bf16:p:1", "'MATMUL' is not a valid OpKind"),
    ("init w/gpu0", "list index out of range"),
    ("init w/gpu0/12/money", "'money' is not a valid MemClass"),
    ("pool gpu0 lots", "invalid literal for int"),
    ("frobnicate 3", "unknown line kind 'frobnicate'"),
])
def test_parse_errors_are_one_line_with_the_line_number(line, why):
    text = "# simhete schedule v1\niterations 1\n\n" + line + "\n"
    with pytest.raises(SimheteError) as e:
        parse_schedule(text, source="plan.sched")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("plan.sched:4: cannot parse schedule line")
    assert why in msg


def _t(name, stream="gpu0.compute", deps=(), allocs=(), frees=()):
    return Task(name, stream, TaskCat.OTHER, deps=tuple(deps), allocs=tuple(allocs), frees=tuple(frees))


def _a(buf, n=10, pool="gpu0"):
    return Alloc(buf, pool, n, W)


@pytest.mark.parametrize("s, problem", [
    (sched(_t("a", deps=["ghost"])), "task a: dependency ghost does not exist"),
    (sched(_t("a", deps=["b"]), _t("b", deps=["a"])), "dependency cycle: a -> b -> a"),
    (sched(_t("a"), _t("a")), "duplicate task name a"),
    (sched(_t("a", allocs=[_a("x")]), _t("b", deps=["a"], frees=["x"]), _t("c", deps=["b"], frees=["x"])),
     "buffer x is freed 2x but allocated 1x (freed twice)"),
    (sched(_t("a", allocs=[_a("x")])), "buffer x is allocated 1x but freed 0x (never freed)"),
    (sched(_t("a", allocs=[_a("x")]), _t("b", frees=["x"])),
     "buffer x is freed by b, which is not ordered after its allocation"),
    (sched(_t("a", allocs=[_a("x", 101)], frees=["x"])),
     "task a: buffer x of 101 B exceeds pool gpu0 capacity 100 B"),
    (sched(_t("a", stream="gpu0.compte")), "task a: unknown stream 'gpu0.compte'"),
    (sched(_t("a b")), "task name 'a b' has characters outside"),
    (sched(_t("a", frees=["x"])), "buffer x is freed by a but never allocated"),
    (sched(_t("a", allocs=[_a("x", pool="nvme")], frees=["x"])), "task a: buffer x in unknown pool 'nvme'"),
    (sched(_t("a"), initial=[_a("w", 60), _a("v", 50)]),
     "initial buffers in pool gpu0 hold 110 B, more than its capacity 100 B"),
    (sched(_t("a", allocs=[_a("x")], frees=["x"]), _t("b", allocs=[_a("x")], frees=["x"])),
     "buffer x is allocated by a and again by b with no free ordered between them"),
])
def test_checker_finds_each_problem(s, problem):
    found = check_schedule(s)
    assert any(p.startswith(problem) for p in found), found


def test_checker_accepts_reallocation_after_an_ordered_free():
    s = sched(_t("a", allocs=[_a("x")], frees=["x"]), _t("b", deps=["a"], allocs=[_a("x")], frees=["x"]),
              _t("c", allocs=[_a("p")]), initial=[_a("w")])
    assert check_schedule(s) == ["buffer p is allocated 1x but freed 0x (never freed)"]
    s2 = sched(_t("c", allocs=[Alloc("p", "gpu0", 1, W, persist=True)]), initial=[_a("w")])
    assert check_schedule(s2) == []


@given(st.text(alphabet="abc xyz-=,/", min_size=1, max_size=20).map(str.strip).filter(bool))
@settings(max_examples=50, deadline=None)
def test_meta_values_with_inner_spaces_round_trip(value):
    s = Schedule((), {"gpu0": 1}, meta={"note": value})
    assert parse_schedule(format_schedule(s)).meta == {"note": value}


def test_a_batched_op_round_trips_and_other_ops_keep_six_fields():
    bat = Op(OpKind.GEMM, (1024, 1024, 96), dtype="fp16", count=128, batched=True)
    sep = Op(OpKind.GEMM, (1024, 1024, 96), dtype="fp16", count=128)
    s = sched(Task("it1.F.b0", "gpu0.compute", TaskCat.FWD, (bat, sep), it=1, block=0))
    text = format_schedule(s)
    assert "GEMM:1024x1024x96:0:fp16:p:128:b GEMM:1024x1024x96:0:fp16:p:128\n" in text
    assert parse_schedule(text) == s
    with pytest.raises(SimheteError, match="7th field"):
        parse_schedule(text.replace(":128:b", ":128:x"))

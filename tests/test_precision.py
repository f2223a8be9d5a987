"""train.precision: pure low-precision training (no fp32 master, 16-bit Adam state) against the
default mixed precision, with hand-computed bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from simhete import sim
from simhete.errors import ConfigError
from simhete.hw.cost import CostModel
from simhete.hw.profile import load_profile
from simhete.opkinds import OpKind, TaskCat
from simhete.policy.structures import build_schedule
from simhete.schedule import Op
from simhete.scenario import load_scenario, scenario_from_dict
from simhete.workload import build_workload

ROOT = Path(__file__).resolve().parents[1]
# TinyLlama-1.1B (its config.json): LLaMA-2 architecture, 22 layers, h 2048, 32 heads, 4 KV heads
TINYLLAMA = {"preset": "llama2-7b", "n_layers": 22, "hidden": 2048, "n_heads": 32, "n_kv_heads": 4,
             "ffn_hidden": 5632}


def _tinyllama(**train) -> dict:
    return {"name": "tinyllama", "model": dict(TINYLLAMA), "hardware": {"profile": "a100-80gb-sxm", "gpus": 1},
            "train": {"micro_batch": 4, "seq_len": 2048, "dtype": "bf16", **train}, "iterations": 3,
            "policy": "gpu-only", "framework": "fused", "knobs": {"checkpointing": "none"}}


def _states(bw) -> tuple[int, int, int, int, int]:
    return bw.weight_bytes, bw.grad_bytes, bw.master_bytes, bw.optim_bytes, bw.grad32_bytes


def test_llama2_7b_block_bytes_pure_vs_mixed() -> None:
    mixed = build_workload("llama2-7b", 1, 4096, "bf16")
    pure = build_workload("llama2-7b", 1, 4096, "bf16", precision="pure")
    p = 202_383_360   # 4·4096² attention + 3·4096·11008 MLP + 2·4096 norms
    assert mixed.blocks[1].params == pure.blocks[1].params == p
    # mixed (ZeRO §3.1): 2 + 2 + 4 master + 8 Adam + 4 fp32 grads
    assert _states(mixed.blocks[1]) == (404_766_720, 404_766_720, 809_533_440, 1_619_066_880, 809_533_440)
    # pure bf16: 2 + 2 + 0 + 2·2 Adam + 0
    assert _states(pure.blocks[1]) == (404_766_720, 404_766_720, 0, 809_533_440, 0)
    assert (mixed.optim_dtype, pure.optim_dtype) == ("fp32", "bf16")
    total = sum(b.weight_bytes + b.grad_bytes + b.master_bytes + b.optim_bytes for b in pure.blocks)
    assert total == 8 * 6_738_415_616
    # everything but the optimizer's state is the same workload
    assert all(a.fwd_ops is b.fwd_ops and a.bwd_ops is b.bwd_ops and a.act_bytes == b.act_bytes
               for a, b in zip(mixed.blocks, pure.blocks))
    assert (pure.params, pure.fwd_flops, pure.model_flops_per_iter) == \
        (mixed.params, mixed.fwd_flops, mixed.model_flops_per_iter)


def test_tinyllama_block_bytes_pure_vs_mixed() -> None:
    spec = sim.resolve_model(scenario_from_dict(_tinyllama()))
    mixed = build_workload(spec, 4, 2048, "bf16")
    pure = build_workload(spec, 4, 2048, "bf16", precision="pure")
    p = 44_044_288    # 2048·(2048 + 2·256) + 2048² + 3·2048·5632 + 2·2048
    assert pure.params == 1_100_048_384 and pure.blocks[1].params == p
    assert _states(mixed.blocks[1]) == (88_088_576, 88_088_576, 176_177_152, 352_354_304, 176_177_152)
    assert _states(pure.blocks[1]) == (88_088_576, 88_088_576, 0, 176_177_152, 0)
    embed = pure.blocks[0]   # 32000 × 2048 embedding, untied
    assert _states(embed) == (131_072_000, 131_072_000, 0, 262_144_000, 0)


def test_fp16_pure_and_fp32_pure_is_fp32() -> None:
    pure16 = build_workload("gpt3-125m", 2, 256, "fp16", precision="pure")
    assert pure16.optim_dtype == "fp16"
    assert all(b.optim_bytes == 4 * b.params and b.master_bytes == b.grad32_bytes == 0 for b in pure16.blocks)
    # fp32 training has no master copy in either mode: the same (cached) workload
    assert build_workload("gpt3-125m", 2, 256, "fp32", precision="pure") is build_workload("gpt3-125m", 2, 256, "fp32")


def test_bad_precision_is_one_line_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="train.precision: bad value 'half'"):
        build_workload("gpt3-125m", 1, 8, precision="half")
    f = tmp_path / "s.yaml"
    f.write_text("model: gpt3-125m\nhardware: h100-sxm\ntrain: {micro_batch: 1, seq_len: 8, precision: half}\n")
    with pytest.raises(ConfigError) as e:
        load_scenario(f)
    assert "train.precision" in str(e.value) and "\n" not in str(e.value)


def test_gpu_only_peak_drops_by_master_and_optim_difference() -> None:
    s = scenario_from_dict(_tinyllama())
    mixed = sim.run(s).summary
    pure = sim.run(s.with_changes(**{"train.precision": "pure"})).summary
    assert mixed.fits and pure.fits
    # gpu-only keeps master weights and Adam state on the GPU (no fp32 gradient copy): per
    # parameter 4 B master + (8 - 4) B Adam state less
    params = 1_100_048_384
    assert mixed.memory["gpu0"].peak_bytes - pure.memory["gpu0"].peak_bytes == 8 * params == 8_800_387_072
    assert pure.iter_time_s < mixed.iter_time_s


def test_gpu_adam_moves_half_the_bytes_in_pure() -> None:
    cm = CostModel(load_profile("h100-sxm"))    # 3000 GB/s × 0.9; the 7 µs dispatch overlaps
    bw = 3000e9 * 0.9
    n = 10**9
    fp32 = cm.op_seconds(Op(OpKind.ADAM_GPU, n=n, dtype="fp32"))
    bf16 = cm.op_seconds(Op(OpKind.ADAM_GPU, n=n, dtype="bf16"))
    assert fp32 == pytest.approx(28 * n / bw, rel=1e-12)
    assert bf16 == pytest.approx(14 * n / bw, rel=1e-12)
    assert bf16 / fp32 == pytest.approx(0.5, rel=1e-12)


def test_gpu_only_adam_ops_carry_the_optimizer_dtype() -> None:
    s = scenario_from_dict(_tinyllama())
    for prec, dtype in (("mixed", "fp32"), ("pure", "bf16")):
        ctx, policy = sim.resolve(s.with_changes(**{"train.precision": prec}))
        adam = [op for t in build_schedule(policy, ctx).tasks if t.cat is TaskCat.OPTIM_GPU for op in t.ops]
        assert adam and all(op.kind is OpKind.ADAM_GPU and op.dtype == dtype for op in adam)
        assert sum(op.n for op in adam) == 3 * 1_100_048_384    # every parameter, each iteration


@pytest.mark.parametrize("policy", ["zero-offload", "zero-infinity", "chunked", "stronghold", "autohete"])
def test_policies_whose_optimizer_keeps_fp32_refuse_pure(policy: str) -> None:
    d = _tinyllama(precision="pure")
    d["policy"], d["knobs"] = policy, {}
    with pytest.raises(ConfigError, match=f"train.precision: bad value 'pure'; allowed: mixed with policy {policy}"):
        sim.resolve(scenario_from_dict(d, "x.yaml"))


def test_pure_fp32_is_fp32_training_for_every_policy() -> None:
    s = load_scenario(ROOT / "scenarios" / "small-gpt_cpu_zero-offload.yaml")
    a = sim.run(s).summary
    b = sim.run(s.with_changes(**{"train.precision": "pure"})).summary
    assert (a.iter_time_s, a.memory["gpu0"].peak_bytes, a.memory["cpu"].peak_bytes) == \
        (b.iter_time_s, b.memory["gpu0"].peak_bytes, b.memory["cpu"].peak_bytes)



def test_compare_and_plan_leave_out_policies_that_refuse_pure() -> None:
    from simhete.search.compare import compare_policies
    from simhete.search.plan import Planner

    s = scenario_from_dict(_tinyllama(precision="pure"))
    assert list(compare_policies(s)) == ["gpu-only"]
    assert Planner(s).policy_names(s) == ["gpu-only"]


def test_whynlp_tinyllama_on_a_24gb_card_fits_only_in_pure_bf16() -> None:
    # whyNLP/tinyllama trains TinyLlama-1.1B at batch 4 × 2048 on one RTX 3090 with a bf16 model
    # and torch AdamW: 16 B/param of mixed-precision states (17.6 GB) plus activations exceed 24 GB
    s = load_scenario(ROOT / "scenarios" / "published" / "tinyllama-whynlp_rtx3090_gpu-only.yaml")
    assert s.data.train.precision == "pure"
    assert sim.run(s).summary.fits
    assert not sim.run(s.with_changes(**{"train.precision": "mixed"})).summary.fits

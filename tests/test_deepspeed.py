"""DeepSpeed config import: policy and knob mapping, "auto" values, unsupported keys, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simhete.search.deepspeed import apply_deepspeed, import_deepspeed, map_deepspeed
from simhete.errors import ConfigError
from simhete.scenario import load_scenario

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "deepspeed"
BASE = load_scenario(REPO / "scenarios" / "llama2-13b_h100-pcie_zero-offload.yaml")  # mb 4, bf16, ckpt full
HIDDEN = 5120   # LLaMA-2-13B


def test_hf_trainer_style_config_with_auto_values():
    imp = import_deepspeed(BASE, DATA / "zero2_offload_hf.json")
    d = imp.scenario.data
    assert imp.policy == "zero-offload" and d.policy == "zero-offload"
    # "auto" reduce_bucket_size = hidden² (Hugging Face Trainer rule); batch and dtype keep the scenario's
    assert d.knobs == {"checkpointing": "full", "pin_memory": True, "overlap_comm": True,
                       "reduce_bucket_size": float(HIDDEN * HIDDEN)}
    assert (d.train.micro_batch, d.train.dtype) == (4, "bf16")
    assert imp.unsupported == []
    assert "zero_optimization.allgather_bucket_size (single GPU: no data-parallel communication)" in imp.no_effect
    assert "optimizer.params.lr" in imp.no_effect and "gradient_clipping" in imp.no_effect


def test_explicit_config_maps_batch_dtype_pinning_overlap_and_checkpointing():
    imp = import_deepspeed(BASE.with_changes(knobs={}), DATA / "zero2_offload_explicit.json")
    d = imp.scenario.data
    assert (d.train.micro_batch, d.train.dtype) == (2, "fp16")
    assert d.knobs == {"pin_memory": False, "overlap_comm": False, "reduce_bucket_size": 2e8,
                       "checkpointing": "full"}
    assert imp.unsupported == []


def test_unsupported_keys_are_listed_not_ignored():
    imp = import_deepspeed(BASE, DATA / "unsupported.json")
    assert [k for k, _ in imp.unsupported] == [
        "activation_checkpointing.cpu_checkpointing", "optimizer.type",
        "sparse_attention.mode", "sparse_attention.block"]
    lines = imp.notes()
    assert sum(1 for l in lines if l.startswith("deepspeed: UNSUPPORTED")) == 4
    # gradient accumulation is simulated: 8 micro-steps per optimizer step
    assert imp.scenario.data.train.grad_accum == 8
    assert "deepspeed: gradient_accumulation_steps → train.grad_accum = 8" in lines
    assert "zero_optimization.offload_optimizer.fast_init" in imp.no_effect
    # DeepSpeed's overlap_comm default is false below stage 3
    assert imp.scenario.data.knobs["overlap_comm"] is False


def test_every_key_lands_in_exactly_one_list():
    from simhete.search.deepspeed import _flatten
    for f in ("zero2_offload_hf", "zero2_offload_explicit", "unsupported", "no_offload", "stage3_offload_optimizer",
              "stage3_no_offload", "stage3_offload_both"):
        ds = json.loads((DATA / f"{f}.json").read_text())
        imp = map_deepspeed(BASE, ds)
        said = " ".join(imp.notes())
        for key, _ in _flatten(ds):
            assert key in said, (f, key)


def test_no_offload_is_gpu_only_and_offload_param_is_zero_infinity():
    imp = import_deepspeed(BASE, DATA / "no_offload.json")
    assert imp.policy == "gpu-only" and imp.scenario.data.knobs == {"checkpointing": "full"}
    # stage 2 without offload: ZeRO-2's partitioned optimizer states and gradients, its bucket knobs
    ds = {"zero_optimization": {"stage": 2, "reduce_bucket_size": 2e8, "overlap_comm": True}}
    imp = map_deepspeed(BASE, ds)
    assert imp.policy == "zero-2"
    assert imp.scenario.data.knobs == {"checkpointing": "full", "reduce_bucket_size": 2e8, "overlap_comm": True}
    assert map_deepspeed(BASE, {"zero_optimization": {"stage": 2}}).scenario.data.knobs == \
        {"checkpointing": "full", "overlap_comm": False}        # DeepSpeed's stage-2 default
    ds = {"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu", "pin_memory": True},
                                "offload_optimizer": {"device": "cpu", "pin_memory": True}}}
    assert map_deepspeed(BASE, ds).policy == "zero-infinity"


def test_bf16_check_grad_overflow_is_a_zero2_knob():
    ds = {"zero_optimization": {"stage": 2}, "bf16": {"enabled": True, "check_grad_overflow": False}}
    imp = map_deepspeed(BASE, ds)
    assert imp.policy == "zero-2" and imp.scenario.data.knobs["check_grad_overflow"] is False
    assert ("bf16.check_grad_overflow", "knobs.check_grad_overflow = False") in imp.mapped
    # a policy without the knob lists it as unsupported rather than dropping it
    ds["zero_optimization"] = {"stage": 2, "offload_optimizer": {"device": "cpu"}}
    imp = map_deepspeed(BASE, ds)
    assert "check_grad_overflow" not in imp.scenario.data.knobs
    assert [k for k, _ in imp.unsupported] == ["bf16.check_grad_overflow"]
    with pytest.raises(ConfigError, match="bf16.check_grad_overflow"):
        map_deepspeed(BASE, {"zero_optimization": {"stage": 2}, "bf16": {"check_grad_overflow": "yes"}}, "ds.json")


def test_optimizer_section_decides_gpu_only_adam_implementation():
    """engine.py _configure_basic_optimizer: an Adam/AdamW section builds FusedAdam on the GPU, or
    torch's Adam/AdamW (foreach by default) with params.torch_adam; without a section the client's
    optimizer runs, which the config cannot tell: the scenario's knob stays and a note says so."""
    base = {"zero_optimization": {"stage": 1}}
    imp = map_deepspeed(BASE, {**base, "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}})
    assert imp.policy == "gpu-only" and imp.scenario.data.knobs["optimizer"] == "fused"
    imp = map_deepspeed(BASE, {**base, "optimizer": {"type": "AdamW", "params": {"torch_adam": True}}})
    assert imp.scenario.data.knobs["optimizer"] == "foreach"
    assert ("optimizer.params.torch_adam", "knobs.optimizer = 'foreach'") in imp.mapped
    imp = map_deepspeed(BASE.with_changes(knobs={"optimizer": "foreach"}), base)
    assert imp.scenario.data.knobs["optimizer"] == "foreach"
    assert any(k == "optimizer (absent)" for k, _ in imp.mapped)
    # zero-2 prices DeepSpeed's FusedAdam itself: no knob to set, nothing unsupported
    imp = map_deepspeed(BASE, {"zero_optimization": {"stage": 2}, "optimizer": {"type": "Adam"}})
    assert imp.policy == "zero-2" and "optimizer" not in imp.scenario.data.knobs and not imp.unsupported


def test_stage3_with_optimizer_offload_is_zero3_with_gpu_partitioned_parameters():
    """Stage 3 partitions the 16-bit parameters whatever is offloaded: optimizer offload alone is
    zero-infinity with offload_param none (not ZeRO-2 placement); the stage3_* keys, overlap_comm,
    reduce_bucket_size and sub_group_size become its knobs ("auto": the Trainer's hidden rules)."""
    imp = import_deepspeed(BASE, DATA / "stage3_offload_optimizer.json")
    assert imp.policy == "zero-infinity"
    assert imp.scenario.data.knobs == {
        "checkpointing": "full", "offload_param": "none", "offload_optimizer": "cpu", "pin_memory": True,
        "overlap_comm": False, "reduce_bucket_size": 2e8, "sub_group_size": 1e8,
        "stage3_prefetch_bucket_size": float(int(0.9 * HIDDEN * HIDDEN)),
        "stage3_param_persistence_threshold": float(10 * HIDDEN),
        "stage3_max_live_parameters": 5e8, "stage3_max_reuse_distance": 5e8}
    assert imp.unsupported == []
    assert imp.no_effect == ["zero_optimization.contiguous_gradients",
                             "zero_optimization.stage3_gather_16bit_weights_on_model_save"]


def test_stage3_without_offload_and_with_both():
    imp = import_deepspeed(BASE, DATA / "stage3_no_offload.json")
    assert imp.policy == "zero-infinity"
    assert imp.scenario.data.knobs == {
        "checkpointing": "full", "offload_param": "none", "offload_optimizer": "none", "pin_memory": False,
        "overlap_comm": True, "reduce_bucket_size": 5e8, "stage3_prefetch_bucket_size": 5e7}
    imp = import_deepspeed(BASE, DATA / "stage3_offload_both.json")
    assert imp.policy == "zero-infinity"
    assert imp.scenario.data.knobs == {
        "checkpointing": "full", "offload_param": "cpu", "offload_optimizer": "cpu", "pin_memory": True,
        "ratio": 0.5, "overlap_comm": True, "stage3_param_persistence_threshold": 1e4}
    assert imp.unsupported == []
    # stage 1/2 with optimizer offload stays ZeRO-Offload
    assert map_deepspeed(BASE, {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}).policy \
        == "zero-offload"


@pytest.mark.parametrize("name, key", [
    ("nvme", "zero_optimization.offload_param.device: bad value 'nvme'"),
    ("bad_batch", "train_batch_size: bad value 16; allowed: train_micro_batch_size_per_gpu"),
    ("offload_as_string", "zero_optimization.offload_optimizer: bad value 'cpu'; allowed: an object such as "
                          "\\{\"device\": \"cpu\"\\}$"),
    ("stage_bool", "zero_optimization.stage: bad value True; allowed: 0, 1, 2 or 3$"),
])
def test_errors_name_file_and_key(name, key):
    path = DATA / f"{name}.json"
    with pytest.raises(ConfigError, match=f"^{path}: {key}"):
        import_deepspeed(BASE, path)


def test_inline_errors(tmp_path):
    for ds, msg in [({"zero_optimization": {"stage": 4}}, "zero_optimization.stage: bad value 4"),
                    ({"bf16": {"enabled": True}, "fp16": {"enabled": True}}, "bf16.enabled"),
                    ({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}},
                     "zero_optimization.offload_param.device"),
                    ({"train_micro_batch_size_per_gpu": 0}, "train_micro_batch_size_per_gpu: bad value 0"),
                    ({"train_micro_batch_size_per_gpu": True}, "train_micro_batch_size_per_gpu: bad value True"),
                    ({"train_batch_size": True}, "train_batch_size: bad value True"),
                    ({"zero_optimization": {"stage": 3, "reduce_bucket_size": True}},
                     "zero_optimization.reduce_bucket_size: bad value True"),
                    ({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "ratio": True}}},
                     "zero_optimization.offload_optimizer.ratio: bad value True"),
                    ({"zero_optimization": {"stage": 3, "offload_param": "cpu"}},
                     "zero_optimization.offload_param: bad value 'cpu'")]:
        with pytest.raises(ConfigError, match=msg):
            map_deepspeed(BASE, ds, "ds.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(ConfigError, match=rf"^{bad}: malformed JSON at line 1"):
        import_deepspeed(BASE, bad)


def test_apply_deepspeed_returns_the_scenario_and_reports_on_stderr(capsys):
    s = apply_deepspeed(BASE, DATA / "unsupported.json")
    assert s.data.train.micro_batch == 1
    err = capsys.readouterr().err
    assert "deepspeed: UNSUPPORTED optimizer.type: Lamb" in err


def test_optimizer_offload_needs_a_zero_stage(tmp_path):
    from simhete.search.deepspeed import apply_deepspeed
    from simhete.scenario import load_scenario
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 0, "offload_optimizer": {"device": "cpu"}}}))
    s = load_scenario(REPO / "scenarios" / "llama2-7b_rtx4090_zero-offload.yaml")
    with pytest.raises(ConfigError, match=r"ds\.json: zero_optimization\.offload_optimizer\.device: bad value 'cpu'; "
                                          r"allowed: none unless zero_optimization\.stage is 1, 2 or 3"):
        apply_deepspeed(s, ds)

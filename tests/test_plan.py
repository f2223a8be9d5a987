"""Capacity planning: fit verdicts against hand-computed memory accounting, the micro-batch bisection,
family and hardware searches, and the CLI on shipped presets."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simhete.cli import main
from simhete.scenario import scenario_from_dict
from simhete.search.plan import Planner
from simhete.policy.process_memory import PROCESS_RSS_DEFAULT, group_numels, pow2_ceil
from simhete.workload import get_model

GIB = 2**30


def base(model="gpt-like-h256-l4-a4", hardware="h100-pcie", mb=1, seq=256, **hw):
    return scenario_from_dict({"model": model, "hardware": {"profile": hardware, **hw},
                               "train": {"micro_batch": mb, "seq_len": seq}, "iterations": 2,
                               "policy": "gpu-only"})


def test_llama2_13b_gpu_only_cannot_hold_its_model_states_on_an_80gb_gpu():
    # gpu-only keeps 2 (bf16 weights) + 4 (fp32 master) + 8 (Adam m, v) = 14 B/param resident
    # (ZeRO paper §3.1): 14 × 13.0 B params = 182 GB > 78 GiB usable (80 GiB − 2 GiB reserved).
    n = get_model("llama2-13b").n_params()
    assert 14 * n > 78 * GIB
    pl = Planner(base("llama2-13b", seq=4096), policies=("gpu-only",))
    trials = pl.by_policy()["gpu-only"]
    assert [t.knobs["checkpointing"] for t in trials] == ["none", "full"]
    assert not any(t.fits for t in trials)
    assert all(t.reason.startswith("out of memory in gpu0") for t in trials)


@pytest.mark.parametrize("delayed, per_param", [(False, 16), (True, 20)])
@pytest.mark.parametrize("pinned", [False, True])
def test_zero_offload_fits_exactly_when_host_memory_holds_its_model_states(delayed, per_param, pinned):
    # ZeRO-Offload keeps fp32 master (4), Adam m, v (8) and fp32 gradients (4) on the host: 16 B/param;
    # the delayed update (DPU) double-buffers the fp32 gradients: 20 B/param. A real process adds
    # (policy/process_memory.py): its resident baseline, DeepSpeed's 16-bit staging copy of the
    # partition (2 B/param) and 16-bit temp gradient buffer of the largest tensor (the 50257 x 256
    # embedding), and when pinned each of the fp32 master, the fp32 gradients and the 16-bit
    # staging buffer rounded up to a power of two, per parameter group (decayed, not decayed).
    spec = get_model("gpt-like-h256-l4-a4")
    n = spec.n_params()
    largest = 50257 * 256
    decayed, plain = group_numels(spec)
    assert decayed + plain == n and plain == 4 * (2 * 256 + 4 * 256 + 1024 + 256 + 2 * 256) + 2 * 256
    rounding = sum(2 * (pow2_ceil(4 * g) - 4 * g) + pow2_ceil(2 * g) - 2 * g for g in (decayed, plain)) \
        + pow2_ceil(2 * largest) - 2 * largest
    need = per_param * n + PROCESS_RSS_DEFAULT + 2 * n + 2 * largest + (rounding if pinned else 0)

    def trials(host):
        ts = Planner(base(host_memory=host), policies=("zero-offload",)).by_policy()["zero-offload"]
        return [t for t in ts if t.knobs["delayed_update"] is delayed and t.knobs["pin_memory"] is pinned]
    at, below = trials(need), trials(need - 1)
    assert len(at) == 2 and all(t.fits and t.peak_host_bytes == need for t in at)
    assert not any(t.fits for t in below)
    assert all(t.reason.startswith("out of memory in cpu") for t in below)


def test_largest_micro_batch_is_the_fit_edge_of_a_linear_scan():
    s = base(gpu_memory="2600MiB")            # 552 MiB usable after the 2 GiB reserve
    pl = Planner(s, policies=("gpu-only",))
    knobs = {"checkpointing": "none"}
    mb, probes = pl.largest_micro_batch("gpu-only", knobs)
    fits = [pl.trial(s.with_changes(knobs=knobs, **{"train.micro_batch": b})).fits for b in range(1, mb + 2)]
    assert mb >= 2 and fits == [True] * mb + [False]       # monotone, and mb is the edge
    assert probes <= 2 * (mb.bit_length() + 1)               # doubling + bisection, not a scan


def test_largest_model_of_the_family_and_gpt_like_depth():
    pl = Planner(base("llama2-7b", "rtx4090-desktop", seq=1024), policies=("gpu-only", "zero-offload"))
    name, fam = pl.largest_model()
    assert fam == "llama2"
    # 13B under ZeRO-Offload needs 2 B/param of bf16 weights on the GPU: 26 GB > 22 GiB usable
    assert 2 * get_model("llama2-13b").n_params() > 22 * GIB
    assert name == "llama2-7b"
    g = Planner(base("gpt-like-h256-l4-a4", gpu_memory="2600MiB", seq=256), policies=("gpu-only",))
    deepest, _ = g.largest_model()
    layers = int(re.search(r"-l(\d+)-", deepest).group(1))
    fits = [g.fits_anywhere(base(f"gpt-like-h256-l{n}-a4", gpu_memory="2600MiB")) for n in (layers, layers + 1)]
    assert layers > 4 and fits == [True, False]


def test_plan_cli_json_on_shipped_presets(capsys):
    rc = main(["plan", "--model", "llama2-7b", "--hardware", "rtx4090-desktop", "--seq", "2048",
               "--policy", "gpu-only", "--policy", "zero-offload", "--min-tokens-per-s", "1", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fits_under"] == ["zero-offload"]
    assert out["best"]["policy"] == "zero-offload" and out["best"]["tokens_per_s"] > 0
    assert out["largest_micro_batch"]["micro_batch"] >= 1
    assert out["largest_model"]["model"] == "llama2-7b"
    # the T4 (16 GB) cannot hold 13.5 GB of 16-bit weights plus two 1 GB gradient buckets and
    # activations; the RTX 3090 (24 GB, 71 bf16 TFLOPS) is next in size order, before the RTX 4090
    # (24 GB, 165.2); CPU-device profiles are never candidates
    assert out["target"]["smallest_hardware"] == "rtx3090"
    cands = {c["hardware"]: c["best"] for c in out["target"]["candidates"]}
    assert "cpu-local" not in cands and cands["t4"] is None
    assert cands["v100-32gb-dgx2"]["dtype"] == "fp16"          # no bf16 on a V100: asked in fp16
    assert any("gpu.reserved_bytes" in p for p in out["capacity_provenance"])
    assert out["best"]["uncalibrated"]          # datasheet/assumed numbers are named


def test_plan_cli_bad_input_is_exit_2(capsys):
    assert main(["plan", "--model", "llama9", "--hardware", "h100-pcie", "--seq", "1024"]) == 2
    assert "model" in capsys.readouterr().err
    assert main(["plan", "--model", "llama2-7b", "--hardware", "h100-pcie", "--seq", "0"]) == 2


def test_depth_search_stops_at_the_model_size_limit_and_says_so(monkeypatch):
    import simhete.workload.spec as spec
    monkeypatch.setattr(spec, "MAX_LAYERS", 8)
    g = Planner(base("gpt-like-h256-l4-a4", seq=256), policies=("gpu-only",))
    deepest, _ = g.largest_model()
    assert deepest == "gpt-like-h256-l8-a4"
    assert g.unsearched == "deeper than 8 layers (the model-size limit; 8 layers fit)"


def test_depth_search_out_of_budget_names_what_it_did_not_search():
    g = Planner(base("gpt-like-h256-l4-a4", seq=256), policies=("gpu-only",), budget_s=0.0)
    assert g.largest_model()[0] is None
    assert g.unsearched == "depths 1..1024 (the 0 s search budget ran out)"
    # a preset family: every member not reached is named
    p = Planner(base("llama2-7b", "rtx4090-desktop", seq=1024), policies=("zero-offload",), budget_s=0.0)
    assert p.largest_model() == (None, "llama2")
    assert p.unsearched == "llama2-70b, llama2-13b, llama2-7b (the 0 s search budget ran out)"


def test_plan_autohete_trials_get_the_planning_solver_limit():
    from simhete.search.trials import PLAN_SOLVER_S
    pl = Planner(base(), policies=("autohete",))
    assert [v["solver_time_limit"] for v in pl.variants("autohete")] == [PLAN_SOLVER_S, PLAN_SOLVER_S]
    own = Planner(base().with_changes(policy="autohete", knobs={"solver_time_limit": 7}), policies=("autohete",))
    assert {v["solver_time_limit"] for v in own.variants("autohete")} == {7}


@pytest.mark.parametrize("model, problem", [
    ("gpt-like-h1024-l5000", "n_layers: 5000 is over simhete's sanity limit of 1,024 for n_layers"),
    ("gpt-like-h65536-l1000", "the model has 51.5 T parameters, over simhete's sanity limit of 10 T"),
])
def test_model_size_sanity_limits_answer_before_anything_is_built(capsys, model, problem):
    assert main(["plan", "--model", model, "--hardware", "h200-sxm", "--seq", "1024"]) == 2
    err = capsys.readouterr().err
    assert problem in err and err.count("\n") == 1


def test_plan_budget_flag_is_checked(capsys):
    assert main(["plan", "--model", "llama2-7b", "--hardware", "h100-pcie", "--seq", "1024", "--budget", "nan"]) == 2
    assert "--budget nan: must be a number of seconds above 0" in capsys.readouterr().err


def test_plan_target_must_be_finite(capsys):
    assert main(["plan", "--model", "llama2-7b", "--hardware", "h100-pcie", "--seq", "1024",
                 "--min-tokens-per-s", "nan"]) == 2
    assert "--min-tokens-per-s nan: must be a finite number, 0 or more" in capsys.readouterr().err


HF_DIR = __import__("pathlib").Path(__file__).parent / "data" / "hf"


def test_plan_takes_a_hugging_face_config_and_searches_its_own_depth(capsys):
    cfg = HF_DIR / "qwen2.5-0.5b" / "config.json"
    rc = main(["plan", "--model", str(cfg), "--hardware", "h100-pcie", "--seq", "1024",
               "--policy", "gpu-only", "--json", "--budget", "30"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["question"]["model"] == "qwen2.5-0.5b"
    assert out["question"]["params"] == 494_032_768        # transformers 5.25 on the meta device
    assert out["fits_under"] == ["gpu-only"]
    lm = out["largest_model"]
    assert lm["family"].startswith("qwen2.5-0.5b (its config.json architecture")
    m = re.fullmatch(r"qwen2\.5-0\.5b with (\d+) layers", lm["model"])
    assert m and int(m.group(1)) > 24                      # the shipped 24 layers fit with room to spare
    # a folder holding config.json is accepted too, and gives the same model
    assert main(["plan", "--model", str(cfg.parent), "--hardware", "h100-pcie", "--seq", "1024",
                 "--policy", "gpu-only", "--json", "--budget", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["question"]["params"] == 494_032_768


def test_plan_memory_overrides_change_the_verdict_and_the_provenance(capsys):
    args = ["plan", "--model", "llama2-7b", "--hardware", "h100-pcie", "--seq", "1024",
            "--policy", "zero-offload", "--json", "--budget", "1"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["fits_under"] == ["zero-offload"]
    # ZeRO-Offload keeps ≥ 16 B/param of model states on the host: 6.7 B params need > 100 GB
    assert main(args + ["--host-memory", "64GiB"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fits_under"] == []
    assert "host.memory_bytes = 68719476736 (what-if: --host-memory 64GiB)" in out["capacity_provenance"]
    assert all("out of memory in cpu" in t["reason"] for t in out["policies"]["zero-offload"])
    # an 8 GiB GPU (2 GiB of it reserved) cannot hold the 13.5 GB of 16-bit weights ZeRO-Offload
    # keeps on the GPU
    assert main(args + ["--gpu-memory", "8GiB"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fits_under"] == [] and "gpu.memory_bytes = 8589934592 (what-if: --gpu-memory 8GiB)" in out["capacity_provenance"]


@pytest.mark.parametrize("flag, value, problem", [
    ("--host-memory", "lots", "a size like 80GiB"),
    ("--host-memory", "inf", "a size like 80GiB"),
    ("--gpu-memory", "1e30", "up to 2**60 bytes"),
    ("--gpu-memory", "0", "must be more than 0 bytes"),
    ("--gpu-memory", "-4GiB", "a size like 80GiB"),
    ("--gpu-memory", "1GiB", "reserved_bytes 2147483648 must be below memory_bytes 1073741824"),
])
def test_plan_memory_override_errors_are_one_line(capsys, flag, value, problem):
    assert main(["plan", "--model", "llama2-7b", "--hardware", "h100-pcie", "--seq", "1024", f"{flag}={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert problem in err and "\n" not in err


def test_plan_missing_or_bad_config_json_is_exit_2(capsys, tmp_path):
    assert main(["plan", "--model", str(tmp_path / "nope.json"), "--hardware", "h100-pcie", "--seq", "1024"]) == 2
    assert "Hugging Face config.json not found" in capsys.readouterr().err
    (tmp_path / "config.json").write_text('{"model_type": "t5"}')
    assert main(["plan", "--model", str(tmp_path), "--hardware", "h100-pcie", "--seq", "1024"]) == 2
    err = capsys.readouterr().err.strip()
    assert "model_type: bad value 't5'" in err and "\n" not in err


def test_plan_on_the_slowest_shipped_pair_keeps_its_budget_and_names_what_it_cut(capsys):
    # AutoHete's testbed with its four GPUs and the 40-layer model of its shipped scenario: the
    # slowest plan benchmarks/plan_bounds.py found. With a budget too small for any search trial,
    # the table of policies is still complete and each search answers with what it knows and
    # names what it did not search; such an output is the same on any machine
    rc = main(["plan", "--model", "gpt-like-h5120-l40", "--hardware", "a100-40gb-pcie-epyc7713", "--gpus", "4",
               "--seq", "1024", "--json", "--budget", "1e-6"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    from simhete.policy import get_policy, list_policies
    assert list(out["policies"]) == [p for p in list_policies() if get_policy(p).multi_gpu]
    assert out["fits_under"]
    lm = out["largest_micro_batch"]
    # micro-batch 1 under the best policy's leanest knobs was a trial of the table already
    assert (lm["micro_batch"], lm["trials"]) == (1, 1)
    assert lm["not_searched"] == "micro-batches 2..4096 (the 1e-06 s search budget ran out; 1 fits)"
    big = out["largest_model"]
    assert big["model"] is None and big["not_searched"] == "depths 1..1024 (the 1e-06 s search budget ran out)"
    assert out["time_limited"][:2] == [f"largest micro-batch: {lm['not_searched']}",
                                       f"largest model: {big['not_searched']}"]


def test_preset_family_search_bisects_and_agrees_with_a_scan():
    # the family's members bisected in size order: the answer is the largest member a scan finds
    # to fit, and the scan shows fit/no-fit is monotone along the family
    pl = Planner(base("gpt3-125m", "rtx4090-desktop", seq=1024), policies=("gpu-only", "zero-offload"),
                 budget_s=60)
    name, fam = pl.largest_model()
    from simhete.workload import family_models
    members = [m.name for m in family_models("gpt3")]
    scan = [pl.fits_anywhere(base(m, "rtx4090-desktop", seq=1024)) for m in members]
    assert fam == "gpt3" and pl.unsearched is None
    assert scan == sorted(scan, reverse=True)                   # fit/no-fit is monotone along the family
    assert name == members[scan.index(False) - 1] and name != members[-1]


def test_a_trial_cut_by_autohete_solver_time_limit_says_so():
    # a limit spent by the first MILP leaves the special cases unsolved: the trial's plan depends on
    # the machine's speed, and the trial says so (plan lists it under time_limited)
    s = base().with_changes(policy="autohete", knobs={"solver_time_limit": 1e-9})
    trials = Planner(s, policies=("autohete",)).by_policy()["autohete"]
    assert trials and all("AutoHete's solver_time_limit ran out before every special case was solved" in t.cut
                          for t in trials)


@settings(max_examples=200, deadline=None)
@given(cap=st.sampled_from([1, 7, 64, 100, 1024]), t=st.integers(0, 1024), budget=st.integers(0, 30))
def test_largest_fitting_finds_the_threshold_or_brackets_it_when_the_budget_runs_out(cap, t, budget):
    from simhete.search.plan import largest_fitting
    t = min(t, cap)                     # n fits exactly when n <= t
    calls = []

    def fits(n):
        assert 1 <= n <= cap and n not in calls        # within the range, never asked twice
        if len(calls) >= budget:
            return None
        calls.append(n)
        return n <= t
    lo, hi, complete = largest_fitting(fits, cap)
    assert lo <= t < hi <= cap + 1
    if complete:
        assert lo == t and hi == (t + 1 if t < cap else cap + 1)
        assert len(calls) <= 2 * cap.bit_length() + 1    # doubling, then bisection
    else:
        assert len(calls) == budget

"""The published-measurement suite: its schema, the predicted value of each figure kind, the
memory measures, largest_model's search, and the gate on the suite's documented error."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from simhete.cli import main
from simhete.errors import ConfigError
from simhete.published import (SUMMARY_FILE, Row, hardware_class, read_summary, resolve_dir, run_suite, stats,
                               suite_error_for)
from simhete.published_figures import MEASURE_EXCLUDES, Figure, memory_peak, parse_published, predict
from simhete.report.metrics import PoolPeak
from simhete.scenario import scenario_from_dict
from simhete.search.largest import largest_model
from simhete.sim import run

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "data" / "published"
F = "case.yaml"

GOOD = {"source": "A. Author, Title, Table 2", "url": "arXiv:0000.00000", "conditions": "one GPU",
        "assumed": "", "figures": [{"kind": "iteration_time", "value": 1.5, "unit": "s"}]}


def with_fig(**fig):
    return {**GOOD, "figures": [GOOD["figures"][0], fig]}


# -- schema --------------------------------------------------------------------------------------

@pytest.mark.parametrize("data, msg", [
    (None, "case.yaml: published: required key is missing; a published case needs a published: block "
           "(source, url, conditions, assumed, figures)"),
    ({k: v for k, v in GOOD.items() if k != "url"}, "case.yaml: published.url: required key is missing"),
    ({k: v for k, v in GOOD.items() if k != "assumed"}, "case.yaml: published.assumed: required key is missing"),
    ({**GOOD, "source": ""}, "case.yaml: published.source: bad value ''; allowed: String should have at "
                             "least 1 character"),
    ({**GOOD, "figures": []}, "case.yaml: published.figures: bad value []; allowed: one or more figures "
                              "{kind, value, unit}"),
    ({**GOOD, "extra": 1}, "case.yaml: published.extra: unknown key; allowed keys here: assumed, "
                           "conditions, figures, source, url"),
    (with_fig(kind="latency", value=1, unit="s"),
     "case.yaml: published.figures[1].kind: bad value 'latency'; allowed: 'iteration_time', "
     "'tokens_per_s', 'samples_per_s', 'tflops_per_gpu', 'mfu', 'peak_gpu_memory', "
     "'peak_host_memory' or 'largest_model'"),
    (with_fig(kind="iteration_time", value=1, unit="min"),
     "case.yaml: published.figures[1].unit: bad value 'min'; allowed: for kind iteration_time: s, ms"),
    (with_fig(kind="peak_gpu_memory", value=20, unit="s"),
     "case.yaml: published.figures[1].unit: bad value 's'; allowed: for kind peak_gpu_memory: GiB, GB, MiB, MB"),
    (with_fig(kind="mfu", value=0.4, unit="fraction"),
     "case.yaml: published.figures[1].unit: bad value 'fraction'; allowed: for kind mfu: %"),
    (with_fig(kind="iteration_time", value=0, unit="s"),
     "case.yaml: published.figures[1].value: bad value 0; allowed: a positive number"),
    (with_fig(kind="iteration_time", value="1.2", unit="s"),
     "case.yaml: published.figures[1].value: bad value '1.2'; allowed: a positive number"),
    (with_fig(kind="tokens_per_s", value=100, unit="tokens/s", measure="allocated"),
     "case.yaml: published.figures[1].measure: bad value 'allocated'; allowed: only for kinds "
     "peak_gpu_memory, peak_host_memory; remove it for kind tokens_per_s"),
    (with_fig(kind="peak_gpu_memory", value=20, unit="GiB", measure="rss"),
     "case.yaml: published.figures[1].measure: bad value 'rss'; allowed: for kind peak_gpu_memory: "
     "allocated, reserved, device"),
    (with_fig(kind="peak_host_memory", value=20, unit="GiB", measure="allocated"),
     "case.yaml: published.figures[1].measure: bad value 'allocated'; allowed: for kind "
     "peak_host_memory: rss"),
    (with_fig(kind="iteration_time", value=1, unit="s", per_gpu=True),
     "case.yaml: published.figures[1].per_gpu: bad value True; allowed: only for kinds tokens_per_s, "
     "samples_per_s; remove it for kind iteration_time"),
    (with_fig(kind="iteration_time", value=1, unit="s", source="x"),
     "case.yaml: published.figures[1].source: unknown key; allowed keys here: kind, measure, note, "
     "per_gpu, unit, value"),
])
def test_schema_errors_are_one_line_and_exact(data, msg):
    with pytest.raises(ConfigError) as e:
        parse_published(data, F)
    assert str(e.value) == msg


def test_schema_defaults():
    pub = parse_published({**GOOD, "figures": [
        {"kind": "tokens_per_s", "value": 10, "unit": "tokens/s"},
        {"kind": "peak_gpu_memory", "value": 10, "unit": "GiB"},
        {"kind": "peak_host_memory", "value": 10, "unit": "GB"},
        {"kind": "mfu", "value": 40, "unit": "%"}]}, F)
    assert [(f.per_gpu, f.measure) for f in pub.figures] == [(False, None), (None, "allocated"),
                                                             (None, "rss"), (None, None)]


def _suite_dir(tmp_path, cases: dict[str, dict], ne=None):
    d = tmp_path / "pub"
    d.mkdir()
    for name, data in cases.items():
        (d / f"{name}.yaml").write_text(yaml.safe_dump(data))
    if ne is not None:
        (d / "not-expressible.yaml").write_text(yaml.safe_dump(ne))
    return d


CPU_CASE = {"model": "gpt-like-h256-l4-a4", "hardware": {"profile": "cpu-local", "gpu_memory": "2GiB"},
            "train": {"micro_batch": 2, "seq_len": 64, "dtype": "fp32"}, "iterations": 3,
            "policy": "gpu-only"}


def test_a_file_without_published_block_is_an_error(tmp_path):
    d = _suite_dir(tmp_path, {"plain": CPU_CASE})
    with pytest.raises(ConfigError) as e:
        run_suite(d)
    assert str(e.value) == (f"{d / 'plain.yaml'}: published: required key is missing; a published "
                            "case needs a published: block (source, url, conditions, assumed, figures)")


@pytest.mark.parametrize("ne, msg", [
    ({"source": "x"}, "expected a list of {source, url, figure, why}, got dict"),
    ([{"source": "x", "url": "y", "figure": "z"}], "[0].why: required key is missing"),
])
def test_not_expressible_errors(tmp_path, ne, msg):
    d = _suite_dir(tmp_path, {"c": {**CPU_CASE, "published": GOOD}}, ne=ne)
    with pytest.raises(ConfigError) as e:
        run_suite(d)
    assert str(e.value) == f"{d / 'not-expressible.yaml'}: {msg}"


# -- predicted values ----------------------------------------------------------------------------

def test_predicted_values_are_the_summary_figures_in_the_published_units(tmp_path):
    figs = [{"kind": "iteration_time", "value": 100, "unit": "ms"},
            {"kind": "tokens_per_s", "value": 1000, "unit": "tokens/s"},
            {"kind": "samples_per_s", "value": 10, "unit": "samples/s", "per_gpu": True},
            {"kind": "tflops_per_gpu", "value": 0.1, "unit": "TFLOPS"},
            {"kind": "mfu", "value": 10, "unit": "%"},
            {"kind": "peak_gpu_memory", "value": 100, "unit": "MiB", "measure": "device"},
            {"kind": "peak_host_memory", "value": 1, "unit": "GB"}]
    d = _suite_dir(tmp_path, {"tiny": {**CPU_CASE, "published": {**GOOD, "figures": figs}}})
    suite = run_suite(d)
    sm = run(scenario_from_dict(CPU_CASE, str(d / "tiny.yaml"))).summary
    assert sm.fits and sm.n_gpus == 1
    got = {r.kind: r.predicted for r in suite.rows}
    assert got["iteration_time"] == pytest.approx(sm.iter_time_s * 1e3, rel=1e-12)
    assert got["tokens_per_s"] == pytest.approx(sm.tokens_per_iter / sm.iter_time_s, rel=1e-12)
    assert got["samples_per_s"] == pytest.approx(sm.samples_per_iter / sm.iter_time_s, rel=1e-12)
    assert got["tflops_per_gpu"] == pytest.approx(sm.model_flops_per_iter / sm.iter_time_s / 1e12, rel=1e-12)
    assert got["mfu"] == pytest.approx(100 * sm.model_flops_per_iter / sm.iter_time_s / sm.peak_flops_per_gpu,
                                       rel=1e-12)
    assert got["peak_gpu_memory"] == sm.memory["gpu0"].peak_bytes / 2**20
    # gpu-only on the CPU device: the host pool books nothing, so there is no host peak to compare
    assert got["peak_host_memory"] is None
    r = suite.rows[0]
    assert r.error_pct == pytest.approx((r.predicted - 100) / 100 * 100)
    assert [x.hardware for x in suite.rows] == ["CPU"] * 7


def test_out_of_memory_is_a_miss_not_a_number(tmp_path):
    oom = {**CPU_CASE, "model": "gpt-like-h2048-l48", "published": {**GOOD, "figures": [
        {"kind": "iteration_time", "value": 2, "unit": "s"},
        {"kind": "tokens_per_s", "value": 2, "unit": "tokens/s"}]}}
    suite = run_suite(_suite_dir(tmp_path, {"big": oom}))
    assert [(r.predicted, r.error_pct) for r in suite.rows] == [(None, None), (None, None)]
    st = suite.aggregates()["groups"]["time"]
    assert st["n"] == 2 and st["misses"] == 2 and math.isinf(st["median"]) and math.isinf(st["max"])
    doc = suite.to_dict()
    assert doc["rows"][0]["predicted"] == "OOM" and doc["groups"]["time"]["median"] is None


# -- memory measures -----------------------------------------------------------------------------

class _Sm:
    def __init__(self, memory):
        self.memory = memory


def test_measures_leave_out_the_classes_they_do_not_see():
    classes = {"weights": 1000, "activations": 500, "cuda_context": 300, "allocator_slack": 70}
    sm = _Sm({"gpu0": PoolPeak(10_000, 1870, classes), "gpu1": PoolPeak(10_000, 1500, {"weights": 1500}),
              "cpu": PoolPeak(10**6, 9000, {"master": 8000, "process_baseline": 1000})})
    assert memory_peak(sm, "gpu", "allocated") == 1500      # gpu0 is 1500 without both: gpu1 ties
    assert memory_peak(sm, "gpu", "reserved") == 1570
    assert memory_peak(sm, "gpu", "device") == 1870
    assert memory_peak(sm, "cpu", "rss") == 9000
    assert MEASURE_EXCLUDES == {"allocated": ("cuda_context", "allocator_slack"),
                                "reserved": ("cuda_context",), "device": (), "rss": ()}
    fig = Figure(kind="peak_gpu_memory", value=1, unit="MB", measure="reserved")
    assert predict(fig, sm) == 1570.0


def test_measure_without_the_new_classes_is_the_whole_peak():
    sm = _Sm({"gpu0": PoolPeak(10, 7, {"weights": 7}), "cpu": PoolPeak(10, 0, {})})
    assert {m: memory_peak(sm, "gpu", m) for m in ("allocated", "reserved", "device")} == \
        {"allocated": 7.0, "reserved": 7.0, "device": 7.0}
    assert memory_peak(sm, "cpu", "rss") is None


# -- largest_model -------------------------------------------------------------------------------

def test_largest_model_matches_a_brute_force_depth_scan():
    s = scenario_from_dict({**CPU_CASE, "model": "gpt-like-h512-l4-a4", "iterations": 2,
                            "hardware": {"profile": "cpu-local", "gpu_memory": "1300MiB"}}, F)
    got = largest_model(s)
    fits = [run(s.with_changes(**{"model.n_layers": d}), check=False).summary.fits for d in range(1, 41)]
    deepest = max(d for d, ok in zip(range(1, 41), fits) if ok)
    assert not any(fits[deepest:])                 # monotone here, and the edge is inside the scan
    assert 4 < deepest < 40 and got.depth == deepest and got.complete
    from simhete.workload import gpt_like
    assert got.params == gpt_like(512, deepest, 4).n_params()
    assert got.trials <= 2 * math.ceil(math.log2(deepest)) + 2


def test_largest_model_stops_at_its_trial_cap_and_says_so():
    s = scenario_from_dict({**CPU_CASE, "hardware": {"profile": "cpu-local", "gpu_memory": "2GiB"}}, F)
    got = largest_model(s, max_trials=1)
    assert not got.complete and got.depth == 4 and got.trials == 1


def test_largest_model_says_when_the_depth_cap_fits():
    s = scenario_from_dict({**CPU_CASE, "model": "gpt-like-h512-l4-a4", "iterations": 2,
                            "hardware": {"profile": "cpu-local", "gpu_memory": "1300MiB"}}, F)
    got = largest_model(s, max_depth=6)
    assert (got.depth, got.complete, got.capped) == (6, True, True)
    assert largest_model(s, max_depth=40).capped is False


def test_largest_model_none_when_one_layer_does_not_fit():
    s = scenario_from_dict({**CPU_CASE, "model": "gpt-like-h2048-l2"}, F)
    assert largest_model(s).params is None


# -- hardware classes, aggregates ----------------------------------------------------------------

@pytest.mark.parametrize("model, cls", [
    ("NVIDIA A100-PCIE-40GB", "A100"), ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA H100 PCIe", "H100"),
    ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H200", "H200"), ("Tesla V100-SXM3-32GB", "V100"),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"), ("NVIDIA GeForce RTX 3090", "RTX 3090"),
    ("Tesla T4", "T4"), ("NVIDIA L40", "L40"), ("NVIDIA L4", "L4"), ("Some New GPU", "Some New GPU")])
def test_hardware_class(model, cls):
    class G:
        pass
    p = G()
    p.device_type, p.gpu = "cuda", G()
    p.gpu.model = model
    assert hardware_class(p) == cls


def test_stats_median_and_max_of_absolute_errors():
    rows = [Row("a", "a.yaml", "A100", "iteration_time", "time", "s", 1.0, x) for x in (1.1, 0.8, 1.05)]
    assert stats(rows) == {"n": 3, "misses": 0, "median": pytest.approx(10.0), "max": pytest.approx(20.0)}


# -- the command and the gate --------------------------------------------------------------------

def test_command_table_json_and_summary(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")   # the table is laid out for (at most) 100 columns
    d = tmp_path / "pub"
    shutil.copytree(FIXTURES, d)
    (d / SUMMARY_FILE).unlink()
    assert main(["validate", "--published", str(d), "--write-summary"]) == 0
    out = capsys.readouterr().out
    assert "megatron-1.2b_v100_gpu-only" in out and "Not expressible" in out
    assert f"wrote {d / SUMMARY_FILE} (new file)" in " ".join(out.split()).replace("/ ", "/")
    # the tables fit 100 columns (the "wrote <path>" line is as long as the user's path)
    assert max(len(line) for line in out.splitlines() if not line.startswith("wrote ")) <= 100
    assert main(["validate", "--published", str(d), "--json", "--write-summary"]) == 0
    cap = capsys.readouterr()
    doc = json.loads(cap.out)
    assert {r["case"] for r in doc["rows"]} == {"megatron-1.2b_v100_gpu-only", "zero-offload-10b_v100"}
    assert doc["groups"]["time"]["n"] == 2 and doc["hardware"]["V100"]["memory"]["n"] == 1
    assert len(doc["not_expressible"]) == 1
    assert f"wrote {d / SUMMARY_FILE} (replaced: median" in cap.err


def test_command_argument_errors(capsys):
    assert main(["validate", "--published", "x", "--profile", "p.yaml"]) == 2
    assert main(["validate", "--write-summary"]) == 2
    assert main(["validate"]) == 2
    assert main(["validate", "--published", "/nonexistent/dir"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "simhete: error: --published: validates the published suite against predictions; give no "
        "scenario and no --profile with it",
        "simhete: error: --write-summary and --markdown: only with --published",
        "simhete: error: validate: give a scenario and --profile P.yaml (a replay on this machine), "
        "or --published [DIR] (the published-measurement suite)",
        "simhete: error: /nonexistent/dir: published suite directory not found"]


def _gate_dirs() -> list[Path]:
    dirs = [FIXTURES]
    real = resolve_dir(None).resolve()
    if real.is_dir() and any(p.name != SUMMARY_FILE for p in real.glob("*.yaml")):
        dirs.append(real)
    return dirs


@pytest.mark.parametrize("directory", _gate_dirs(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_suite_error_does_not_rise_above_the_documented_figures(directory):
    """The gate: recompute the suite; every documented case is still there and no group's median
    |error| (all hardware, then per hardware class) is above the documented one + 0.5 points."""
    doc = read_summary(directory / SUMMARY_FILE)
    assert doc is not None, (f"{directory / SUMMARY_FILE} missing: run `simhete validate --published "
                             f"{directory} --write-summary` and commit it")
    suite = run_suite(directory)
    missing = set(doc["cases"]) - set(suite.cases)
    assert not missing, f"cases disappeared from the suite: {sorted(missing)}"
    agg = suite.aggregates()
    pairs = [("all", g, st, agg["groups"].get(g)) for g, st in doc["groups"].items()]
    pairs += [(hw, g, st, agg["hardware"].get(hw, {}).get(g))
              for hw, per in doc["hardware"].items() for g, st in per.items()]
    for hw, g, want, got in pairs:
        assert got is not None, f"{hw}/{g}: no figures any more"
        assert got["median"] <= want["median"] + 0.5, (
            f"{hw}/{g}: median |error| {got['median']:.2f} % is above the documented {want['median']} %")
        assert got["misses"] <= want["misses"], f"{hw}/{g}: {got['misses']} OOM misses, documented {want['misses']}"


def test_suite_error_line_for_a_hardware_class(tmp_path):
    from simhete.hw.profile import load_profile

    path = FIXTURES / SUMMARY_FILE
    doc = read_summary(path)
    v = suite_error_for(load_profile("v100-32gb-dgx2"), path)
    t, m = doc["hardware"]["V100"]["time"], doc["hardware"]["V100"]["memory"]
    assert v["line"] == (f"published suite on V100: median {t['median']:.1f} %, max {t['max']:.1f} % "
                         f"over {t['n']} figures (time); median {m['median']:.1f} %, max "
                         f"{m['max']:.1f} % over {m['n']} figure (memory)")
    a = suite_error_for(load_profile("a100-80gb-sxm"), path)
    assert a == {"hardware": "A100", "groups": {},
                 "line": "published suite on A100: no published case on this hardware class"}
    gone = suite_error_for(load_profile("a100-80gb-sxm"), tmp_path / SUMMARY_FILE)
    assert gone["line"] == ("published suite on A100: no measured suite error "
                            "(scenarios/published/suite-error.yaml missing)")


# -- honest outputs: what a prediction rests on ---------------------------------------------------

def test_simulate_and_compare_state_the_suite_error_of_their_hardware_class(capsys):
    scen = str(ROOT / "scenarios" / "llama2-7b_rtx4090_zero-offload.yaml")
    assert main(["simulate", scen, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    want = suite_error_for(run(scenario_from_dict(yaml.safe_load(Path(scen).read_text()), scen))
                           .context.profile)
    assert doc["published_suite"] == want and want["hardware"] == "RTX 4090"
    assert want["line"].startswith("published suite on RTX 4090: ")
    assert main(["simulate", scen]) == 0
    assert " ".join(want["line"].split()) in " ".join(capsys.readouterr().out.split())
    assert main(["compare", str(ROOT / "scenarios" / "small-gpt_cpu_zero-offload.yaml"), "--no-largest",
                 "--json", "--policies", "zero-offload"]) == 0
    assert json.loads(capsys.readouterr().out)["published_suite"]["hardware"] == "CPU"


def test_plan_claims_calibration_only_from_the_flags_it_reports(capsys):
    argv = ["plan", "--model", "llama2-70b", "--hardware", "rtx4090-desktop", "--seq", "4096",
            "--policy", "gpu-only"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Nothing fits: there is no throughput to vouch for." in out and "rests only" not in out
    assert main(argv + ["--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["best"] is None and doc["best_rests_on"] == "Nothing fits: there is no throughput to vouch for."
    assert doc["published_suite"]["hardware"] == "RTX 4090"
    assert main(["plan", "--model", "llama2-7b", "--hardware", "h100-pcie", "--seq", "2048", "--policy",
                 "zero-offload", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["best"]["uncalibrated"] and doc["best_rests_on"].startswith(
        "The best throughput rests on uncalibrated numbers: ")
    from simhete.commands.plan import rests_on
    assert rests_on(object(), []) == ("The best throughput rests only on calibrated (measured) numbers: "
                                      "no number behind it is flagged.")


def test_sweep_states_what_its_best_point_rests_on(tmp_path, capsys):
    base = {**CPU_CASE, "hardware": {"profile": "v100-32gb-dgx2"}, "train": {**CPU_CASE["train"], "dtype": "fp16"}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump({"base": "base.yaml", "axes": {"train.micro_batch": [1, 2]}}))
    assert main(["sweep", str(p), "--out", str(tmp_path / "r.sqlite"), "--quiet"]) == 0
    out = capsys.readouterr().out.replace("\n", " ")
    assert "The best point rests on uncalibrated numbers: " in out
    from simhete.hw.profile import load_profile
    assert " ".join(suite_error_for(load_profile("v100-32gb-dgx2"))["line"].split()) in " ".join(out.split())


# -- make gpu-check ------------------------------------------------------------------------------

def _gpu_check():
    import importlib.util
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_without_cuda_says_so_in_one_line_and_exits_2(monkeypatch, tmp_path, capsys):
    gc = _gpu_check()
    monkeypatch.setattr(gc, "cuda_device", lambda: None)
    assert gc.main(["--out-dir", str(tmp_path / "m"), "--doc", str(tmp_path / "v.md")]) == 2
    err = capsys.readouterr().err
    assert err == ("gpu-check: no CUDA device here (torch missing or torch.cuda.is_available() is "
                   "false); nothing measured\n")
    assert not (tmp_path / "m").exists() and not (tmp_path / "v.md").exists()


def test_gpu_check_section_replaces_only_its_own_part(tmp_path):
    gc = _gpu_check()
    doc = tmp_path / "v.md"
    doc.write_text("# Validation\n\ntext\n")
    gc.write_section(doc, f"{gc.BEGIN}\nfirst\n{gc.END}")
    gc.write_section(doc, f"{gc.BEGIN}\nsecond\n{gc.END}")
    assert doc.read_text() == (f"# Validation\n\ntext\n\n## GPU check (generated)\n\n{gc.BEGIN}\nsecond\n"
                               f"{gc.END}\n")


@pytest.mark.torch
@pytest.mark.slow
def test_gpu_check_runs_every_step_on_the_cpu(tmp_path):
    """The whole pipeline with the CPU as the device, on tiny shapes and the three suites a
    profile needs: calibrate → profile in OUT_DIR, validate ×3 → JSON, generated doc section."""
    pytest.importorskip("torch")
    gc = _gpu_check()
    scen = []
    for pol, knobs in (("gpu-only", {}), ("zero-offload", {"reduce_bucket_size": 1.0e5}),
                       ("zero-offload", {"activations": ["swap", "recompute"], "reduce_bucket_size": 1.0e5})):
        p = tmp_path / f"tiny-{len(scen)}.yaml"
        p.write_text(yaml.safe_dump({
            "model": "gpt-like-h64-l2-a2", "hardware": {"profile": "cpu-local", "gpu_memory": "1GiB"},
            "train": {"micro_batch": 2, "seq_len": 32, "dtype": "fp32"}, "iterations": 3, "policy": pol,
            "knobs": knobs, "replay": {"vocab": 256, "dtype": "fp32"}}))
        scen.append(str(p))
    doc = tmp_path / "validation.md"
    doc.write_text("# Validation\n")
    out = tmp_path / "measured"
    assert gc.main(["--device", "cpu", "--out-dir", str(out), "--doc", str(doc),
                    "--suites", "gemm,membw,copy", "--scenarios", *scen]) == 0
    assert (out / "gpu-check-cpu.yaml").is_file() and (out / "gpu-check-cpu.fit.md").is_file()
    res = json.loads((out / "gpu-check-cpu.validate.json").read_text())
    assert len(res["results"]) == 3 and all(r["loss_parity"] for r in res["results"])
    text = doc.read_text()
    assert text.count(gc.BEGIN) == 1 and text.count("| tiny-") == 3


def test_markdown_lists_every_figure_with_its_source(capsys):
    """``validate --published DIR --markdown``: one table row per figure, linked to its source."""
    from simhete.cli import main
    assert main(["validate", "--published", str(FIXTURES), "--markdown"]) == 0
    out = capsys.readouterr().out
    suite = run_suite(FIXTURES)
    cases = {r.case for r in suite.rows}
    rows = [ln for ln in out.splitlines() if ln.split(" | ")[0].lstrip("| ") in cases]
    assert len(rows) == len(suite.rows)
    assert all((f"]({r.url})" if r.url.startswith("http") else r.url) in out for r in suite.rows)
    assert "| all | time |" in out

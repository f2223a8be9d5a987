"""The CI loop on this machine: calibrate --quick (once per session) → simulate → replay → compare,
over the shipped validation scenarios, plus the `simhete validate` command line."""

from __future__ import annotations

import json
import re
import math
from pathlib import Path

import pytest
import yaml

from simhete.cli import main
from simhete.commands.validate import validate_scenario
from simhete.hw.profile import load_profile
from simhete.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((ROOT / "scenarios").glob("small-*_cpu_*.yaml"))
# smaller than the shipped replay shapes so the whole loop stays within the test budget;
# benchmarks/validation_error.py runs the shipped shapes
SHRINK = {"replay.hidden": 128, "replay.seq_len": 64, "replay.vocab": 512, "replay.micro_batch": 2}


@pytest.fixture(scope="session")
def cpu_profile(tmp_path_factory) -> Path:
    """A profile of this CPU from the quick calibration, measured once per test session."""
    out = tmp_path_factory.mktemp("calib") / "cpu.yaml"
    assert main(["calibrate", "--quick", "--device", "cpu", "--out", str(out)]) == 0
    return out


def test_the_suite_covers_the_policies_validation_needs():
    policies = {load_scenario(p).data.policy for p in SCENARIOS}
    assert {"gpu-only", "zero-offload", "zero-infinity", "stronghold"} <= policies
    knobs = [load_scenario(p).data.knobs for p in SCENARIOS]
    assert any(k.get("checkpointing") == "full" for k in knobs)
    assert any("swap" in (k.get("activations") or []) for k in knobs)
    assert len(SCENARIOS) >= 5


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_calibrate_simulate_replay_compare(path, cpu_profile, record_property):
    s = load_scenario(path).with_changes(**SHRINK)
    v = validate_scenario(s, load_profile(cpu_profile), iterations=3, device="cpu")
    assert v.parity is True, (v.comparison.losses, v.comparison.reference_losses)
    c = v.comparison
    assert c.steady_iterations == (2, 3)
    assert c.iteration.measured > 0 and c.iteration.predicted > 0
    assert {r.name for r in v.replayed.timeline.records} == {t.name for t in v.predicted.schedule.tasks}
    assert set(c.categories) >= {"fwd", "bwd"}
    # the prediction error is recorded, not asserted (timings are noisy on a shared machine);
    # benchmarks/validation_error.py reports it for the shipped shapes
    record_property("iteration_error", c.iteration.error)
    record_property("iteration_predicted_s", c.iteration.predicted)
    record_property("iteration_measured_s", c.iteration.measured)
    assert math.isfinite(c.iteration.error)


def test_validate_command_writes_one_trace_with_both_timelines(cpu_profile, tmp_path, capsys):
    scen = tmp_path / "s.yaml"
    scen.write_text((ROOT / "scenarios" / "small-gpt_cpu_zero-offload.yaml").read_text()
                    .replace("replay: {n_layers: 4, hidden: 256, heads: 4, vocab: 2048",
                             "replay: {n_layers: 2, hidden: 64, heads: 4, vocab: 256, seq_len: 32"))
    trace = tmp_path / "out" / "trace.json"
    rc = main(["validate", str(scen), "--profile", str(cpu_profile), "--iterations", "3",
               "--trace", str(trace), "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["loss_parity"] is True and len(d["losses"]) == 3
    assert set(d["categories_s"]) == {"fwd", "bwd", "h2d", "d2h", "optim_cpu"}
    assert set(d["peak_bytes"]) == {"cpu", "gpu0"}
    ev = json.loads(trace.read_text())["traceEvents"]
    names = {e["args"]["name"] for e in ev if e.get("ph") == "M" and e.get("name") == "process_name"}
    assert any(n.startswith("simulated") for n in names) and any(n.startswith("measured") for n in names)
    spans = [e["name"] for e in ev if e.get("ph") == "X"]
    assert spans.count("it2.ADAM.cpu.b0") == 2   # the same task once in each timeline


def test_validate_command_replays_gradient_accumulation(cpu_profile, tmp_path, capsys):
    """A shipped scenario with ``train.grad_accum: 2``: every micro-step's tasks are replayed
    (ZeRO-Offload's host accumulation copies included) and the losses match the reference loop
    accumulating the same micro-batches."""
    s = load_scenario(ROOT / "scenarios" / "small-gpt_cpu_zero-offload.yaml").with_changes(
        **SHRINK, **{"train.grad_accum": 2, "replay.n_layers": 2})
    scen = tmp_path / "accum.yaml"
    scen.write_text(yaml.safe_dump(s.data.model_dump(exclude_none=True)))
    trace = tmp_path / "trace.json"
    rc = main(["validate", str(scen), "--profile", str(cpu_profile), "--iterations", "3", "--json",
               "--trace", str(trace)])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["loss_parity"] is True and len(d["losses"]) == 3
    assert d["losses"] == d["reference_losses"]
    spans = [e["name"] for e in json.loads(trace.read_text())["traceEvents"] if e.get("ph") == "X"]
    for name in ("it2.m2.F.embed", "it2.m2.B.embed", "it2.m2.D2H.g.ga.k0", "it2.m2.D2H.g.k0"):
        assert spans.count(name) == 2, name   # simulated and measured


def test_validate_table_output(cpu_profile, tmp_path, capsys):
    scen = tmp_path / "s.yaml"
    scen.write_text("model: gpt-like-h768-l12\nhardware: cpu-local\ntrain: {micro_batch: 2, seq_len: 32}\n"
                    "policy: gpu-only\nknobs: {checkpointing: full}\n"
                    "replay: {n_layers: 2, hidden: 64, heads: 4, vocab: 256}\n")
    assert main(["validate", str(scen), "--profile", str(cpu_profile), "--iterations", "2"]) == 0
    out = capsys.readouterr().out
    for text in ("iteration time", "recompute (per iteration)", "peak memory gpu0",
                 "worst-predicted tasks", "losses match the in-memory reference loop"):
        assert text in out


@pytest.mark.parametrize("args,message", [
    (["--device", "cuda"], "--device cuda: the profile"),
    (["--iterations", "0"], "--iterations: bad value 0; allowed: 1 to 100"),
    (["--replays", "0"], "--replays: bad value 0; allowed: 1 to 20"),
])
def test_validate_errors_are_one_line(args, message, tmp_path, capsys):
    scen = ROOT / "scenarios" / "small-gpt_cpu_gpu-only.yaml"
    prof = ROOT / "hwprofiles" / "cpu-local.yaml"
    assert main(["validate", str(scen), "--profile", str(prof), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_cuda_profile_cannot_be_validated_on_the_cpu(capsys):
    scen = ROOT / "scenarios" / "small-gpt_cpu_gpu-only.yaml"
    assert main(["validate", str(scen), "--profile", str(ROOT / "hwprofiles" / "h100-sxm.yaml"),
                 "--device", "cpu"]) == 2
    assert "describes a cuda device" in capsys.readouterr().err


@pytest.mark.torch
def test_fresh_blocks_price_the_scenarios_blocks_from_a_measurement_taken_just_before(cpu_profile):
    """--fresh-blocks: the scenario's blocks are measured (calibrate's blocks suite) right before
    the replay and every forward, backward and optimizer step of the prediction is priced at them;
    the profile's other numbers are untouched and the replay is the same (loss parity)."""
    from simhete.hw.cost import ops_key

    s = load_scenario(SCENARIOS[0]).with_changes(**SHRINK)
    base = load_profile(cpu_profile)
    v = validate_scenario(s, base, iterations=2, device="cpu", fresh_blocks=True)
    assert v.parity is True
    fresh = {k: sec for k, label, sec in v.profile.gpu.blocks.entries if label.endswith("(fresh)")}
    assert len(fresh) >= 6 and v.profile.gpu.blocks.calibrated
    assert v.profile.gpu.gemm == base.gpu.gemm and v.profile.host == base.host
    cost = v.predicted.context.cost
    durs = dict(zip((t.name for t in v.predicted.schedule.tasks), cost.durations(v.predicted.schedule)))
    priced = [t for t in v.predicted.schedule.tasks if t.name.split(".")[1] in ("F", "B", "ADAM")]
    assert priced and all(durs[t.name] == fresh[ops_key(t.ops)] for t in priced)
    assert any("--fresh-blocks" in n for n in v.comparison.notes)


@pytest.mark.torch
def test_bracket_blocks_price_at_the_mean_of_measurements_before_and_after_the_replay(cpu_profile):
    from simhete.hw.cost import ops_key

    s = load_scenario(SCENARIOS[0]).with_changes(**SHRINK)
    v = validate_scenario(s, load_profile(cpu_profile), iterations=2, device="cpu", bracket_blocks=True)
    assert v.parity is True
    # the replayed schedule is the one priced again
    assert {r.name for r in v.replayed.timeline.records} == {t.name for t in v.predicted.schedule.tasks}
    mean = {k: sec for k, label, sec in v.profile.gpu.blocks.entries if label.endswith("(bracket)")}
    assert len(mean) >= 6 and "--bracket-blocks" in v.profile.gpu.blocks.ref
    cost = v.predicted.context.cost
    durs = dict(zip((t.name for t in v.predicted.schedule.tasks), cost.durations(v.predicted.schedule)))
    priced = [t for t in v.predicted.schedule.tasks if t.name.split(".")[1] in ("F", "B", "ADAM")]
    assert priced and all(durs[t.name] == mean[ops_key(t.ops)] for t in priced)
    assert any("--bracket-blocks" in n for n in v.comparison.notes)
    # how far apart the two measurements put the prediction: the machine's drift, said in the notes
    band = [n for n in v.comparison.notes if n.startswith("priced with the blocks measured before")]
    assert len(band) == 1 and "ms an iteration; after it:" in band[0]


@pytest.mark.torch
def test_replays_compare_the_median_replay_and_keep_every_time(cpu_profile, tmp_path, capsys):
    """``--replays 3``: three replays of one schedule, each on a fresh executor, the same losses;
    the comparison is the one whose steady iteration time is the median, and every time is listed
    (notes, ``replays_s`` in the JSON)."""
    s = load_scenario(SCENARIOS[0]).with_changes(**SHRINK)
    v = validate_scenario(s, load_profile(cpu_profile), iterations=2, device="cpu", replays=3)
    assert v.parity is True and len(v.replays_s) == 3
    assert v.comparison.iteration.measured == sorted(v.replays_s)[1]
    assert any(n.startswith("3 replays, steady iteration ") for n in v.comparison.notes)
    scen = tmp_path / "s.yaml"
    scen.write_text((ROOT / "scenarios" / "small-gpt_cpu_gpu-only.yaml").read_text()
                    .replace("replay: {n_layers: 4, hidden: 256, heads: 4, vocab: 2048",
                             "replay: {n_layers: 2, hidden: 64, heads: 4, vocab: 256, seq_len: 32"))
    assert main(["validate", str(scen), "--profile", str(cpu_profile), "--iterations", "2",
                 "--replays", "2", "--json", "--no-reference"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert len(d["replays_s"]) == 2 and d["iteration_s"]["measured"] == max(d["replays_s"])


# A replay shape whose predicted peak (~6 GiB: 8 blocks of width 2048, fp32 weights, gradients
# and Adam states on the CPU device) is above the limits below but whose simulation takes a second.
BIG = ("model: gpt-like-h768-l12\nhardware: cpu-local\ntrain: {micro_batch: 2, seq_len: 64}\n"
       "policy: gpu-only\nknobs: {checkpointing: full}\n"
       "replay: {n_layers: 8, hidden: 2048, heads: 16, vocab: 8192}\n")


def _validate_limited(tmp_path, limit: str | None, nbytes: int = 0,
                      code: str = "") -> "subprocess.CompletedProcess":
    """``simhete validate`` of :data:`BIG` in a child process whose ``limit`` (a resource.RLIMIT_*
    name; None: none) is set to ``nbytes`` before it starts; ``code``: Python run in the child
    before the CLI."""
    import os
    import resource
    import subprocess
    import sys

    scen = tmp_path / "big.yaml"
    scen.write_text(BIG)

    def limited() -> None:
        if limit is not None:
            resource.setrlimit(getattr(resource, limit), (nbytes, nbytes))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code + "import sys; from simhete.cli import main; sys.exit(main(sys.argv[1:]))",
         "validate", str(scen), "--profile", str(ROOT / "hwprofiles" / "cpu-local.yaml"), "--iterations", "2"],
        preexec_fn=limited, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)


@pytest.mark.torch
@pytest.mark.parametrize("limit,field,names", [
    ("RLIMIT_AS", "VmSize", "address-space limit RLIMIT_AS (ulimit -v)"),
    ("RLIMIT_DATA", "VmData", "data-segment limit RLIMIT_DATA (ulimit -d)")])
def test_the_memory_check_counts_the_processs_own_limits(tmp_path, limit, field, names):
    """Under ``ulimit -v`` / ``ulimit -d`` the replay is refused before it starts, naming the
    predicted peak and the limit (MemAvailable alone would let it start and die). The limit is 4 GiB:
    enough for a fresh child to start (torch imported it maps about 0.8 GiB of address space and
    0.3 GiB of data), less than the ~6.3 GiB the scenario needs. (Not derived from this process's
    own use: a test worker late in a run maps far more than a fresh child and the limit would then
    leave the child room enough to start the replay.)"""
    pytest.importorskip("torch")
    from simhete.hostinfo import mem_available_bytes
    nbytes = 4 * 2**30
    if mem_available_bytes() < nbytes + 2**30:
        pytest.skip("MemAvailable below the limit: the check would name MemAvailable")
    p = _validate_limited(tmp_path, limit, nbytes)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert re.match(r"simhete: error: replay refused: the schedule's predicted peak \((\d+\.\d\d) GiB device "
                    r"\+ 0\.00 GiB host\) exceeds the (\d+\.\d\d) GiB available on this CPU \(the "
                    + re.escape(f"{names} of {nbytes / 2**30:.2f} GiB") + r", (\d+\.\d\d) GiB of it already "
                    r"in use \(" + field + r"\)\): raise the limit", p.stderr), p.stderr
    peak, left, used = (float(x) for x in re.findall(r"(\d+\.\d\d) GiB", p.stderr)[:4:2] +
                        re.findall(r"(\d+\.\d\d) GiB of it", p.stderr))
    assert peak > left and abs(left + used - nbytes / 2**30) <= 0.011


@pytest.mark.torch
def test_running_out_of_memory_during_the_replay_is_one_line(tmp_path):
    """Where the replay still runs out (memory a task needs only while it runs is not in the
    prediction; here the child switches the check off and limits its data segment to 128 MiB more
    than it uses once torch is imported, so the first weights exceed it), the allocation failure is
    one line naming the prediction and the limit, exit 2, no traceback."""
    pytest.importorskip("torch")
    child = ("import resource, torch, simhete.replay.device as d; d.check_fits = lambda peak, dev: dev.host_free(); "
             "from simhete.hostinfo import _proc_kib; n = _proc_kib('/proc/self/status', 'VmData') + 2**27; "
             "resource.setrlimit(resource.RLIMIT_DATA, (n, resource.getrlimit(resource.RLIMIT_DATA)[1])); ")
    p = _validate_limited(tmp_path, None, code=child)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert re.match(r"simhete: error: the replay ran out of memory \(an allocation of \d+\.\d MiB failed\): "
                    r"the simulator predicted a peak of 6\.\d\d GiB device \+ 0\.00 GiB host and \d+\.\d\d "
                    r"GiB was available \(the data-segment limit RLIMIT_DATA \(ulimit -d\) of \d+\.\d\d GiB, "
                    r"\d+\.\d\d GiB of it already in use \(VmData\)\); memory a task needs only while it runs "
                    r"is not in the prediction", p.stderr), p.stderr

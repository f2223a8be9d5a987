"""Bad input: one line naming the file and dotted key, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SCENARIOS
from simhete.cli import main

GOOD = (SCENARIOS / "llama2-7b_rtx4090_zero-offload.yaml").read_text()


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("old,new,pattern", [
    ("model: llama2-7b", "model: llama9-7b", r"s\.yaml: model: bad value 'llama9-7b'; allowed: one of the models .*llama2-7b"),
    ("hardware: {profile: rtx4090-desktop, host_memory: 192GiB}", "hardware: rtx9090", r"s\.yaml: hardware: bad value 'rtx9090'; allowed: a profile path or one of: .*h100-sxm"),
    ("policy: zero-offload", "policy: zero-everything", r"s\.yaml: policy: bad value 'zero-everything'; allowed: one of the policies: .*gpu-only"),
    ("micro_batch: 1", "micro_batch: -1", r"s\.yaml: train\.micro_batch: bad value -1; allowed: greater than 0"),
    ("micro_batch: 1", "micro_batch: 0", r"s\.yaml: train\.micro_batch: bad value 0"),
    ("micro_batch: 1", "micro_batch: many", r"s\.yaml: train\.micro_batch: bad value 'many'; allowed: a valid integer"),
    ("dtype: bf16", "dtype: int3", r"s\.yaml: train\.dtype: bad value 'int3'; allowed: 'bf16', 'fp16' or 'fp32'"),
    ("iterations: 3", "iterations: 3\nwarp: 9", r"s\.yaml: warp: unknown key; allowed keys here: .*iterations"),
    ("checkpointing: full", "checkpointing: sometimes", r"s\.yaml: knobs\.checkpointing: bad value 'sometimes'"),
    ("checkpointing: full", "checkpointing: full\n  bucket: 3", r"s\.yaml: knobs\.bucket: unknown key; allowed keys here: .*reduce_bucket_size"),
    ("checkpointing: full", "checkpointing: full\n  reduce_bucket_size: -5", r"s\.yaml: knobs\.reduce_bucket_size: bad value -5"),
])
def test_bad_values(tmp_path, capsys, old, new, pattern):
    assert old in GOOD
    p = write(tmp_path, GOOD.replace(old, new))
    code, err = run_cli(capsys, "simulate", str(p))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("simhete: error: ")
    import re
    assert re.search(pattern, err), err


def test_malformed_yaml(tmp_path, capsys):
    p = write(tmp_path, "model: [llama2-7b\nhardware: x\n")
    code, err = run_cli(capsys, "simulate", str(p))
    assert code == 2 and "s.yaml: malformed YAML at line" in err and err.count("\n") == 1
    # parsed by libyaml first, but the error is worded by the pure-Python parser, as it always was
    assert "line 2, column 9: expected ',' or ']', but got ':'" in err


def test_yaml_files_load_as_safe_load_reads_them():
    import yaml

    from simhete.config import load_yaml

    files = [*SCENARIOS.glob("*.yaml"), *(SCENARIOS.parent / "hwprofiles").glob("*.yaml"),
             *(SCENARIOS.parent / "sweeps").glob("*.yaml")]
    assert len(files) > 20
    for f in files:
        assert repr(load_yaml(f)) == repr(yaml.safe_load(f.read_text())), f


def test_top_level_not_mapping(tmp_path, capsys):
    p = write(tmp_path, "- a\n- b\n")
    code, err = run_cli(capsys, "simulate", str(p))
    assert code == 2 and "expected a mapping at the top level, got list" in err


def test_missing_file(tmp_path, capsys):
    code, err = run_cli(capsys, "simulate", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml: scenario file not found" in err


def test_missing_required_key(tmp_path, capsys):
    p = write(tmp_path, "model: llama2-7b\nhardware: h100-sxm\n")
    code, err = run_cli(capsys, "simulate", str(p))
    assert code == 2 and "s.yaml: train: required key is missing" in err


def test_unwritable_output_fails_before_work_and_keeps_files(tmp_path, capsys):
    keep = tmp_path / "trace.json"
    keep.write_text("mine")
    p = write(tmp_path, GOOD.replace("model: llama2-7b", "model: llama9-7b"))
    code, _ = run_cli(capsys, "simulate", str(p), "--trace", str(keep))
    assert code == 2 and keep.read_text() == "mine"   # bad input: nothing overwritten
    code, err = run_cli(capsys, "simulate", str(SCENARIOS / "llama2-7b_rtx4090_zero-offload.yaml"),
                        "--trace", str(tmp_path))
    assert code == 2 and "is a directory" in err


def test_no_traceback_in_a_real_process(tmp_path):
    p = write(tmp_path, GOOD.replace("micro_batch: 1", "micro_batch: -1"))
    r = subprocess.run([sys.executable, "-m", "simhete.cli", "simulate", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_hardware_override_error_names_the_scenario(capsys):
    code, err = run_cli(capsys, "simulate", str(SCENARIOS / "llama2-7b_rtx4090_zero-offload.yaml"),
                        "--set", "hardware.gpu_memory=1GB")
    assert code == 2 and err.count("\n") == 1
    assert ("llama2-7b_rtx4090_zero-offload.yaml: hardware: override does not fit profile rtx4090-desktop: "
            "gpu: reserved_bytes 1610612736 must be below memory_bytes 1000000000") in err


@pytest.mark.parametrize("old,new,pattern", [
    ("model: llama2-7b", "model: {preset: gpt-like-h256-l4, n_kv_heads: 3}",
     r"s\.yaml: model\.n_kv_heads: .*must divide n_heads"),
    ("hardware: {profile: rtx4090-desktop, host_memory: 192GiB}", "hardware: {profile: rtx4090-desktop, host_memory: 192GiB, gpu_memory: 0}",
     r"s\.yaml: hardware\.gpu_memory: bad value 0; allowed: greater than 0"),
])
def test_overrides_are_checked_and_named(tmp_path, capsys, old, new, pattern):
    import re
    code, err = run_cli(capsys, "simulate", str(write(tmp_path, GOOD.replace(old, new))))
    assert code == 2 and err.count("\n") == 1 and re.search(pattern, err), err


def test_a_profile_name_too_long_for_the_os_is_one_line(tmp_path, capsys):
    """A hardware name the OS refuses as a file name (ENAMETOOLONG) is an unknown profile, not an
    OSError traceback (found by tests/test_fuzz.py)."""
    from simhete.cli import main
    s = tmp_path / "s.yaml"
    s.write_text(f"model: llama2-7b\nhardware: {'x' * 300}\ntrain: {{micro_batch: 1, seq_len: 128}}\n")
    assert main(["simulate", str(s)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hardware: bad value" in err[0] and "(302 characters)" in err[0]


def test_sequence_longer_than_learned_positions_names_file_and_key(tmp_path, capsys):
    """The scenario's error names the file and train.seq_len; plan's names --seq and exits 2
    (it used to exit 0 with a table of "no" rows)."""
    from simhete.cli import main
    s = tmp_path / "s.yaml"
    s.write_text("model: gpt3-125m\nhardware: h100-sxm\ntrain: {micro_batch: 1, seq_len: 4096}\n")
    assert main(["simulate", str(s)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"simhete: error: {s}: train.seq_len: bad value 4096; allowed: at most 2048: "
                   "gpt3-125m has 2048 learned positions")
    assert main(["plan", "--model", "gpt3-125m", "--hardware", "h100-sxm", "--seq", "4096"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("simhete: error: --seq: bad value 4096; allowed: at most 2048: gpt3-125m has 2048 "
                   "learned positions")


@pytest.mark.parametrize("argv,line", [
    (["simulate", "s.yaml", "--engine", "bogus"],
     "simhete: error: simulate: argument --engine: invalid choice: 'bogus' (choose from 'fast', 'simpy'); "
     "see simhete simulate --help"),
    (["plan", "--model", "llama2-7b", "--hardware", "h100-pcie", "--seq"],
     "simhete: error: plan: argument --seq: expected one argument; see simhete plan --help"),
    (["sweep", "sw.yaml", "--top", "x" * 300],
     "simhete: error: sweep: argument --top: invalid int value: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx... "
     "(302 characters); see simhete sweep --help"),
    (["bogus"], "simhete: error: argument COMMAND: invalid choice: 'bogus' (choose from 'demo', 'simulate', "
                "'compare', 'calibrate', 'validate', 'sweep', 'plan'); see simhete --help"),
    ([], "simhete: error: the following arguments are required: COMMAND; see simhete --help"),
])
def test_a_usage_error_is_one_line_too(capsys, argv, line):
    """argparse's own errors (a bad choice, a missing value, an unknown flag) come as one line like
    every other error, naming the command and where its help is, exit 2."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err == line + "\n"


LONG = "n" * 300          # longer than a file name may be (255 bytes on Linux file systems)


@pytest.mark.parametrize("argv,line", [
    ([LONG], f"{LONG}: cannot read the scenario file: File name too long"),
    (["@S@", "--deepspeed", LONG], f"{LONG}: cannot read the DeepSpeed config: File name too long"),
    (["@S@", "--trace", LONG], f"--trace {LONG}: File name too long"),
    (["@S@", "--plot", f"{LONG}/p.png"], f"--plot {LONG}/p.png: File name too long"),
    (["@S@", "--set", "model={hf_config: " + LONG + ".json}"], None),
])
def test_a_file_name_too_long_is_one_line(tmp_path, capsys, argv, line):
    """ENAMETOOLONG is not "not found" to pathlib (it raises): every path the CLI checks says it."""
    scen = tmp_path / "s.yaml"
    scen.write_text(GOOD)
    code, err = run_cli(capsys, "simulate", *[a.replace("@S@", str(scen)) for a in argv])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    if line is not None:
        assert err == f"simhete: error: {line}\n"
    else:
        assert "File name too long" in err


def test_calibrate_and_sweep_paths_too_long_are_one_line(tmp_path, capsys):
    raw = Path(__file__).resolve().parents[1] / "hwprofiles" / "measured" / "cpu-local.raw"
    assert run_cli(capsys, "calibrate", "--refit", LONG, "--out", str(tmp_path / "p.yaml")) == (
        2, f"simhete: error: --refit {LONG}: File name too long\n")
    out = tmp_path / f"{LONG}.yaml"
    assert run_cli(capsys, "calibrate", "--refit", str(raw), "--out", str(out)) == (
        2, f"simhete: error: --out {out}: File name too long\n")
    assert list(tmp_path.iterdir()) == []
    base = tmp_path / "base.yaml"
    base.write_text(GOOD)
    sw = tmp_path / "sw.yaml"
    sw.write_text("name: s\nbase: base.yaml\naxes: {train.micro_batch: [1]}\n")
    assert run_cli(capsys, "sweep", str(sw), "--out", str(tmp_path / LONG), "--quiet") == (
        2, f"simhete: error: --out {tmp_path / LONG}: File name too long\n")


@pytest.mark.parametrize("yaml_text,line", [
    ('model: {hf_config: "a\\0b.json"}', "'a\\x00b.json': no Hugging Face config.json has a NUL byte in its name"),
    ('hardware: {profile: "a\\0b.yaml"}', "'a\\x00b.yaml': no hardware profile has a NUL byte in its name"),
])
def test_a_nul_byte_in_a_path_from_yaml_is_one_line(tmp_path, capsys, yaml_text, line):
    """YAML's "\\0" escape puts a NUL byte in a file name, which the OS refuses with ValueError."""
    code, err = run_cli(capsys, "simulate", str(write(tmp_path, GOOD)), "--set", yaml_text.replace(": ", "=", 1))
    assert code == 2 and err.startswith("simhete: error: '") and err.endswith(line.removeprefix("'") + "\n"), err
    assert err.count("\n") == 1


def test_a_long_value_inside_an_error_is_shortened(tmp_path, capsys):
    """An error quoting a bad value of thousands of characters shows its start and length."""
    import yaml
    prof = tmp_path / "hw.yaml"
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "hwprofiles" / "h100-pcie.yaml").read_text())
    data["interference"][0]["victim"] = "v" * 3000
    prof.write_text(yaml.safe_dump(data))
    scen = write(tmp_path, GOOD.replace("profile: rtx4090-desktop", f"profile: {prof}"))
    code, err = run_cli(capsys, "simulate", str(scen))
    assert code == 2 and err.count("\n") == 1 and len(err) < 1000, err
    assert "'" + "v" * 39 + "... (3002 characters) matches no stream" in err   # quoted: 3002


def test_sweep_workers_are_bounded_by_the_cores_and_the_points(tmp_path, capsys, monkeypatch):
    """``--workers 1_000`` (Python reads it as 1000) started a thousand processes for two points."""
    import os

    from simhete.search import backends
    (tmp_path / "base.yaml").write_text(GOOD)
    sw = tmp_path / "sw.yaml"
    sw.write_text("name: s\nbase: base.yaml\naxes: {train.micro_batch: [1, 2]}\n")
    cores = os.cpu_count() or 1
    code, err = run_cli(capsys, "sweep", str(sw), "--out", str(tmp_path / "r.sqlite"), "--workers", "1_000")
    assert (code, err) == (2, f"simhete: error: --workers 1000: bad value; allowed: 1 to {4 * cores} (4 per core "
                              f"of this machine's {cores}) with --backend local\n")
    assert not (tmp_path / "r.sqlite").exists()
    started = []
    real = backends.make_backend
    monkeypatch.setattr(backends, "make_backend", lambda name, n, *a: started.append(n) or real(name, 1, *a))
    assert main(["sweep", str(sw), "--out", str(tmp_path / "r.sqlite"), "--workers", str(min(3, 4 * cores)),
                 "--quiet"]) == 0
    assert started == [min(2, 3, 4 * cores)]          # two points: two workers at most


def test_a_sweep_base_and_a_plan_model_too_long_are_one_line(tmp_path, capsys):
    sw = tmp_path / "sw.yaml"
    sw.write_text(f"name: s\nbase: {LONG}\naxes: {{train.micro_batch: [1]}}\n")
    code, err = run_cli(capsys, "sweep", str(sw), "--out", str(tmp_path / "r.sqlite"))
    assert code == 2 and err.startswith(f"simhete: error: {sw}: base: bad value 'nnnn") and err.count("\n") == 1
    code, err = run_cli(capsys, "plan", "--model", LONG, "--hardware", "h100-pcie", "--seq", "128")
    assert code == 2 and "model: bad value 'nnnn" in err and err.count("\n") == 1

"""Files in and out: the input layer (encodings, unreadable files, nesting and alias bounds,
duplicate keys, JSON constants, sizes, booleans for numbers) gives one-line errors; outputs are
written atomically, keep a link, get the user's umask, say when they replace a file, never
replace an input of the same run, and leave the previous file intact when the write fails."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from simhete import fileio
from simhete.cli import main

TINY = {"name": "tiny", "model": "gpt-like-h256-l2-a4", "hardware": "h100-pcie",
        "train": {"micro_batch": 1, "seq_len": 128, "dtype": "bf16"}, "iterations": 2,
        "policy": "zero-offload", "knobs": {"checkpointing": "none"}}
DS = {"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True},
      "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}


def scen(tmp_path: Path, data: dict | None = None, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data or TINY, sort_keys=False))
    return p


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("simhete: error: ") and err.count("\n") == 1, err
    return err.strip()


# -- outputs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--trace", "--plot", "--schedule"])
def test_simulate_output_flags_refuse_the_scenario_itself(tmp_path, capsys, flag):
    s = scen(tmp_path)
    before = s.read_bytes()
    assert main(["simulate", str(s), flag, str(s)]) == 2
    assert one_error(capsys) == (f"simhete: error: {flag} {s}: is {s}, an input of this run; refusing to "
                                 "overwrite it (nothing was written): give another path")
    assert s.read_bytes() == before


def test_simulate_refuses_to_write_over_its_profile_and_deepspeed_json(tmp_path, capsys):
    prof = tmp_path / "hw.yaml"
    prof.write_text((Path(__file__).parents[1] / "hwprofiles" / "h100-pcie.yaml").read_text())
    s = scen(tmp_path, {**TINY, "hardware": {"profile": str(prof)}})
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps(DS))
    for flag, target in (("--trace", prof), ("--schedule", ds), ("--plot", prof)):
        before = target.read_bytes()
        assert main(["simulate", str(s), "--deepspeed", str(ds), flag, str(target)]) == 2
        err = capsys.readouterr().err.splitlines()        # the DeepSpeed mapping notes, then the error
        assert err[-1].startswith(f"simhete: error: {flag} {target}: is {target}, an input of this run")
        assert target.read_bytes() == before


def test_an_input_reached_through_a_link_or_a_hard_link_is_refused_too(tmp_path, capsys):
    s = scen(tmp_path)
    (tmp_path / "soft.yaml").symlink_to(s)
    os.link(s, tmp_path / "hard.yaml")
    before = s.read_bytes()
    for other in ("soft.yaml", "hard.yaml"):
        assert main(["simulate", str(s), "--trace", str(tmp_path / other)]) == 2
        assert "an input of this run" in one_error(capsys)
    assert s.read_bytes() == before


@pytest.mark.parametrize("flag", ["--csv", "--plot", "--out"])
def test_sweep_output_flags_refuse_the_sweep_file_and_its_base(tmp_path, capsys, flag):
    base = scen(tmp_path, name="base.yaml")
    sw = tmp_path / "sw.yaml"
    sw.write_text(yaml.safe_dump({"base": "base.yaml", "axes": {"train.micro_batch": [1, 2]}}))
    for target in (sw, base):
        before = target.read_bytes()
        args = ["sweep", str(sw), "--quiet", "--out", str(tmp_path / "r.sqlite"), flag, str(target)]
        assert main(args) == 2
        assert f"{flag} {target}: is {target}, an input of this run" in one_error(capsys)
        assert target.read_bytes() == before


def test_outputs_replace_through_links_with_the_umask_and_say_so(tmp_path, capsys):
    s = scen(tmp_path)
    old = os.umask(0o027)
    try:
        assert main(["simulate", str(s), "--schedule", str(tmp_path / "new.txt")]) == 0
        assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o640       # not mkstemp's 0600
        assert "replaced" not in capsys.readouterr().err
        # an existing output keeps its mode; a link keeps pointing at its (rewritten) target
        target = tmp_path / "target.txt"
        target.write_text("old")
        target.chmod(0o604)
        (tmp_path / "link.txt").symlink_to(target)
        assert main(["simulate", str(s), "--schedule", str(tmp_path / "link.txt")]) == 0
    finally:
        os.umask(old)
    err = capsys.readouterr().err
    assert err == f"simhete: replaced {tmp_path / 'link.txt'} (through the link, {target})\n"
    assert (tmp_path / "link.txt").is_symlink() and target.read_text().startswith("# simhete schedule")
    assert stat.S_IMODE(target.stat().st_mode) == 0o604
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.txt", "new.txt", "s.yaml", "target.txt"]


def test_a_full_disk_leaves_the_previous_output_intact(tmp_path, capsys, monkeypatch):
    s = scen(tmp_path)
    png = tmp_path / "old.png"
    png.write_bytes(b"\x89PNG previous plot")

    def half_then_full(fd, raw):
        os.write(fd, raw[: len(raw) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(fileio, "_write_fd", half_then_full)
    assert main(["simulate", str(s), "--plot", str(png)]) == 2
    assert one_error(capsys) == (f"simhete: error: --plot {png}: cannot write: No space left on device "
                                 "(the previous file is unchanged)")
    assert png.read_bytes() == b"\x89PNG previous plot"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.png", "s.yaml"]     # no temporary left


# -- inputs -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, problem", [
    (b"\x00\x01\x02binary", "scenario file is a binary file, not UTF-8 text"),
    ("name: caf\xe9\n".encode("latin-1"), "scenario file is not UTF-8 text (byte 0xe9 at offset 9; "
                                          "Latin-1 or another encoding?); save it as UTF-8"),
    ("name: x\n".encode("utf-16"), "scenario file is UTF-16 or UTF-32 text (it starts with a byte-order "
                                   "mark); save it as UTF-8"),
])
def test_encodings_are_one_line_errors(tmp_path, capsys, content, problem):
    p = tmp_path / "s.yaml"
    p.write_bytes(content)
    assert main(["simulate", str(p)]) == 2
    assert one_error(capsys) == f"simhete: error: {p}: {problem}"


def test_unreadable_file_and_directory(tmp_path, capsys, monkeypatch):
    s = scen(tmp_path)

    def denied(self):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(Path, "read_bytes", denied)        # root reads a mode-000 file anyway
    assert main(["simulate", str(s)]) == 2
    assert one_error(capsys) == f"simhete: error: {s}: cannot read the scenario file: permission denied"
    monkeypatch.undo()
    assert main(["simulate", str(tmp_path)]) == 2
    assert one_error(capsys) == f"simhete: error: {tmp_path}: scenario file is a directory, not a file"


@pytest.mark.parametrize("text, problem", [
    ("name: x\nreplay: " + "[" * 100 + "]" * 100 + "\n", "nested more than 64 levels deep (line 2)"),
    ("name: x\nreplay:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 80)) + " " * 80 + "v: 1\n",
     "nested more than 64 levels deep (line"),
    ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi")) + "replay: *i\n",
     'expands to more than 1,000,000 values (aliases of aliases, as in a "billion laughs" document?)'),
    ("name: x\npolicy: gpu-only\npolicy: zero-offload\n",
     "malformed YAML at line 3, column 1: duplicate key 'policy' (a key may appear once in a mapping)"),
])
def test_yaml_depth_aliases_and_duplicate_keys(tmp_path, capsys, text, problem):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    assert main(["simulate", str(p)]) == 2
    assert one_error(capsys).startswith(f"simhete: error: {p}: {problem}")


def test_set_values_have_the_same_bounds(tmp_path, capsys):
    s = scen(tmp_path)
    assert main(["simulate", str(s), "--set", "replay=" + "[" * 100 + "]" * 100]) == 2
    assert "VALUE is not valid YAML (nested more than 64 levels deep (line 1))" in one_error(capsys)


@pytest.mark.parametrize("text, problem", [
    ('{"train_micro_batch_size_per_gpu": Infinity}', "Infinity is not a JSON number; give a finite number"),
    ('{"train_micro_batch_size_per_gpu": NaN}', "NaN is not a JSON number; give a finite number"),
    ('{"gradient_clipping": 1e400}', "the number 1e400 is too large for a float"),
    ('{"a": 1, "a": 2}', "duplicate key 'a' (a key may appear once in an object)"),
    ("[" * 100_000 + "]" * 100_000, "nested more than 64 levels deep"),
    ('{"a": ' + "9" * 5000 + "}", "a number is too long: Exceeds the limit (4300 digits)"),
])
def test_deepspeed_json_constants_overflow_duplicates_depth(tmp_path, capsys, text, problem):
    s = scen(tmp_path)
    ds = tmp_path / "ds.json"
    ds.write_text(text)
    assert main(["simulate", str(s), "--deepspeed", str(ds)]) == 2
    assert one_error(capsys).startswith(f"simhete: error: {ds}: {problem}")


def test_hf_config_goes_through_the_same_layer(tmp_path, capsys):
    hf = tmp_path / "config.json"
    hf.write_bytes("{\"model_type\": \"llama\", \"name\": \"caf\xe9\"}".encode("latin-1"))
    s = scen(tmp_path, {**TINY, "model": {"hf_config": "config.json"}})
    assert main(["simulate", str(s)]) == 2
    assert one_error(capsys).startswith(f"simhete: error: {hf}: Hugging Face config.json is not UTF-8 text")


@pytest.mark.parametrize("key, value, problem", [
    ("hardware", {"profile": "h100-pcie", "host_memory": float("inf")},
     "hardware.host_memory: bad value inf; allowed: a size up to 2**60 bytes (1 EiB), like 80GiB, 512GB or 1e9"),
    ("hardware", {"profile": "h100-pcie", "gpu_memory": "1e30"},
     "hardware.gpu_memory: bad value '1e30'; allowed: a size up to 2**60 bytes (1 EiB), like 80GiB, 512GB or 1e9"),
    ("train", {"micro_batch": True, "seq_len": 128},
     "train.micro_batch: bad value True; allowed: a number or name, not a boolean (true/false)"),
    ("hardware", {"profile": "h100-pcie", "gpus": True},
     "hardware.gpus: bad value True; allowed: a number or name, not a boolean (true/false)"),
])
def test_sizes_and_booleans_for_numbers(tmp_path, capsys, key, value, problem):
    s = scen(tmp_path, {**TINY, key: value})
    assert main(["simulate", str(s)]) == 2
    assert one_error(capsys) == f"simhete: error: {s}: {problem}"


def test_nan_in_a_float_knob_is_refused(tmp_path, capsys):
    s = scen(tmp_path, {**TINY, "policy": "autohete", "knobs": {"headroom": float("nan")}})
    assert main(["simulate", str(s)]) == 2
    assert "knobs.headroom: bad value nan; allowed: a finite number" in one_error(capsys)

"""Hardware profiles: every shipped profile loads with provenance on every number; bad input is a
one-line ConfigError naming file, dotted key, value and what is allowed."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from simhete.errors import ConfigError
from simhete.hw.profile import (PROFILES_DIR, HardwareProfile, Provenance, list_profiles,
                                load_profile)

SHIPPED = ["a100-40gb-pcie", "a100-40gb-pcie-epyc7713", "a100-40gb-sxm", "a100-80gb-sxm", "h100-pcie",
           "h100-sxm", "h200-sxm", "l40", "rtx3090", "rtx4090-desktop", "t4", "v100-32gb-dgx2"]

# Integer leaves that are structure or spec (cited by the section's `ref`), not measured rates.
STRUCTURAL = {"count", "sms", "sockets", "cores", "memory_bytes", "tile_m", "tile_n", "m", "n", "k",
              "gpus_per_pcie_switch", "threads"}


def raw_profile(name: str = "h100-sxm") -> dict:
    return yaml.safe_load((PROFILES_DIR / f"{name}.yaml").read_text())


def write(tmp_path: Path, data: dict, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def with_measured(tmp_path: Path, name: str = "h100-sxm") -> dict:
    """A shipped profile whose gpu.mem_bandwidth_gbps is a fully provenanced measurement (no
    shipped GPU profile has one), its raw file written next to where :func:`write` puts it."""
    (tmp_path / "raw").mkdir(exist_ok=True)
    (tmp_path / "raw" / "membw.csv").write_text("# device: test\nbytes,seconds\n1,1\n")
    d = raw_profile(name)
    d["gpu"]["mem_bandwidth_gbps"] = {
        "value": 3000, "source": "measured", "ref": "large D2D copy, read + written",
        "raw": "raw/membw.csv", "device": "NVIDIA H100 80GB HBM3", "driver": "driver 575.51, CUDA 12.9",
        "torch": "2.11", "date": "2026-11-20"}
    return d


def test_list_profiles_has_the_shipped_set():
    assert set(SHIPPED) <= set(list_profiles())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads_with_provenance_everywhere(name):
    prof = load_profile(name)
    assert prof.name == name
    assert prof.validated is False  # none has been checked end to end against hardware
    numeric_outside: list[str] = []

    def walk(node, key):
        if isinstance(node, Provenance):
            assert node.ref.strip(), key
            if node.source == "measured":
                assert node.raw and node.device and node.driver and node.torch and node.date, key
                assert (Path(prof.file).parent / node.raw).is_file(), key
            return
        if isinstance(node, BaseModel):
            for f in type(node).model_fields:
                walk(getattr(node, f), f"{key}.{f}" if key else f)
        elif isinstance(node, list):
            for i, x in enumerate(node):
                walk(x, f"{key}[{i}]")
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            if key.rsplit(".", 1)[-1] not in STRUCTURAL:
                numeric_outside.append(key)

    walk(prof, "")
    assert numeric_outside == []
    assert prof.gpu.ref and prof.host.ref
    assert len(list(prof.quantities())) >= 20


def test_bf16_absent_where_the_hardware_lacks_it():
    assert load_profile("v100-32gb-dgx2").gpu.peak_tflops.available() == ["fp16", "fp32"]
    assert load_profile("t4").gpu.peak_tflops.available() == ["fp16", "fp32"]


def test_autohete_testbed_matches_the_paper():
    p = load_profile("a100-40gb-pcie-epyc7713")
    assert (p.gpu.count, p.host.cpu_model, p.host.memory_bytes) == (4, "AMD EPYC 7713", 440 * 10**9)


def test_load_by_path_and_by_name_agree(tmp_path):
    by_path = load_profile(str(PROFILES_DIR / "h100-sxm.yaml"))
    assert by_path == load_profile("h100-sxm")
    assert by_path.file == str(PROFILES_DIR / "h100-sxm.yaml")


def test_unknown_profile_name_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"scen.yaml: hardware: bad value 'h100-sxn'; allowed: "
                                          r"a profile path or one of: .*h100-pcie, h100-sxm, h200-sxm"):
        load_profile("h100-sxn", file="scen.yaml", key="hardware")


def test_negative_bandwidth_names_the_dotted_key(tmp_path):
    d = raw_profile()
    d["links"]["h2d"]["pinned"]["bandwidth_gbps"]["value"] = -5
    p = write(tmp_path, d)
    with pytest.raises(ConfigError) as e:
        load_profile(p)
    assert str(e.value) == (f"{p}: links.h2d.pinned.bandwidth_gbps.value: bad value -5; "
                            "allowed: greater than 0")


def test_wrong_type_is_one_line(tmp_path):
    d = raw_profile()
    d["gpu"]["peak_tflops"]["bf16"]["value"] = "fast"
    p = write(tmp_path, d)
    with pytest.raises(ConfigError, match=r"gpu\.peak_tflops\.bf16\.value: bad value 'fast'; "
                                          r"allowed: a valid number") as e:
        load_profile(p)
    assert "\n" not in str(e.value)


def test_numeric_string_is_not_coerced(tmp_path):
    d = raw_profile()
    d["gpu"]["launch_overhead_us"]["value"] = "5"
    with pytest.raises(ConfigError, match=r"gpu\.launch_overhead_us\.value: bad value '5'"):
        load_profile(write(tmp_path, d))


def test_unknown_key_lists_allowed_keys(tmp_path):
    d = raw_profile()
    d["gpu"]["hbm_gbps"] = 3
    with pytest.raises(ConfigError, match=r"gpu\.hbm_gbps: unknown key; allowed keys here: .*"
                                          r"mem_bandwidth_gbps"):
        load_profile(write(tmp_path, d))


def test_unknown_source_is_rejected(tmp_path):
    d = raw_profile()
    d["gpu"]["peak_tflops"]["fp32"]["source"] = "guessed"
    with pytest.raises(ConfigError, match=r"gpu\.peak_tflops\.fp32\.source: bad value 'guessed'; allowed: "
                                          r"'measured', 'datasheet', 'paper', 'reported' or 'assumed'"):
        load_profile(write(tmp_path, d))


def test_measured_requires_raw_device_driver_torch_date(tmp_path):
    d = with_measured(tmp_path)
    q = d["gpu"]["mem_bandwidth_gbps"]
    del q["raw"], q["date"]
    with pytest.raises(ConfigError, match=r"gpu\.mem_bandwidth_gbps: .*source measured needs raw, "
                                          r"device, driver, torch, date; missing: raw, date"):
        load_profile(write(tmp_path, d))


def test_measured_without_driver_is_a_one_line_error_naming_file_and_key(tmp_path):
    d = with_measured(tmp_path)
    del d["gpu"]["mem_bandwidth_gbps"]["driver"]
    path = write(tmp_path, d)
    with pytest.raises(ConfigError) as e:
        load_profile(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: gpu.mem_bandwidth_gbps: ")
    assert "missing: driver" in msg and "source reported" in msg   # says what to use instead
    d["gpu"]["mem_bandwidth_gbps"]["driver"] = "n/a (CPU device)"    # what calibrate writes for a CPU
    assert load_profile(write(tmp_path, d)).gpu.mem_bandwidth_gbps.calibrated


def test_reported_needs_a_ref_and_counts_as_uncalibrated(tmp_path):
    d = raw_profile()
    d["gpu"]["mem_bandwidth_gbps"] = {"value": 3000, "source": "reported",
                                      "ref": "owner/repo#1: a D2D copy reading on H100"}
    prof = load_profile(write(tmp_path, d))
    q = prof.gpu.mem_bandwidth_gbps
    assert q.source == "reported" and not q.calibrated
    assert "gpu.mem_bandwidth_gbps (reported)" in prof.provenance_flags()
    del d["gpu"]["mem_bandwidth_gbps"]["ref"]
    with pytest.raises(ConfigError, match=r"gpu\.mem_bandwidth_gbps\.ref: "):
        load_profile(write(tmp_path, d))


def test_measured_raw_file_must_exist(tmp_path):
    d = with_measured(tmp_path)
    d["gpu"]["mem_bandwidth_gbps"]["raw"] = "nowhere.csv"
    with pytest.raises(ConfigError, match=r"gpu\.mem_bandwidth_gbps\.raw: bad value 'nowhere.csv'"):
        load_profile(write(tmp_path, d))


def test_efficiency_above_one_is_rejected(tmp_path):
    d = raw_profile()
    d["gpu"]["memory_bound_efficiency"]["value"] = 1.2
    with pytest.raises(ConfigError, match=r"gpu\.memory_bound_efficiency\.value: bad value 1\.2; "
                                          r"allowed: less than or equal to 1"):
        load_profile(write(tmp_path, d))


def test_anchor_faster_than_peak_is_rejected(tmp_path):
    d = raw_profile()
    d["gpu"]["gemm"]["anchor"]["tflops"]["value"] = 2000
    with pytest.raises(ConfigError, match=r"gpu: .*gemm\.anchor implies efficiency 2\.095 > 1"):
        load_profile(write(tmp_path, d))


def test_interference_glob_must_match_a_stream(tmp_path):
    d = raw_profile()
    d["interference"][0]["aggressor"] = "gpu*.pcie"
    with pytest.raises(ConfigError, match=r"interference\[0\]\.aggressor 'gpu\*\.pcie' matches no stream"):
        load_profile(write(tmp_path, d))


def test_cuda_profile_needs_links(tmp_path):
    d = raw_profile()
    del d["links"]
    with pytest.raises(ConfigError, match="device_type cuda needs links"):
        load_profile(write(tmp_path, d))


def test_byte_sizes_parse():
    p = load_profile("h100-sxm")
    assert p.gpu.memory_bytes == 80 * 2**30
    assert p.gpu.reserved_bytes.value == 2 * 2**30
    assert p.host.memory_bytes == 2 * 2**40


def test_provenance_flags_name_uncalibrated_numbers_only(tmp_path):
    flags = load_profile("h100-sxm").provenance_flags()
    assert "gpu.peak_tflops.bf16 (datasheet)" in flags
    assert "links.h2d.pageable.bandwidth_gbps (assumed)" in flags
    # CPU Adam rests on the reported per-core rate (DeepSpeed PR #735), no longer on the DRAM default
    assert "host.adam.per_core_params_per_s (reported)" in flags
    assert "host.adam.params_per_s (assumed: 0.7 x dram_bandwidth/28)" not in flags
    # the team's readings (no raw output, no driver version) are reported, hence uncalibrated
    assert "gpu.mem_bandwidth_gbps (reported)" in flags
    assert "gpu.gemm.anchor.tflops (reported)" in flags
    assert flags == sorted(flags)
    measured = load_profile(write(tmp_path, with_measured(tmp_path))).provenance_flags()
    assert not any(f.startswith("gpu.mem_bandwidth_gbps") for f in measured)


@pytest.mark.parametrize("name", list_profiles())
def test_every_shipped_profile_validates(name):
    """Every profile under hwprofiles/ (cpu-local and measured/* included) loads under the current
    rules: measured numbers carry raw, device, driver, torch and date."""
    prof = load_profile(name)
    for key, p in prof.quantities():
        if p.source == "measured":
            assert p.raw and p.device and p.driver and p.torch and p.date, key


# A GitHub issue, pull request or discussion (a URL or owner/repo#N), or a blog: not a paper.
NOT_A_PAPER = re.compile(r"github\.com|/issues/|/pull/|/discussions/|\bblog\b|[\w.-]+/[\w.-]+#\d+",
                         re.IGNORECASE)


@pytest.mark.parametrize("name", list_profiles())
def test_no_shipped_paper_quantity_cites_an_issue_or_a_blog(name):
    bad = [f"{k}: {p.ref}" for k, p in load_profile(name).quantities()
           if p.source == "paper" and NOT_A_PAPER.search(p.ref)]
    assert bad == [], "label these source: reported"


def test_not_a_paper_pattern_catches_issue_refs():
    for ref in ("NVIDIA/nvbandwidth#24: 52.8 GB/s", "https://github.com/x/y/issues/3",
                "see the vendor blog", "sgl-project/sglang#32032"):
        assert NOT_A_PAPER.search(ref), ref
    assert not NOT_A_PAPER.search("Shah et al., FlashAttention-3 (arXiv 2407.08608)")


def test_with_overrides_scales_and_marks_what_if():
    base = load_profile("h100-pcie")
    p = base.with_overrides(gpus=4, gpu_memory=40 * 2**30, host_memory=512 * 2**30, pcie_gbps=25)
    assert (p.gpu.count, p.gpu.memory_bytes, p.host.memory_bytes) == (4, 40 * 2**30, 512 * 2**30)
    assert p.links.h2d.pinned.bandwidth_gbps.value == 25.0
    assert p.links.d2h.pinned.bandwidth_gbps.source == "assumed"
    assert p.links.h2d.pageable == base.links.h2d.pageable
    assert p.file == base.file
    assert base.gpu.count == 1  # the original is unchanged


def test_with_overrides_revalidates():
    with pytest.raises(ConfigError, match="reserved_bytes .* must be below memory_bytes"):
        load_profile("h100-sxm").with_overrides(gpu_memory=2**30)


def test_profiles_are_frozen():
    p = load_profile("t4")
    with pytest.raises(Exception):
        p.gpu.count = 2  # type: ignore[misc]
    assert isinstance(p, HardwareProfile)


def test_deep_copy_of_raw_data_roundtrips(tmp_path):
    d = copy.deepcopy(raw_profile("l40"))
    p = write(tmp_path, d, "l40.yaml")
    assert load_profile(p).model_dump() == load_profile("l40").model_dump()


def _cpu_local() -> dict:
    return yaml.safe_load((PROFILES_DIR / "cpu-local.yaml").read_text())


def test_pinned_limit_is_optional_and_new_keys_are_checked(tmp_path):
    d = _cpu_local()
    d["host"].pop("pinned_limit_bytes", None)
    (tmp_path / "measured").symlink_to(PROFILES_DIR / "measured")
    prof = load_profile(write(tmp_path, d))
    assert prof.host.pinned_limit_bytes is None
    bad = copy.deepcopy(d)
    bad["gpu"]["memory_bound"] = {"GEMM": {"bandwidth_gbps": {"value": 1.0, "source": "assumed",
                                                              "ref": "x"}}}
    with pytest.raises(ConfigError, match=r"b\.yaml: gpu\.memory_bound\.GEMM: unknown key; allowed "
                                          r"keys here: DROPOUT, ELEMENTWISE, EMBED, GELU, GELU_BWD, NORM, "
                                          r"NORM_BWD, RELU, RELU_BWD, RMSNORM, RMSNORM_BWD, ROPE, ROPE_BWD, "
                                          r"SOFTMAX_CE, SWIGLU, SWIGLU_BWD$"):
        load_profile(write(tmp_path, bad, "b.yaml"))
    bad = copy.deepcopy(d)
    bad["gpu"]["memory_bound"]["GELU"] = {
        "bandwidth_gbps": {"value": 1.0, "source": "assumed", "ref": "x"},
        "dtypes": {"int8": {"bandwidth_gbps": {"value": 1.0, "source": "assumed", "ref": "x"}}}}
    with pytest.raises(ConfigError, match=r"gpu\.memory_bound\.GELU\.dtypes\.int8"):
        load_profile(write(tmp_path, bad, "d.yaml"))
    bad = copy.deepcopy(d)
    bad["host"]["adam"]["threads"] = 0
    with pytest.raises(ConfigError, match=r"host\.adam\.threads: bad value 0"):
        load_profile(write(tmp_path, bad, "c.yaml"))


def test_extends_merges_a_testbed_over_its_gpu_profile(tmp_path):
    """A testbed profile states what differs; mappings merge, a quantity is replaced whole."""
    from simhete.hw.profile import load_profile
    p = tmp_path / "bed.yaml"
    p.write_text("extends: a100-80gb-sxm\nname: bed\ngpu: {count: 2}\n"
                 "host: {cores: 8, dram_bandwidth_gbps: {value: 100, source: datasheet, ref: x}}\n")
    base, bed = load_profile("a100-80gb-sxm"), load_profile(p)
    assert bed.name == "bed" and bed.gpu.count == 2 and bed.host.cores == 8
    assert bed.gpu.peak_tflops == base.gpu.peak_tflops
    assert bed.host.dram_bandwidth_gbps.value == 100 and bed.host.dram_bandwidth_gbps.ref == "x"
    assert bed.host.memory_bytes == base.host.memory_bytes


def test_extends_errors_name_the_key(tmp_path):
    from simhete.errors import ConfigError
    from simhete.hw.profile import load_profile
    p = tmp_path / "a.yaml"
    p.write_text("extends: no-such-profile\nname: a\n")
    with pytest.raises(ConfigError, match="extends"):
        load_profile(p)
    q = tmp_path / "b.yaml"
    q.write_text("extends: b\nname: b\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_profile(q)


def test_compute_capability_is_major_dot_minor(tmp_path):
    d = raw_profile("a100-80gb-sxm")
    assert load_profile(write(tmp_path, d)).gpu.compute_capability == "8.0"
    d["gpu"]["compute_capability"] = "sm80"
    with pytest.raises(ConfigError, match=r"gpu\.compute_capability: bad value 'sm80'"):
        load_profile(write(tmp_path, d))
    d["gpu"]["compute_capability"] = 8.0     # a number, not the string NVIDIA's list gives
    with pytest.raises(ConfigError, match=r"gpu\.compute_capability: bad value 8\.0"):
        load_profile(write(tmp_path, d))


# NVIDIA "CUDA GPUs" list (developer.nvidia.com/cuda-gpus): compute capability per shipped GPU.
COMPUTE_CAPABILITY = {"v100-32gb-dgx2": "7.0", "t4": "7.5", "a100-40gb-pcie": "8.0",
                      "a100-40gb-pcie-epyc7713": "8.0", "a100-40gb-sxm": "8.0", "a100-80gb-sxm": "8.0",
                      "rtx3090": "8.6", "rtx4090-desktop": "8.9", "l40": "8.9", "h100-sxm": "9.0",
                      "h100-pcie": "9.0", "h200-sxm": "9.0"}


@pytest.mark.parametrize("name", sorted(COMPUTE_CAPABILITY))
def test_every_gpu_profile_states_its_compute_capability(name):
    assert load_profile(name).gpu.compute_capability == COMPUTE_CAPABILITY[name]


@pytest.mark.parametrize("section, bad", [
    ("host: {adam: {threads: 4, by_threads: {source: reported, ref: x, points: [[4, 0]]}}}",
     "host.adam.by_threads.points"),
    ("host: {adam: {threads: 4, by_threads: {source: reported, ref: x, points: [[4, .inf]]}}}",
     "host.adam.by_threads.points"),
    ("gpu: {attention: {fwd_efficiency: {value: 0.5, source: assumed, ref: x}, "
     "bwd_efficiency: {value: 0.5, source: assumed, ref: x}, "
     "table: {source: reported, ref: x, fwd: {bf16: [[1, 8, 512, 512, 64, 1, 0]]}}}}",
     "gpu.attention.table.fwd"),
])
def test_zero_or_infinite_table_rates_are_refused_naming_the_key(tmp_path, section, bad):
    """A zero or infinite measured rate would price a step at infinite or zero time: refused."""
    from simhete.errors import ConfigError
    from simhete.hw.profile import load_profile
    p = tmp_path / "z.yaml"
    p.write_text(f"extends: h100-sxm\nname: z\n{section}\n")
    with pytest.raises(ConfigError, match=bad.replace(".", r"\.")):
        load_profile(p)

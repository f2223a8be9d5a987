"""`simhete compare`: every applicable policy side by side, and the largest model that fits."""

from __future__ import annotations

import json

from simhete.cli import main
from simhete.commands.compare import candidates
from simhete.scenario import load_scenario
from simhete.sim import run
from simhete.workload import get_model

SCENARIO = """\
name: tiny GPT-like on a small GPU
model: gpt-like-h512-l8
hardware: {profile: a100-40gb-pcie-epyc7713, gpus: 1, gpu_memory: 2600MiB}
train: {micro_batch: 2, seq_len: 256}
iterations: 3
policy: zero-offload
# buckets of 1e6 elements: DeepSpeed's default 5e8 sizes a 2 GB ipg buffer, beyond this GPU
knobs: {checkpointing: full, reduce_bucket_size: 1.0e6}
"""


def write(tmp_path, text=SCENARIO):
    p = tmp_path / "tiny.yaml"
    p.write_text(text)
    return p


def test_compare_json_lists_every_policy_and_largest_models(tmp_path, capsys):
    path = write(tmp_path)
    assert main(["compare", str(path), "--json", "--budget", "3600"]) == 0     # every search to its end
    out = json.loads(capsys.readouterr().out)
    assert list(out["summaries"]) == ["zero-offload", "autohete", "chunked", "gpu-only", "stronghold",
                                      "zero-2", "zero-infinity"]
    family, names = candidates(load_scenario(path))
    assert family == "gpt-like" and names == [f"gpt-like-h512-l{d}" for d in (2, 4, 6, 8, 10, 12, 16, 24, 32, 48, 64, 96, 128)]
    s = load_scenario(path)
    for policy in ("gpu-only", "zero-infinity", "chunked"):
        name = out["largest_fitting"][policy]
        # the answer fits and the next size in the family does not (or it is the largest searched)
        from simhete.search.compare import knobs_for
        def fits(model):
            return run(s.with_changes(model=model, policy=policy, knobs=knobs_for(s, policy),
                                      iterations=2)).summary.fits
        assert name is not None and fits(name)
        nxt = names.index(name) + 1
        assert nxt == len(names) or not fits(names[nxt])
    size = {p: get_model(n).n_params() for p, n in out["largest_fitting"].items() if n is not None}
    assert size["zero-offload"] >= size["gpu-only"] and size["zero-infinity"] >= size["zero-offload"]


def test_compare_table_prints_side_by_side(tmp_path, capsys):
    assert main(["compare", str(write(tmp_path)), "--policies", "gpu-only,stronghold", "--no-largest"]) == 0
    out = capsys.readouterr().out
    assert "gpu-only" in out and "stronghold" in out and "zero-infinity" not in out
    assert "iteration time" in out and "peak gpu0 memory" in out


def test_compare_unknown_policy_is_one_line_error(tmp_path, capsys):
    assert main(["compare", str(write(tmp_path)), "--policies", "gpu-only,zero-magic"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--policies: bad value 'zero-magic'" in err


PER_BLOCK = SCENARIO.replace("knobs: {checkpointing: full, reduce_bucket_size: 1.0e6}",
                             "knobs: {activations: [recompute, keep, recompute, keep, recompute, keep, "
                             "recompute, keep], reduce_bucket_size: 1.0e6}")


def test_per_block_knobs_are_not_applicable_to_other_depths_not_none_fits(tmp_path, capsys):
    """knobs.activations lists one mode per block of the scenario's 8-block model, so it cannot be
    carried to the family's other depths: the answer is "n/a" with the reason, never "none fits"."""
    path = write(tmp_path, PER_BLOCK)
    assert main(["compare", str(path), "--policies", "gpu-only,zero-offload", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summaries"]["gpu-only"]["fits"]            # the scenario itself runs
    for policy in ("gpu-only", "zero-offload"):
        assert out["largest_fitting"][policy] == {"not_applicable": "knobs.activations lists 8 blocks"}
    assert main(["compare", str(path), "--policies", "gpu-only"]) == 0
    table = capsys.readouterr().out
    assert "n/a: knobs.activations lists 8 blocks" in table and "none fits" not in table


def test_none_fits_is_null_in_json_and_said_in_the_table(tmp_path, capsys):
    path = write(tmp_path, SCENARIO.replace("gpu_memory: 2600MiB", "gpu_memory: 1700MiB"))
    assert main(["compare", str(path), "--policies", "gpu-only", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["largest_fitting"] == {"gpu-only": None}
    assert main(["compare", str(path), "--policies", "gpu-only"]) == 0
    assert "none fits" in capsys.readouterr().out


def test_a_policy_that_refuses_the_setup_is_one_na_line_not_the_end_of_the_comparison(tmp_path, capsys):
    """chunked's default chunk size cannot hold LLaMA-2-70B in 1024 chunks: compare reports that
    as chunked's one-line reason and still compares the rest; the scenario's own policy refusing
    is still an error (exit 2)."""
    import json
    from simhete.cli import main
    s = tmp_path / "big.yaml"
    s.write_text("model: llama2-70b\nhardware: {profile: h100-sxm, gpus: 1}\n"
                 "train: {micro_batch: 1, seq_len: 256}\npolicy: gpu-only\n")
    assert main(["compare", str(s), "--policies", "gpu-only,chunked", "--no-largest", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["summaries"]) == ["gpu-only"]
    assert list(out["refused"]) == ["chunked"] and "knobs.chunk_size" in out["refused"]["chunked"]
    s.write_text(s.read_text().replace("policy: gpu-only", "policy: chunked"))
    assert main(["compare", str(s), "--policies", "chunked,gpu-only", "--no-largest"]) == 2
    assert "knobs.chunk_size" in capsys.readouterr().err


def test_the_budget_stops_each_policys_search_and_the_answer_says_what_it_knows(tmp_path, capsys, monkeypatch):
    """A clock that moves one second per reading and a budget of 6 s for two policies: each search
    gets a 3 s share from when it starts, runs its first trial (the family's middle member; the
    reading after it is one second later) and starts no second one (its share has run out). The
    answer is what that trial decided: "at least" the middle member if it fits, else undecided;
    the members above or below it are listed as not searched."""
    import itertools
    import time

    path = write(tmp_path)
    s = load_scenario(path)
    family, names = candidates(s)
    tick = itertools.count()
    monkeypatch.setattr(time, "monotonic", lambda: float(next(tick)))
    assert main(["compare", str(path), "--policies", "gpu-only,zero-offload", "--budget", "6", "--json"]) == 0
    monkeypatch.undo()
    out = json.loads(capsys.readouterr().out)
    from simhete.search.compare import knobs_for
    mid = len(names) // 2
    for policy, got in out["largest_fitting"].items():
        fits = run(s.with_changes(model=names[mid], policy=policy, knobs=knobs_for(s, policy),
                                  iterations=2)).summary.fits
        want = {"at_least": names[mid], "not_searched": names[mid + 1:]} if fits else \
            {"at_least": None, "not_searched": names[:mid]}
        assert got == want, policy
    assert out["time_limited"] == []


def test_the_table_says_an_answer_was_cut_short(tmp_path, capsys):
    from simhete.commands.compare import Unsearched
    assert str(Unsearched(None, ("a", "b", "c"), 5.0)) == "undecided (not searched: a .. c; the 5 s search budget ran out)"
    assert str(Unsearched("a", ("b",), 0.5)) == "at least a (not searched: b; the 0.5 s search budget ran out)"
    assert main(["compare", str(write(tmp_path)), "--policies", "gpu-only", "--budget", "1e-9"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "undecided (not searched: gpt-like-h512-l2 .." in out and "search budget ran" in out
    assert "depend on this machine's speed and load" in out


def test_a_budget_that_is_not_a_positive_number_of_seconds_is_one_line_error(tmp_path, capsys):
    assert main(["compare", str(write(tmp_path)), "--budget", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--budget 0.0: must be a number of seconds above 0" in err

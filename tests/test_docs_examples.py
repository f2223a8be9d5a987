"""Every example in README.md and docs/*.md runs (tests/docs_examples.py says what an example is):
python blocks are executed, `simhete` commands run in-process from the repository root with their
outputs sent to a temporary directory; slow ones run with SIMHETE_DOCS_SLOW=1 and are otherwise
reported as skipped, with their reason; synopses (placeholders) are checked against the parser."""

from __future__ import annotations

import glob
import os
import re

import pytest

from docs_examples import ROOT, Example, examples
from simhete.cli import COMMANDS, build_parser, main

EXAMPLES = examples()
OUT_FLAGS = {"--out", "--trace", "--plot", "--schedule", "--csv", "--parquet"}


def test_the_docs_have_examples_and_every_mark_says_why():
    kinds = {(e.kind, e.mark) for e in EXAMPLES}
    assert ("python", "") in kinds and ("command", "") in kinds
    assert len([e for e in EXAMPLES if not e.mark]) >= 8
    assert [e.id for e in EXAMPLES if e.mark in ("slow", "skip") and not e.why.strip()] == []


def _subparser(command: str):
    parser = build_parser(command)
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices[command]


def _options(command: str) -> set[str]:
    return {o for a in _subparser(command)._actions for o in a.option_strings}


REDIRECTED: dict[str, str] = {}    # an output's path in the docs -> where the tests wrote it


@pytest.fixture(scope="module")
def outdir(tmp_path_factory):
    """One directory for every example's outputs, so a later example reads what an earlier one of
    the same page wrote (calibrate --out /tmp/cpu.yaml, then validate --profile /tmp/cpu.yaml)."""
    return tmp_path_factory.mktemp("doc-outputs")


def _argv(ex: Example, outdir) -> list[str]:
    argv = []
    words = ex.argv()
    for k, w in enumerate(words):
        if k and words[k - 1] in OUT_FLAGS:
            REDIRECTED[w] = str(outdir / os.path.basename(w))     # outputs never land in the checkout
            w = REDIRECTED[w]
        elif w in REDIRECTED:
            w = REDIRECTED[w]
        elif "*" in w:
            hits = sorted(glob.glob(w, root_dir=ROOT))
            assert hits, f"{ex.id}: {w} matches no file"
            argv += hits
            continue
        argv.append(w)
    if argv and argv[0] == "sweep" and "--out" not in argv:
        argv += ["--out", str(outdir / "sweep.sqlite")]
    return argv


@pytest.mark.parametrize("ex", [e for e in EXAMPLES if e.kind == "command"], ids=lambda e: e.id)
def test_command_example(ex: Example, outdir, monkeypatch, capsys):
    argv = ex.argv()
    assert argv and argv[0] in COMMANDS, \
        f"{ex.id}: unknown command in {ex.text!r}"
    if ex.mark == "synopsis":
        flags = {w.split("=")[0] for w in re.findall(r"--[\w-]+", ex.text)}
        assert flags <= _options(argv[0]), f"{ex.id}: {sorted(flags - _options(argv[0]))} not options of {argv[0]}"
        return
    if ex.mark == "skip":
        pytest.skip(f"{ex.id} skip: {ex.why}")
    if ex.mark == "slow" and not os.environ.get("SIMHETE_DOCS_SLOW"):
        pytest.skip(f"{ex.id} slow: {ex.why} (SIMHETE_DOCS_SLOW=1 runs it)")
    if argv[0] in ("calibrate", "validate") and "--refit" not in argv and "--published" not in argv:
        pytest.importorskip("torch")
    monkeypatch.chdir(ROOT)
    rc = main(_argv(ex, outdir))
    out = capsys.readouterr()
    assert rc == 0, f"{ex.id}: `{ex.text}` exited {rc}: {out.err.strip()[-500:]}"


@pytest.mark.parametrize("ex", [e for e in EXAMPLES if e.kind == "python"], ids=lambda e: e.id)
def test_python_example(ex: Example, monkeypatch):
    if ex.mark:
        pytest.skip(f"{ex.id} {ex.mark}: {ex.why}")
    monkeypatch.chdir(ROOT)
    exec(compile(ex.text, ex.id, "exec"), {"__name__": "__doc_example__"})


def _inline_commands():
    """`simhete ...` spans in the text (the README's command table, docs' prose): each is a
    synopsis whose command and --flags must exist."""
    from docs_examples import doc_files
    out = []
    for path in doc_files():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for m in re.finditer(r"`(simhete [a-z][^`]*)`", line):
                out.append(pytest.param(m.group(1), id=f"{path.relative_to(ROOT)}:{n}"))
    return out


@pytest.mark.parametrize("text", _inline_commands())
def test_inline_command_names_real_options(text):
    words = text.split()
    command = words[1]
    assert command in COMMANDS, text
    flags = {w.split("=")[0] for w in re.findall(r"--[\w-]+", text)}
    assert flags <= _options(command), f"{sorted(flags - _options(command))} are not options of {command}"


def test_the_tutorials_verdicts_hold(capsys):
    """docs/tutorial.md states which policies fit LLaMA-2-13B on one H100 PCIe with 256 GiB of
    host memory, and why ZeRO-Offload does not: if a change of the model alters a verdict, the
    tutorial must be rewritten."""
    import json
    scen = str(ROOT / "scenarios/llama2-13b_h100-pcie_zero-offload.yaml")
    assert main(["compare", scen, "--set", "hardware.host_memory=256GiB", "--no-largest", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["summaries"]
    fits = {p: s["fits"] for p, s in got.items()}
    assert fits == {"zero-offload": False, "autohete": True, "chunked": True, "gpu-only": False,
                    "stronghold": True, "zero-2": False, "zero-infinity": False}
    assert got["zero-offload"]["oom"].startswith("out of memory in cpu: the states placed there at start")
    assert "pinned_rounding" in got["zero-offload"]["oom"]
    best = max((s["tokens_per_s"], p) for p, s in got.items() if s["fits"])[1]
    assert best == "autohete"
    assert main(["simulate", scen, "--set", "hardware.host_memory=256GiB", "--set", "knobs.pin_memory=false",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fits"] is True


def test_the_adding_a_policy_example_is_the_file_and_runs(monkeypatch, capsys):
    """docs/adding-a-policy.md shows docs/examples/swap_all_activations.py verbatim, and the file
    runs: its policy, registered at run time, refuses the knobs it decides itself, simulates, fits
    where gpu-only runs out of memory, and is a column of `simhete compare`."""
    import runpy

    from simhete.errors import ConfigError
    from simhete.policy import registry

    path = ROOT / "docs" / "examples" / "swap_all_activations.py"
    assert f"```python\n{path.read_text()}```" in (ROOT / "docs" / "adding-a-policy.md").read_text()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))   # registered for this test only
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(path), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"\d+\.\d{3} s per iteration, fits: True, peak GPU \d+\.\d GiB", lines[0]), lines[0]
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if line.startswith("│")]
    assert ["figure", "gpu-only", "swap-all-activations"] in [[c.strip() for c in line.split("┃")[1:-1]]
                                                              for line in lines if line.startswith("┃")]
    assert ["fits", "NO (out of memory)", "yes"] in cells
    cls = registry.get_policy("swap-all-activations")
    assert "swap-all-activations" in registry.list_policies() and cls.name == "swap-all-activations"
    with pytest.raises(ConfigError, match="knobs.*every block swaps"):
        cls.knobs({"checkpointing": "full"}, "x.yaml")

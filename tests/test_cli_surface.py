"""The CLI surface is frozen: a changed command or flag must change this test on purpose."""

from __future__ import annotations

import argparse

import pytest

from simhete.cli import build_parser, main

FLAGS = {
    "demo": {"--out", "--engine"},
    "simulate": {"--json", "--trace", "--plot", "--schedule", "--deepspeed", "--set", "--engine"},
    "compare": {"--engine", "--no-largest", "--json", "--policies", "--set", "--budget"},
    "calibrate": {"--device", "--force", "--out", "--suites", "--threads", "--refit", "--quick",
                  "--shapes-from", "--passes"},
    "validate": {"--device", "--no-reference", "--json", "--iterations", "--profile", "--trace", "--engine",
                 "--fresh-blocks", "--bracket-blocks", "--replays", "--published", "--write-summary",
                 "--markdown"},
    "sweep": {"--quiet", "--backend", "--top", "--out", "--ray-address", "--parquet", "--engine", "--workers",
              "--csv", "--deepspeed", "--resume", "--plot", "--resume-stale", "--max-points"},
    "plan": {"--json", "--engine", "--dtype", "--policy", "--seq", "--micro-batch", "--min-tokens-per-s",
             "--model", "--hardware", "--deepspeed", "--gpus", "--budget", "--gpu-memory", "--host-memory"},
}


def subparsers() -> dict[str, argparse.ArgumentParser]:
    p = build_parser()
    action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_is_there():
    assert set(subparsers()) == {"demo", "simulate", "compare", "calibrate", "validate", "sweep", "plan"}


@pytest.mark.parametrize("cmd", sorted(FLAGS))
def test_flags_are_frozen(cmd):
    opts = {o for a in subparsers()[cmd]._actions for o in a.option_strings if o.startswith("--")} - {"--help"}
    assert opts == FLAGS[cmd]


@pytest.mark.parametrize("cmd", [None, "demo", "simulate", "compare", "calibrate", "validate", "sweep", "plan"])
def test_help_works(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"] if cmd is None else [cmd, "--help"])
    assert e.value.code == 0 and "usage: simhete" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["sweep", "--help"], ["--version"]])
def test_a_command_imports_only_its_own_module(argv):
    """Start-up: ``calibrate`` imports scipy.optimize (~1 s of CPU); no other command pays for it."""
    import subprocess
    import sys
    code = ("import sys\nfrom simhete.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('simhete.commands.') and m != 'simhete.commands._common'),"
            " 'scipy.optimize' in sys.modules)" % (argv,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    expect = "['simhete.commands.sweep'] False" if argv[0] == "sweep" else "[] False"
    assert out.strip().splitlines()[-1] == expect


@pytest.mark.parametrize("given,expect", [(None, "1"), ("4", "4")])
def test_the_command_runs_single_threaded_blas_unless_asked_otherwise(given, expect):
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    code = ("import os\nfrom simhete.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('OPENBLAS_NUM_THREADS'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == expect

"""A mutation fuzz of every input kind through the CLI, in-process.

Seed files: two shipped scenarios (a tiny copy with two iterations, so a case runs in
milliseconds), a shipped hardware profile, a sweep file, a Hugging Face config.json and a
DeepSpeed JSON. Each case mutates one of them — bytes (truncation, a flipped or inserted byte,
Latin-1, a UTF-16 byte-order mark, NUL, deep nesting, aliases of aliases, a duplicate key) or
structure (a value replaced by a hostile one: a boolean, null, negative, zero, huge, infinite,
NaN, a list or mapping where a scalar belongs, a very long string; a key deleted or added) — and
runs the command that reads it. Every case must end in a normal result (exit 0) or one
``simhete: error: ...`` line (exit 2); anything else — a traceback, another exit code, a
multi-line error — fails the test and names the case.

Cases are seeded (``SIMHETE_FUZZ_SEED``, default 0) and there are ``SIMHETE_FUZZ_CASES`` of them
(default 500) within a ``SIMHETE_FUZZ_SECONDS`` budget (default 30): the cases run in order until
either is spent, so the test adds a bounded time to CI. Run it longer locally, e.g.
``SIMHETE_FUZZ_CASES=2000 SIMHETE_FUZZ_SECONDS=600 SIMHETE_FUZZ_SEED=7 pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from simhete.cli import main

REPO = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("SIMHETE_FUZZ_SEED", "0"))
CASES = int(os.environ.get("SIMHETE_FUZZ_CASES", "500"))
SECONDS = float(os.environ.get("SIMHETE_FUZZ_SECONDS", "30"))

TINY = {"name": "tiny", "model": "gpt-like-h256-l2-a4", "hardware": "h100-pcie",
        "train": {"micro_batch": 1, "seq_len": 128, "dtype": "bf16"}, "iterations": 2,
        "policy": "zero-offload", "knobs": {"checkpointing": "none"}}

HOSTILE: list[Any] = [True, False, None, -1, 0, 1, 2**70, 1e30, float("inf"), float("-inf"), float("nan"),
                      "", "x" * 2000, "1e30", ".inf", "nan", "-5GiB", "1e400", [], [1, 2], {}, {"a": 1},
                      [[[[[[[[1]]]]]]]], 0.5, "gpu-only", "h100-pcie"]


def _seeds(tmp: Path) -> dict[str, tuple[str, bytes]]:
    """kind -> (file name, content) of each seed file."""
    small = yaml.safe_load((REPO / "scenarios" / "small-llama_cpu_zero-infinity.yaml").read_text())
    small = {**small, "iterations": 2}
    small.pop("replay", None)
    prof = (REPO / "hwprofiles" / "h100-pcie.yaml").read_bytes()
    sweep = {"name": "fuzz", "base": "base.yaml",
             "axes": {"train.micro_batch": [1, 2]},
             "strategy": "grid", "limits": {"gpu_memory": "70GiB"}}
    hf = (REPO / "tests" / "data" / "hf" / "llama-2-7b" / "config.json").read_bytes()
    ds = (REPO / "tests" / "data" / "deepspeed" / "zero2_offload_explicit.json").read_bytes()
    return {
        "scenario": ("s.yaml", yaml.safe_dump(TINY, sort_keys=False).encode()),
        "scenario2": ("s.yaml", yaml.safe_dump(small, sort_keys=False).encode()),
        "profile": ("hw.yaml", prof),
        "sweep": ("sw.yaml", yaml.safe_dump(sweep, sort_keys=False).encode()),
        "hf": ("config.json", hf),
        "deepspeed": ("ds.json", ds),
    }


def _command(kind: str, tmp: Path, path: Path) -> list[str]:
    if kind in ("scenario", "scenario2"):
        return ["simulate", str(path), "--json"]
    base = tmp / "base.yaml"
    if kind == "profile":
        base.write_text(yaml.safe_dump({**TINY, "hardware": {"profile": str(path)}}))
        return ["simulate", str(base), "--json"]
    if kind == "hf":
        base.write_text(yaml.safe_dump({**TINY, "model": {"hf_config": str(path)}}))
        return ["simulate", str(base), "--json"]
    if kind == "deepspeed":
        base.write_text(yaml.safe_dump(TINY))
        return ["simulate", str(base), "--deepspeed", str(path), "--json"]
    base.write_text(yaml.safe_dump(TINY))
    out = tmp / "r.sqlite"
    out.unlink(missing_ok=True)
    return ["sweep", str(path), "--out", str(out), "--quiet", "--max-points", "16", "--top", "2",
            "--plot", str(tmp / "p.png")]


def _leaves(obj: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(obj, dict):
        return [path] + [p for k, v in obj.items() for p in _leaves(v, path + (k,))]
    if isinstance(obj, list):
        return [path] + [p for i, v in enumerate(obj) for p in _leaves(v, path + (i,))]
    return [path]


def _set(obj: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    cur = obj
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value
    return obj


def _structural(rng: random.Random, data: Any, is_json: bool) -> bytes:
    d = copy.deepcopy(data)
    paths = [p for p in _leaves(d) if p]
    op = rng.choice(["replace", "replace", "replace", "delete", "add"])
    p = rng.choice(paths)
    if op == "replace":
        d = _set(d, p, copy.deepcopy(rng.choice(HOSTILE)))
    elif op == "delete":
        parent = d
        for q in p[:-1]:
            parent = parent[q]
        del parent[p[-1]]
    else:
        parent = d
        for q in p[:-1]:
            parent = parent[q]
        if isinstance(parent, dict):
            parent["unknown_" + str(rng.randrange(100))] = rng.choice(HOSTILE)
        else:
            parent.append(rng.choice(HOSTILE))
    if is_json:
        return json.dumps(d).encode()          # inf and nan come out as Infinity and NaN
    return yaml.safe_dump(d, sort_keys=False).encode()


def _bytes(rng: random.Random, raw: bytes, is_json: bool) -> bytes:
    op = rng.randrange(9)
    if op == 0:
        return raw[:rng.randrange(len(raw))]
    if op == 1:
        i = rng.randrange(len(raw))
        return raw[:i] + bytes([rng.randrange(256)]) + raw[i + 1:]
    if op == 2:
        i = rng.randrange(len(raw))
        return raw[:i] + bytes([rng.choice([0xe9, 0xff, 0x00, 0x80])]) + raw[i:]
    if op == 3:
        return raw.decode("utf-8", "replace").encode("utf-16")
    if op == 4:
        n = rng.choice([65, 1000, 20000])
        if is_json:
            return b"[" * n + b"]" * n
        return b"name: x\nreplay: " + b"[" * n + b"]" * n + b"\n"
    if op == 5:                              # aliases of aliases
        if is_json:
            return raw.replace(b"{", b"{\"a\": 1, \"a\": 2, ", 1)
        lines = [b"a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
            f"{c}: &{c} [{', '.join(['*' + p] * 10)}]".encode() for p, c in zip("abcdefgh", "bcdefghi")]
        return b"\n".join(lines) + b"\n" + raw
    if op == 6 and not is_json:              # a duplicate top-level key
        first = raw.split(b"\n", 1)[0]
        return raw + b"\n" + first + b"\n"
    if op == 7:
        return b"\x00" + raw
    return raw.replace(b"1", b"1e400", 1) if is_json else raw.replace(b": 1", b": .nan", 1)


def _cases() -> list[tuple[int, str, str]]:
    rng = random.Random(SEED)
    # a sweep case costs ~5x a simulate case (it runs points and draws a PNG): one in ten
    kinds = ["scenario", "scenario2", "profile", "hf", "deepspeed"] * 2
    kinds[-1] = "sweep"
    return [(i, kinds[i % len(kinds)], rng.choice(["bytes", "structure", "structure"])) for i in range(CASES)]


def test_every_fuzz_case_is_a_result_or_one_line_error(tmp_path, capsys):
    seeds = _seeds(tmp_path)
    deadline = time.monotonic() + SECONDS
    ran = 0
    failures: list[str] = []
    took: dict[str, list[float]] = {}
    for i, kind, how in _cases():
        if time.monotonic() > deadline:
            break
        rng = random.Random(SEED * 100_003 + i)
        name, raw = seeds[kind]
        is_json = name.endswith(".json")
        if how == "bytes":
            content = _bytes(rng, raw, is_json)
        else:
            data = json.loads(raw) if is_json else yaml.safe_load(raw)
            content = _structural(rng, data, is_json)
        case = tmp_path / f"case{i}"
        case.mkdir()
        path = case / name
        path.write_bytes(content)
        argv = _command(kind, case, path)
        t0 = time.monotonic()
        try:
            rc = main(argv)
            took.setdefault(kind, []).append(time.monotonic() - t0)
        except SystemExit as e:            # argparse: exit 2 with usage, also a one-line answer
            rc = e.code if isinstance(e.code, int) else 2
        except BaseException as e:         # noqa: BLE001 - a traceback is the finding
            failures.append(f"case {i} ({kind}, {how}): {type(e).__name__}: {e!s:.200}")
            capsys.readouterr()
            continue
        err = capsys.readouterr().err
        errors = [ln for ln in err.splitlines() if ln.startswith("simhete: error:")]
        if rc == 0:
            pass
        elif rc == 2 and len(errors) == 1 and err.rstrip("\n").endswith(errors[0]) and len(errors[0]) < 2000:
            pass
        else:
            failures.append(f"case {i} ({kind}, {how}): exit {rc}, stderr {err[-300:]!r}")
        ran += 1
    with capsys.disabled():
        print(f"\nfuzz: {ran} cases in {time.monotonic() - deadline + SECONDS:.1f} s; mean s per case: "
              + ", ".join(f"{k} {sum(v) / len(v):.3f}" for k, v in took.items()))
    assert not failures, f"{len(failures)} of {ran} cases:\n" + "\n".join(failures)
    assert ran >= min(CASES, 30), f"only {ran} cases ran within {SECONDS} s"


@pytest.mark.parametrize("kind", ["scenario", "profile", "sweep", "hf", "deepspeed"])
def test_the_unmutated_seeds_run(tmp_path, capsys, kind):
    name, raw = _seeds(tmp_path)[kind]
    (tmp_path / name).write_bytes(raw)
    assert main(_command(kind, tmp_path, tmp_path / name)) == 0, capsys.readouterr().err

"""simhete plan --model M --hardware H --seq S: does it fit, under which policy, how fast, how big."""

from __future__ import annotations

import argparse
import json
import math

from simhete.commands._common import add_engine_arg, console
from simhete.errors import SimheteError

HELP = ("Capacity planning: which policies fit a model on a machine, the best policy and knobs and its "
        "throughput, the largest micro-batch and the largest model of the family that fit, and (with "
        "--min-tokens-per-s) the smallest shipped hardware that reaches a target.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="model preset (e.g. llama2-13b), gpt-like-h{H}-l{L}, or a Hugging Face config.json "
                        "(a path ending in .json, or a folder holding config.json)")
    p.add_argument("--hardware", required=True, help="hardware profile name or path (e.g. h100-pcie)")
    p.add_argument("--gpu-memory", metavar="SIZE",
                   help="what-if: memory of each GPU instead of the profile's (e.g. 40GiB, 80GB, 1e10)")
    p.add_argument("--host-memory", metavar="SIZE",
                   help="what-if: host memory instead of the profile's (e.g. 256GiB, 512GB)")
    p.add_argument("--seq", type=int, required=True, help="sequence length")
    p.add_argument("--micro-batch", type=int, default=1, help="micro-batch per GPU (default 1)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--gpus", type=int, default=1, help="GPUs of the profile to use (default 1)")
    p.add_argument("--min-tokens-per-s", type=float, metavar="N",
                   help="target throughput: also find the smallest shipped hardware reaching it")
    p.add_argument("--policy", action="append", metavar="NAME",
                   help="consider only this policy (repeatable; default: every registered policy)")
    p.add_argument("--deepspeed", metavar="JSON", help="evaluate this DeepSpeed config's policy and knobs")
    p.add_argument("--budget", type=float, default=None, metavar="S",
                   help="wall-time budget in seconds of the largest micro-batch and largest model "
                        "searches together (default 5; the micro-batch search may use half); what they "
                        "leave unsearched is reported")
    p.add_argument("--json", action="store_true", help="print the answers as JSON")
    add_engine_arg(p)


def run(args: argparse.Namespace) -> int:
    from simhete.policy import get_policy
    from simhete.scenario import scenario_from_dict
    from simhete.search.plan import Planner, capacity_provenance, dedupe

    for flag in ("seq", "micro_batch", "gpus"):
        if getattr(args, flag) < 1:
            raise SimheteError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1")
    if args.min_tokens_per_s is not None and not (0 <= args.min_tokens_per_s < math.inf):
        raise SimheteError(f"--min-tokens-per-s {args.min_tokens_per_s}: must be a finite number, 0 or more")
    if args.budget is not None and not (0 < args.budget < 86400):
        raise SimheteError(f"--budget {args.budget}: must be a number of seconds above 0 (and below a day)")
    hardware: dict = {"profile": args.hardware, "gpus": args.gpus}
    for flag in ("gpu_memory", "host_memory"):
        v = getattr(args, flag, None)
        if v is not None:
            hardware[flag] = _size(f"--{flag.replace('_', '-')}", v)
    model = _model_arg(args.model)
    base = scenario_from_dict({
        "name": f"{args.model} on {args.hardware}", "model": model,
        "hardware": hardware,
        "train": {"micro_batch": args.micro_batch, "seq_len": args.seq, "dtype": args.dtype},
        "policy": "gpu-only"}, "command line")
    from simhete.sim import check_seq_len, resolve_model
    check_seq_len(resolve_model(base), args.seq, None, "--seq")
    fixed = None
    policies = tuple(args.policy) if args.policy else None
    for p in policies or ():
        get_policy(p, None, "--policy")
    if args.deepspeed:
        from simhete.search.deepspeed import import_deepspeed
        imp = import_deepspeed(base, args.deepspeed)
        imp.print_notes()
        base, fixed, policies = imp.scenario, dict(imp.scenario.data.knobs), (imp.policy,)
    pl = Planner(base, args.engine, policies, fixed)
    if args.budget is not None:
        pl.budget_s = args.budget
    from simhete.sim import resolve_model
    spec = resolve_model(base)
    prof = pl._profile(base)

    per_policy = pl.by_policy()
    best = pl.best()
    out: dict = {"question": {"model": spec.name, "params": spec.n_params(), "hardware": prof.name,
                              "gpus": prof.gpu.count, "seq_len": args.seq, "micro_batch": base.data.train.micro_batch,
                              "dtype": base.data.train.dtype},
                 "capacity_provenance": capacity_provenance(prof, {
                     f"{k.split('_')[0]}.memory_bytes": f"what-if: --{k.replace('_', '-')} {getattr(args, k)}"
                     for k in ("gpu_memory", "host_memory") if getattr(args, k, None) is not None})}
    out["policies"] = {p: [_trial(t) for t in ts] for p, ts in per_policy.items()}
    out["fits_under"] = [p for p, ts in per_policy.items() if any(t.fits for t in ts)]
    out["best"] = _trial(best) if best else None
    if best is not None:
        lean = pl.lean(best.policy, best.knobs)
        mb, n = pl.largest_micro_batch(best.policy, lean)
        out["largest_micro_batch"] = {"policy": best.policy, "knobs": lean, "micro_batch": mb,
                                      "trials": n, "monotone": "fit/no-fit is monotone in the micro-batch "
                                      "for a fixed policy and knobs (activation memory grows with it), so "
                                      "doubling then bisection finds the edge",
                                      "not_searched": pl.mb_unsearched}
    largest, fam = pl.largest_model()
    out["largest_model"] = {"family": fam, "model": largest,
                            "note": "fits under some policy with its leanest knobs at this seq and micro-batch",
                            "not_searched": pl.unsearched}
    if args.min_tokens_per_s is not None:
        hit, table = pl.smallest_hardware(args.min_tokens_per_s, args.gpus)
        out["target"] = {"min_tokens_per_s": args.min_tokens_per_s, "smallest_hardware": hit,
                         "order": "GPUs, GPU memory, bf16 peak, host memory",
                         "candidates": [{"hardware": h, "best": _trial(t) if t else None} for h, t in table]}
    # answers a wall-time limit cut short depend on this machine's speed and load; the rest do not
    cut = []
    if best is not None and pl.mb_unsearched:
        cut.append(f"largest micro-batch: {pl.mb_unsearched}")
    if pl.unsearched and "budget ran out" in pl.unsearched:     # not the model-size limit
        cut.append(f"largest model: {pl.unsearched}")
    cut += sorted({f"{t.policy} {_knobs(t.knobs)}: {t.cut}" for t in pl.trials() if t.cut})
    out["time_limited"] = cut
    from simhete.published import suite_error_for
    out["published_suite"] = suite_error_for(prof)
    flags = dedupe(best.uncalibrated) if best else []
    out["best_rests_on"] = rests_on(best, flags)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    _render(out, best, flags)
    return 0


def _model_arg(model: str) -> str | dict:
    """A preset name, or ``{"hf_config": path}`` for a path ending in .json or an existing folder
    holding a config.json (a missing .json file is reported by the config reader)."""
    from pathlib import Path

    from simhete.fileio import is_dir, is_file

    p = Path(model)
    if model.endswith(".json") or (is_dir(p) and is_file(p / "config.json")):
        return {"hf_config": str(p.resolve())}
    return model


def _size(flag: str, value: str) -> int:
    """A byte size from the command line (``256GiB``, ``80GB``, ``1e10``); one line if it is not one."""
    from simhete.config import parse_bytes

    try:
        n = parse_bytes(value)
    except ValueError as e:
        raise SimheteError(f"{flag} {value!r}: {e}") from None
    if n < 1:
        raise SimheteError(f"{flag} {value!r}: must be more than 0 bytes")
    return n


def _trial(t) -> dict:  # type: ignore[no-untyped-def]
    return {"policy": t.policy, "knobs": t.knobs, "fits": t.fits, "tokens_per_s": t.tokens_per_s,
            "peak_gpu_bytes": t.peak_gpu_bytes, "peak_host_bytes": t.peak_host_bytes,
            "reason": t.reason, "uncalibrated": list(t.uncalibrated), "dtype": t.dtype}


def _render(out: dict, best, flags: list[str]) -> None:  # type: ignore[no-untyped-def]
    from rich.table import Table

    con = console()
    q = out["question"]
    con.print(f"[bold]Plan[/]: {q['model']} ({q['params'] / 1e9:.2f} B params) on {q['gpus']}× {q['hardware']}, "
              f"seq {q['seq_len']}, micro-batch {q['micro_batch']}, {q['dtype']}")
    from rich import box
    # no vertical rules: seven columns fit an 80-column terminal
    t = Table(title="Does it fit? (each policy, each planning knob combination)", title_justify="left",
              box=box.SIMPLE_HEAD)
    rows, why = [], {}
    for p, trials in out["policies"].items():
        for tr in trials:
            ran = tr["fits"] or tr["peak_gpu_bytes"] or tr["peak_host_bytes"]   # 0 and 0: stopped at start
            rows.append([p, _knobs(tr["knobs"]), "yes" if tr["fits"] else "[red]no[/]",
                         f"{tr['tokens_per_s']:,.0f}" if tr["tokens_per_s"] else "",
                         f"{tr['peak_gpu_bytes'] / 2**30:.1f}" if ran else "—",
                         f"{tr['peak_host_bytes'] / 2**30:.1f}" if ran else "—"])
            if not tr["fits"] and tr["reason"]:
                why.setdefault((p, tr["reason"].split(";")[0]), []).append(_knobs(tr["knobs"]))
    for i, c in enumerate(("policy", "knobs", "fits", "tokens/s", "GPU GiB", "host GiB")):
        # a cell wraps at its spaces, never inside a word (knob=value) or a number
        word = max((len(w) for r in rows for w in r[i].replace("[red]", "").replace("[/]", "").split()), default=1)
        t.add_column(c, justify="right" if c in ("tokens/s", "GPU GiB", "host GiB") else "left",
                     overflow="fold", min_width=min(word, 24))
    for r in rows:
        t.add_row(*r)
    con.print(t)
    for (p, reason), knobs in why.items():      # the reasons in full, once per policy and reason
        con.print(f"[red]{p}[/] ({'; '.join(knobs)}) does not fit: {reason}")
    con.print("Fits under: " + (", ".join(out["fits_under"]) or "[red]no policy[/]"))
    if best is not None:
        b = out["best"]
        con.print(f"Best: [bold]{b['policy']}[/] {_knobs(b['knobs'])} at [bold]{b['tokens_per_s']:,.0f} "
                  "tokens/s[/]")
        lm = out["largest_micro_batch"]
        con.print(f"Largest micro-batch that fits ({lm['policy']}, {_knobs(lm['knobs'])}): "
                  f"[bold]{lm['micro_batch'] or 'not known'}[/] ({lm['trials']} trials; {lm['monotone']})")
        if lm["not_searched"]:
            con.print(f"  not searched: {lm['not_searched']}")
    lm = out["largest_model"]
    con.print(f"Largest {lm['family']} model that fits: [bold]{lm['model'] or 'none'}[/] ({lm['note']})")
    if lm["not_searched"]:
        con.print(f"  not searched: {lm['not_searched']}")
    if out["time_limited"]:
        con.print("[yellow]Cut short by a wall-time limit[/] (these answers depend on this machine's speed and "
                  "load; a larger --budget searches further): " + "; ".join(out["time_limited"]))
    if "target" in out:
        tg = out["target"]
        con.print(f"Smallest shipped hardware reaching {tg['min_tokens_per_s']:,.0f} tokens/s "
                  f"(ordered by {tg['order']}): [bold]{tg['smallest_hardware'] or 'none'}[/]")
        for c in tg["candidates"]:
            b = c["best"]
            con.print(f"  {c['hardware']}: " + (f"{b['tokens_per_s']:,.0f} tokens/s ({b['policy']}, {b.get('dtype', '')})"
                                                 if b else "does not fit"))
    con.print("\n[bold]Provenance[/] — fit verdicts are decided against: " + "; ".join(out["capacity_provenance"]))
    con.print(out["best_rests_on"])
    con.print(out["published_suite"]["line"], style="cyan")


def _knobs(knobs: dict) -> str:
    """Knobs as written on the command line (``checkpointing=full pin_memory=true``), not JSON."""
    return " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in knobs.items()) or "—"


def rests_on(best, flags: list[str]) -> str:  # type: ignore[no-untyped-def]
    """What the best throughput rests on, as the flags reported for it say: nothing to claim when
    nothing fits; calibrated only when it fits and no number behind it is flagged."""
    if best is None:
        return "Nothing fits: there is no throughput to vouch for."
    if flags:
        return "The best throughput rests on uncalibrated numbers: " + "; ".join(flags)
    return "The best throughput rests only on calibrated (measured) numbers: no number behind it is flagged."

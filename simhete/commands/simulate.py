"""simhete simulate SCENARIO: does it fit, how fast, where the time and memory go."""

from __future__ import annotations

import argparse

from simhete.commands._common import (add_engine_arg, add_set_arg, apply_sets, check_writable, console, dump_json,
                                      run_title)
from simhete.fileio import write_atomic
from simhete.scenario import load_scenario
from simhete.schedule import format_schedule

HELP = "Simulate one scenario and print whether it fits, iteration time, throughput, MFU, how busy each stream is, PCIe bytes and peak memory."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", help="scenario YAML (see docs/scenarios.md)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    p.add_argument("--trace", metavar="PATH", help="write a Perfetto/Chrome trace (open in ui.perfetto.dev)")
    p.add_argument("--plot", metavar="PATH", help="write a PNG timeline and memory plot")
    p.add_argument("--schedule", metavar="PATH", help="write the schedule in its text form")
    p.add_argument("--deepspeed", metavar="JSON", help="take policy, knobs, micro-batch and dtype from a DeepSpeed "
                   "config (docs/deepspeed.md); unsupported keys are listed")
    add_set_arg(p)
    add_engine_arg(p)


def run(args: argparse.Namespace) -> int:
    from simhete.sim import run as run_scenario

    scenario = load_scenario(args.scenario)
    if args.deepspeed:
        from simhete.search.deepspeed import apply_deepspeed
        scenario = apply_deepspeed(scenario, args.deepspeed)
    # after the inputs are read: an output path that is one of them is refused before any work
    outs = {flag: check_writable(getattr(args, flag), f"--{flag}") for flag in ("trace", "plot", "schedule")}
    res = run_scenario(apply_sets(scenario, args.set), engine=args.engine)
    title = run_title(res, args.set)
    if outs["schedule"]:
        write_atomic(outs["schedule"], format_schedule(res.schedule), "--schedule")
    if outs["trace"]:
        from simhete.report.trace import write_trace
        write_trace(outs["trace"], res.timeline)
    if outs["plot"]:
        from simhete.report.plot import plot_timeline
        plot_timeline(res.timeline, outs["plot"], pools=dict(res.schedule.pools), title=title)
    from simhete.published import suite_error_for
    suite = suite_error_for(res.context.profile)
    if args.json:
        print(dump_json({**res.summary.to_dict(), "published_suite": suite}), end="")
    else:
        from simhete.report.table import render_summary
        con = console()
        con.print(render_summary(res.summary, title=title))
        con.print(suite["line"], style="cyan")
    return 0

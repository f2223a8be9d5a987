"""simhete demo: the what-if the README's first command runs, on shipped scenarios and profiles.

Question: can LLaMA-2-13B (seq 4096) be trained on one H100 PCIe, with which policy, how fast —
and what would other hardware give? Writes a trace and a timeline plot under out/demo/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from simhete.commands._common import add_engine_arg, check_writable, console

HELP = "Run the shipped what-if demo: LLaMA-2-13B on one H100 PCIe under each policy, then across GPUs."

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "llama2-13b_h100-pcie_zero-offload.yaml"
HARDWARE = ["h100-pcie", "h100-sxm", "h200-sxm", "a100-80gb-sxm"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="out/demo", help="directory for the trace and plot (default out/demo)")
    add_engine_arg(p)


def run(args: argparse.Namespace) -> int:
    from simhete.search.compare import compare_policies
    from simhete.report.plot import plot_timeline
    from simhete.report.table import render_comparison
    from simhete.report.trace import write_trace
    from simhete.scenario import load_scenario
    from simhete.sim import run as run_scenario

    out = Path(args.out)
    check_writable(str(out / "trace.json"), "--out")
    con = console()
    base = load_scenario(SCENARIO)
    con.print(f"[bold]Question[/]: can {base.name.split(' on ')[0]} (micro-batch "
              f"{base.data.train.micro_batch}, sequence {base.data.train.seq_len}) be trained on one "
              "H100 PCIe, with which policy, and how fast?\n")
    rows = compare_policies(base, engine=args.engine)
    con.print(render_comparison({name: r.summary for name, r in rows.items()}, title="Policies on one H100 PCIe"))

    res = rows[base.data.policy]       # compare_policies ran the scenario's own policy first
    write_trace(out / "trace.json", res.timeline)
    plot_timeline(res.timeline, out / "timeline.png", pools=dict(res.schedule.pools), title=base.name)
    con.print(f"\nZeRO-Offload timeline: {out / 'trace.json'} (open in ui.perfetto.dev), {out / 'timeline.png'}\n")

    what_if = {hw: run_scenario(base.with_changes(hardware={"profile": hw, "gpus": 1}), engine=args.engine).summary
               for hw in HARDWARE}
    con.print(render_comparison(what_if, title="What if: the same ZeRO-Offload job on other GPUs"))
    return 0

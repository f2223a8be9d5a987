"""simhete validate SCENARIO --profile P.yaml: simulate the scenario's (scaled-down) schedule, run
that same Schedule for real with torch on this machine, and report predicted vs measured.

Pipeline (:func:`validate_scenario`): apply the scenario's ``replay:`` shape → build the Schedule
with the policy → simulate it with the given profile → refuse if the predicted peak does not fit
in free memory → replay it (simhete.replay) → run the plain in-memory training loop of the same
model, data and seed → join the two timelines on task names (simhete.replay.compare).
Exit status: 0, or 1 when the replayed losses differ from the reference loop (the schedule moved
data wrongly), 2 for user errors.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Callable

from simhete.commands._common import add_engine_arg, check_writable, console, dump_json
from simhete.errors import SimheteError

HELP = ("Replay a scenario's simulated schedule for real with torch (CPU or CUDA) and report "
        "predicted vs measured iteration time, per-category times, peak memory and loss parity.")

# Loss parity tolerance, relative to the reference loss: the replay runs the reference's ops on
# the same device, so fp32 agrees to rounding; bf16 leaves room for a different summation order
# of the tied-embedding gradient and of CPU vs device Adam on CUDA.
LOSS_RTOL = {"fp32": 1e-4, "bf16": 1e-2}


@dataclass(frozen=True)
class Validation:
    scenario: Any          # the scaled Scenario that was simulated and replayed
    predicted: Any         # simhete.sim.Result
    replayed: Any          # simhete.replay.executor.Replayed
    comparison: Any        # simhete.replay.compare.Comparison
    parity: bool | None    # losses within LOSS_RTOL of the reference (None: no reference run)
    profile: Any = None    # the profile the prediction used (scenario overrides, fresh blocks)
    band: tuple[float, float] | None = None   # --bracket-blocks: iteration s priced before / after
    replays_s: tuple[float, ...] = ()         # measured steady iteration s of every replay, in order


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", nargs="?", help="scenario YAML; its replay: section scales the model down")
    p.add_argument("--profile", metavar="P.yaml",
                   help="hardware profile of THIS machine (from `simhete calibrate`); needed with a scenario")
    p.add_argument("--published", nargs="?", const="scenarios/published", metavar="DIR",
                   help="instead of a replay: predict every figure of the published-measurement suite "
                        "in DIR (default scenarios/published) and report published vs predicted, the "
                        "error and its median and max per figure group and hardware class")
    p.add_argument("--markdown", action="store_true",
                   help="with --published: print the suite as Markdown tables (for docs/validation.md)")
    p.add_argument("--write-summary", action="store_true",
                   help="with --published: write the suite's error figures to DIR/suite-error.yaml "
                        "(what the test gate and the other commands' outputs read)")
    p.add_argument("--iterations", type=int, default=4, metavar="N",
                   help="training iterations to simulate and replay (default 4; steady state is 2..N)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="where to replay (default: the profile's device_type)")
    p.add_argument("--fresh-blocks", action="store_true",
                   help="measure the scenario's blocks now (calibrate's blocks suite, a few seconds) "
                        "and price them with that instead of the profile's; see docs/validation.md")
    p.add_argument("--bracket-blocks", action="store_true",
                   help="measure the blocks just before and just after the replay and price them "
                        "with the mean (validating on a machine whose speed drifts)")
    p.add_argument("--replays", type=int, default=1, metavar="R",
                   help="replay the schedule R times (default 1) and report the replay with the "
                        "median iteration time; every replay's time is listed (a shared machine's "
                        "speed drifts)")
    p.add_argument("--trace", metavar="PATH",
                   help="write one Perfetto trace with the simulated and measured timelines")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.add_argument("--no-reference", action="store_true",
                   help="skip the in-memory reference loop (loss parity), e.g. when it would not fit")
    add_engine_arg(p)


def run(args: argparse.Namespace) -> int:
    from simhete.hw.profile import load_profile
    from simhete.scenario import load_scenario

    if args.published is not None:
        if args.scenario is not None or args.profile is not None:
            raise SimheteError("--published: validates the published suite against predictions; "
                               "give no scenario and no --profile with it")
        return run_published(args)
    if args.write_summary or args.markdown:
        raise SimheteError("--write-summary and --markdown: only with --published")
    if args.scenario is None or args.profile is None:
        raise SimheteError("validate: give a scenario and --profile P.yaml (a replay on this machine), "
                           "or --published [DIR] (the published-measurement suite)")
    if not 1 <= args.iterations <= 100:
        raise SimheteError(f"--iterations: bad value {args.iterations}; allowed: 1 to 100")
    if not 1 <= args.replays <= 20:
        raise SimheteError(f"--replays: bad value {args.replays}; allowed: 1 to 20")
    scenario = load_scenario(args.scenario)
    profile = load_profile(args.profile)
    trace = check_writable(args.trace, "--trace")     # after the inputs: it may not be one of them
    try:                                              # the replay runs with torch
        import torch  # noqa: F401
    except ModuleNotFoundError as e:
        raise SimheteError(f"validate needs torch to replay ({e.name} not installed): from the simhete "
                           "checkout, pip install -e '.[torch]'; --published needs no torch") from None
    con = console()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    cols = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*cols, console=con, transient=True, disable=args.json) as prog:
        bars: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                bars[stage] = prog.add_task(stage, total=total)
            prog.update(bars[stage], completed=done)

        v = validate_scenario(scenario, profile, iterations=args.iterations, device=args.device,
                              engine=args.engine, reference=not args.no_reference, progress=progress,
                              fresh_blocks=args.fresh_blocks, bracket_blocks=args.bracket_blocks,
                              replays=args.replays)
    if trace is not None:
        from simhete.report.trace import write_trace
        write_trace(trace, {"simulated": v.predicted.timeline, "measured": v.replayed.timeline})
    if args.json:
        d = v.comparison.to_dict()
        d["loss_parity"] = v.parity
        d["profile"] = profile.name
        if args.fresh_blocks or args.bracket_blocks:
            d["fresh_blocks"] = [list(e) for e in v.profile.gpu.blocks.entries
                                 if e[1].endswith(("(fresh)", "(bracket)"))]
        d["replays_s"] = list(v.replays_s)
        d["uncalibrated"] = sorted(v.predicted.summary.flags) if hasattr(v.predicted.summary, "flags") else []
        print(dump_json(d), end="")
    else:
        from simhete.replay.table import render_validation
        con.print(render_validation(v.comparison, v.parity, profile=profile.name))
        if trace is not None:
            con.print(f"trace: {trace} (open in ui.perfetto.dev; simulated and measured side by side)")
    return 1 if v.parity is False else 0


def run_published(args: argparse.Namespace) -> int:
    """``--published [DIR]``: the published-measurement suite (simhete.published)."""
    from simhete.published import SUMMARY_FILE, resolve_dir, run_suite, write_summary
    from simhete.report.published import render_suite

    directory = resolve_dir(args.published)
    suite = run_suite(directory, engine=args.engine)
    if args.json:
        print(dump_json(suite.to_dict()), end="")
    elif args.markdown:
        from simhete.report.published import render_markdown
        print(render_markdown(suite), end="")
    else:
        render_suite(suite, console())
    if args.write_summary:
        path = directory / SUMMARY_FILE
        old = write_summary(suite, path)
        msg = f"wrote {path}" + (f" (replaced: {old})" if old is not None else " (new file)")
        if args.json:
            import sys
            print(msg, file=sys.stderr)
        else:
            console().print(msg)
    return 0


def validate_scenario(scenario, profile, *, iterations: int = 4, device: str | None = None,
                      engine: str = "fast", reference: bool = True,
                      progress: Callable[[str, int, int], None] | None = None,
                      fresh_blocks: bool = False, bracket_blocks: bool = False,
                      replays: int = 1) -> Validation:
    """Simulate, replay and compare one scenario; see the module docstring. ``fresh_blocks``:
    measure the scenario's blocks now (calibrate's ``blocks`` suite) and price with them.
    ``bracket_blocks``: measure them just before and just after the replay and price with the
    mean of the two (a validation of the model on a machine whose speed drifts: the prediction
    still sees no replay timing, only the blocks suite run on either side of it). ``replays``: the
    schedule is replayed that many times, each on a fresh executor, and the replay whose steady
    iteration time is the median (the upper one of an even count) is compared; all times are kept."""
    from simhete.replay.compare import compare, steady
    from simhete.replay.config import replay_shape, scaled_scenario
    from simhete.replay.device import check_fits, open_device, out_of_memory
    from simhete.replay.executor import CPU_THREADS_PER_STREAM, Executor
    from simhete.replay.reference import reference_losses
    from simhete.sim import resolve, run_schedule
    from simhete.sim import run as simulate

    kind = device or profile.device_type
    if kind != profile.device_type:
        raise SimheteError(f"--device {kind}: the profile {profile.name} describes a "
                           f"{profile.device_type} device; predictions for one device cannot be "
                           "checked on another (calibrate this device with `simhete calibrate`)")
    shape = replay_shape(scenario)
    scaled = scaled_scenario(scenario, iterations)
    base = profile
    first: dict[str, tuple[str, str, float]] = {}
    band: list[float] = []
    if fresh_blocks or bracket_blocks:
        if progress is not None:
            progress("blocks", 0, 2 if bracket_blocks else 1)
        first = measure_blocks(scenario, kind)
        profile = with_blocks(profile, first, kind, "--fresh-blocks just before the replay")
        if progress is not None:
            progress("blocks", 1, 2 if bracket_blocks else 1)
    profile = _with_scenario_overrides(scenario, profile)
    pred = simulate(scaled, engine=engine, profile=profile)
    if pred.timeline.oom is not None:
        raise SimheteError(f"replay refused: the simulator predicts {pred.timeline.oom.message()}")
    dev = open_device(kind)
    peak = dict(pred.timeline.peak)
    host = check_fits(peak, dev)
    n_tasks = len(pred.schedule.tasks)
    done = [0]

    def tick(_task: Any) -> None:
        done[0] += 1
        if progress is not None:
            progress("replay", done[0], n_tasks * replays)

    runs = []
    with out_of_memory("the replay", peak, host):
        for _ in range(replays):
            ex = Executor(pred.schedule, pred.context.workload, dev, seed=shape.seed, lr=shape.lr)
            runs.append(ex.run({r.name: r.start for r in pred.timeline.records}, on_task=tick))
            del ex
    times = tuple(steady(r.timeline)[0] for r in runs)
    replayed = runs[sorted(range(replays), key=times.__getitem__)[replays // 2]]
    if any(r.losses != replayed.losses for r in runs):
        raise SimheteError(f"{scenario.name}: {replays} replays of the same schedule gave different "
                           "losses (the replay is not deterministic on this device)")
    del runs
    if bracket_blocks:   # the blocks again, right after the replay: price with the mean of both
        second = measure_blocks(scenario, kind)
        if progress is not None:
            progress("blocks", 2, 2)
        mean = {k: (k, e[1].replace("(fresh)", "(bracket)"), 0.5 * (e[2] + second[k][2]))
                for k, e in first.items() if k in second}
        profile = _with_scenario_overrides(scenario, with_blocks(
            base, mean, kind, "--bracket-blocks: the mean of the blocks measured just before and "
            "just after the replay"))
        # the schedule that was replayed, priced again (a policy whose decisions follow the
        # prices, AutoHete's, could build another one from the new profile)
        ctx, _ = resolve(scaled, profile)
        pred = run_schedule(scaled, ctx, pred.schedule, engine=engine)
        band = [steady(run_schedule(scaled, resolve(scaled, _with_scenario_overrides(
            scenario, with_blocks(base, side, kind, how)))[0], pred.schedule, engine=engine).timeline)[0]
            for side, how in ((first, "before"), (second, "after"))]
    ref: list[float] = []
    parity = None
    if reference:
        if progress is not None:
            progress("reference", 0, 1)
        with out_of_memory("the reference loop (--no-reference skips it)", peak, host):
            ref = reference_losses(pred.context.workload, iterations, seed=shape.seed, lr=shape.lr,
                                   device=dev.dev,
                                   threads=CPU_THREADS_PER_STREAM if dev.kind == "cpu" else None,
                                   grad_accum=scaled.data.train.grad_accum,
                                   delayed_update=pred.schedule.meta.get("delayed_update") == "true")
        if progress is not None:
            progress("reference", 1, 1)
        tol = LOSS_RTOL[scaled.data.train.dtype]
        parity = len(ref) == len(replayed.losses) and all(
            math.isfinite(a) and abs(a - b) <= tol * abs(b) for a, b in zip(replayed.losses, ref))
    notes = _notes(dev.kind)
    if bracket_blocks:
        lo, hi = min(band), max(band)
        notes += ("blocks priced from the mean of measurements taken just before and just after the "
                  "replay (--bracket-blocks)",
                  f"priced with the blocks measured before the replay: {band[0] * 1e3:.1f} ms an "
                  f"iteration; after it: {band[1] * 1e3:.1f} ms ({(hi / lo - 1) * 100:.1f} % apart: "
                  "the machine's speed moved that much during this validation)",)
    elif fresh_blocks:
        notes += ("blocks priced from measurements taken just before the replay (--fresh-blocks)",)
    if replays > 1:
        notes += (f"{replays} replays, steady iteration " + ", ".join(f"{t * 1e3:.1f}" for t in times)
                  + " ms; the median one is compared",)
    comp = compare(pred.timeline, replayed.timeline, scenario=scenario.name, device=replayed.device,
                   losses=tuple(replayed.losses), reference_losses=tuple(ref), notes=notes)
    return Validation(scaled, pred, replayed, comp, parity, profile,
                      (band[0], band[1]) if bracket_blocks else None, times)


def measure_blocks(scenario, kind: str) -> dict[str, tuple[str, str, float]]:  # type: ignore[no-untyped-def]
    """The scenario's blocks measured now (calibrate/blocks.py, quick methodology, at the replay
    shape): ``{key: (key, label, seconds)}`` as ``gpu.blocks`` entries."""
    import torch

    from calibrate import blocks
    from calibrate.common import Ctx
    from calibrate.device import llc_bytes, select
    from calibrate.grids import grid

    target = select(kind)
    ctx = Ctx(target, grid("quick", target.kind), 1 if target.kind == "cpu" else torch.get_num_threads(),
              llc=llc_bytes(target))
    before = torch.get_num_threads()
    torch.set_num_threads(ctx.threads)
    try:
        got = blocks.run(ctx, {"scenario": scenario, "split": "scenario"})
    finally:
        torch.set_num_threads(before)
    rows = [r for r in got if r["status"] == "ok"]
    if not rows:
        why = next((str(r["status"]) for r in got), "no blocks")
        raise SimheteError(f"--fresh-blocks: the blocks of {scenario.name} could not be measured "
                           f"here ({why})")
    return {str(r["key"]): (str(r["key"]), f"{r['scenario']} {r['block']} {r['pass']} (fresh)",
                            float(r["median_s"])) for r in rows}


def with_blocks(profile, fresh: dict[str, tuple[str, str, float]], kind: str, how: str):  # type: ignore[no-untyped-def]
    """``profile`` with ``fresh`` block entries replacing its own for the same op sequences; its
    other numbers are kept."""
    from calibrate.device import provenance, select
    from calibrate import blocks
    from simhete.hw.profile import BlockTable

    meta = provenance(select(kind), blocks.NAME, {})
    old = profile.gpu.blocks.entries if profile.gpu.blocks is not None else []
    table = BlockTable(
        source="measured", ref=f"measured by simhete validate {how} (calibrate/blocks.py, quick "
        "methodology)", raw="not kept (printed with --json)", device=meta["device"],
        driver=meta["driver"], torch=meta["torch"], date=meta["date"], host=meta["host"],
        entries=[e for e in old if e[0] not in fresh] + list(fresh.values()))
    return profile.model_copy(update={"gpu": profile.gpu.model_copy(update={"blocks": table})})


def _with_scenario_overrides(scenario, profile):
    """The scenario's ``hardware:`` overrides (e.g. ``gpu_memory``: how much of the RAM the CPU
    device may use as "device" memory) applied to the measured profile, as simulate does."""
    from simhete.scenario import HardwareRef

    h = scenario.data.hardware
    if isinstance(h, HardwareRef) and (h.gpus or h.gpu_memory or h.host_memory):
        return profile.with_overrides(gpus=h.gpus, gpu_memory=h.gpu_memory, host_memory=h.host_memory)
    return profile


def _notes(kind: str) -> tuple[str, ...]:
    if kind == "cpu":
        return ("measured peak memory on the CPU device: the replay's own tensor accounting at task "
                "ends (transient memory inside a task not seen)",)
    return ("measured device peak: torch.cuda.max_memory_allocated",)

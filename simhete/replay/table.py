"""Rich rendering of a predicted-vs-measured :class:`~simhete.replay.compare.Comparison`. No torch."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from simhete.replay.compare import Comparison, Pair

CAT_LABELS = {"fwd": "forward", "bwd": "backward", "recompute": "recompute", "h2d": "H2D copies",
              "d2h": "D2H copies", "optim_cpu": "CPU Adam", "optim_gpu": "device Adam",
              "comm": "collectives"}


def _ms(x: float) -> str:
    return f"{x * 1e3:.3f} ms"


def _mib(x: float) -> str:
    return f"{x / 2**20:.2f} MiB"


def _err(e: float | None) -> Text:
    if e is None:
        return Text("n/a", style="dim")
    style = "green" if abs(e) <= 0.10 else "yellow" if abs(e) <= 0.25 else "red"
    return Text(f"{e * 100:+.1f}%", style=style)


def render_validation(c: Comparison, parity: bool | None, profile: str = "") -> RenderableType:
    its = ", ".join(map(str, c.steady_iterations)) or "all"
    t = Table(title=f"{c.scenario}: predicted vs measured (steady state: iterations {its})",
              title_justify="left")
    t.add_column("quantity")
    t.add_column("predicted", justify="right")
    t.add_column("measured", justify="right")
    t.add_column("error", justify="right")

    def row(label: str, p: Pair, fmt=_ms) -> None:
        t.add_row(label, fmt(p.predicted), fmt(p.measured), _err(p.error))

    row("iteration time", c.iteration)
    t.add_section()
    for cat, p in c.categories.items():
        row(f"{CAT_LABELS.get(cat, cat)} (per iteration)", p)
    t.add_section()
    for pool, p in c.peak.items():
        row(f"peak memory {pool}", p, _mib)

    w = Table(title="worst-predicted tasks (steady state)", title_justify="left")
    for col, j in (("task", "left"), ("category", "left"), ("predicted", "right"),
                   ("measured", "right"), ("error", "right")):
        w.add_column(col, justify=j)
    for e in c.worst:
        w.add_row(e.name, e.cat, _ms(e.predicted), _ms(e.measured), _err(e.error))

    lines = [Text(f"device: {c.device}" + (f"   profile: {profile}" if profile else ""))]
    if parity is None:
        lines.append(Text("loss parity: not checked (--no-reference)", style="dim"))
    else:
        d = c.max_loss_diff
        ok = "match" if parity else "DIFFER FROM"
        lines.append(Text(f"losses {ok} the in-memory reference loop (max |Δ| = "
                          f"{d if d is not None else float('nan'):.3g} over {len(c.losses)} iterations)",
                          style="green" if parity else "bold red"))
    lines += [Text(f"note: {n}", style="dim") for n in c.notes]
    return Group(*lines, t, w)

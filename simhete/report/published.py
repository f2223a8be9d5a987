"""The published-measurement suite (simhete.published) rendered: the per-figure table and the
aggregates for the terminal (rich, at most 100 columns) and as Markdown (docs/validation.md)."""

from __future__ import annotations

from typing import Any

from simhete.published import Suite, _pct

WIDTH = 100


def _num(x: float) -> str:
    if x >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}" if x < 10 else f"{x:.1f}"


def render_suite(suite: Suite, con: Any) -> None:
    """The per-figure table, then the aggregates per group and per hardware class (≤ 100 columns)."""
    from rich.console import Console
    from rich.table import Table

    out = Console(file=con.file, width=WIDTH, highlight=False, soft_wrap=False) if con.width > WIDTH else con
    t = Table(title=f"Published measurements ({suite.directory}): error = (predicted − published) / "
              "published", title_justify="left")
    t.add_column("case", overflow="fold", max_width=34)
    t.add_column("figure", overflow="fold", max_width=24)
    t.add_column("hw", overflow="fold", max_width=8)
    t.add_column("published", justify="right", max_width=16)
    t.add_column("predicted", justify="right", max_width=12)
    t.add_column("error", justify="right", max_width=9)
    for r in suite.rows:
        e = r.error_pct
        err = "[red]miss[/]" if e is None else (f"[red]{e:+.1f} %[/]" if abs(e) > 35 else f"{e:+.1f} %")
        t.add_row(r.case, r.label, r.hardware, f"{_num(r.published)} {r.unit}",
                  "[red]OOM[/]" if r.predicted is None else _num(r.predicted), err)
    out.print(t)
    agg = suite.aggregates()
    a = Table(title="|error| per figure group and hardware class (a miss counts as infinite)",
              title_justify="left")
    for c in ("hardware", "group", "figures", "misses", "median |error|", "max |error|"):
        a.add_column(c, justify="left" if c in ("hardware", "group") else "right")
    for g, st in agg["groups"].items():
        a.add_row("[bold]all[/]", g, str(st["n"]), str(st["misses"]), _pct(st["median"]), _pct(st["max"]))
    for hw, per in agg["hardware"].items():
        for g, st in per.items():
            a.add_row(hw, g, str(st["n"]), str(st["misses"]), _pct(st["median"]), _pct(st["max"]))
    out.print(a)
    out.print("time group: iteration_time, tokens_per_s, samples_per_s, tflops_per_gpu, mfu (a "
              "positive error predicts a slower run for iteration_time, a faster one for the "
              "throughputs); memory group: peak_gpu_memory, peak_host_memory, largest_model.")
    if suite.not_expressible:
        n = Table(title="Not expressible in simhete (listed, not approximated)", title_justify="left")
        for c, w in (("source", 30), ("figure", 24), ("why", 40)):
            n.add_column(c, overflow="fold", max_width=w)
        for x in suite.not_expressible:
            n.add_row(f"{x.source} ({x.url})", x.figure, x.why)
        out.print(n)


def _md(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render_markdown(suite: Suite) -> str:
    """The suite as Markdown (docs/validation.md): one row per figure with its source, then the
    aggregates per group and hardware class, then the setups that are not expressible."""
    out = ["| case | source | figure | hw | published | predicted | error |",
           "|---|---|---|---|---:|---:|---:|"]
    for r in suite.rows:
        e = r.error_pct
        src = f"[{_md(r.source)[:80]}]({r.url})" if r.url.startswith("http") else f"{_md(r.source)[:80]} ({_md(r.url)})"
        out.append(f"| {r.case} | {src} | {_md(r.label)} | {r.hardware} | {_num(r.published)} {r.unit} | "
                   f"{'OOM' if r.predicted is None else _num(r.predicted)} | "
                   f"{'miss' if e is None else f'{e:+.1f} %'} |")
    agg = suite.aggregates()
    out += ["", "| hardware | group | figures | misses | median \\|error\\| | max \\|error\\| |",
            "|---|---|---:|---:|---:|---:|"]
    for g, st in agg["groups"].items():
        out.append(f"| all | {g} | {st['n']} | {st['misses']} | {_pct(st['median'])} | {_pct(st['max'])} |")
    for hw, per in agg["hardware"].items():
        for g, st in per.items():
            out.append(f"| {hw} | {g} | {st['n']} | {st['misses']} | {_pct(st['median'])} | {_pct(st['max'])} |")
    if suite.not_expressible:
        out += ["", "| not expressible: source | figure | why |", "|---|---|---|"]
        for x in suite.not_expressible:
            out.append(f"| {_md(x.source)} ({x.url}) | {_md(x.figure)} | {_md(x.why)} |")
    return "\n".join(out) + "\n"

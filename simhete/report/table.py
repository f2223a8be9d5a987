"""rich tables of Summaries: one run (:func:`render_summary`) or several side by side
(:func:`render_comparison`). Rows and units are explained in ``docs/reports.md``.

Tables fit the console they are printed on: cells wrap at spaces, and a comparison too wide for
the console is split into several tables of as many columns as fit (at least one), each repeating
the figure column. A run that never started (out of memory at start) shows "did not run" for its
peaks, not a zero."""

from __future__ import annotations

from typing import Callable, Mapping

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from simhete.report.metrics import Summary
from simhete.report.pcie import PCIE_DIRECTIONS

GIB = 2**30     # memory is shown in GiB (binary), as in OOM messages
GB = 1e9        # PCIe traffic is shown in GB (decimal), like link bandwidths in GB/s
DASH = "—"


def render_summary(summary: Summary, title: str = "simhete summary") -> RenderableType:
    """Two-column table (figure, value) of one Summary, followed by its notes (out-of-memory
    message, ``uncalibrated: ...`` flags) wrapped at the console's width."""
    return _Fitted({"value": summary}, title, named_notes=False)


def render_comparison(summaries: Mapping[str, Summary],
                      title: str = "simhete comparison") -> RenderableType:
    """One column per named Summary, one row per figure; rows for streams and pools are the union
    over all summaries (``—`` where a summary has none). Notes are prefixed by the column name.
    Split into several tables (``title (1/2)``, ...) where the console is too narrow for all."""
    return _Fitted(summaries, title, named_notes=True)


# a cell wraps at its spaces: "12.34 / 80.00 GiB (15.4 %)" needs at least its longest word run
CELL_MIN = 17
BORDER = 3        # a column's padding and its rule


class _Fitted:
    """The table, split into column groups that fit ``options.max_width`` when rendered."""

    def __init__(self, summaries: Mapping[str, Summary], title: str, named_notes: bool) -> None:
        self.summaries = dict(summaries)
        self.title = title
        self.named_notes = named_notes

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        rows = _rows(list(self.summaries.values()))
        names = list(self.summaries)
        label_w = max([len("figure")] + [len(label) for label, _ in rows])
        need = [max([len(n), min(CELL_MIN, max((len(cell(s)) for _, cell in rows), default=0))])
                for n, s in self.summaries.items()]
        per = len(names)
        while per > 1 and label_w + BORDER + 1 + sum(w + BORDER for w in sorted(need)[-per:]) > options.max_width:
            per -= 1
        groups = [names[i:i + per] for i in range(0, len(names), per)] or [[]]
        for k, group in enumerate(groups):
            title = self.title if len(groups) == 1 else f"{self.title} ({k + 1}/{len(groups)})"
            table = Table(title=title, title_justify="left")
            table.add_column("figure", no_wrap=True)
            for name in group:
                table.add_column(name, justify="right", min_width=len(name))   # never truncate a name
            for label, cell in rows:
                table.add_row(label, *(cell(self.summaries[n]) for n in group))
            yield table
        yield from _notes(self.summaries, self.named_notes)


Cell = Callable[[Summary], str]


def _rows(summaries: list[Summary]) -> list[tuple[str, Cell]]:
    rows: list[tuple[str, Cell]] = [
        ("fits", lambda s: "yes" if s.fits else "NO (out of memory at start)"
         if never_started(s) else "NO (out of memory)"),
        ("iteration time", lambda s: _opt(s.iter_time_s, lambda t: f"{_g(t)} s")),
        ("tokens/s", lambda s: _opt(s.tokens_per_s, _g)),
        ("samples/s", lambda s: _opt(s.samples_per_s, _g)),
        ("model TFLOPS per GPU", lambda s: _opt(s.tflops_per_gpu, _g)),
        ("model TFLOPS total", lambda s: _opt(s.tflops_total, _g)),
        ("MFU", lambda s: _opt(s.mfu, lambda m: f"{100 * m:.1f} %")),
    ]
    streams = sorted({k for s in summaries for k in (s.stream_busy_frac or {})})
    rows += [(f"busy {st}", _busy(st)) for st in streams]
    if any(s.pcie_bytes_per_iter is not None for s in summaries):
        rows += [(f"PCIe {d.upper()} per iteration", _pcie(d)) for d in PCIE_DIRECTIONS]
    pools = sorted({p for s in summaries for p in s.memory})
    for pool in pools:
        rows.append((f"peak {pool} memory", _peak(pool)))
        classes = sorted({c for s in summaries if pool in s.memory
                          for c in s.memory[pool].peak_by_class_bytes})
        rows += [(f"  {pool} {c}", _peak_class(pool, c)) for c in classes]
    return rows


def _notes(summaries: Mapping[str, Summary], named: bool) -> list[Text]:
    """OOM messages (red) and uncalibrated flags (yellow), prefixed by the column name when
    ``named``."""
    def prefix(name: str) -> str:
        return f"{name}: " if named else ""
    notes = [Text(f"{prefix(n)}{s.oom}", style="red") for n, s in summaries.items() if s.oom]
    # numbers every column rests on are listed once; a column's own extras after its name
    shared = set.intersection(*(set(s.uncalibrated) for s in summaries.values())) if summaries else set()
    if shared and named and len(summaries) > 1:
        notes.append(Text(f"uncalibrated (every column): {', '.join(sorted(shared))}", style="yellow"))
    else:
        shared = set()
    notes += [Text(f"{prefix(n)}uncalibrated: {', '.join(f for f in s.uncalibrated if f not in shared)}",
                   style="yellow")
              for n, s in summaries.items() if set(s.uncalibrated) - shared]
    return notes


def _busy(stream: str) -> Cell:
    return lambda s: _opt((s.stream_busy_frac or {}).get(stream), lambda b: f"{100 * b:.1f} %")


def _pcie(direction: str) -> Cell:
    def cell(s: Summary) -> str:
        if s.pcie_bytes_per_iter is None:
            return DASH
        n = s.pcie_bytes_per_iter[direction]
        rate = f" ({_g(n / GB / s.iter_time_s)} GB/s)" if s.iter_time_s else ""
        return f"{_g(n / GB)} GB{rate}"
    return cell


def never_started(s: Summary) -> bool:
    """The run stopped out of memory before any task ran: nothing was ever allocated (the states
    placed at start did not fit), so its peaks are no measurement."""
    return s.oom is not None and all(m.peak_bytes == 0 for m in s.memory.values())


DID_NOT_RUN = "did not run"


def _peak(pool: str) -> Cell:
    def cell(s: Summary) -> str:
        m = s.memory.get(pool)
        if m is None:
            return DASH
        if never_started(s):
            return DID_NOT_RUN
        # "(48.7%)" one word: a narrow column wraps before it, never inside it
        pct = f" ({100 * m.peak_bytes / m.capacity_bytes:.1f}%)" if m.capacity_bytes else ""
        return f"{m.peak_bytes / GIB:.2f} / {m.capacity_bytes / GIB:.2f} GiB{pct}"
    return cell


def _peak_class(pool: str, cls: str) -> Cell:
    def cell(s: Summary) -> str:
        m = s.memory.get(pool)
        n = None if m is None or never_started(s) else m.peak_by_class_bytes.get(cls)
        return _opt(n, lambda b: f"{b / GIB:.2f} GiB")
    return cell


def _opt(x: float | None, fmt: Callable[[float], str]) -> str:
    return DASH if x is None else fmt(x)


def _g(x: float) -> str:
    """4 significant digits, thousands separated for large values (12,345 not 1.234e+04)."""
    return f"{x:,.0f}" if abs(x) >= 1e4 else f"{x:.4g}"

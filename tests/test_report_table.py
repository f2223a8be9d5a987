from rich.console import Console

from simhete.report.metrics import summarize
from simhete.report.table import render_comparison, render_summary
from test_report_data import POOLS, TASK_BYTES, oom_timeline, two_iterations

ARGS = dict(tokens_per_iter=4096, samples_per_iter=8, model_flops_per_iter=8e12,
            peak_flops_per_gpu=1e13, n_gpus=1, pool_capacity=POOLS)


def text(renderable) -> str:
    console = Console(record=True, width=140, color_system=None)
    console.print(renderable)
    return console.export_text()


def row(out: str, label: str) -> list[str]:
    """Cells of the table row whose first cell is ``label``."""
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no row {label!r} in\n{out}")


def test_summary_table_shows_the_figures():
    s = summarize(two_iterations(), task_bytes=TASK_BYTES, **ARGS)
    out = text(render_summary(s))
    assert row(out, "fits") == ["yes"]
    assert row(out, "iteration time") == ["4 s"]
    assert row(out, "tokens/s") == ["1024"]
    assert row(out, "samples/s") == ["2"]
    assert row(out, "model TFLOPS per GPU") == ["2"]
    assert row(out, "MFU") == ["20.0 %"]
    assert row(out, "busy gpu0.compute") == ["75.0 %"]
    assert row(out, "busy gpu0.h2d") == ["6.2 %"]          # 6.25 % rounds half to even
    assert row(out, "PCIe H2D per iteration") == ["1 GB (0.25 GB/s)"]
    assert row(out, "PCIe D2H per iteration") == ["3 GB (0.75 GB/s)"]
    assert row(out, "peak gpu0 memory") == ["6.00 / 8.00 GiB (75.0%)"]
    assert row(out, "gpu0 activations") == ["4.00 GiB"]
    assert row(out, "cpu optim") == ["8.00 GiB"]
    assert "uncalibrated" not in out


def test_uncalibrated_note_and_oom():
    s = summarize(oom_timeline(), flags=["gemm:datasheet", "pcie:datasheet"], **ARGS)
    out = text(render_summary(s))
    assert row(out, "fits") == ["NO (out of memory)"]
    assert row(out, "iteration time") == ["—"]
    assert "uncalibrated: gemm:datasheet, pcie:datasheet" in out
    assert "out of memory in gpu0 at t=1.000000s" in " ".join(out.split())


def test_comparison_side_by_side():
    a = summarize(two_iterations(), task_bytes=TASK_BYTES, flags=["pcie:datasheet"], **ARGS)
    b = summarize(two_iterations(), **{**ARGS, "n_gpus": 2})
    c = summarize(oom_timeline(), **ARGS)
    out = text(render_comparison({"simulated": a, "two-gpu": b, "tight": c}))
    header = next(line for line in out.splitlines() if "simulated" in line)
    assert header.index("simulated") < header.index("two-gpu") < header.index("tight")
    assert row(out, "fits") == ["yes", "yes", "NO (out of memory)"]
    assert row(out, "model TFLOPS per GPU") == ["2", "1", "—"]
    assert row(out, "PCIe H2D per iteration") == ["1 GB (0.25 GB/s)", "—", "—"]
    assert "simulated: uncalibrated: pcie:datasheet" in out
    assert "tight: out of memory in gpu0" in out

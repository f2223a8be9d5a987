"""Peak memory of one transformer block's forward + backward, measured from the CPU allocator.

Ground truth for simhete/workload/memory.py's ``block_act + block_workspace`` (what a block adds
to the GPU at its backward, the checkpoint input apart). Builds Hugging Face Transformers'
``LlamaDecoderLayer`` (eager attention, random init, nothing downloaded) on the CPU in bf16, runs
its forward and the backward to its input (``torch.autograd.grad``: weight gradients are not
activations and are not computed) under ``torch.profiler`` with ``profile_memory=True``, and
replays the allocator events in time order (allocations at the start of the op that makes them,
releases at the end of the op that frees them) to find the largest sum of live bytes. The input,
the incoming gradient and the shared rotary tables exist before and are not counted; the block's
output is (it is alive until the end), as is nothing else of the model.

Needs ``transformers`` (never a project dependency), e.g. ``pip install --target /tmp/tf
transformers==4.33.3`` (the release of Sept 2023) and ``PYTHONPATH=.:/tmp/tf python
benchmarks/hf_block_peak.py 1x512x256x4x688 ...`` (shapes b x s x hidden x heads x ffn). Prints
the measured peak and simhete's figure per shape. Not imported by the simulator.
"""

from __future__ import annotations

import sys
import warnings


def block_peak(b: int, s: int, h: int, a: int, f: int) -> int:
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers.models.llama.modeling_llama import LlamaConfig, LlamaDecoderLayer

    dt = torch.bfloat16
    cfg = LlamaConfig(hidden_size=h, intermediate_size=f, num_attention_heads=a, num_key_value_heads=a,
                      num_hidden_layers=1, max_position_embeddings=max(4096, s))
    layer = LlamaDecoderLayer(cfg).to(dt).train()
    x = torch.randn(b, s, h, dtype=dt, requires_grad=True)
    mask = torch.full((s, s), torch.finfo(dt).min, dtype=dt).triu(1)[None, None].expand(b, 1, s, s)
    pos = torch.arange(s)[None].expand(b, s)
    grad = torch.randn(b, s, h, dtype=dt)
    layer(x, attention_mask=mask, position_ids=pos)      # builds the rotary cache outside the count
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = layer(x, attention_mask=mask, position_ids=pos)[0]
        (gx,) = torch.autograd.grad(out, (x,), grad)
        del out, gx
    events = [ev for ev in prof.events() if ev.self_cpu_memory_usage]
    events.sort(key=lambda ev: ev.time_range.start if ev.self_cpu_memory_usage > 0 else ev.time_range.end)
    live = peak = 0
    for ev in events:
        live += ev.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def main(argv: list[str]) -> int:
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("transformers is not installed: nothing measured")
        return 0
    warnings.filterwarnings("ignore")
    from simhete.workload.memory import Activations
    from simhete.workload.presets import _llama

    for shape in argv or ["1x512x256x4x688"]:
        b, s, h, a, f = map(int, shape.split("x"))
        acts = Activations(_llama("block", "llama2", 1, h, a, a, f, 32000, 4096), b, s, 2, False, "hf-eager")
        model = acts.block_act() + acts.block_workspace() + 2 * b * s * h   # + the block's output
        got = block_peak(b, s, h, a, f)
        print(f"{shape}: measured {got} B, simhete {model} B ({model / got - 1:+.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Bytes one transformer block saves for backward, measured with autograd's saved-tensor hooks.

Ground truth for simhete/workload/memory.py's per-framework activation formulas. Builds one block
(random init, no weights downloaded) on the CPU in bf16, in training mode, runs its forward under
``torch.autograd.graph.saved_tensors_hooks`` and counts each storage that autograd keeps once
(deduplicated by data pointer and size: views of one tensor saved by several ops count once).
Parameters are not activations and are left out; tensors shared by all layers of a model (rotary
cos/sin, the attention mask) are reported apart.

- ``hf-eager`` / ``hf-sdpa``: Hugging Face Transformers' ``LlamaDecoderLayer`` / ``GPT2Block``
  with ``attn_implementation`` "eager" / "sdpa" (configs: tests/data/hf/*/config.json).
- ``fused``: simhete's replay block (simhete/replay/model.py: F.rms_norm / F.layer_norm, fused
  QKV, SDPA), the kernels simhete's fused accounting models.

Needs ``transformers`` (never a project dependency): run it from a throwaway venv, e.g.
``python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install torch transformers``, then
``PYTHONPATH=. /tmp/tfenv/bin/python benchmarks/hf_saved_bytes.py [--model llama|gpt2]
[--shapes 1x256,1x4096] [--detail]``. Without transformers it says so and exits 0.
Not imported by the simulator.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def saved_bytes(fn, exclude_ptrs: set[int], shared_ptrs: set[int]):
    """Run ``fn`` under saved-tensor hooks; (block bytes, shared bytes, {storage: (dtype, shape)})."""
    import torch

    seen: dict[tuple[int, int], tuple[str, tuple[int, ...], int]] = {}

    def pack(t):
        st = t.untyped_storage()
        ptr, n = st.data_ptr(), st.nbytes()
        if ptr not in exclude_ptrs and n > 0:
            seen.setdefault((ptr, n), (str(t.dtype).replace("torch.", ""), tuple(t.shape), n))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    block = sum(v[2] for k, v in seen.items() if k[0] not in shared_ptrs)
    shared = sum(v[2] for k, v in seen.items() if k[0] in shared_ptrs)
    del out
    return block, shared, seen


def _ptrs(tensors) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors if t is not None}


def measure_hf(model: str, impl: str, b: int, s: int, attn_dropout: float | None = None):
    import torch
    from transformers import AutoConfig

    torch.manual_seed(0)
    cfg_dir = ROOT / "tests" / "data" / "hf" / ("llama-2-7b" if model == "llama" else "gpt2")
    cfg = AutoConfig.from_pretrained(cfg_dir)
    cfg._attn_implementation = impl
    if attn_dropout is not None and model == "gpt2":
        cfg.attn_pdrop = attn_dropout
    dt = torch.bfloat16
    h = cfg.hidden_size
    x = torch.randn(b, s, h, dtype=dt, requires_grad=True)
    # the causal mask eager needs (additive, as transformers' masking_utils builds it for eager);
    # SDPA gets none and runs is_causal=True, as transformers does without padding
    mask = None
    if impl == "eager":
        mask = torch.full((s, s), torch.finfo(dt).min, dtype=dt).triu(1)[None, None].expand(b, 1, s, s)
    if model == "llama":
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding
        layer = LlamaDecoderLayer(cfg, layer_idx=0).to(dt).train()
        rot = LlamaRotaryEmbedding(cfg)
        pos = torch.arange(s)[None].expand(b, s)
        cos, sin = rot(x, pos)   # computed once per model (LlamaModel.forward), shared by all layers
        shared = _ptrs([cos, sin, mask])
        fn = lambda: layer(x, attention_mask=mask, position_embeddings=(cos, sin), position_ids=pos)  # noqa: E731
    else:
        from transformers.models.gpt2.modeling_gpt2 import GPT2Block
        layer = GPT2Block(cfg, layer_idx=0).to(dt).train()
        shared = _ptrs([mask])
        fn = lambda: layer(x, attention_mask=mask)  # noqa: E731
    params = _ptrs(layer.parameters())
    return saved_bytes(fn, params, shared)


def measure_fused(model: str, b: int, s: int, attn_dropout: bool | None = None):
    import dataclasses

    import torch

    from simhete.replay import model as rm
    from simhete.workload import from_hf_config
    cfg_dir = ROOT / "tests" / "data" / "hf" / ("llama-2-7b" if model == "llama" else "gpt2")
    spec = from_hf_config(cfg_dir / "config.json")
    if attn_dropout is not None:
        spec = dataclasses.replace(spec, attn_dropout=attn_dropout)
    dt = torch.bfloat16
    w = {k: v.to(dt).requires_grad_(True) for k, v in rm.init_master(spec, "b0", 1, 0).items()}
    x = torch.randn(b, s, spec.hidden, dtype=dt, requires_grad=True)
    tok = torch.zeros(b, s, dtype=torch.long)
    step = rm.Step(it=1, index=1, seed=0, tokens=tok, targets=tok)
    return saved_bytes(lambda: rm.forward(spec, "b0", w, x, step), _ptrs(w.values()), set())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("llama", "gpt2"), default="llama")
    p.add_argument("--shapes", default="1x256,1x512,2x256,1x1024")
    p.add_argument("--impl", default="eager,sdpa,fused")
    p.add_argument("--attn-dropout", type=float, default=None, help="GPT-2: override attn_pdrop")
    p.add_argument("--detail", action="store_true", help="list every saved storage")
    a = p.parse_args(argv)
    try:
        import torch
        import transformers
    except ImportError as e:
        print(f"skipped: {e} (run from a venv with torch and transformers)")
        return 0
    rows = []
    for shape in a.shapes.split(","):
        b, s = (int(v) for v in shape.split("x"))
        for impl in a.impl.split(","):
            if impl == "fused":
                drop = None if a.attn_dropout is None else a.attn_dropout > 0
                blk, sh, seen = measure_fused(a.model, b, s, drop)
            else:
                blk, sh, seen = measure_hf(a.model, impl, b, s, a.attn_dropout)
            rows.append({"model": a.model, "impl": impl, "b": b, "s": s, "block_bytes": blk,
                         "block_MiB": round(blk / 2**20, 4), "shared_bytes": sh})
            print(json.dumps(rows[-1]), flush=True)
            if a.detail:
                for (ptr, n), (dt, shp, nb) in sorted(seen.items(), key=lambda kv: -kv[1][2]):
                    print(f"    {dt:9s} {str(shp):28s} {nb}")
    print(f"# transformers {transformers.__version__}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

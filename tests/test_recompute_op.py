"""``train.recompute: op`` — torchtitan's per-op selective activation checkpointing.

What a checkpointed block keeps is checked against PyTorch's own selective checkpointing
(``torch.utils.checkpoint`` with ``create_selective_checkpoint_contexts`` and torchtitan's policy:
save the fused attention kernel's outputs and every odd-numbered ``aten.mm``) on a LLaMA-style
block; what its recompute re-runs and allocates against hand-derived counts; and how a schedule
uses both.
"""

from __future__ import annotations

import gc
from collections import defaultdict

import pytest

from simhete.errors import ConfigError
from simhete.opkinds import Action, OpKind
from simhete.scenario import load_scenario
from simhete.sim import run
from simhete.workload import ModelSpec, build_workload
from simhete.workload.memory import Activations

# b = 2, s = 16 tokens; h = 64, 4 heads (d = 16), 2 K/V heads (kv = 32), SwiGLU f = 96
B, S, H, A, KVH, F = 2, 16, 64, 4, 2, 96
SPEC = ModelSpec(name="sac-llama", family="t", n_layers=2, hidden=H, n_heads=A, n_kv_heads=KVH,
                 ffn_hidden=F, vocab=32, max_seq=64, norm="rmsnorm", mlp="swiglu", bias=False,
                 pos="rope", tied_embeddings=False)


def _torch_kept_bytes() -> int:
    """Bytes a torchtitan-style selectively checkpointed LLaMA block (wq, wk, wv, SDPA, wo, w1,
    w3, w2 in that order) holds after its forward, besides its input, output and weights: the
    storages of tensors alive then that were not alive before."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as fn
    from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

    d, kv, dt = H // A, KVH * (H // A), torch.bfloat16
    g = torch.Generator().manual_seed(0)
    shapes = dict(n1=(H,), wq=(H, H), wk=(kv, H), wv=(kv, H), wo=(H, H), n2=(H,), w1=(F, H), w3=(F, H), w2=(H, F))
    w = {k: (torch.randn(*v, generator=g) * 0.05).to(dt).requires_grad_() for k, v in shapes.items()}

    def block(x):
        hn = fn.rms_norm(x, (H,), w["n1"])
        q = fn.linear(hn, w["wq"]).view(B, S, A, d).transpose(1, 2)
        k = fn.linear(hn, w["wk"]).view(B, S, KVH, d).transpose(1, 2)
        v = fn.linear(hn, w["wv"]).view(B, S, KVH, d).transpose(1, 2)
        o = fn.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        h1 = x + fn.linear(o.transpose(1, 2).reshape(B, S, H), w["wo"])
        hn2 = fn.rms_norm(h1, (H,), w["n2"])
        return h1 + fn.linear(fn.silu(fn.linear(hn2, w["w1"])) * fn.linear(hn2, w["w3"]), w["w2"])

    aten = torch.ops.aten
    # torchtitan's save list, with the CPU's flash kernel standing in for the CUDA one
    save = {aten.mm.default, aten._scaled_dot_product_flash_attention.default,
            aten._scaled_dot_product_flash_attention_for_cpu.default}

    def context_fn():
        meta: dict[str, int] = defaultdict(int)

        def policy(ctx, func, *args, **kwargs):
            mode = "recompute" if ctx.is_recompute else "forward"
            if func == aten.mm.default:
                meta[mode] += 1
            keep = func in save and not (func == aten.mm.default and meta[mode] % 2 == 0)
            return CheckpointPolicy.MUST_SAVE if keep else CheckpointPolicy.PREFER_RECOMPUTE
        return create_selective_checkpoint_contexts(policy)

    def live() -> dict[int, int]:
        gc.collect()
        return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in gc.get_objects() if type(t) is torch.Tensor}

    x = torch.randn(B, S, H, generator=g).to(dt).requires_grad_()
    before = live()
    y = checkpoint(block, x, use_reentrant=False, context_fn=context_fn, preserve_rng_state=False)
    after = live()
    mine = {t.untyped_storage().data_ptr() for t in (x, y, *w.values())}
    kept = sum(n for p, n in after.items() if p not in before and p not in mine)
    y.float().sum().backward()          # the checkpoint recomputes what it did not keep
    assert all(p.grad is not None for p in w.values())
    return kept


def test_kept_bytes_match_torch_selective_checkpoint() -> None:
    acts = Activations(SPEC, B, S, 2, True, "fused")
    kept, _ = acts.block_op_sac()
    t, q, kv = B * S, H, KVH * (H // A)
    # wq, wv, O (2 bytes each), the fp32 log-sum-exp per head, w1 (gate), w2 outputs
    assert kept - acts.block_ckpt() == 2 * t * (q + kv + q + F + H) + 4 * A * t
    assert kept - acts.block_ckpt() == _torch_kept_bytes()


@pytest.mark.parametrize("framework", ["fused", "hf-sdpa"])
def test_recompute_allocates_the_rest_of_the_saved_tensors(framework: str) -> None:
    acts = Activations(SPEC, B, S, 2, True, framework)
    kept, rec = acts.block_op_sac()
    t, kv = B * S, KVH * (H // A)
    # already kept, so not allocated again: V, O, the log-sum-exp, the gate (SwiGLU saves it),
    # and the block input where the first norm saves it (fused RMSNorm; Transformers' saves fp32)
    overlap = 2 * t * (kv + H + F) + 4 * A * t + (acts.block_ckpt() if framework == "fused" else 0)
    assert rec == acts.block_act() - overlap
    # during the backward the block holds all it saves for backward, plus wq's and w2's outputs
    # (and under hf-sdpa its 16-bit input, which Transformers' RMSNorm does not save)
    assert kept + rec == acts.block_act() + 2 * t * (H + H) + (acts.block_ckpt() if framework == "hf-sdpa" else 0)


def test_recompute_ops_are_the_unsaved_part_of_the_forward() -> None:
    full = build_workload("llama3-8b", 2, 1024)
    op = build_workload("llama3-8b", 2, 1024, recompute="op")
    b_full, b_op = full.blocks[1], op.blocks[1]
    assert b_full.recompute_ops == b_full.fwd_ops and b_full.recompute_bytes == b_full.act_bytes - b_full.ckpt_bytes
    assert b_op.fwd_ops == b_full.fwd_ops and b_op.bwd_ops == b_full.bwd_ops and b_op.act_bytes == b_full.act_bytes
    t, h, kv, f = 2 * 1024, 4096, 1024, 14336
    gemms = [o.shape for o in b_op.recompute_ops if o.kind is OpKind.GEMM]
    assert gemms == [(t, kv, h), (t, h, h), (t, f, h)]          # wk, wo, w3
    assert all(o.count == 1 for o in b_op.recompute_ops if o.kind is OpKind.GEMM)
    assert not any(o.kind is OpKind.ATTN_FWD for o in b_op.recompute_ops)
    # norms, rotary, the first residual add and the SiLU and product are re-run; w2 and after not
    kinds = [o.kind for o in b_op.recompute_ops]
    assert kinds.count(OpKind.RMSNORM) == 2 and OpKind.ROPE in kinds and OpKind.SWIGLU in kinds
    assert b_op.recompute_ops[-1].kind is OpKind.ELEMENTWISE     # silu(g)·u, w2's input
    # embedding and head are untouched; the workloads differ (the key says so)
    assert op.blocks[0] == full.blocks[0] and op.blocks[-1] == full.blocks[-1] and op != full


def test_a_schedule_recomputes_less_and_keeps_more() -> None:
    s = load_scenario("scenarios/published/torchtitan-2412_llama3-8b_8xh100-96gb_fsdp-compile.yaml")
    s = s.with_changes(**{"policy": "gpu-only", "knobs": {"checkpointing": "full"}, "hardware.gpus": 1,
                          "model": {"preset": "llama3-8b", "n_layers": 8}, "train.seq_len": 2048,
                          "train.recompute": "full"})
    full, op = run(s), run(s.with_changes(**{"train.recompute": "op"}))
    assert full.summary.fits and op.summary.fits
    blocks = {b.index: b for b in op.context.workload.blocks}
    recs = [t for t in op.schedule.tasks if t.action is Action.RECOMPUTE]
    assert len(recs) == 8 * 3                        # every block, every iteration
    for t in recs:                                   # what the block's recompute re-runs and allocates
        blk = blocks[t.block]
        assert t.ops == blk.recompute_ops and [a.bytes for a in t.allocs] == [blk.recompute_bytes]
    assert op.summary.iter_time_s < full.summary.iter_time_s      # wk, wo, w3 and small ops only
    acts = lambda r: r.summary.memory["gpu0"].peak_by_class_bytes["activations"]  # noqa: E731
    assert acts(op) > acts(full)


def test_op_needs_a_fused_attention_kernel() -> None:
    with pytest.raises(ConfigError, match="train.recompute"):
        build_workload("llama3-8b", 1, 128, flash_attention=False, recompute="op")
    with pytest.raises(ConfigError, match="train.recompute"):
        build_workload("llama3-8b", 1, 128, recompute="selective")
    s = load_scenario("scenarios/published/torchtitan-2412_llama3-8b_8xh100-96gb_fsdp-eager.yaml")
    with pytest.raises(ConfigError, match="train.recompute: bad value 'op'.*unfused"):
        run(s.with_changes(**{"train.recompute": "op", "framework": "hf-eager"}))

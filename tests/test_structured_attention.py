"""Structured attention (``model.attn``): config, hand-counted accounting, pre-merge and self-guidance, training,
checkpoints, merged export and sweeps.

scale-3 (the accounting cases) has 4 blocks of width 192 with plain multi-head attention as wide as the model:
each block's fused q/k/v projection maps 192 -> 576 and its output projection 192 -> 192.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from lowrank_lm import sizing
from lowrank_lm.accounting import count_model
from lowrank_lm.checkpoint import load_model
from lowrank_lm.config import AttnConfig, SelfGuidedConfig
from lowrank_lm.launch.sweep import load_sweep
from lowrank_lm.layers import BlockShuffleLinear, LowRankLinear, registry
from lowrank_lm.model import Transformer
from lowrank_lm.premerge import premerge, premerged_layers
from lowrank_lm.resolve import load_config
from lowrank_lm.train import run_training
from lowrank_lm.train.metrics import read_metrics
from lowrank_lm.train.self_guided import SelfGuidance

from .conftest import small_config, tiny_run_config
from .ecosystem import MODEL_VOCAB, cli, make_run, relative_error

SCALE3 = "configs/cpu/scale-3.yaml"
L, H = 4, 192  # scale-3's blocks and width
QKV, OUT = (H, 3 * H), (H, H)  # (in, out) of the two projections of a scale-3 block
DENSE_PROJ = H * 3 * H + H * H  # their weights: 147456
BIASES = 3 * H + H


def _info(*overrides: str) -> tuple[int, dict | None, str]:
    """``lowrank-lm info SCALE3 OVERRIDES --json``: (exit code, the JSON or None, stderr)."""
    code, out, err = cli("info", SCALE3, *overrides, "--json")
    return code, json.loads(out) if code == 0 else None, err


def test_attention_settings_mirror_every_size_setting():
    """model.attn can hold every setting a structure may read, so every kind can structure attention."""
    assert set(registry.SIZE_SETTINGS) <= {f.name for f in dataclasses.fields(AttnConfig)}


def test_attention_fraction_and_counts_match_hand_counts(capsys):
    _, dense, _ = _info()
    assert dense["params_attention"] == L * (DENSE_PROJ + BIASES)
    # LowRank: rank R costs (192 + 576) R + (192 + 192) R = 1152 R weights, a share of R / 128; in steps of 8 the
    # nearest to 32% is R = 40 (31.25%; R = 48 would be 37.5%)
    code, lowrank, err = _info("model.attn.kind=lowrank", "model.attn.fraction=0.32")
    assert code == 0, err
    assert lowrank["params_attention"] == L * (1152 * 40 + BIASES)
    assert lowrank["params_ffn"] == dense["params_ffn"]
    assert dense["forward_flops_per_token"] - lowrank["forward_flops_per_token"] == L * 2 * (DENSE_PROJ - 1152 * 40)
    assert lowrank["guide_flops_per_token"] == 3 * 2 * L * DENSE_PROJ  # a dense guide beside each projection
    cfg = load_config(SCALE3, ["model.attn.kind=lowrank", "model.attn.fraction=0.32"])
    assert (cfg.model.attn.rank, cfg.model.attn.fraction, cfg.model.attn.init) == (40, None, "spectral")
    # BlockShuffle: B blocks hold min(in, out) (in + out) / B = 192 (768 + 384) / B weights: B = 4 gives 37.5%,
    # B = 6 25% (B = 5 divides no width)
    code, shuffle, err = _info("model.attn.kind=blockshuffle", "model.attn.fraction=0.32")
    assert code == 0, err
    assert shuffle["params_attention"] == L * (H * (4 * H) // 4 + H * (2 * H) // 4 + BIASES)
    # both parts structured: the guides cover the attention of every block and the FFN of blocks 1..3
    code, both, err = _info("model.attn.kind=lowrank", "model.attn.rank=40", "model.ffn.kind=lowrank",
                            "model.ffn.rank=48")
    assert code == 0, err
    assert both["guide_flops_per_token"] == 3 * 2 * (L * DENSE_PROJ + (L - 1) * 2 * H * 4 * H)
    assert both["params_ffn"] == 2 * H * 4 * H + (L - 1) * (H + 4 * H) * 48 * 2


@pytest.mark.parametrize("kind", registry.structured_kinds())
def test_every_kind_structures_attention(capsys, kind):
    code, out, err = _info(f"model.attn.kind={kind}", "model.attn.fraction=0.32")
    assert code == 0, err
    cfg = load_config(SCALE3, [f"model.attn.kind={kind}", "model.attn.fraction=0.32"])
    share = sizing.part_fraction(cfg.model, "attn")
    assert 0.2 < share < 0.45, share
    assert out["params_attention"] == round(L * (share * DENSE_PROJ + BIASES))


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.attn.rank=8"], "model.attn.rank=8 does not apply to model.attn.kind=dense"),
    (["model.attn.fraction=0.3"], "model.attn.fraction=0.3 does not apply to model.attn.kind=dense"),
    (["model.attn.kind=lowrank", "model.attn.rank=8", "model.attn.num_blocks=4"],
     "model.attn.num_blocks=4 does not apply to model.attn.kind=lowrank"),
    (["model.attn.kind=lowrank"], "model.attn.rank is required for kind lowrank"),
    (["model.attn.kind=lowrank", "model.attn.rank=500"], "model.attn.rank=500 is larger than min(192, 576)"),
    (["model.attn.kind=blockshuffle", "model.attn.num_blocks=5"], "model.attn.num_blocks=5 does not divide 192"),
    (["model.attn.kind=blockshuffle", "model.attn.num_blocks=4", "model.attn.init=spectral"],
     "model.attn.init=spectral does not apply to model.attn.kind=blockshuffle"),
    (["model.attn.kind=lowrank", "model.attn.fraction=0.3", "model.attn.rank=8"], "remove one of them"),
    (["model.attn.kind=butterfly"], "model.attn.kind: 'butterfly' is not one of " + ", ".join(registry.kinds())),
])
def test_attention_setting_errors_are_one_line(capsys, overrides, message):
    code, _, err = _info(*overrides)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_dense_attention_stays_linear_and_structured_attention_initialises_itself():
    dense = Transformer(small_config().model)
    assert type(dense.blocks[0].attn.qkv) is nn.Linear  # as before model.attn: same init, same checkpoint keys
    assert {"blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias", "blocks.0.attn.out.weight"} <= set(
        dense.state_dict())
    cfg = small_config("model.attn.kind=lowrank", "model.attn.rank=16", "model.attn.init=random",
                       "model.init_std=0.05")
    model = Transformer(cfg.model)
    qkv = model.blocks[1].attn.qkv
    assert isinstance(qkv, LowRankLinear) and qkv.rank == 16 and (qkv.in_features, qkv.out_features) == (64, 192)
    assert {"blocks.1.attn.qkv.u", "blocks.1.attn.qkv.v", "blocks.1.attn.qkv.bias"} <= set(model.state_dict())
    assert float(qkv.u.detach().std()) == pytest.approx(0.05, rel=0.1)  # the structure's init at model.init_std
    assert not qkv.bias.any()


def test_premerge_and_self_guidance_act_on_structured_attention():
    """Every structured linear, attention included: pre-merge keeps the logits, the guide starts at the layer's own
    matrix, and the guide's FLOPs are 6 x in x out per guided token, as accounting predicts."""
    torch.manual_seed(0)
    cfg = small_config("model.attn.kind=lowrank", "model.attn.rank=16")  # dense FFN: only attention is structured
    model = Transformer(cfg.model).eval()
    layers = list(model.structured_layers())
    assert [id(x) for x in layers] == [id(x) for b in model.blocks for x in (b.attn.qkv, b.attn.out)]
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        before = model(ids)
        premerge(model, 64)
        assert [m.structured for m in premerged_layers(model)] == layers
        assert torch.allclose(model(ids), before, atol=1e-5)
    premerge(model, 0)
    assert premerged_layers(model) == [] and list(model.structured_layers()) == layers  # the layers are back in place

    guidance = SelfGuidance(SelfGuidedConfig(enabled=True, ratio=1.0, reduce_flop=False), steps=4)
    guidance.attach(model.train(), 0)
    guidance.set_step(model, 0)
    assert all(x.guide.shape == (x.out_features, x.in_features) and float(x.guide_alpha) == 1.0 for x in layers)
    with torch.no_grad():
        assert torch.allclose(model(ids), before, atol=1e-5)
    per_token = 2 * 2 * (64 * 192 + 64 * 64)  # 2 blocks' q/k/v (64 -> 192) and output (64 -> 64) projections
    assert SelfGuidance.guide_flops(model, guidance.guided_tokens()) == 3 * ids.numel() * per_token
    assert count_model(model).guide_flops_per_token == 3 * per_token


@pytest.fixture()
def data_dir(tiny_data):
    return tiny_data


def test_structured_attention_trains_with_guidance_and_reloads(data_dir, tmp_path):
    """20 steps of 256 tokens, guided for the first 10 on every token (no coin): the loss falls, the guide FLOPs
    are exactly 10 x 256 x 6 x (32 x 96 + 32 x 32) x 2 blocks, and the checkpoint reloads structured."""
    out = tmp_path / "run"
    cfg = tiny_run_config(data_dir, out, "model.attn.kind=lowrank", "model.attn.rank=8",
                          "train.self_guided.enabled=true", "train.self_guided.ratio=0.5",
                          "train.self_guided.reduce_flop=false")
    summary = run_training(cfg)
    assert summary.steps == 20 and summary.guided_steps == 10
    assert summary.guide_flops == 10 * 256 * 6 * (32 * 96 + 32 * 32) * 2
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert sum(losses[-3:]) < sum(losses[:3]) - 3 * 0.5, losses
    model, saved, _ = load_model(out)
    assert saved.model.attn == cfg.model.attn
    assert isinstance(model.blocks[0].attn.qkv, LowRankLinear)
    assert not any(hasattr(x, "guide") for x in model.structured_layers())


def test_blockshuffle_attention_trains(data_dir, tmp_path):
    cfg = tiny_run_config(data_dir, tmp_path / "bs", "model.attn.kind=blockshuffle", "model.attn.num_blocks=2")
    run_training(cfg)
    losses = [r["loss"] for r in read_metrics(tmp_path / "bs" / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 20 and sum(losses[-3:]) < sum(losses[:3]) - 3 * 0.3, losses
    model, _, _ = load_model(tmp_path / "bs")
    assert isinstance(model.blocks[1].attn.out, BlockShuffleLinear)


@pytest.mark.parametrize(("overrides", "arch"), [
    (["model.attn.kind=lowrank", "model.attn.rank=8", "model.ffn.kind=blockshuffle", "model.ffn.num_blocks=4"],
     "GPTNeoXForCausalLM"),
    (["model.norm=rmsnorm", "model.activation=swiglu", "model.bias=false", "model.num_kv_heads=2",
      "model.attn.kind=blockshuffle", "model.attn.num_blocks=2"], "LlamaForCausalLM"),
])
def test_merged_export_of_structured_attention_computes_our_logits(tmp_path, overrides, arch):
    transformers = pytest.importorskip("transformers")
    ours = make_run(tmp_path / "run", overrides)
    code, out, err = cli("export", str(tmp_path / "run"), str(tmp_path / "hf"), "--merge")
    assert code == 0 and arch in out, err
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == arch
    ids = torch.randint(0, MODEL_VOCAB, (2, ours.cfg.seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert relative_error(ours(ids), hf(ids).logits) < 1e-4


def test_sweep_overrides_structure_the_attention_of_every_run(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(f"""out_dir: {tmp_path / 'runs'}
sizes: {{s3: {Path(SCALE3).resolve()}}}
structures: {{dense: {{}}, lowrank: {{fractions: [0.32]}}}}
budgets: {{tokens: [40960]}}
overrides: [model.attn.kind=lowrank, model.attn.fraction=0.32]
""")
    runs = load_sweep(path).runs
    assert [r.cfg.model.ffn.kind for r in runs] == ["dense", "lowrank"]
    assert all((r.cfg.model.attn.kind, r.cfg.model.attn.rank) == ("lowrank", 40) for r in runs)

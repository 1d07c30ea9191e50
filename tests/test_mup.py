"""model.parametrization=mup: its config rules, init scales, learning-rate multipliers per weight and factor,
the optimiser groups (order, checkpoints, resume, self-guided guides) and the standard path left as it was.

Hand multipliers at hidden 64, base width 32 (m = 2): a dense weight 1/m = 0.5; a factor of a layer of input
width d_in with F factors (1/m) d_in / (fan_in F); LowRank R = 16: up V (64 -> 16) 0.5 x 64 / (64 x 2) = 0.25,
up U (16 -> 256) 0.5 x 64 / (16 x 2) = 1, down V (256 -> 16) 0.25, down U (16 -> 64) 0.5 x 256 / (16 x 2) = 4.
"""

from __future__ import annotations

import math

import pytest
import torch

from lowrank_lm import mup
from lowrank_lm.checkpoint import list_checkpoints, optimizer_state_by_name
from lowrank_lm.model import Transformer
from lowrank_lm.train import loop as train_loop
from lowrank_lm.train import run_training
from lowrank_lm.train.metrics import read_metrics
from lowrank_lm.train.optim import build_adamw
from lowrank_lm.train.self_guided import attach_guide

from .conftest import small_config, tiny_run_config
from .ecosystem import cli

MUP = ["model.parametrization=mup", "model.mup_base_width=32"]
LOWRANK = ["model.ffn.kind=lowrank", "model.ffn.rank=16"]


def _model(*overrides: str) -> Transformer:
    torch.manual_seed(0)
    return Transformer(small_config(*overrides).model)


def test_multipliers_and_weight_decay_by_hand():
    model = _model(*MUP, *LOWRANK, "model.tie_embeddings=false")
    rules = {name: mup.lr_rules(model)[id(p)] for name, p in model.named_parameters()}
    expected = {"embed.weight": 1.0, "lm_head.weight": 0.5, "blocks.0.attn.qkv.weight": 0.5,
                "blocks.1.attn.out.weight": 0.5, "blocks.0.ffn.up.weight": 0.5, "blocks.0.ffn.down.weight": 0.5,
                "blocks.1.ffn.up.v": 0.25, "blocks.1.ffn.up.u": 1.0, "blocks.1.ffn.down.v": 0.25,
                "blocks.1.ffn.down.u": 4.0}
    for name, mult in expected.items():
        assert rules[name] == (pytest.approx(mult), True), name
    for name in ("blocks.0.attn.qkv.bias", "blocks.1.ffn.down.bias", "blocks.0.attn_norm.weight", "norm.weight"):
        assert rules[name] == (1.0, False), name  # vectors: O(1) learning rate, no weight decay
    assert len(rules) == len(list(model.parameters()))


def test_init_scales_attention_scale_and_readout():
    model = _model(*MUP, "model.hidden_dim=256", "model.tie_embeddings=false")  # m = 8, 4 heads of 64
    b = model.blocks[1]
    assert b.attn.qkv.weight.std().item() == pytest.approx(256 ** -0.5, rel=0.05)  # fan-out 768 >= fan-in
    assert b.ffn.down.weight.std().item() == pytest.approx(1024 ** -0.5 * 0.5, rel=0.05)  # x sqrt(256 / 1024)
    assert model.embed.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert not model.lm_head.weight.any()  # untied output layer: zero
    assert b.attn.scale == pytest.approx(math.sqrt(64 / 8) / 64)  # sqrt(base head dim) / head dim
    assert model.readout_scale is None
    tied = _model(*MUP, "model.hidden_dim=256")
    assert tied.readout_scale == pytest.approx(1 / 8) and tied.lm_head is None
    ids = torch.randint(0, 97, (2, 8))
    with torch.no_grad():  # the logits are the final norm's output times 1/m, through the embedding
        h = tied.embed(ids)
        for i, block in enumerate(tied.blocks):
            h = block(h, tied.rope, None, i)
        assert torch.allclose(tied(ids), tied.norm(h) @ tied.embed.weight.T / 8, atol=1e-6)
    base = _model(*MUP, "model.hidden_dim=32", "model.num_q_heads=2")  # at the base width: the standard scale
    assert base.blocks[0].attn.scale == pytest.approx(16 ** -0.5)


def test_standard_model_is_unchanged_by_mup_code():
    model = _model(*LOWRANK)
    assert model.readout_scale is None and all(b.attn.scale is None for b in model.blocks)
    opt = build_adamw(model, 1e-3, (0.9, 0.999), 1e-8, 0.1, fused=False)
    assert type(opt) is torch.optim.AdamW and len(opt.param_groups) == 1
    assert opt.param_groups[0]["params"] == list(model.parameters())


def test_groups_keep_model_order_and_step_as_adamw_with_multiplied_rates():
    model = _model(*MUP, *LOWRANK)
    opt = build_adamw(model, 1e-2, (0.9, 0.999), 1e-8, 0.1, fused=False)
    assert [p for g in opt.param_groups for p in g["params"]] == list(model.parameters())
    # a checkpoint keyed by name puts every parameter's state under its own name
    loss = model(torch.randint(0, 97, (2, 8)), torch.randint(0, 97, (2, 8)))
    loss.backward()
    twin = _model(*MUP, *LOWRANK)  # same seed: same weights; plain AdamW, one group per parameter
    rules = mup.lr_rules(twin)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        q.grad = p.grad.clone()
    plain = torch.optim.AdamW([{"params": [q], "lr": 1e-2 * rules[id(q)][0],
                                "weight_decay": 0.1 if rules[id(q)][1] else 0.0} for q in twin.parameters()])
    opt.step()
    plain.step()
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert all(g["lr"] == 1e-2 for g in opt.param_groups)  # the base rate stays in the groups
    by_name = optimizer_state_by_name(model, opt.state_dict())
    names = [n for n, _ in model.named_parameters()]
    assert set(by_name["state"]) == set(names)
    for g in by_name["param_groups"]:
        for n in g["params"]:
            assert g["lr_mult"] == mup.lr_rules(model)[id(dict(model.named_parameters())[n])][0]


def test_a_guide_is_a_dense_weight_of_its_layer():
    model = _model(*MUP, *LOWRANK)
    layer = model.blocks[1].ffn.up
    attach_guide(layer, stochastic=False)
    assert mup.lr_rules(model)[id(layer.guide)] == (0.5, True)


def _losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def test_standard_training_is_bit_identical_to_the_one_group_optimiser(tiny_data, tmp_path, monkeypatch):
    """The standard path against the optimiser as it was before muP: one AdamW group of model.parameters()."""
    ours = run_training(tiny_run_config(tiny_data, tmp_path / "ours", *LOWRANK[:1], "model.ffn.rank=8",
                                        "train.tokens=2048"))

    def one_group(self, model):
        t = self.cfg.train
        return torch.optim.AdamW(list(model.parameters()), lr=t.lr, betas=t.betas, eps=t.eps,
                                 weight_decay=t.weight_decay)

    monkeypatch.setattr(train_loop.Trainer, "_build_optimizer", one_group)
    old = run_training(tiny_run_config(tiny_data, tmp_path / "old", *LOWRANK[:1], "model.ffn.rank=8",
                                       "train.tokens=2048"))
    assert _losses(tmp_path / "ours") == _losses(tmp_path / "old") and ours.steps == old.steps == 8
    assert ours.final_val_loss == old.final_val_loss


def test_mup_run_resumes_to_the_identical_result_and_trains_with_a_guide(tiny_data, tmp_path):
    over = [*MUP, "model.ffn.kind=lowrank", "model.ffn.rank=8", "train.tokens=2048"]
    full = run_training(tiny_run_config(tiny_data, tmp_path / "full", *over))
    cfg = tiny_run_config(tiny_data, tmp_path / "cut", *over)
    run_training(cfg, max_steps=3)
    resumed = run_training(cfg)
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "full") and resumed.steps == full.steps == 8
    assert list_checkpoints(tmp_path / "cut")
    guided = run_training(tiny_run_config(tiny_data, tmp_path / "guided", *over, "train.self_guided.enabled=true",
                                          "train.self_guided.ratio=0.5"))
    assert guided.steps == 8 and math.isfinite(guided.final_val_loss)


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.parametrization=mup"], "needs model.mup_base_width"),
    (["model.mup_base_width=64"], "does not apply under model.parametrization=standard"),
    ([*MUP, *LOWRANK, "model.ffn.init=spectral"], "model.ffn.init=spectral does not apply under"),
    ([*MUP, "model.mup_base_width=0"], "model.mup_base_width must be positive"),
])
def test_settings_that_do_not_fit_are_one_line_errors(overrides, message):
    code, out, err = cli("info", "configs/cpu/tiny.yaml", *overrides)
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1


def test_export_refuses_a_mup_model(tiny_data, tmp_path):
    pytest.importorskip("transformers")
    run_training(tiny_run_config(tiny_data, tmp_path / "run", *MUP, "train.tokens=512"))
    code, _, err = cli("export", str(tmp_path / "run"), str(tmp_path / "hf"))
    assert code == 2 and "model.parametrization=mup" in err and err.count("\n") == 1
    assert not (tmp_path / "hf").exists()

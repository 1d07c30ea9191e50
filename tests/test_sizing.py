"""Sizing counts a part's weights on its layers built alone from the registry; the model's own FFN and attention
blocks, built whole, must count the same for every kind, width and setting."""

from __future__ import annotations

import pytest
import torch

from lowrank_lm import sizing
from lowrank_lm.config import AttnConfig, FFNConfig, ModelConfig
from lowrank_lm.errors import ConfigError
from lowrank_lm.layers import registry
from lowrank_lm.model import Attention, FeedForward

# (hidden, ffn, q heads, kv heads): plain multi-head, and grouped-query attention with other widths
SHAPES = [(64, 256, 4, 4), (96, 160, 6, 2)]


def _settings(kind: str, model: ModelConfig, part: str) -> list[dict[str, int]]:
    """The smallest and the largest setting of ``kind`` that fit every layer of ``part`` ({} for dense)."""
    spec = registry.get(kind)
    if not spec.structured:
        return [{}]
    blocks = None if "num_blocks" in spec.solved else spec.defaults.get("num_blocks")
    (h, ff), *others = sizing.part_widths(model, part)
    fits = [c for c in spec.candidates(h, ff, 8, blocks)
            if all(c in spec.candidates(i, o, 8, blocks) for i, o in others)]
    assert fits, f"no {kind} setting fits {part} at {h} / {ff}"
    return [fits[0], fits[-1]]


def _model(shape: tuple[int, int, int, int], activation: str, bias: bool) -> ModelConfig:
    h, ff, q, kv = shape
    return ModelConfig(hidden_dim=h, ffn_dim=ff, num_q_heads=q, num_kv_heads=kv, num_layers=1,
                       activation=activation, bias=bias, ffn=FFNConfig(keep_dense_layers=[]))


def _cases() -> list[tuple[str, str, tuple[int, int, int, int], str, bool]]:
    return [(part, kind, shape, act, bias) for part in ("ffn", "attn") for kind in registry.kinds()
            for shape in SHAPES for act, bias in (("gelu", True), ("swiglu", False))]


@pytest.mark.parametrize("part,kind,shape,activation,bias", _cases())
def test_weights_counted_on_the_layers_alone_equal_the_models_block(part, kind, shape, activation, bias):
    base = _model(shape, activation, bias)
    block = FeedForward if part == "ffn" else Attention
    section = FFNConfig if part == "ffn" else AttnConfig
    for setting in _settings(kind, base, part):
        model = ModelConfig(**{**vars(base), part: section(kind=kind, **setting)})
        with torch.device("meta"):
            on_block = (block(model, dense=False).num_matrix_params(), block(model, dense=True).num_matrix_params())
        counted = sizing.part_weights(model, part)
        assert counted == on_block, (kind, setting)
        assert counted[0] > 0 and (registry.get(kind).structured or counted[0] == counted[1])


def test_swiglu_counts_the_gate_and_gqa_narrows_the_fused_projection():
    # the counts by hand: FFN up, gate, down; attention q (a) + k, v (kv each) from h, and the output a -> h
    h, ff, q, kv = SHAPES[1]
    head = h // q
    assert sizing.part_weights(_model(SHAPES[1], "gelu", True), "ffn")[1] == 2 * h * ff
    assert sizing.part_weights(_model(SHAPES[1], "swiglu", True), "ffn")[1] == 3 * h * ff
    assert sizing.part_weights(_model(SHAPES[1], "gelu", True), "attn")[1] == h * (h + 2 * kv * head) + h * h


def test_lowrank_fraction_solves_to_the_hand_count():
    # LowRank keeps R (h + f) weights per layer pair: at h=64, f=256, R=16 that is 5120 of 16384 per layer pair
    model = _model(SHAPES[0], "gelu", True)
    settings, share = sizing.solve(model, "lowrank", 0.32)
    assert settings == {"rank": 16} and share == pytest.approx(2 * 16 * (64 + 256) / (2 * 64 * 256))


def test_solve_fraction_names_the_setting_and_changes_nothing():
    model = _model(SHAPES[0], "gelu", True)
    f = FFNConfig(kind="lowrank", fraction=0.32, keep_dense_layers=[])
    assert sizing.solve_fraction(f, model) == {"rank": 16}
    assert f.rank is None and f.fraction == 0.32
    with pytest.raises(ConfigError, match=r"model\.ffn\.fraction=0\.32 does not apply to model\.ffn\.kind=dense"):
        sizing.solve_fraction(FFNConfig(fraction=0.32), model)

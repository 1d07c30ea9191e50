"""``train.self_guided.guide_init``: where each guide starts (exact: the layer's matrix; reference: as the
reference code starts it, which differs for BlockShuffle only)."""

from __future__ import annotations

import pytest
import torch

from lowrank_lm.config import SelfGuidedConfig
from lowrank_lm.errors import ConfigError
from lowrank_lm.model import Transformer
from lowrank_lm.train.self_guided import SelfGuidance

from .conftest import small_config

KINDS = {
    "lowrank": ["model.ffn.kind=lowrank", "model.ffn.rank=16"],
    "blockdense": ["model.ffn.kind=blockdense", "model.ffn.rank=16", "model.ffn.num_blocks=4"],
    "blockshuffle": ["model.ffn.kind=blockshuffle", "model.ffn.num_blocks=4"],
}


def guided_model(kind: str, guide_init: str) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(small_config(*KINDS[kind]).model)
    SelfGuidance(SelfGuidedConfig(enabled=True, guide_init=guide_init), steps=10).attach(model, step=0)
    return model


def block_diagonal_by_hand(layer) -> torch.Tensor:
    """Each block pair multiplied on its own and placed on the diagonal: the shuffle-free product."""
    b, o, _ = layer.blocks_out.shape
    n = layer.blocks_in.shape[2]
    out = torch.zeros(layer.out_features, layer.in_features)
    for i in range(b):
        out[i * o:(i + 1) * o, i * n:(i + 1) * n] = layer.blocks_out[i] @ layer.blocks_in[i]
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_exact_guides_start_at_the_layer_so_the_output_is_continuous(kind):
    model = guided_model(kind, "exact")
    layers = list(model.structured_layers())
    assert layers
    for layer in layers:
        x = torch.randn(3, layer.in_features)
        # alpha = 1, guide always used: the output is the guide's alone, and it equals the structured product
        layer.eval()  # the guide runs in every eval forward (no coin)
        torch.testing.assert_close(layer(x), layer.matrix_forward(x, layer.bias), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["lowrank", "blockdense"])
def test_reference_guides_of_lowrank_and_blockdense_are_the_exact_ones(kind):
    exact, reference = guided_model(kind, "exact"), guided_model(kind, "reference")
    for a, b in zip(exact.structured_layers(), reference.structured_layers()):
        torch.testing.assert_close(b.guide, a.guide, rtol=1e-5, atol=1e-7)


def test_reference_blockshuffle_guide_is_block_diagonal_not_the_layer():
    model = guided_model("blockshuffle", "reference")
    for layer in model.structured_layers():
        with torch.no_grad():
            torch.testing.assert_close(layer.guide, block_diagonal_by_hand(layer), rtol=1e-5, atol=1e-7)
            merged = layer.merged_weight()
            # orthonormal blocks: two matrices of equal norm and (nearly) orthogonal, so about sqrt(2) apart
            distance = float((layer.guide - merged).norm() / merged.norm())
        assert 1.2 < distance < 1.6


def test_guide_init_is_checked():
    with pytest.raises(ConfigError, match="guide_init"):
        small_config(*KINDS["lowrank"], "train.self_guided.enabled=true", "train.self_guided.guide_init=shuffled")

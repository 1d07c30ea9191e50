import pytest
import torch

from lowrank_lm.config import FFNConfig
from lowrank_lm.layers import (
    BlockDenseLinear,
    BlockShuffleLinear,
    DenseLinear,
    LowRankLinear,
    build_linear,
)
from lowrank_lm.premerge import PremergedLinear
from lowrank_lm.train.self_guided import attach_guide

torch.manual_seed(0)

LAYERS = {
    "dense": lambda i, o: DenseLinear(i, o, bias=True),
    "lowrank": lambda i, o: LowRankLinear(i, o, rank=8, bias=True),
    "blockshuffle": lambda i, o: BlockShuffleLinear(i, o, num_blocks=4, bias=True),
    "blockdense": lambda i, o: BlockDenseLinear(i, o, rank=16, num_blocks=4, bias=True),
}


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("shape", [(32, 128), (128, 32)])
def test_layer_equals_its_merged_weight(kind, shape):
    layer = LAYERS[kind](*shape)
    init = {"dense": "random", "lowrank": "spectral"}.get(kind, "orthonormal")
    layer.reset_parameters(0.02, init)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(3, 5, shape[0])
    w = layer.merged_weight()
    assert w.shape == (shape[1], shape[0])
    expected = x @ w.T + layer.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", LAYERS)
def test_bias_inside_the_last_product_has_the_plain_gradient(kind):
    layer = LAYERS[kind](32, 128)
    layer.reset_parameters(0.02, "random")
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(6, 32)
    grad = torch.randn(6, 128)
    layer(x).backward(grad)
    torch.testing.assert_close(layer.bias.grad, grad.sum(0))
    torch.testing.assert_close(layer.matrix_forward(x, layer.bias), layer.matrix_forward(x) + layer.bias)


@pytest.mark.parametrize("kind", LAYERS)
def test_autocast_output_dtype_is_the_same_on_every_path(kind):
    layer = LAYERS[kind](32, 128)
    layer.reset_parameters(0.02, "random")
    x = torch.randn(6, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
        attach_guide(layer, stochastic=False).set_alpha(layer, 0.5)  # self-guided: guide and structure mixed
        assert layer(x).dtype == torch.bfloat16


@pytest.mark.parametrize("kind", LAYERS)
def test_param_count_matches_tensors(kind):
    layer = LAYERS[kind](64, 256)
    weights = sum(p.numel() for n, p in layer.named_parameters() if n != "bias")
    assert layer.num_matrix_params() == weights
    assert layer.flops_per_token() == 2 * weights


def test_param_formulas_of_the_paper():
    n, m = 2048, 8192
    assert LowRankLinear(n, m, 512, True).num_matrix_params() == (n + m) * 512
    assert BlockShuffleLinear(n, m, 4, True).num_matrix_params() == min(n, m) * (n + m) // 4
    assert BlockDenseLinear(n, m, 768, 4, True).num_matrix_params() == 768 * (m + n // 4)


def test_lowrank_at_full_rank_represents_any_dense_matrix():
    w = torch.randn(24, 16, dtype=torch.float64)
    layer = LowRankLinear(16, 24, rank=16, bias=False).double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    with torch.no_grad():
        layer.u.copy_(u * s)
        layer.v.copy_(vh)
    x = torch.randn(7, 16, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ w.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.merged_weight(), w, rtol=1e-12, atol=1e-12)


def test_spectral_init_is_best_rank_r_approximation_of_its_draw():
    rank, std = 6, 0.02
    torch.manual_seed(123)
    layer = LowRankLinear(32, 48, rank=rank, bias=False)
    layer.reset_parameters(std, "spectral")
    torch.manual_seed(123)
    w0 = torch.randn(48, 32) * std  # the same draw the initialiser made
    u, s, vh = torch.linalg.svd(w0, full_matrices=False)
    best = (u[:, :rank] * s[:rank]) @ vh[:rank]
    torch.testing.assert_close(layer.merged_weight(), best, rtol=1e-4, atol=1e-6)
    # U and V carry sqrt of the spectrum each: equal column / row norms
    torch.testing.assert_close(layer.u.norm(dim=0), layer.v.norm(dim=1), rtol=1e-4, atol=1e-7)
    # the residual of the truncation is the (R+1)-th singular value in spectral norm
    assert torch.linalg.matrix_norm(w0 - layer.merged_weight(), ord=2) == pytest.approx(float(s[rank]), rel=1e-3)


@pytest.mark.parametrize("kind", ["blockshuffle", "blockdense"])
def test_orthonormal_init_has_unit_singular_values(kind):
    layer = LAYERS[kind](64, 256)
    layer.reset_parameters(0.02, "orthonormal")
    for p in (p for n, p in layer.named_parameters() if n != "bias"):
        s = torch.linalg.svdvals(p.detach())
        torch.testing.assert_close(s, torch.ones_like(s), rtol=1e-4, atol=1e-4)


def test_blockshuffle_mixes_all_blocks():
    layer = BlockShuffleLinear(16, 16, num_blocks=4, bias=False)
    layer.reset_parameters(0.02, "orthonormal")
    w = layer.merged_weight()
    # every output depends on inputs from more than one input block (the shuffle mixes them)
    for row in w:
        touched = {i // 4 for i in torch.nonzero(row.abs() > 1e-8).flatten().tolist()}
        assert len(touched) > 1


def test_premerge_uses_dense_weight_only_for_small_calls_in_eval():
    layer = LowRankLinear(32, 64, rank=4, bias=True)
    layer.reset_parameters(0.02, "spectral")
    merged = PremergedLinear(layer, max_tokens=8).eval()
    calls = []
    layer.matrix_forward = lambda x, bias=None: calls.append(x.shape) or LowRankLinear.matrix_forward(layer, x, bias)
    small, big = torch.randn(2, 4, 32), torch.randn(3, 4, 32)
    ref_small = small @ layer.merged_weight().T + layer.bias
    calls.clear()  # merged_weight() above ran the factors once
    torch.testing.assert_close(merged(small), ref_small, rtol=1e-5, atol=1e-6)
    assert calls == []  # 8 tokens: merged path
    merged(big)
    assert len(calls) == 1  # 12 tokens: factored path
    merged.train()
    merged(small)
    assert len(calls) == 2  # training never uses the merged copy


def test_build_linear_picks_kind_and_default_init():
    cfg = FFNConfig(kind="lowrank", rank=4, init="spectral")
    assert isinstance(build_linear(16, 32, cfg, True, 0.02), LowRankLinear)
    assert isinstance(build_linear(16, 32, cfg, True, 0.02, dense=True), DenseLinear)

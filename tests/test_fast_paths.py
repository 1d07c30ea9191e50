"""The inference fast paths give the autograd paths' values: in-place block products, fused GELU, pre-merge."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lowrank_lm.layers import BlockDenseLinear, BlockShuffleLinear, DenseLinear, LowRankLinear
from lowrank_lm.layers import blockdiag as blockdiag_module
from lowrank_lm.layers import fused as fused_module
from lowrank_lm.layers.blockdiag import blockdiag_matmul, blockshuffle_matmul, shuffle, unshuffle
from lowrank_lm.layers.fused import gelu_linear
from lowrank_lm.model import FeedForward
from lowrank_lm.premerge import PremergedLinear, premerge
from lowrank_lm.resolve import load_config

LAYERS = {
    "dense": lambda i, o: DenseLinear(i, o, bias=True),
    "lowrank": lambda i, o: LowRankLinear(i, o, rank=8, bias=True),
    "blockshuffle": lambda i, o: BlockShuffleLinear(i, o, num_blocks=4, bias=True),
    "blockdense": lambda i, o: BlockDenseLinear(i, o, rank=16, num_blocks=4, bias=True),
}


def _layer(kind, i, o, seed=0):
    torch.manual_seed(seed)
    layer = LAYERS[kind](i, o)
    layer.reset_parameters(0.02, "random")
    with torch.no_grad():
        layer.bias.normal_()
    return layer.eval()


@pytest.mark.parametrize("shape", [(64, 256, 4), (256, 64, 4), (64, 256, 2), (48, 96, 4), (64, 128, 8), (40, 24, 4)])
def test_inplace_blockshuffle_equals_the_composition_of_its_definition(shape):
    n_in, n_out, b = shape
    layer = BlockShuffleLinear(n_in, n_out, b, bias=False)
    layer.reset_parameters(0.02, "orthonormal")
    x = torch.randn(3, 5, n_in)
    with torch.no_grad():
        inner = shuffle(torch.einsum("tbi,boi->tbo", x.reshape(15, b, -1), layer.blocks_in).reshape(15, -1), b)
        expected = unshuffle(torch.einsum("tbi,boi->tbo", inner.reshape(15, b, -1), layer.blocks_out)
                             .reshape(15, -1), b).reshape(3, 5, n_out)
        fast = blockshuffle_matmul(x, layer.blocks_in, layer.blocks_out)
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)  # the layer with autograd on


def _bmm_path(monkeypatch) -> list[int]:
    """Make the block products take the GPU path (one batched matmul) on CPU; returns a count of its calls."""
    calls = []
    bmm = blockdiag_module._blockdiag_bmm
    monkeypatch.setattr(blockdiag_module, "_cpu_operands", lambda *_: None)
    monkeypatch.setattr(blockdiag_module, "_blockdiag_bmm", lambda x, b: calls.append(1) or bmm(x, b))
    return calls


def _values_and_grads(fn, x: torch.Tensor, *weights: torch.Tensor) -> list[torch.Tensor]:
    x, weights = x.clone().requires_grad_(), [w.clone().requires_grad_() for w in weights]
    y = fn(x, *weights)
    (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()  # a weighting that tells output columns apart
    return [y.detach(), x.grad, *(w.grad for w in weights)]


@pytest.mark.parametrize("kind", ["blockdiag", "blockshuffle"])
def test_cpu_block_kernels_equal_the_batched_matmul_gpus_use(kind, monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(2, 7, 32)
    if kind == "blockdiag":
        fn, weights = blockdiag_matmul, (torch.randn(4, 6, 8),)
        # a third path: the dense block-diagonal matrix
        dense = lambda x, b: x @ torch.block_diag(*b).T  # noqa: E731
    else:
        fn, weights = blockshuffle_matmul, (torch.randn(4, 8, 8), torch.randn(4, 12, 8))
        dense = lambda x, v, u: unshuffle(shuffle(x @ torch.block_diag(*v).T, 4) @ torch.block_diag(*u).T, 4)  # noqa: E731
    cpu = _values_and_grads(fn, x, *weights)
    reference = _values_and_grads(dense, x, *weights)
    calls = _bmm_path(monkeypatch)
    gpu = _values_and_grads(fn, x, *weights)
    assert len(calls) == len(weights)  # the batched matmul really ran, once per block-diagonal factor
    for a, b, c in zip(cpu, gpu, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_gelu_equals_gelu_of_the_layer(kind, dtype, monkeypatch):
    if not fused_module._fused_kernel_available(dtype):  # then gelu_linear is the plain path: nothing to compare
        pytest.skip(f"this CPU's oneDNN has no fused {dtype} linear + GELU")
    layer = _layer(kind, 64, 256).to(dtype)
    x = torch.randn(2, 150, 64, dtype=dtype)  # enough tokens for every kind's fused path
    assert x.numel() // 64 >= max(fused_module.MIN_TOKENS, fused_module.MIN_TOKENS_BLOCKSHUFFLE)
    expected = F.gelu(layer(x).float(), approximate="tanh")  # autograd on: the plain path
    plain = []  # the plain path ends in fused.py's F.gelu: count its calls
    monkeypatch.setattr(fused_module, "F", SimpleNamespace(gelu=lambda *a, **k: plain.append(1) or F.gelu(*a, **k)))
    with torch.no_grad():
        fused = gelu_linear(layer, x)
    assert plain == []  # the fused kernel really ran
    assert fused.dtype == dtype and fused.shape == (2, 150, 256)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(fused.float(), expected, **tol)


@pytest.mark.parametrize("kind", ["lowrank", "blockshuffle", "blockdense"])
def test_premerged_layer_gives_the_factored_output_and_switches_at_its_limit(kind):
    layer = _layer(kind, 64, 256)
    x_small, x_big = torch.randn(300, 64), torch.randn(301, 64)
    with torch.no_grad():
        factored_small, factored_big = layer(x_small), layer(x_big)
        premerged = PremergedLinear(layer, 300).eval()
        assert premerged.uses_merged(x_small) and not premerged.uses_merged(x_big)
        merged_small = premerged(x_small)  # 300 tokens <= 300: the merged dense weight
        torch.testing.assert_close(merged_small, factored_small, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(premerged(x_big), factored_big, rtol=0, atol=0)  # 301 > 300: the factors, exact
        for x, factored in ((x_small, factored_small), (x_big, factored_big), (x_small[:3], factored_small[:3])):
            torch.testing.assert_close(gelu_linear(premerged, x), F.gelu(factored, approximate="tanh"),
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,extra", [("lowrank", ["model.ffn.rank=16"]),
                                        ("blockshuffle", ["model.ffn.num_blocks=4"]),
                                        ("blockdense", ["model.ffn.rank=32", "model.ffn.num_blocks=4"])])
def test_ffn_block_merged_and_factored_outputs_are_equal(kind, extra):
    cfg = load_config(None, ["model.hidden_dim=64", "model.num_q_heads=4", f"model.ffn.kind={kind}", *extra]).model
    torch.manual_seed(0)
    ffn = FeedForward(cfg, dense=False).eval()
    x = torch.randn(2, 3, 64)
    with torch.no_grad():
        factored = ffn(x)
        assert set(premerge(ffn, 16)) == {"up", "down"}
        merged = ffn(x)
    torch.testing.assert_close(merged, factored, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["blockshuffle", "blockdense"])
def test_cpu_block_kernels_have_exact_gradients(kind):
    torch.manual_seed(0)
    layer = (BlockShuffleLinear(16, 32, num_blocks=2, bias=True) if kind == "blockshuffle"
             else BlockDenseLinear(16, 32, rank=8, num_blocks=2, bias=True)).double()
    layer.reset_parameters(0.5, "random")
    x = torch.randn(2, 3, 16, dtype=torch.float64, requires_grad=True)
    params = tuple(p for n, p in layer.named_parameters() if n != "bias")
    assert torch.autograd.gradcheck(lambda x, *_: layer(x), (x, *params))


@pytest.mark.parametrize("kind", ["blockshuffle", "blockdense"])
def test_cpu_block_kernels_follow_autocast_like_the_batched_matmul(kind):
    layer = _layer(kind, 64, 256).train()
    x = torch.randn(40, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.matrix_forward(x).dtype == torch.bfloat16  # the products ran in bf16, as bmm would
        y = layer(x)
    y.float().square().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in layer.parameters())
    with torch.no_grad():
        torch.testing.assert_close(y.float(), layer(x), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("kind", ["dense", "lowrank", "blockdense"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cublaslt_epilogue_path_equals_gelu_of_the_layer(kind, dtype):
    # The CUDA path run on CPU: the same operands and bias, the CPU kernel's GELU flavour (exact, not tanh)
    layer = _layer(kind, 64, 96).to(dtype)
    x = torch.randn(3, 7, 64, dtype=dtype)
    with torch.no_grad():
        fused = fused_module.epilogue_gelu_linear(layer, x)
        plain = F.gelu(layer(x), approximate=fused_module.EPILOGUE_GELU["cpu"])
    assert fused.shape == plain.shape == (3, 7, 96)
    tol = {"rtol": 1.6e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(fused, plain, **tol)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: bf16 like F.linear
        assert fused_module.epilogue_gelu_linear(layer.float(), x.float()).dtype == torch.bfloat16
    premerged = PremergedLinear(layer, 64).eval()  # pre-merged: the merged weight is the tail
    with torch.no_grad():
        torch.testing.assert_close(fused_module.epilogue_gelu_linear(premerged, x), plain, **tol)


def test_blockshuffle_has_no_epilogue_path_and_cpu_never_takes_it():
    layer = _layer("blockshuffle", 64, 96)
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert fused_module.epilogue_gelu_linear(layer, x) is None
        assert not fused_module._can_fuse_cuda(_layer("dense", 64, 96), x)  # CUDA only

"""Self-guidance wraps a structured layer from outside: the guided mix (bias included), the coin, the guide's
state-dict key, and guided training under torch.compile (one graph for every coin, the eager losses)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch._dynamo.testing
import torch.nn.functional as F
from safetensors.torch import load_file

from lowrank_lm.checkpoint import list_checkpoints
from lowrank_lm.config import SelfGuidedConfig
from lowrank_lm.layers import BlockShuffleLinear, LowRankLinear
from lowrank_lm.layers.fused import gelu_linear
from lowrank_lm.model import Transformer
from lowrank_lm.train import run_training
from lowrank_lm.train.metrics import read_metrics
from lowrank_lm.train.self_guided import SelfGuidance, attach_guide, detach_guide

from .conftest import small_config, tiny_run_config

LAYERS = {"lowrank": lambda: LowRankLinear(24, 40, rank=6, bias=True),
          "blockshuffle": lambda: BlockShuffleLinear(24, 40, num_blocks=4, bias=True)}


def guided_layer(kind: str, dtype: torch.dtype, stochastic: bool = False):
    torch.manual_seed(0)
    layer = LAYERS[kind]()
    layer.reset_parameters(0.05, "random")
    with torch.no_grad():
        layer.bias.normal_()
    layer.to(dtype)
    hook = attach_guide(layer, stochastic=stochastic)
    with torch.no_grad():  # move the guide off the layer's matrix so that the two paths differ
        layer.guide.add_(0.05 * torch.randn_like(layer.guide))
    hook.set_alpha(layer, 0.3)
    return layer, hook


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_guided_mix_with_a_bias_follows_the_formula(kind, dtype):
    layer, hook = guided_layer(kind, dtype)
    x = torch.randn(5, 24, dtype=dtype)
    # by hand, in float64 from the layer's own (possibly bf16) tensors: a (W x + b) + (1 - a) (S x + b)
    w, b = layer.guide.double(), layer.bias.double()
    s = copy.deepcopy(layer).double().merged_weight()  # the structured matrix, exact from the layer's factors
    xd = x.double()
    expected = 0.3 * (xd @ w.T + b) + 0.7 * (xd @ s.T + b)
    y = layer(x)
    assert y.dtype == dtype
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(y.double(), expected, **tol)
    # the guide is the layer's parameter "guide"; alpha and the coin are not saved
    assert set(layer.state_dict()) == {*dict(layer.named_parameters())} and "guide" in layer.state_dict()
    detach_guide(layer, hook)
    assert "guide" not in layer.state_dict() and not layer._forward_hooks and list(layer.named_buffers()) == []
    torch.testing.assert_close(layer(x), layer.matrix_forward(x, layer.bias), rtol=0, atol=0)


def test_a_skipped_guide_gives_the_structured_output_and_no_gradient():
    layer, hook = guided_layer("lowrank", torch.float32, stochastic=True)
    x = torch.randn(5, 24)
    hook.set_coin(layer, False)
    y = layer(x)
    torch.testing.assert_close(y, layer.matrix_forward(x, layer.bias), rtol=0, atol=0)
    y.square().sum().backward()
    assert layer.guide.grad is None and layer.u.grad is not None
    hook.set_coin(layer, True)
    layer(x).square().sum().backward()
    assert layer.guide.grad is not None
    layer.eval()  # evaluation has no coin: the guide always mixes in
    hook.set_coin(layer, False)
    with torch.no_grad():
        assert not torch.equal(layer(x), layer.matrix_forward(x, layer.bias))


def test_compiled_guided_training_flips_coins_without_recompiling(tiny_data, tmp_path, monkeypatch):
    """reduce_flop under torch.compile: the coins are tensors that torch.cond branches on, so 6 guided steps of
    2 micro-batches (24 coins over 2 structured layers) run on the graph compiled for the first micro-batch; the
    losses are the eager ones, and so are the guide FLOPs (the same coins)."""
    guided = ["model.ffn.kind=lowrank", "model.ffn.rank=8", "train.self_guided.enabled=true",
              "train.self_guided.ratio=1.0", "train.self_guided.reduce_flop=true", "train.tokens=1536"]
    eager = run_training(tiny_run_config(tiny_data, tmp_path / "eager", *guided, "train.compile=false"))
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")  # no C++ build: fast on CPU
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=counter))
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):  # a coin-specialised graph would recompile
        compiled = run_training(tiny_run_config(tiny_data, tmp_path / "compiled", *guided, "train.compile=true"))
    assert counter.frame_count >= 1  # it did compile
    losses = [[r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl") if "loss" in r]
              for name in ("eager", "compiled")]
    assert len(losses[0]) == 6
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    assert compiled.guide_flops == eager.guide_flops > 0


def test_compiled_skipped_guides_get_no_gradient_after_the_step():
    """torch.cond's skipped branch gives its guide a gradient of zeros; clear_skipped_grads makes it None, as the
    eager skip leaves it, while a guide used in either micro-batch keeps its gradient (the eager one)."""
    torch.manual_seed(0)
    model = Transformer(small_config("model.ffn.kind=lowrank", "model.ffn.rank=16", "model.num_layers=4").model)
    guidance = SelfGuidance(SelfGuidedConfig(enabled=True, ratio=1.0, reduce_flop=True), steps=4)
    guidance.attach(model, 0)  # 6 guided layers (blocks 1-3, up and down)
    ids = torch.randint(0, 97, (2, 2, 16))
    compiled = torch.compile(model, backend="aot_eager")
    grads, used = [], []
    for run in (model, compiled):
        model.zero_grad(set_to_none=True)
        guidance.set_step(model, 3)  # alpha 0.15; the same coins in both runs
        for x in ids:  # two micro-batches
            run(x, x).backward()
        used.append([hook.used for _, hook in guidance.guided])
        guidance.clear_skipped_grads()
        grads.append([layer.guide.grad for layer, _ in guidance.guided])
    assert used[0] == used[1] and True in used[0] and False in used[0]  # some guides ran, some sat out
    for eager_grad, compiled_grad, ran in zip(*grads, used[0], strict=True):
        assert (eager_grad is None) == (compiled_grad is None) == (not ran)
        if ran:
            torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-6)


def step_4(run_dir):
    return next(p for p in list_checkpoints(run_dir) if p.name == "step-00000004")


def test_a_run_cut_mid_guidance_resumes_to_the_same_guides_losses_and_flops(tiny_data, tmp_path):
    """The guides are saved as ``<layer>.guide`` and load back bit-exactly: cut at step 3, resumed, the run equals
    the uninterrupted one, losses, the step-4 checkpoint (guides included), coins (guide FLOPs) and all."""
    guided = ["model.ffn.kind=lowrank", "model.ffn.rank=8", "train.self_guided.enabled=true",
              "train.self_guided.ratio=0.75", "train.tokens=2048"]  # 8 steps, guided for 6
    full = run_training(tiny_run_config(tiny_data, tmp_path / "full", *guided))
    cfg = tiny_run_config(tiny_data, tmp_path / "cut", *guided)
    assert run_training(cfg, max_steps=3).steps == 3
    resumed = run_training(cfg)
    losses = [[(r["step"], r["loss"]) for r in read_metrics(tmp_path / name / "metrics.jsonl") if "loss" in r]
              for name in ("full", "cut")]
    assert len(losses[0]) == 8 and losses[1] == losses[0]  # bitwise
    a, b = (load_file(step_4(tmp_path / name) / "model.safetensors") for name in ("full", "cut"))
    assert a.keys() == b.keys() and "blocks.1.ffn.up.guide" in a
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.guide_flops == full.guide_flops > 0


def test_the_fused_gelu_path_of_inference_keeps_the_guide():
    """Evaluation during guidance runs without autograd, where the FFN's up layer would take the fused bias +
    GELU kernel on its last matrix; a guided layer must go through its call instead, hook included."""
    layer, _ = guided_layer("lowrank", torch.float32)
    layer.eval()
    x = torch.randn(64, 24)  # enough tokens for the fused path
    with torch.no_grad():
        expected = F.gelu(layer(x), approximate="tanh")
        assert not torch.allclose(expected, F.gelu(layer.matrix_forward(x, layer.bias), approximate="tanh"))
        torch.testing.assert_close(gelu_linear(layer, x), expected, rtol=0, atol=0)

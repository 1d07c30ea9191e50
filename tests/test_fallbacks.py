"""GPU fast paths fall back, loudly: each one forced to fail (here, on CPU) warns once in one line and the eager
path gives the same result. The fast paths themselves only run on CUDA (scripts/gpu_bench.sh smoke)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowrank_lm import decoding, fallback, loss
from lowrank_lm.decoding import EagerDecoder, StaticDecoder
from lowrank_lm.layers import LowRankLinear
from lowrank_lm.layers import fused as fused_module
from lowrank_lm.model import Transformer
from lowrank_lm.train import run_training
from lowrank_lm.train.compiling import COMPILED
from lowrank_lm.train.metrics import read_metrics

from .conftest import small_config, tiny_run_config


@pytest.fixture(autouse=True)
def fresh_record(monkeypatch):
    monkeypatch.setattr(fallback, "TAKEN", {})  # every test starts with no fast path tried


def _broken(*args, **kwargs):
    raise RuntimeError("forced failure\nsecond line of a long compiler message")


def _warnings(err: str, name: str) -> list[str]:
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert lines == [f"warning: {name} failed (RuntimeError: forced failure); continuing on the eager path, "
                     "which computes the same"], err
    return lines


def test_liger_loss_that_fails_falls_back_to_the_chunked_loss(monkeypatch, capsys):
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(40, 16, generator=g), torch.randn(50, 16, generator=g)
    targets = torch.randint(0, 50, (40,), generator=g)
    expected = loss.chunked_lm_loss(hidden, weight, targets, 8)  # CPU: liger does not apply, the chunked path
    monkeypatch.setattr(loss, "_liger_loss", _broken)
    got = [loss.chunked_lm_loss(hidden, weight, targets, 8) for _ in range(3)]
    assert all(torch.equal(g, expected) for g in got)
    _warnings(capsys.readouterr().err, loss.LIGER)  # once, for three calls
    assert fallback.TAKEN == {loss.LIGER: "eager"}


def test_bias_gelu_epilogue_that_fails_falls_back_to_the_plain_gelu(monkeypatch, capsys):
    torch.manual_seed(0)
    layer = LowRankLinear(32, 64, rank=8, bias=True).eval()
    layer.reset_parameters(0.02, "random")
    x = torch.randn(3, 5, 32)  # 15 tokens: below fused.MIN_TOKENS, so the CPU's own fused path stays out too
    with torch.no_grad():
        expected = F.gelu(layer(x), approximate="tanh")
        monkeypatch.setattr(fused_module, "_can_fuse_cuda", lambda layer, x: True)  # as on CUDA
        calls = []
        monkeypatch.setattr(fused_module, "epilogue_gelu_linear", lambda *a: calls.append(1) or _broken())
        got = [fused_module.gelu_linear(layer, x[:, :1]), fused_module.gelu_linear(layer, x)]
    torch.testing.assert_close(got[1], expected, rtol=0, atol=0)
    assert len(calls) == 1  # not tried again after it failed
    _warnings(capsys.readouterr().err, fused_module.EPILOGUE)


def test_cuda_graph_decoding_that_fails_falls_back_to_eager_steps(monkeypatch, capsys):
    torch.manual_seed(0)
    model = Transformer(small_config("model.ffn.kind=lowrank", "model.ffn.rank=16", "model.init_std=0.2").model)
    model.eval()
    prompt = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(StaticDecoder, "_replay", _broken)
    static = StaticDecoder(model, 2, 32, prompt.device, torch.float32, compiled=False)
    static.use_graph = True  # as on CUDA: capture and replay a graph per span
    eager = EagerDecoder(model, 2, 32, prompt.device)
    tokens = {}
    with torch.no_grad():
        for name, decoder in (("static", static), ("eager", eager)):
            step, out = decoder.prefill(prompt), []
            for _ in range(10):
                out.append(step.argmax(-1))
                step = decoder.step(out[-1])
            tokens[name] = torch.stack(out, 1)
    assert torch.equal(tokens["static"], tokens["eager"]) and not static.use_graph
    _warnings(capsys.readouterr().err, decoding.CUDA_GRAPHS)


class _BrokenCompiled(nn.Module):
    """What torch.compile returns when its compiler fails at the first call (BackendCompilerFailed and kin)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        _broken()


@pytest.mark.parametrize("extra", [[], ["model.ffn.kind=lowrank", "model.ffn.rank=8", "train.self_guided.enabled=true",
                                        "train.self_guided.ratio=0.5", "train.self_guided.reduce_flop=true"]],
                         ids=["plain", "torch.cond-self-guidance"])
def test_compiled_training_that_fails_continues_eagerly_with_the_same_losses(tiny_data, tmp_path, monkeypatch,
                                                                             capsys, extra):
    steps = ["train.tokens=1536", *extra]  # 6 steps
    run_training(tiny_run_config(tiny_data, tmp_path / "eager", *steps, "train.compile=false"))
    monkeypatch.setattr(torch, "compile", lambda module, *a, **k: _BrokenCompiled(module))
    capsys.readouterr()
    run_training(tiny_run_config(tiny_data, tmp_path / "compiled", *steps, "train.compile=true"))
    _warnings(capsys.readouterr().err, COMPILED)
    assert fallback.TAKEN == {COMPILED: "eager"}

    def losses(run):
        return [(r["step"], r["loss"]) for r in read_metrics(tmp_path / run / "metrics.jsonl") if "loss" in r]

    assert len(losses("eager")) == 6 and losses("compiled") == losses("eager")  # bitwise: the same eager steps

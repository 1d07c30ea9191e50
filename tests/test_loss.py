"""The chunked loss equals the full-logits loss: values and gradients, fp32 and under bf16 autocast."""

import pytest
import torch

from lowrank_lm.loss import IGNORE_INDEX, chunked_lm_loss, full_lm_loss, lm_loss
from lowrank_lm.model import Transformer

from .conftest import small_config


def _inputs(n=37, h=16, v=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, requires_grad=True)
    weight = torch.randn(v, h, generator=g, requires_grad=True)
    targets = torch.randint(0, v, (n,), generator=g)
    targets[::5] = IGNORE_INDEX
    return hidden, weight, targets


def _loss_and_grads(fn, hidden, weight, *args, autocast=False, **kw):
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = fn(h, w, *args, **kw)
    (loss * 3.0).backward()  # a non-unit upstream gradient must scale both
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk", [1, 8, 37, 1000])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_chunked_loss_and_gradients_equal_the_full_path_fp32(chunk, reduction):
    hidden, weight, targets = _inputs()
    full = _loss_and_grads(full_lm_loss, hidden, weight, targets, reduction=reduction)
    chunked = _loss_and_grads(chunked_lm_loss, hidden, weight, targets, chunk, reduction=reduction)
    for a, b in zip(full, chunked):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert full[1][::5].abs().max() == 0  # ignored tokens get no gradient on either path


def test_chunked_loss_follows_autocast_like_the_full_path():
    hidden, weight, targets = _inputs(n=64, h=32, v=96, seed=1)
    full = _loss_and_grads(full_lm_loss, hidden, weight, targets, autocast=True)
    chunked = _loss_and_grads(chunked_lm_loss, hidden, weight, targets, 16, autocast=True)
    fp32 = _loss_and_grads(full_lm_loss, hidden, weight, targets)
    assert full[1].dtype == chunked[1].dtype == torch.float32  # grads in the parameters' dtype
    for a, b in zip(full, chunked):
        torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-3)
    assert not torch.allclose(chunked[2], fp32[2], rtol=1e-4, atol=1e-6)  # it did run in bf16


def test_no_gradient_work_without_autograd():
    hidden, weight, targets = _inputs()
    with torch.no_grad():
        loss = chunked_lm_loss(hidden, weight, targets, 8)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, full_lm_loss(hidden, weight, targets).detach())


def test_model_with_chunked_loss_trains_like_the_full_one():
    cfg = small_config("model.ffn.kind=lowrank", "model.ffn.rank=16").model
    torch.manual_seed(0)
    a, b = Transformer(cfg), Transformer(cfg)
    b.load_state_dict(a.state_dict())
    b.loss_chunk_tokens = 7  # does not divide the 2 x 12 tokens: a short last chunk
    x = torch.randint(0, 97, (2, 12))
    y = torch.randint(0, 97, (2, 12))
    la, lb = a(x, y), b(x, y)
    la.backward()
    lb.backward()
    torch.testing.assert_close(lb, la)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(b(x, y, reduction="sum"), la.detach() * 24)


def test_bad_chunk_size_is_refused():
    hidden, weight, targets = _inputs()
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunked_lm_loss(hidden, weight, targets, -4)
    torch.testing.assert_close(lm_loss(hidden, weight, targets, 0), full_lm_loss(hidden, weight, targets))

import itertools
import math

import pytest
import torch

from lowrank_lm.model import Transformer
from lowrank_lm.train import forward_backward
from lowrank_lm.train.schedule import guide_alpha_at, lr_at

from .conftest import small_config


def test_lr_schedule_warmup_midpoint_and_end():
    total, peak = 1001, 6e-4  # warmup 100 steps, cosine over steps 100..1000
    assert lr_at(0, total, peak, 0.1, 0.1) == pytest.approx(peak / 100)
    assert lr_at(99, total, peak, 0.1, 0.1) == pytest.approx(peak)  # warmup end: (t+1)/warmup x peak
    assert lr_at(100, total, peak, 0.1, 0.1) == pytest.approx(peak)  # cosine starts at the peak
    assert lr_at(550, total, peak, 0.1, 0.1) == pytest.approx(0.55 * peak, rel=1e-3)  # halfway: mean
    assert lr_at(total - 1, total, peak, 0.1, 0.1) == pytest.approx(0.1 * peak)  # floor at the last step
    values = [lr_at(s, total, peak, 0.1, 0.1) for s in range(100, total)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_guide_alpha_schedules():
    assert guide_alpha_at(0, 100, "cosine") == 1.0
    assert guide_alpha_at(50, 100, "cosine") == pytest.approx(0.5)
    assert guide_alpha_at(25, 100, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert guide_alpha_at(100, 100, "cosine") == 0.0
    assert guide_alpha_at(30, 100, "linear") == pytest.approx(0.7)
    assert guide_alpha_at(500, 100, "linear") == 0.0


@pytest.mark.parametrize("kind", ["dense", "lowrank"])
def test_gradient_accumulation_equals_one_big_batch(kind):
    extra = ["model.ffn.kind=lowrank", "model.ffn.rank=16"] if kind == "lowrank" else []
    cfg = small_config(*extra).model
    torch.manual_seed(0)
    a = Transformer(cfg)
    b = Transformer(cfg)
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 97, (8, 32))
    y = torch.randint(0, 97, (8, 32))
    dev = torch.device("cpu")
    big = forward_backward(a, [(x, y)], dev, "fp32")
    small = forward_backward(b, [(x[i:i + 2], y[i:i + 2]) for i in range(0, 8, 2)], dev, "fp32")
    assert float(big) == pytest.approx(float(small), abs=1e-6)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=0, atol=1e-6, msg=name)

"""The paper's printed parameter counts and training FLOPs (reference sections 4.1, 4.2, 5.3)."""

import pytest

from lowrank_lm.accounting import account, count_model
from lowrank_lm.model import Transformer
from lowrank_lm.resolve import load_config

from .conftest import small_config

P = "configs/paper/"
S = P + "structured/transformer-"

# config, overrides, params (M), FFN params (M) or None, training FLOPs or None, tokens (B) or None
PAPER = [
    (P + "transformer-xl.yaml", [], 1274, 805, 2.10e20, 25.5),
    (S + "xl-lowrank-63.yaml", [], 985, 516, 1.66e20, 25.5),
    (S + "xl-blockdense-63.yaml", [], 955, 486, 1.61e20, 25.5),
    (S + "xl-blockshuffle-63.yaml", [], 985, 516, 1.66e20, 25.5),
    (S + "xl-lowrank-32.yaml", [], 744, 275, 1.29e20, 25.5),
    (S + "xl-blockdense-32.yaml", [], 728, 260, 1.27e20, 25.5),
    (S + "xl-blockshuffle-32.yaml", [], 744, 275, 1.29e20, 25.5),
    (P + "transformer-m.yaml", [], 335, None, 1.55e19, 6.7),
    (P + "transformer-m-gqa.yaml", [], 335, None, 1.55e19, 6.7),
    (P + "transformer-l.yaml", [], 729, None, 7.03e19, 14.6),
    (P + "transformer-l-gqa.yaml", [], 729, None, 7.03e19, 14.6),
    (P + "wide-structured-m.yaml", [], 219, None, 1.55e19, 10.58),
    (P + "wide-structured-l.yaml", [], 464, None, 7.03e19, 23.36),
    # "Ours" with self-guided training, fixedflop, on the dense token budget (Table 2, club sign)
    (P + "wide-structured-m.yaml", ["train.tokens=6.7e9", "train.self_guided.enabled=true",
                                     "train.self_guided.mode=fixedflop", "train.self_guided.ratio=0.40"],
     219, None, 1.56e19, 6.7),
    (P + "wide-structured-l.yaml", ["train.tokens=14.58e9", "train.self_guided.enabled=true",
                                     "train.self_guided.mode=fixedflop", "train.self_guided.ratio=0.395"],
     464, None, 7.03e19, 14.6),
]


def within(value: float, printed: float, rel: float = 0.002) -> bool:
    return abs(value - printed) <= rel * printed


@pytest.mark.parametrize("path,overrides,params,ffn,flops,tokens", PAPER,
                         ids=[p.split("/")[-1] + ("+sgt" if o else "") for p, o, *_ in PAPER])
def test_paper_numbers(path, overrides, params, ffn, flops, tokens):
    acc = account(load_config(path, overrides))
    # printed numbers are rounded: compare to 0.2% or to half a unit of the last printed digit
    assert within(acc.params / 1e6, params) or abs(acc.params / 1e6 - params) <= 0.5
    if ffn is not None:
        assert abs(acc.params_ffn / 1e6 - ffn) <= 0.5
    assert abs(acc.train_flops - flops) <= max(0.002 * flops, 0.005e20 if flops > 1e20 else 0.005 * flops)
    assert abs(acc.train_tokens / 1e9 - tokens) <= 0.05


def test_exact_reference_calculations():
    """Four-digit values the reference computed with the authors' formula (section 4.2)."""
    cases = {
        P + "transformer-s.yaml": (109.6, 56.6, 1.695e18),
        S + "s-lowrank-32.yaml": (73.9, 20.9, 1.224e18),
        S + "m-blockdense-63.yaml": (255.2, 121.4, 1.227e19),
        S + "l-lowrank-63.yaml": (566.3, 290.2, 5.610e19),
        P + "transformer-xl.yaml": (1274.1, 805.3, 2.102e20),
        S + "xl-blockdense-32.yaml": (728.5, 259.7, 1.268e20),
    }
    for path, (params, ffn, flops) in cases.items():
        acc = account(load_config(path))
        assert abs(acc.params / 1e6 - params) <= 0.05, path
        assert abs(acc.params_ffn / 1e6 - ffn) <= 0.05, path
        assert abs(acc.train_flops / flops - 1) <= 0.0005, path


def test_steps_follow_the_code_rounding():
    for size, steps in {"s": 4196, "m": 12779, "l": 27809, "xl": 48637}.items():
        assert account(load_config(f"{P}transformer-{size}.yaml")).steps == steps


@pytest.mark.parametrize("size,ratio_lr,ratio_bd", [("s", 0.30, 0.30), ("m", 0.38, 0.40),
                                                     ("l", 0.41, 0.41), ("xl", 0.43, 0.45)])
def test_fixedflop_ratios_match_dense_flops(size, ratio_lr, ratio_bd):
    """The reference's fixedflop ratios bring 32% structured models to the dense FLOPs (within 1%)."""
    dense = account(load_config(f"{P}transformer-{size}.yaml")).train_flops
    sgt = ["train.self_guided.enabled=true", "train.self_guided.mode=fixedflop"]
    for kind, ratio in (("lowrank", ratio_lr), ("blockshuffle", ratio_lr), ("blockdense", ratio_bd)):
        acc = account(load_config(f"{S}{size}-{kind}-32.yaml", [*sgt, f"train.self_guided.ratio={ratio}"]))
        assert abs(acc.train_flops / dense - 1) < 0.01, (kind, acc.train_flops / dense)
        assert acc.self_guided_extra_steps == int(ratio * acc.steps)


def test_token_budget_options():
    cfg = small_config("train.tokens_per_param=20", "train.global_batch_size=4")
    acc = account(cfg)
    assert acc.tokens_requested == round(20 * acc.params)
    assert acc.steps == acc.tokens_requested // (4 * 32)
    assert acc.train_tokens == acc.steps * 4 * 32


def test_flops_formula_by_hand():
    cfg = small_config("model.num_kv_heads=2", "train.tokens=4096", "train.global_batch_size=4")
    m = cfg.model
    acc = account(cfg)
    h, a, kv, s, v, f, n = 64, 64, 32, 32, 97, 256, 2
    forward = n * 2 * (2 * a * h + 2 * kv * h + 2 * s * a) + 2 * (2 * h * f) * n + 2 * v * h
    assert acc.forward_flops_per_token == forward
    assert acc.flops_per_token == 3 * forward
    assert acc.train_flops == 3 * forward * 4096
    six_n = 6 * (acc.params_non_embedding + v * h) + 6 * n * s * a
    assert acc.flops_per_token_6n == six_n
    assert count_model(Transformer(m)).params == acc.params

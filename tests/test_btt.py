"""Block Tensor-Train (``model.ffn.kind=btt``): its definition, counts, init, training, bench, sweep and export.

Hand counts use scale-3's widths, split as the authors' ``factorize(n, 2)`` splits them: hidden 192 = 2^6 x 3
= 8 x 24 and FFN 768 = 2^8 x 3 = 16 x 48 (the twos shared out evenly, then the three to the first).
A BTT layer in -> out with in = m0 x m1, out = n0 x n1 keeps R (in n0 + m1 out) weights:
up 192 -> 768: R (192 x 16 + 24 x 768) = 21504 R; down 768 -> 192: R (768 x 8 + 48 x 192) = 15360 R.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lowrank_lm.config import FFNConfig
from lowrank_lm.layers import registry
from lowrank_lm.layers.blockdiag import unshuffle
from lowrank_lm.layers.blockshuffle import BlockShuffleLinear
from lowrank_lm.layers.btt import BTTLinear, factor_pair

from .ecosystem import MODEL_VOCAB, cli, make_run, relative_error

CPU = Path(__file__).resolve().parents[1] / "configs" / "cpu"
SCALE3 = "configs/cpu/scale-3.yaml"
BARE = ["model.ffn.keep_dense_layers=[]", "model.bias=false"]  # every FFN structured; FFN params = matrices


def _layer(n_in: int, n_out: int, rank: int, bias: bool = False) -> BTTLinear:
    return registry.build(n_in, n_out, FFNConfig(kind="btt", rank=rank), bias, std=0.02)  # type: ignore[return-value]


def test_widths_split_as_the_authors_factorize_splits_them():
    # primes smallest first, each to the smaller number (the first on a tie), then sorted
    assert factor_pair(48) == (4, 12)  # 2^4 x 3: (4, 4), then 3 -> (12, 4)
    assert factor_pair(192) == (8, 24)  # 2^6 x 3
    assert factor_pair(768) == (16, 48)  # 2^8 x 3
    assert factor_pair(3072) == (32, 96)  # 2^10 x 3
    assert factor_pair(4864) == (16, 304)  # 2^8 x 19
    assert factor_pair(36) == (6, 6)  # 2^2 x 3^2: (2, 2), (6, 2), (6, 6)
    assert factor_pair(128) == (8, 16)
    assert factor_pair(127) is None  # a prime has no two-core split


def _reference_factorize(n: int) -> tuple[int, int]:
    """The authors' factorize(n, 2), rewritten here from its description: sympy's prime factors in ascending
    order, each multiplied into the number with the smallest product so far."""
    sympy = pytest.importorskip("sympy")
    numbers = [1, 1]
    for prime, count in sympy.factorint(n).items():
        for _ in range(count):
            numbers[min(range(2), key=lambda i: numbers[i])] *= prime
    low, high = sorted(numbers)
    return low, high


def _reference_forward(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, r: int) -> torch.Tensor:
    """The reference's BTT on x (B, d_in) in float64 einsums: cores W1 (m1, m0, n0 r) and W2 (n0, m1 r, n1);
    x read as (B, m1, m0), the output as (B, n0, n1)."""
    m1, m0, _ = w1.shape
    n0, _, n1 = w2.shape
    xs = x.reshape(x.shape[0], m1, m0)
    z = torch.einsum("kab,abq->kaq", xs, w1).reshape(x.shape[0], m1, n0, r)  # q = c r + s
    y = torch.einsum("kacs,casd->kcd", z, w2.reshape(n0, m1, r, n1))  # W2's rows: a r + s
    return y.reshape(x.shape[0], n0 * n1)


# (in, out): core_in (m1, r n0, m0), core_out (n0, n1, m1 r) and R (in n0 + m1 out) weights at R = 2, by hand
REFERENCE_WIDTHS = {
    (48, 192): ((12, 16, 4), (8, 24, 24), 2 * (48 * 8 + 12 * 192)),  # 48 = 4 x 12, 192 = 8 x 24
    (192, 768): ((24, 32, 8), (16, 48, 48), 2 * (192 * 16 + 24 * 768)),  # 768 = 16 x 48
    (768, 3072): ((48, 64, 16), (32, 96, 96), 2 * (768 * 32 + 48 * 3072)),  # 3072 = 32 x 96
    (3072, 768): ((96, 32, 32), (16, 48, 192), 2 * (3072 * 16 + 96 * 768)),
}


@pytest.mark.parametrize(("n_in", "n_out"), list(REFERENCE_WIDTHS))
def test_btt_is_the_references_layer(n_in, n_out):
    shape_in, shape_out, weights = REFERENCE_WIDTHS[(n_in, n_out)]
    layer = _layer(n_in, n_out, rank=2).double()
    assert layer.in_factors == _reference_factorize(n_in) and layer.out_factors == _reference_factorize(n_out)
    assert tuple(layer.core_in.shape) == shape_in and tuple(layer.core_out.shape) == shape_out
    assert layer.num_matrix_params() == sum(p.numel() for p in layer.parameters()) == weights
    # the reference's cores are ours with the last two axes swapped
    w1, w2 = layer.core_in.detach().transpose(1, 2), layer.core_out.detach().transpose(1, 2)
    x = torch.randn(3, n_in, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(layer(x), _reference_forward(x, w1, w2, r=2), rtol=1e-12, atol=1e-12)


def test_each_weight_is_the_papers_sum_over_the_rank():
    """W[(c, d), (a, b)] = sum_s core_out[c, d, a r + s] core_in[a, c r + s, b], entry by entry."""
    layer = _layer(6, 12, rank=2).double()  # 6 = 2 x 3, 12 = 2^2 x 3 = 2 x 6 (the three goes to one of the twos)
    (m0, m1), (n0, n1) = layer.in_factors, layer.out_factors
    assert (m0, m1, n0, n1) == (2, 3, 2, 6)
    ci, co = layer.core_in, layer.core_out
    expected = torch.zeros(12, 6, dtype=torch.float64)
    for a in range(m1):
        for b in range(m0):
            for c in range(n0):
                for d in range(n1):
                    expected[c * n1 + d, a * m0 + b] = sum(co[c, d, a * 2 + s] * ci[a, c * 2 + s, b] for s in range(2))
    x = torch.randn(5, 6, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(layer(x), x @ expected.T, atol=1e-12)
        assert torch.allclose(layer.merged_weight(), expected, atol=1e-12)


@pytest.mark.parametrize(("n_in", "n_out"), [(16, 16), (16, 32)])
def test_rank_one_is_blockshuffle_up_to_the_output_order_when_m1_is_n0_and_the_inner_width_b_squared(n_in, n_out):
    """16 = 4 x 4 and 32 = 4 x 8: m1 = n0 = 4 = B and min(in, out) = 16 = B^2. The two cores are BlockShuffle's
    two block-diagonals around the same shuffle; BlockShuffle then un-shuffles its output, which BTT's index
    order (c n1 + d) leaves out."""
    btt = _layer(n_in, n_out, rank=1)
    monarch = BlockShuffleLinear(n_in, n_out, num_blocks=4, bias=False)
    assert monarch.blocks_in.shape == btt.core_in.shape and monarch.blocks_out.shape == btt.core_out.shape
    with torch.no_grad():
        monarch.blocks_in.copy_(btt.core_in)
        monarch.blocks_out.copy_(btt.core_out)
        x = torch.randn(3, n_in)
        assert torch.allclose(monarch(x), unshuffle(btt(x), 4), atol=1e-6)


def test_rank_one_is_no_blockshuffle_at_64_to_256():
    """64 = 8 x 8, 256 = 16 x 16: m1 = 8 but n0 = 16, so the cores (8 blocks of 16 x 8, 16 blocks of 16 x 8:
    64 x 16 + 8 x 256 = 3072 weights) match no BlockShuffle's factors (B blocks of (64/B) x (64/B) and of
    (256/B) x (64/B): 64 x 320 / B weights, 2560 at B = 8)."""
    btt = _layer(64, 256, rank=1)
    assert btt.core_in.shape == (8, 16, 8) and btt.core_out.shape == (16, 16, 8)
    assert btt.num_matrix_params() == 64 * 16 + 8 * 256 == 3072
    for b in (2, 4, 8, 16, 32, 64):  # every block count that divides both widths
        monarch = BlockShuffleLinear(64, 256, num_blocks=b, bias=False)
        assert monarch.num_matrix_params() == 64 * 320 // b != 3072
        assert (monarch.blocks_in.shape, monarch.blocks_out.shape) != (btt.core_in.shape, btt.core_out.shape)


def test_mup_init_scales_each_core_by_its_fan_in_and_fan_out():
    layer = _layer(192, 768, rank=3)  # core_in: 24 blocks (48 x 8); core_out: 16 blocks (48 x 72)
    assert layer.core_in.shape == (24, 48, 8) and layer.core_out.shape == (16, 48, 72)
    # sqrt(1 / fan_in) min(1, sqrt(fan_out / fan_in)): core_in 8^-1/2 x 1; core_out 72^-1/2 x sqrt(48 / 72)
    assert layer.core_in.std().item() == pytest.approx(0.35355, rel=0.03)
    assert layer.core_out.std().item() == pytest.approx(0.096225, rel=0.03)


def test_zero_out_zeroes_core_out_of_the_layers_that_end_a_residual_branch():
    from lowrank_lm.model import Transformer

    from .conftest import small_config

    cfg = small_config("model.ffn.kind=btt", "model.ffn.rank=2", "model.ffn.init=zero_out",
                       "model.attn.kind=btt", "model.attn.rank=1", "model.attn.init=zero_out")
    model = Transformer(cfg.model)
    ffn, attn = model.blocks[1].ffn, model.blocks[1].attn
    assert not ffn.down.core_out.any() and not attn.out.core_out.any()  # the output side: zero
    assert ffn.down.core_in.std().item() == pytest.approx(16 ** -0.5, rel=0.1)  # 256 = 16 x 16: core_in's fan-in 16
    assert ffn.up.core_out.std().item() > 0 and attn.qkv.core_out.std().item() > 0  # the input side: muP


def _info(*overrides: str) -> dict:
    code, out, err = cli("info", SCALE3, *overrides, "--json")
    assert code == 0, err
    return json.loads(out)


def test_info_at_32_percent_counts_by_hand():
    dense, btt = _info(*BARE), _info("model.ffn.kind=btt", "model.ffn.fraction=0.32", *BARE)
    assert dense["params_ffn"] == 4 * 2 * 192 * 768 == 1179648
    # 36864 R of 294912 per block = 12.5% R: R = 3 is 37.5% (R = 2: 25%, further from 32%)
    assert btt["params_ffn"] == 4 * 3 * (21504 + 15360) == 442368
    # the FFN's forward FLOPs are 2 per weight; nothing else in the model changes
    assert dense["forward_flops_per_token"] - btt["forward_flops_per_token"] == 2 * (1179648 - 442368)
    assert dense["params"] - btt["params"] == 1179648 - 442368


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.ffn.kind=btt", "model.ffn.fraction=0.32", "model.ffn_dim=509"],
     "model.ffn_dim=509 has no factor pair >= 2"),
    # rank 7: up 7 x 21504 = 150528 > 192 x 768 = 147456 weights
    (["model.ffn.kind=btt", "model.ffn.rank=7"], "use a rank of at most 6"),
    (["model.ffn.kind=btt"], "model.ffn.rank (the BTT rank) is required"),
    (["model.ffn.kind=btt", "model.ffn.rank=2", "model.ffn.init=spectral"], "use mup or orthonormal or zero_out"),
])
def test_settings_that_do_not_fit_are_one_line_errors(overrides, message):
    code, out, err = cli("info", SCALE3, *overrides)
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1


def test_bench_ffn_has_a_btt_row(capsys):
    code, out, err = cli("bench", "ffn", "--widths", "32", "--kinds", "btt", "--fractions", "0.32", "--tokens", "16",
                         "--rounds", "1", "--min-round-s", "0.001", "--threads", "1", "--device", "cpu", "--premerge",
                         "--premerge-max-tokens", "16", "--json")
    assert code == 0, err
    rows = [r for r in json.loads(out) if r["kind"] == "btt"]
    # 32 = 4 x 8, 128 = 8 x 16: up 32 x 8 + 8 x 128 = 1280, down 128 x 4 + 16 x 32 = 1024 per rank, dense 8192
    assert [(r["rank"], r["premerge"]) for r in rows] == [(1, False), (1, True)]
    assert rows[0]["param_fraction"] == pytest.approx((1280 + 1024) / 8192)
    assert rows[1]["path"] == "merged"


def test_sweep_solves_btt_ranks_per_size(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"out_dir: {tmp_path / 'runs'}\nsizes:\n  s2: {CPU / 'scale-2.yaml'}\n"
                     f"  s3: {CPU / 'scale-3.yaml'}\n"
                     "structures:\n  dense: {}\n  btt: {fractions: [0.32]}\nbudgets: {tokens: [40960]}\n")
    code, out, err = cli("sweep", str(sweep), "--dry-run")
    assert code == 0, err
    # scale-2: 128 = 8 x 16, 512 = 16 x 32: (128 x 16 + 16 x 512 + 512 x 8 + 32 x 128) R / (2 x 128 x 512) = 14.1% R
    assert "s2-btt-32" in out and "btt R=2 (28.1%)" in out
    # scale-3: 12.5% R (test_info_at_32_percent_counts_by_hand)
    assert "s3-btt-32" in out and "btt R=3 (37.5%)" in out
    assert not (tmp_path / "runs").exists()


def test_export_merged_onto_the_stock_class_computes_our_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    ours = make_run(tmp_path / "run", ["model.ffn.kind=btt", "model.ffn.rank=2"])  # 64 = 8 x 8, 256 = 16 x 16
    code, _, err = cli("export", str(tmp_path / "run"), str(tmp_path / "hf"), "--merge")
    assert code == 0, err
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "GPTNeoXForCausalLM"
    ids = torch.randint(0, MODEL_VOCAB, (2, ours.cfg.seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert relative_error(ours(ids), hf(ids).logits) < 1e-4

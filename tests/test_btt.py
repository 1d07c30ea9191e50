"""Block Tensor-Train (``model.ffn.kind=btt``): its definition, counts, init, training, bench, sweep and export.

Hand counts use scale-3's widths: hidden 192 = 12 x 16 and FFN 768 = 24 x 32 (the most balanced factor pairs).
A BTT layer in -> out with in = m0 x m1, out = n0 x n1 keeps R (in n0 + m1 out) weights:
up 192 -> 768: R (192 x 24 + 16 x 768) = 16896 R; down 768 -> 192: R (768 x 12 + 32 x 192) = 15360 R.
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
from lowrank_lm.layers.btt import BTTLinear, balanced_factors

from .ecosystem import MODEL_VOCAB, cli, make_run, relative_error

CPU = Path(__file__).resolve().parents[1] / "configs" / "cpu"
SCALE3 = "configs/cpu/scale-3.yaml"
BARE = ["model.ffn.keep_dense_layers=[]", "model.bias=false"]  # every FFN structured; FFN params = matrices


def _layer(n_in: int, n_out: int, rank: int, bias: bool = False) -> BTTLinear:
    return registry.build(n_in, n_out, FFNConfig(kind="btt", rank=rank), bias, std=0.02)  # type: ignore[return-value]


def test_widths_split_into_their_most_balanced_factor_pair():
    assert balanced_factors(192) == (12, 16)
    assert balanced_factors(768) == (24, 32)
    assert balanced_factors(128) == (8, 16)
    assert balanced_factors(36) == (6, 6)
    assert balanced_factors(127) is None  # a prime has no two-core split


def test_each_weight_is_the_papers_sum_over_the_rank():
    """W[(c, d), (a, b)] = sum_s core_out[c, d, a r + s] core_in[a, c r + s, b], entry by entry."""
    layer = _layer(6, 12, rank=2).double()  # 6 = 2 x 3, 12 = 3 x 4
    (m0, m1), (n0, n1) = layer.in_factors, layer.out_factors
    assert (m0, m1, n0, n1) == (2, 3, 3, 4)
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


def test_rank_one_is_blockshuffle_up_to_the_output_order():
    """At R = 1 (16 = 4 x 4) the two cores are BlockShuffle's two block-diagonals around the same shuffle;
    BlockShuffle then un-shuffles its output, which BTT's index order (c n1 + d) leaves out."""
    btt = _layer(16, 16, rank=1)
    monarch = BlockShuffleLinear(16, 16, num_blocks=4, bias=False)
    with torch.no_grad():
        monarch.blocks_in.copy_(btt.core_in)
        monarch.blocks_out.copy_(btt.core_out)
        x = torch.randn(3, 16)
        assert torch.allclose(monarch(x), unshuffle(btt(x), 4), atol=1e-6)


def test_mup_init_scales_each_core_by_its_fan_in_and_fan_out():
    layer = _layer(192, 768, rank=3)  # core_in: 16 blocks (72 x 12); core_out: 24 blocks (32 x 48)
    assert layer.core_in.shape == (16, 72, 12) and layer.core_out.shape == (24, 32, 48)
    # sqrt(1 / fan_in) min(1, sqrt(fan_out / fan_in)): core_in 12^-1/2 x 1; core_out 48^-1/2 x sqrt(32 / 48)
    assert layer.core_in.std().item() == pytest.approx(0.28868, rel=0.03)
    assert layer.core_out.std().item() == pytest.approx(0.11785, rel=0.03)


def _info(*overrides: str) -> dict:
    code, out, err = cli("info", SCALE3, *overrides, "--json")
    assert code == 0, err
    return json.loads(out)


def test_info_at_32_percent_counts_by_hand():
    dense, btt = _info(*BARE), _info("model.ffn.kind=btt", "model.ffn.fraction=0.32", *BARE)
    assert dense["params_ffn"] == 4 * 2 * 192 * 768 == 1179648
    assert btt["params_ffn"] == 4 * 3 * (16896 + 15360) == 387072  # R = 3: 32.8% (R = 2: 21.9%, R = 4: 43.8%)
    # the FFN's forward FLOPs are 2 per weight; nothing else in the model changes
    assert dense["forward_flops_per_token"] - btt["forward_flops_per_token"] == 2 * (1179648 - 387072)
    assert dense["params"] - btt["params"] == 1179648 - 387072


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.ffn.kind=btt", "model.ffn.fraction=0.32", "model.ffn_dim=509"],
     "model.ffn_dim=509 has no factor pair >= 2"),
    (["model.ffn.kind=btt", "model.ffn.rank=9"], "use a rank of at most 8"),
    (["model.ffn.kind=btt"], "model.ffn.rank (the BTT rank) is required"),
    (["model.ffn.kind=btt", "model.ffn.rank=2", "model.ffn.init=spectral"], "use mup or orthonormal"),
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
    assert "s3-btt-32" in out and "btt R=3 (32.8%)" in out
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

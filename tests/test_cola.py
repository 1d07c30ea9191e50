"""CoLA-style bottleneck (``model.ffn.kind=cola``): U silu(V x), its counts, init, fused path, training,
bench, sweep and export, and the one-line errors of everything that needs a merged weight (it is not linear).

Hand counts use scale-3's widths (hidden 192, FFN 768): at 32% the rank is 48, and each of the two layers
keeps (192 + 768) x 48 = 46080 weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lowrank_lm.config import FFNConfig
from lowrank_lm.layers import registry
from lowrank_lm.layers.cola import CoLALinear
from lowrank_lm.layers.fused import gelu_linear

from .conftest import small_config
from .ecosystem import cli, make_run, make_tokenizer

CPU = Path(__file__).resolve().parents[1] / "configs" / "cpu"
SCALE3 = "configs/cpu/scale-3.yaml"
BARE = ["model.ffn.keep_dense_layers=[]", "model.bias=false"]  # every FFN structured; FFN params = matrices
COLA = ["model.ffn.kind=cola", "model.ffn.rank=16"]


def _layer(n_in: int, n_out: int, rank: int, init: str | None = None) -> CoLALinear:
    cfg = FFNConfig(kind="cola", rank=rank, init=init)  # type: ignore[arg-type]
    return registry.build(n_in, n_out, cfg, True, std=0.02)  # type: ignore[return-value]


def test_layer_is_u_silu_v_x_plus_bias():
    layer = _layer(12, 20, rank=4).double()
    with torch.no_grad():
        layer.bias.normal_()
        x = torch.randn(3, 12, dtype=torch.float64)
        h = x @ layer.v.T
        expected = (h / (1 + torch.exp(-h))) @ layer.u.T + layer.bias  # silu(h) = h sigmoid(h)
        assert torch.allclose(layer(x), expected, atol=1e-12)
    with pytest.raises(TypeError, match="not linear"):
        layer.merged_weight()


def test_papers_init_gives_u_v_the_variance_one_over_in_plus_out():
    layer = _layer(192, 768, rank=48)
    sigma = (48 * (192 + 768)) ** -0.25  # 0.0682: both factors alike
    assert layer.u.std().item() == pytest.approx(sigma, rel=0.03)
    assert layer.v.std().item() == pytest.approx(sigma, rel=0.03)
    assert (layer.u @ layer.v).var().item() == pytest.approx(1 / 960, rel=0.05)
    spectral = _layer(192, 768, rank=48, init="spectral")  # LowRank's init, for ablations
    assert torch.linalg.matrix_rank(spectral.u @ spectral.v).item() == 48


def test_fused_bias_gelu_path_matches_the_plain_one():
    """Its last factor is a plain matrix, so inference fuses bias + GELU into U's matmul (layers/fused.py)."""
    layer = _layer(32, 128, rank=16).eval()
    with torch.no_grad():
        layer.bias.normal_()
        x = torch.randn(64, 32)
        h, u = layer.dense_tail(x)
        assert u is layer.u and h.shape == (64, 16)
        assert torch.allclose(gelu_linear(layer, x), torch.nn.functional.gelu(layer(x), approximate="tanh"),
                              atol=1e-5)


def _info(*overrides: str) -> dict:
    code, out, err = cli("info", SCALE3, *overrides, "--json")
    assert code == 0, err
    return json.loads(out)


def test_info_at_32_percent_counts_by_hand():
    dense, cola = _info(*BARE), _info("model.ffn.kind=cola", "model.ffn.fraction=0.32", *BARE)
    assert dense["params_ffn"] == 4 * 2 * 192 * 768 == 1179648
    assert cola["params_ffn"] == 4 * 2 * 46080 == 368640  # R = 48: 31.25%
    # 2 FLOPs per weight; the SiLU, like the GELU between the layers, is not a matmul and is not counted
    assert dense["forward_flops_per_token"] - cola["forward_flops_per_token"] == 2 * (1179648 - 368640)
    assert cola["guide_flops_per_token"] == 0  # no guide can exist without a merged weight


@pytest.mark.parametrize(("argv", "message"), [
    (["info", SCALE3, *COLA, "model.ffn.premerge_max_tokens=16"],
     "premerge_max_tokens does not apply to model.ffn.kind=cola (not linear: no merged weight)"),
    (["info", SCALE3, *COLA, "train.self_guided.enabled=true"],
     "model.ffn.kind=cola is not linear (no merged weight)"),
])
def test_what_needs_a_merged_weight_is_a_one_line_error(argv, message):
    code, out, err = cli(*argv)
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1


def test_export_merge_and_generate_premerge_are_refused_and_generate_runs(tmp_path):
    make_run(tmp_path / "run", COLA, make_tokenizer(tmp_path / "tok" / "tokenizer.json"))
    code, out, err = cli("export", str(tmp_path / "run"), str(tmp_path / "hf"), "--merge")
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert "export --merge needs linear structures" in err and "model.ffn.kind=cola" in err
    assert not (tmp_path / "hf").exists()
    code, out, err = cli("generate", str(tmp_path / "run"), "--prompt", "the cat", "--premerge-tokens", "8")
    assert code == 2 and "pre-merge needs linear structures" in err and err.count("\n") == 1
    code, out, err = cli("generate", str(tmp_path / "run"), "--prompt", "the cat", "--max-new-tokens", "3",
                         "--seed", "1")
    assert code == 0 and out.startswith("the cat"), err  # no pre-merge by default for a non-linear kind


def test_model_premerge_is_refused():
    from lowrank_lm.errors import UserError
    from lowrank_lm.model import Transformer
    from lowrank_lm.premerge import premerge

    model = Transformer(small_config(*COLA).model)
    with pytest.raises(UserError, match="pre-merge needs linear structures"):
        premerge(model, 16)
    premerge(model, 0)  # turning it off is fine


def test_bench_ffn_has_a_cola_row_and_no_premerged_one(capsys):
    code, out, err = cli("bench", "ffn", "--widths", "32", "--kinds", "cola", "--fractions", "0.32", "--tokens", "16",
                         "--rounds", "1", "--min-round-s", "0.001", "--threads", "1", "--device", "cpu", "--premerge",
                         "--premerge-max-tokens", "16", "--json")
    assert code == 0, err
    rows = [r for r in json.loads(out) if r["kind"] == "cola"]
    assert [(r["rank"], r["premerge"]) for r in rows] == [(8, False)]  # (32 + 128) x 8 x 2 / 8192 = 31.25%
    assert rows[0]["param_fraction"] == pytest.approx(0.3125)


def test_sweep_solves_cola_ranks_per_size(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"out_dir: {tmp_path / 'runs'}\nsizes:\n  s2: {CPU / 'scale-2.yaml'}\n"
                     f"  s3: {CPU / 'scale-3.yaml'}\n"
                     "structures:\n  dense: {}\n  cola: {fractions: [0.32, 0.63]}\nbudgets: {tokens: [40960]}\n")
    code, out, err = cli("sweep", str(sweep), "--dry-run")
    assert code == 0, err
    for run, setting in [("s2-cola-32", "cola R=32 (31.2%)"), ("s3-cola-32", "cola R=48 (31.2%)"),
                         ("s3-cola-63", "cola R=96 (62.5%)")]:
        assert run in out and setting in out
    assert not (tmp_path / "runs").exists()

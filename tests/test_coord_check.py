"""Coordinate check (``lowrank-lm coord-check``): under muP every layer's RMS stays flat as the model widens, for
dense and every registered structure; under the standard parametrisation the logits grow.

Widths 128 to 1024 (2 blocks, 32 tokens, 3 AdamW steps at lr 3e-3): four points, and no width below 128, because
finite-size effects (not a trend) tilt a short fit: BlockDense's down layer reads 0.76, 0.61, 0.55, 0.63 at
128 ... 1024 (slope -0.10), where 128 ... 512 alone fit -0.24. Block 0's FFN stays dense; block 1's is the
structure, so the structured factors' own outputs are among the layers checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lowrank_lm.coord_check import check_width, slopes, width_config
from lowrank_lm.layers import registry

from .ecosystem import cli

WIDTHS = (128, 256, 512, 1024)
STEPS = 3
# a share of the FFN that solves to settings growing with the width (ranks x 2 per doubling), else fixed blocks
SETTINGS = {"dense": [], "lowrank": ["model.ffn.fraction=0.32"], "blockshuffle": ["model.ffn.num_blocks=4"],
            "blockdense": ["model.ffn.fraction=0.32"], "btt": ["model.ffn.rank=1"],
            "cola": ["model.ffn.fraction=0.32"]}


def _overrides(data_dir: Path, kind: str, *extra: str) -> list[str]:
    return ["model.vocab_size=512", "model.seq_len=32", "model.num_layers=2", "model.num_q_heads=2",
            f"data.dir={data_dir}", "data.tokenizer=bpe-512", "data.val_tokens=8192", "data.max_tokens=120000",
            "train.global_batch_size=8", "train.lr=3e-3", f"model.ffn.kind={kind}", *SETTINGS[kind], *extra]


def _slopes(data_dir: Path, kind: str, *extra: str) -> dict[str, float]:
    records = [r for w in WIDTHS for r in check_width(width_config(None, _overrides(data_dir, kind, *extra), w),
                                                      data_dir, STEPS)]
    assert {r.step for r in records} == set(range(STEPS + 1)) and {r.width for r in records} == set(WIDTHS)
    return slopes(records, STEPS)


def test_every_kind_has_settings_here():
    assert set(SETTINGS) == set(registry.kinds())


@pytest.mark.parametrize("kind", registry.kinds())
def test_under_mup_every_layer_keeps_its_size_as_the_model_widens(tiny_data, kind):
    fitted = _slopes(tiny_data, kind, "model.parametrization=mup", "model.mup_base_width=128")
    expected = {"embed", "logits"} | {f"blocks.{i}.{p}" for i in (0, 1) for p in ("attn", "ffn")}
    if registry.get(kind).structured:  # block 1's structured layers: each factor's output
        expected |= {f"blocks.1.ffn.{layer}{end}" for layer in ("up", "down") for end in ("", ".inner")}
    assert set(fitted) == expected
    bad = {layer: round(s, 3) for layer, s in fitted.items() if abs(s) > 0.2}
    assert not bad, f"{kind}: log RMS vs log width slopes beyond +-0.2 after step {STEPS}: {bad}"


def test_under_standard_the_logits_grow_with_width(tiny_data):
    fitted = _slopes(tiny_data, "dense")
    assert fitted["logits"] > 0.3
    assert fitted["blocks.1.ffn"] > 0.3  # the hidden layers' updates grow too (one learning rate for all widths)


def test_command_writes_records_and_plot(tiny_data, tmp_path):
    pytest.importorskip("matplotlib")
    over = _overrides(tiny_data, "btt", "model.parametrization=mup", "model.mup_base_width=32")
    code, out, err = cli("coord-check", "configs/cpu/tiny.yaml", *over, "--widths", "32,64", "--steps", "1",
                         "--out", str(tmp_path / "cc"), "--json")
    assert code == 0, err
    records = json.loads(out)
    assert records == json.loads((tmp_path / "cc" / "coord_check.json").read_text())
    assert {tuple(sorted(r)) for r in records} == {("layer", "rms", "step", "width")}
    assert {(r["step"], r["width"]) for r in records} == {(s, w) for s in (0, 1) for w in (32, 64)}
    assert (tmp_path / "cc" / "coord_check.png").stat().st_size > 0
    code, out, err = cli("coord-check", "configs/cpu/tiny.yaml", *over, "--widths", "32,64", "--steps", "1")
    assert code == 0, err
    assert "after step 1" in out and "blocks.1.ffn.down.inner" in out


@pytest.mark.parametrize(("args", "message"), [
    (["--widths", "64"], "two or more positive widths"),
    (["--widths", "64,x"], "comma-separated integers"),
    (["--steps", "0"], "positive integer"),
    (["model.ffn_dim=100", "--widths", "64,100"], "does not scale to width 100"),
])
def test_bad_arguments_are_one_line_errors(args, message):
    code, out, err = cli("coord-check", "configs/cpu/tiny.yaml", *args)
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1

"""The structure registry: every registered kind builds, counts, merges and solves a fraction.

The hand counts below are written per kind on purpose: a new structure fails ``test_every_kind_has_a_hand_count``
until its test adds one, so no kind enters the registry without its accounting checked.
"""

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lowrank_lm import sizing
from lowrank_lm.config import FFNConfig, ModelConfig
from lowrank_lm.errors import ConfigError
from lowrank_lm.layers import registry
from lowrank_lm.resolve import load_config
from lowrank_lm.train import run_training
from lowrank_lm.train.metrics import read_metrics

from .conftest import tiny_run_config
from .ecosystem import cli

SCALE3 = "configs/cpu/scale-3.yaml"
H, F = 192, 768  # scale-3's widths
SETTINGS = {"dense": {}, "lowrank": {"rank": 16}, "blockshuffle": {"num_blocks": 4},
            "blockdense": {"rank": 16, "num_blocks": 4}, "btt": {"rank": 2}, "cola": {"rank": 16}}
# Weights of one (n_in -> n_out) layer, from the structures' definitions (reference section 3.1).
HAND_PARAMS = {
    "dense": lambda i, o, s: i * o,
    "lowrank": lambda i, o, s: (i + o) * s["rank"],
    "blockshuffle": lambda i, o, s: min(i, o) * (i + o) // s["num_blocks"],
    "blockdense": lambda i, o, s: s["rank"] * (i // s["num_blocks"] + o),
    # 32 = 4 x 8 and 128 = 8 x 16; R (in n0 + m1 out) with (m0, m1) the input's factors, (n0, n1) the output's
    "btt": lambda i, o, s: {(32, 128): 2 * (32 * 8 + 8 * 128), (128, 32): 2 * (128 * 4 + 16 * 32)}[(i, o)],
    "cola": lambda i, o, s: (i + o) * s["rank"],
}
# The FFN weight share of each candidate setting at widths h, f (up + down against 2hf), ranks in steps of 8.
HAND_SHARES = {
    "lowrank": lambda h, f: [(h + f) * r / (h * f) for r in range(8, min(h, f) + 1, 8)],
    "blockshuffle": lambda h, f: [min(h, f) * (h + f) / (b * h * f) for b in range(2, min(h, f) + 1)
                                  if h % b == 0 and f % b == 0],
    "blockdense": lambda h, f: [r * (h + f) * (1 + 1 / 4) / (2 * h * f) for r in range(8, min(h, f) + 1, 8)],
    # at H = 192 = 8 x 24 and F = 768 = 16 x 48 (the authors' split): up 192*16 + 24*768, down 768*8 + 48*192
    # per BTT rank 1, 2, ..., up to 6 (rank 7's up layer, 7 x 21504 weights, outgrows a dense 192 x 768 one)
    "btt": lambda h, f: [r * (h * 16 + 24 * f + f * 8 + 48 * h) / (2 * h * f) for r in range(1, 7)],
    "cola": lambda h, f: [(h + f) * r / (h * f) for r in range(8, min(h, f) + 1, 8)],
}


def _layer(kind: str, n_in: int, n_out: int, bias: bool = True):
    cfg = FFNConfig(kind=kind, **SETTINGS[kind])
    return registry.build(n_in, n_out, cfg, bias, std=0.02)


def test_every_kind_has_a_hand_count():
    assert set(HAND_PARAMS) == set(registry.kinds())
    assert set(HAND_SHARES) == set(registry.structured_kinds())


@pytest.mark.parametrize("kind", registry.kinds())
@pytest.mark.parametrize("shape", [(32, 128), (128, 32)])
def test_params_and_flops_match_hand_counts(kind, shape):
    layer = _layer(kind, *shape, bias=False)
    weights = sum(p.numel() for p in layer.parameters())
    assert layer.num_matrix_params() == weights == HAND_PARAMS[kind](*shape, SETTINGS[kind])
    tokens = 64
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        layer(torch.randn(tokens, shape[0]))
    assert counter.get_total_flops() == tokens * layer.flops_per_token()


@pytest.mark.parametrize("kind", registry.linear_kinds())
def test_merged_weight_is_the_layers_product(kind):
    layer = _layer(kind, 32, 128).double()
    with torch.no_grad():
        layer.bias.normal_()
        x = torch.randn(5, 32, dtype=torch.float64)
        expected = layer(x) - layer.bias
        assert torch.allclose(x @ layer.merged_weight().T, expected, atol=1e-12)


@pytest.mark.parametrize("kind", registry.structured_kinds())
def test_solve_picks_the_nearest_hand_share(kind):
    model = ModelConfig(hidden_dim=H, ffn_dim=F, num_q_heads=1, num_layers=1, ffn=FFNConfig(keep_dense_layers=[]))
    settings, share = sizing.solve(model, kind, 0.32)
    nearest = min(HAND_SHARES[kind](H, F), key=lambda s: abs(s - 0.32))
    assert share == pytest.approx(nearest)
    cfg = load_config(SCALE3, [f"model.ffn.kind={kind}", "model.ffn.fraction=0.32"])
    assert cfg.model.ffn.fraction is None  # resolved into the settings themselves
    assert {k: getattr(cfg.model.ffn, k) for k in settings} == settings


def _info(*overrides: str) -> tuple[int, str, str]:
    """``lowrank-lm info SCALE3 OVERRIDES --json``: (exit code, stdout, stderr)."""
    return cli("info", SCALE3, *overrides, "--json")


def test_info_fraction_for_every_kind(capsys):
    """`info ... model.ffn.kind=K model.ffn.fraction=0.32` for each kind: the FFN holds the hand-nearest share."""
    bare = ["model.ffn.keep_dense_layers=[]", "model.bias=false"]  # FFN params = the matrices alone
    dense = json.loads(_info(*bare)[1])["params_ffn"]
    for kind in registry.structured_kinds():
        code, out, err = _info(f"model.ffn.kind={kind}", "model.ffn.fraction=0.32", *bare)
        assert code == 0, err
        share = json.loads(out)["params_ffn"] / dense
        shares = HAND_SHARES[kind](H, F)
        nearest = min(shares, key=lambda s: abs(s - 0.32))
        assert math.isclose(share, nearest), kind
        # within half a candidate step of the target (BTT's step is 12.5% at these widths: 37.5% is nearest)
        step = max(abs(b - a) for a, b in itertools.pairwise(shares))
        assert abs(share - 0.32) <= step / 2, kind
    code, out, err = _info("model.ffn.kind=dense", "model.ffn.fraction=0.32")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "does not apply to model.ffn.kind=dense" in err
    assert all(k in err for k in registry.structured_kinds())


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.ffn.kind=lowrank", "model.ffn.fraction=0.32", "model.ffn.rank=48"], "remove one of them"),
    (["model.ffn.kind=blockshuffle", "model.ffn.fraction=0.32", "model.ffn.rank=48"],
     "does not apply to model.ffn.kind=blockshuffle"),
    (["model.ffn.kind=lowrank", "model.ffn.fraction=1.5"], "between 0 and 1"),
    (["model.ffn.kind=blockdense", "model.ffn.fraction=0.32", "model.ffn.num_blocks=5"], "does not divide"),
])
def test_fraction_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SCALE3, overrides)


def test_fraction_keeps_a_given_block_count_and_explicit_settings_still_work():
    cfg = load_config(SCALE3, ["model.ffn.kind=blockdense", "model.ffn.fraction=0.32", "model.ffn.num_blocks=2"])
    assert cfg.model.ffn.num_blocks == 2 and cfg.model.ffn.rank % 2 == 0
    cfg = load_config(SCALE3, ["model.ffn.kind=lowrank", "model.ffn.rank=40"])
    assert cfg.model.ffn.rank == 40


def test_no_module_outside_layers_names_a_structure():
    # adding a structure is one module under layers/: nothing else may spell a kind's name as a string
    # (stats/paper_data.py is the exception: it holds the paper's printed series labels, as data; and the
    # config, which imports no layer, names its default kind once, as config.DEFAULT_KIND)
    import ast

    from lowrank_lm import config

    root = Path(registry.__file__).resolve().parents[1]
    named = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("layers/") or rel == "stats/paper_data.py":
            continue
        tree = ast.parse(path.read_text())
        default = [node.value for node in tree.body if rel == "config.py" and isinstance(node, ast.Assign)
                   and [ast.unparse(t) for t in node.targets] == ["DEFAULT_KIND"]]
        named += [f"{rel}:{node.lineno} {node.value!r}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and node.value in registry.kinds() and node not in default]
    assert not named
    assert config.DEFAULT_KIND == registry.DENSE  # the config's one name is the registry's baseline
    assert "paper_data.py" in {p.name for p in (root / "stats").iterdir()}  # the exception still exists


@pytest.mark.parametrize("kind", registry.structured_kinds())
def test_every_structure_trains_on_the_tiny_preset(kind, tiny_data, tmp_path):
    # 20 steps of the tests' tiny preset at 32% of the FFN weights: the loss falls (by 0.3 over the run)
    run_training(tiny_run_config(tiny_data, tmp_path / "run", f"model.ffn.kind={kind}", "model.ffn.fraction=0.32",
                                 "train.checkpoint_interval=1000"))
    loss = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert len(loss) == 20 and sum(loss[-4:]) < sum(loss[:4]) - 4 * 0.3, loss

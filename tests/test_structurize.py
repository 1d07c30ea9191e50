"""structurize on plain PyTorch modules: targets, sizes, from_dense projections, counts, meta, refusals."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lowrank_lm import structurize
from lowrank_lm.errors import UserError
from lowrank_lm.layers import registry
from lowrank_lm.layers.base import StructuredLinear

LOW = registry.HEADLINE  # the plain low-rank structure


class Block(nn.Module):
    def __init__(self, h: int = 32, f: int = 64) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(h)
        self.attn = nn.ModuleDict({"q": nn.Linear(h, h), "out": nn.Linear(h, h, bias=False)})
        self.mlp = nn.Sequential(nn.Linear(h, f), nn.GELU(), nn.Linear(f, h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn["out"](self.attn["q"](self.norm(x)))
        return x + self.mlp(x)


class Net(nn.Module):
    def __init__(self, n: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block() for _ in range(n))
        self.lm_head = nn.Linear(32, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.layers:
            x = b(x)
        return self.lm_head(x)


def _structured(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, StructuredLinear)]


def test_svd_init_is_exact_at_full_rank_and_eckart_young_below():
    torch.manual_seed(0)
    w = torch.randn(24, 40)
    s = torch.linalg.svdvals(w)
    for rank, expected in ((24, 0.0), (5, float(s[5:].square().sum().sqrt()))):
        model = nn.Sequential(nn.Linear(40, 24))
        model[0].weight.data.copy_(w)
        bias = model[0].bias.detach().clone()
        report = structurize(model, LOW, rank=rank, targets="0", init="from_dense")
        assert torch.equal(model[0].bias, bias)
        merged = model[0].merged_weight()
        assert float((merged - w).norm()) == pytest.approx(expected, abs=2e-4)
        assert report.replaced[0].error == pytest.approx(expected / float(w.norm()), abs=1e-5)


def _structure_matrix(kind: str, n_in: int, n_out: int, **settings: int) -> torch.Tensor:
    """A dense matrix that ``kind`` holds exactly: the merged weight of a random layer of that kind."""
    model = nn.Sequential(nn.Linear(n_in, n_out))
    structurize(model, kind, targets="0", **settings)
    for p in model[0].parameters():
        p.data.normal_()
    return model[0].merged_weight()


@pytest.mark.parametrize(("kind", "settings"), [("blockdense", {"rank": 8, "num_blocks": 4}),
                                                 ("blockshuffle", {"num_blocks": 4}),
                                                 ("btt", {"rank": 2})])
def test_from_dense_recovers_a_matrix_of_the_family_exactly(kind, settings):
    torch.manual_seed(1)
    w = _structure_matrix(kind, 48, 32, **settings)
    model = nn.Sequential(nn.Linear(48, 32))
    model[0].weight.data.copy_(w)
    report = structurize(model, kind, targets="0", init="from_dense", **settings)
    assert torch.allclose(model[0].merged_weight(), w, atol=1e-4)
    assert report.replaced[0].error < 1e-5


def test_blockdense_from_dense_error_is_the_discarded_spectrum_of_its_column_blocks():
    # BlockDense = U blockdiag(V): input block b is approximated by its own rank R/B SVD
    torch.manual_seed(2)
    w = torch.randn(32, 48)
    model = nn.Sequential(nn.Linear(48, 32))
    model[0].weight.data.copy_(w)
    structurize(model, "blockdense", rank=8, num_blocks=4, targets="0", init="from_dense")
    discarded = sum(float(torch.linalg.svdvals(w[:, 12 * b:12 * (b + 1)])[2:].square().sum()) for b in range(4))
    assert float((model[0].merged_weight() - w).norm()) == pytest.approx(math.sqrt(discarded), rel=1e-4)


def test_btt_from_dense_error_is_the_discarded_spectrum_of_its_sub_blocks():
    # the authors' split: 48 = 4 x 12 inputs, 32 = 4 x 8 outputs; each (8 x 4) sub-block
    # W[c*8:(c+1)*8, a*4:(a+1)*4] keeps rank 2
    torch.manual_seed(3)
    w = torch.randn(32, 48)
    model = nn.Sequential(nn.Linear(48, 32))
    model[0].weight.data.copy_(w)
    structurize(model, "btt", rank=2, targets="0", init="from_dense")
    assert (model[0].in_factors, model[0].out_factors) == ((4, 12), (4, 8))
    discarded = sum(float(torch.linalg.svdvals(w[8 * c:8 * (c + 1), 4 * a:4 * (a + 1)])[2:].square().sum())
                    for c in range(4) for a in range(12))
    assert float((model[0].merged_weight() - w).norm()) == pytest.approx(math.sqrt(discarded), rel=1e-4)


def test_non_linear_structure_refuses_from_dense_in_one_line_and_leaves_the_model():
    model = Net()
    before = [type(m).__name__ for m in model.modules()]
    with pytest.raises(UserError, match="not defined for kind cola") as e:
        structurize(model, "cola", fraction=0.5, init="from_dense")
    assert "\n" not in str(e.value)
    assert [type(m).__name__ for m in model.modules()] == before
    structurize(model, "cola", fraction=0.5)  # fresh init works
    assert len(_structured(model)) == 6


def test_presets_patterns_and_keep_dense():
    model = Net()
    report = structurize(model, LOW, fraction=0.5, targets="ffn", keep_dense=1)
    assert _structured(model) == ["layers.1.mlp.0", "layers.1.mlp.2", "layers.2.mlp.0", "layers.2.mlp.2"]
    assert report.kept_dense == ["layers.0.mlp.0", "layers.0.mlp.2"]
    model = Net()
    structurize(model, LOW, rank=8, targets=["*.out", "attn.q"])
    assert _structured(model) == [f"layers.{i}.attn.{p}" for i in range(3) for p in ("q", "out")]
    model = Net()
    structurize(model, LOW, rank=8, targets="all-linear")
    assert len(_structured(model)) == 12 and isinstance(model.lm_head, nn.Linear)  # the head stays


@pytest.mark.parametrize(("targets", "message"), [
    (["*.nothing_here"], "matches no module"),
    (["norm"], "matches no linear layer"),
    (["mlp"], "matches no linear layer"),  # the container, not its layers
    ([], "targets is empty"),
])
def test_bad_targets_are_one_line_errors(targets, message):
    model = Net()
    with pytest.raises(UserError, match=message) as e:
        structurize(model, LOW, rank=8, targets=targets)
    assert "\n" not in str(e.value) and not _structured(model)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kind": LOW, "rank": 8, "fraction": 0.5}, "both size"),
    ({"kind": LOW, "num_blocks": 4, "rank": 8}, "num_blocks does not apply"),
    ({"kind": LOW, "fraction": 1.5}, "between 0 and 1"),
    ({"kind": LOW}, "give fraction"),
    ({"kind": registry.DENSE, "rank": 8}, "dense baseline"),
    ({"kind": LOW, "rank": 40}, "larger than"),  # fits the 64-wide layers, not the 32-wide ones
    ({"kind": LOW, "rank": 8, "init": "svd"}, "choose one of fresh, from_dense"),
    ({"kind": LOW, "rank": 8, "keep_dense": 3}, "keeps every targeted layer dense"),
    ({"kind": "nope", "rank": 8}, "unknown FFN kind"),
])
def test_bad_settings_are_one_line_errors_and_change_nothing(kwargs, message):
    model = Net()
    with pytest.raises(UserError, match=message) as e:
        structurize(model, targets="all-linear", **kwargs)
    assert "\n" not in str(e.value) and not _structured(model)


def test_keep_dense_needs_block_numbers():
    model = nn.Sequential(nn.Linear(8, 8))
    model.add_module("proj", nn.Linear(8, 8))
    with pytest.raises(UserError, match="needs a block number"):
        structurize(model, LOW, rank=4, targets="proj", keep_dense=1)


def test_fraction_solves_each_layer_width_and_report_counts_params_and_flops():
    model = Net(n=1)
    report = structurize(model, LOW, fraction=0.5, targets="all-linear")
    by_name = {r.name: r for r in report.replaced}
    # 32 -> 32: rank 8 keeps (32 + 32) 8 = 512 of 1024 weights (50%); 32 -> 64: rank 8 keeps 768 of 2048
    # (37.5%), rank 16 keeps 1536 (75%): 8 is nearer 50%
    assert by_name["layers.0.attn.q"].settings == {"rank": 8}
    assert by_name["layers.0.mlp.0"].settings == {"rank": 8}
    q = by_name["layers.0.attn.q"]
    assert (q.params_before, q.params_after) == (32 * 32 + 32, 64 * 8 + 32)
    assert (q.flops_before, q.flops_after) == (2 * 32 * 32, 2 * 64 * 8)
    removed = sum(r.params_before - r.params_after for r in report.replaced)
    assert report.params_after == report.params_before - removed == sum(p.numel() for p in model.parameters())
    head = 2 * 32 * 10
    assert report.flops_after == head + sum(r.flops_after for r in report.replaced)
    assert report.flops_before == head + sum(r.flops_before for r in report.replaced)


def test_meta_device_and_dtype_are_kept():
    with torch.device("meta"):
        model = Net()
    model.to(torch.bfloat16)
    report = structurize(model, "blockshuffle", num_blocks=4, targets="ffn")
    layer = model.layers[0].mlp[0]
    assert all(p.is_meta and p.dtype == torch.bfloat16 for p in layer.parameters())
    assert report.replaced[0].params_after == (32 * 32 + 64 * 32) // 4 + 64
    with pytest.raises(UserError, match="meta device"):
        structurize(model, LOW, rank=8, targets="attention", init="from_dense")


def test_structurized_module_trains_and_matches_its_dense_start():
    torch.manual_seed(0)
    model = Net(n=2)
    x = torch.randn(4, 32)
    with torch.no_grad():
        ref = model(x)
    structurize(model, LOW, rank=32, targets="all-linear", init="from_dense")  # full rank: exact
    assert torch.allclose(model(x), ref, atol=1e-4)
    target = torch.randn(4, 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        loss = (model(x) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]

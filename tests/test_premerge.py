"""Pre-merge wraps structured layers from outside: the model keeps its state-dict keys, its accounting and its
logits, and unmerging puts the very same layers back."""

from __future__ import annotations

import torch

from lowrank_lm.accounting import count_model
from lowrank_lm.model import Transformer
from lowrank_lm.premerge import PremergedLinear, premerge, premerged_layers

from .conftest import small_config


def test_premerged_model_keeps_keys_counts_and_logits_and_unmerges_to_the_same_layers():
    torch.manual_seed(0)
    cfg = small_config("model.ffn.kind=lowrank", "model.ffn.rank=16", "model.attn.kind=blockshuffle",
                       "model.attn.num_blocks=2").model
    model = Transformer(cfg).eval()
    layers = list(model.structured_layers())
    state, counts = model.state_dict(), count_model(model)
    ids = torch.randint(0, cfg.vocab_size, (1, 5))
    with torch.no_grad():
        before = model(ids)
        premerge(model, 8)
        wrapped = premerged_layers(model)
        assert [m.structured for m in wrapped] == layers and all(m.max_tokens == 8 for m in wrapped)
        assert isinstance(model.blocks[1].ffn.up, PremergedLinear)
        assert isinstance(model.blocks[0].attn.qkv, PremergedLinear)
        torch.testing.assert_close(model(ids), before, rtol=1e-5, atol=1e-5)  # 5 tokens: merged weights
    after = model.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], state[k]) for k in state)
    assert count_model(model) == counts
    # a checkpoint loads into a pre-merged model under the model's own keys
    moved = {k: v + 1 for k, v in state.items()}
    model.load_state_dict(moved, strict=True)
    assert torch.equal(model.blocks[1].ffn.up.structured.u, moved["blocks.1.ffn.up.u"])
    premerge(model, 0)
    assert premerged_layers(model) == [] and list(model.structured_layers()) == layers  # the same objects, in place

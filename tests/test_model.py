import math

import pytest
import torch
import torch.nn.functional as F

from lowrank_lm.accounting import build_meta, count_model
from lowrank_lm.decoding import generate
from lowrank_lm.model import KVCache, Transformer
from lowrank_lm.premerge import premerge, premerged_layers
from lowrank_lm.resolve import load_config

from .conftest import small_config

KINDS = {
    "dense": [],
    "lowrank": ["model.ffn.kind=lowrank", "model.ffn.rank=16"],
    "blockshuffle": ["model.ffn.kind=blockshuffle", "model.ffn.num_blocks=4"],
    "blockdense": ["model.ffn.kind=blockdense", "model.ffn.rank=32", "model.ffn.num_blocks=2"],
}
LLAMA = ["model.norm=rmsnorm", "model.activation=swiglu", "model.bias=false", "model.tie_embeddings=false",
         "model.num_kv_heads=2"]


def make(*overrides, seed=0):
    torch.manual_seed(seed)
    return Transformer(small_config(*overrides).model).eval()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("style", ["gpt", "llama"])
def test_changing_a_future_token_never_changes_earlier_logits(kind, style):
    model = make(*KINDS[kind], *(LLAMA if style == "llama" else []))
    ids = torch.randint(0, 97, (2, 20))
    logits = model(ids)
    for pos in (5, 13, 19):
        changed = ids.clone()
        changed[:, pos] = (changed[:, pos] + 1) % 97
        other = model(changed)
        torch.testing.assert_close(other[:, :pos], logits[:, :pos], rtol=0, atol=0)
        assert (other[:, pos] - logits[:, pos]).abs().max() > 1e-6


def reference_attention(attn, x, rope):
    """Plain multi-head attention written out by hand, KV heads repeated explicitly."""
    b, t, _ = x.shape
    q, k, v = attn.qkv(x).split(attn.split, dim=-1)
    q = q.view(b, t, attn.num_q, attn.head_dim).transpose(1, 2)
    k = k.view(b, t, attn.num_kv, attn.head_dim).transpose(1, 2)
    v = v.view(b, t, attn.num_kv, attn.head_dim).transpose(1, 2)
    q, k = rope(q, 0), rope(k, 0)
    rep = attn.num_q // attn.num_kv
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim)
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    y = scores.softmax(-1) @ v
    return attn.out(y.transpose(1, 2).reshape(b, t, -1))


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_attention_matches_handwritten_multihead(kv_heads):
    model = make(f"model.num_kv_heads={kv_heads}", "model.attn_dim=32")  # attn_dim != hidden_dim
    attn = model.blocks[0].attn
    x = torch.randn(2, 11, 64)
    torch.testing.assert_close(attn(x, model.rope, None, 0), reference_attention(attn, x, model.rope),
                               rtol=1e-5, atol=1e-6)


def test_gqa_with_all_kv_heads_equals_plain_multihead():
    model = make("model.num_kv_heads=4")
    plain = make()  # num_kv_heads defaults to num_q_heads
    plain.load_state_dict(model.state_dict())
    ids = torch.randint(0, 97, (2, 16))
    torch.testing.assert_close(model(ids), plain(ids), rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("style", ["gpt", "llama"])
def test_kv_cache_gives_the_full_forward_logits(kind, style):
    model = make(*KINDS[kind], *(LLAMA if style == "llama" else []))
    ids = torch.randint(0, 97, (2, 24))
    full = model(ids)
    cache = KVCache(model.cfg, 2, 24, torch.device("cpu"), torch.float32)
    parts = [model(ids[:, :7], cache=cache), model(ids[:, 7:8], cache=cache), model(ids[:, 8:17], cache=cache)]
    parts += [model(ids[:, i:i + 1], cache=cache) for i in range(17, 24)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


# Hand counts for small_config (vocab 97, width 64, FFN 256, 2 blocks, block 0's FFN dense), weights only.
# One FFN projection 64 -> 256 (up, gate) and 256 -> 64 (down) of each kind:
HAND_FFN_WEIGHTS = {
    "dense": (64 * 256, 256 * 64),
    "lowrank": (16 * (64 + 256), 16 * (256 + 64)),  # rank 16: V (16, in) and U (out, 16)
    # 4 blocks around an inner width of min(in, out) = 64: V (4, 16, in/4), U (4, out/4, 16)
    "blockshuffle": (4 * 16 * 16 + 4 * 64 * 16, 4 * 16 * 64 + 4 * 16 * 16),
    # rank 32 in 2 blocks: block-diagonal V (2, 16, in/2), then a dense U (out, 32)
    "blockdense": (2 * 16 * 32 + 256 * 32, 2 * 16 * 128 + 64 * 32),
}


def hand_count(kind: str, style: str) -> tuple[int, int]:
    """(all parameters, FFN weight matrices) of small_config(KINDS[kind], style), counted from the architecture."""
    embed = 97 * 64
    if style == "gpt":  # LayerNorm with bias, biases everywhere, tied head, 4 K/V heads of 16
        norm, attn = 2 * 64, (64 * 192 + 192) + (64 * 64 + 64)
        ffn_bias, projections, head = 256 + 64, 1, 0
    else:  # RMSNorm, no biases, untied head, 2 K/V heads: qkv is 64 -> 64 + 2 x 32
        norm, attn = 64, 64 * 128 + 64 * 64
        ffn_bias, projections, head = 0, 2, embed  # gate and up

    def ffn(k: str) -> int:
        up, down = HAND_FFN_WEIGHTS[k]
        return projections * up + down
    ffn_weights = ffn("dense") + ffn(kind)
    total = embed + head + 2 * (2 * norm + attn + ffn_bias) + ffn_weights + norm
    return total, ffn_weights


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("style", ["gpt", "llama"])
def test_accounting_params_equal_hand_counts(kind, style):
    cfg = small_config(*KINDS[kind], *(LLAMA if style == "llama" else [])).model
    counts = count_model(Transformer(cfg))
    total, ffn_weights = hand_count(kind, style)
    assert (counts.params, counts.params_ffn) == (total, ffn_weights)
    embed = 97 * 64 * (1 if style == "gpt" else 2)
    assert counts.params_non_embedding == total - embed
    assert counts == count_model(build_meta(cfg))  # the meta-device count (no memory) agrees


def test_loss_is_cross_entropy_of_logits():
    model = make()
    ids = torch.randint(0, 97, (2, 16))
    targets = torch.randint(0, 97, (2, 16))
    expected = F.cross_entropy(model(ids).flatten(0, 1), targets.flatten())
    torch.testing.assert_close(model(ids, targets), expected)
    # an untrained model predicts close to uniform: loss near log(vocab)
    assert abs(float(expected.detach()) - math.log(97)) < 0.1


def test_first_block_ffn_stays_dense_by_default():
    model = make(*KINDS["lowrank"])
    assert type(model.blocks[0].ffn.up).__name__ == "DenseLinear"
    assert type(model.blocks[1].ffn.up).__name__ == "LowRankLinear"
    everything = make(*KINDS["lowrank"], "model.ffn.keep_dense_layers=[]")
    assert type(everything.blocks[0].ffn.up).__name__ == "LowRankLinear"


def test_init_follows_the_paper():
    model = make()
    assert abs(float(model.embed.weight.detach().std()) - 0.02) < 0.002
    assert float(model.blocks[0].attn.qkv.bias.detach().abs().max()) == 0.0
    assert model.head_weight() is model.embed.weight  # tied


def test_premerge_keeps_greedy_generation():
    # (the logits and state-dict keys under pre-merge are test_premerge.py's; this is the decode loop's side)
    model = make(*KINDS["blockdense"], "model.init_std=0.2")  # well-separated logits: rounding cannot flip argmax
    ids = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(3))
    factored = generate(model, ids, 8, temperature=0)
    assert sorted(premerge(model, 16)) == ["blocks.1.ffn.down", "blocks.1.ffn.up"]  # block 0 stays dense
    # a decode step (2 sequences x 1 token) takes the merged weights
    assert all(m.uses_merged(torch.zeros(2, 1, m.in_features)) for m in premerged_layers(model))
    assert torch.equal(generate(model, ids, 8, temperature=0), factored)


def test_generate_greedy_equals_argmax_of_full_forward():
    model = make(*KINDS["lowrank"])
    ids = torch.randint(0, 97, (2, 4))
    out = generate(model, ids, max_new_tokens=6, temperature=0)
    assert out.shape == (2, 10)
    for i in range(4, 10):
        torch.testing.assert_close(out[:, i], model(out[:, :i])[:, -1].argmax(-1))


def test_sampling_is_seeded_and_respects_top_k():
    model = make()
    ids = torch.zeros(3, 1, dtype=torch.long)
    a = generate(model, ids, 8, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
    b = generate(model, ids, 8, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    first = model(ids)[:, -1].topk(5).indices
    assert all(int(a[r, 1]) in first[r].tolist() for r in range(3))


def test_bfloat16_forward_is_close_to_float32():
    model = make(*KINDS["lowrank"])
    ids = torch.randint(0, 97, (2, 16))
    ref = model(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(ids)
    assert low.dtype == torch.bfloat16
    # Each bf16 matmul rounds its fp32-accumulated output to 8 significant bits (relative error <= 2^-8), whatever
    # the CPU's kernel (oneDNN/AMX, AVX-512 BF16); 2 blocks x 6 matmuls + the head are 13 roundings, so the logits
    # stay within 13 x 2^-8 < 2^-4 of their own scale. 0.0033 of 0.89 here (AMD EPYC, torch 2.13).
    assert (low.float() - ref).abs().max() < 2**-4 * ref.abs().max()
    half = make(*KINDS["lowrank"]).to(torch.bfloat16)
    assert half(ids).dtype == torch.bfloat16


def test_transformer_xl_builds_on_meta_without_memory():
    cfg = load_config("configs/paper/transformer-xl.yaml").model
    model = build_meta(cfg)
    assert all(p.is_meta for p in model.parameters())
    # the paper gives 1.274B; the exact digits are a regression pin of our own count
    assert sum(p.numel() for p in model.parameters()) == 1_274_138_624


def test_too_long_input_is_refused():
    model = make()
    with pytest.raises(ValueError, match="seq_len"):
        model(torch.zeros(1, 33, dtype=torch.long))

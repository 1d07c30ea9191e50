"""Static decoding (fixed-shape steps over a preallocated cache) gives the eager loop's tokens."""

import pytest
import torch

from lowrank_lm import decoding
from lowrank_lm.decoding import EagerDecoder, StaticDecoder, make_decoder, resolve_decode, static_cache_len
from lowrank_lm.errors import UserError
from lowrank_lm.model import Transformer
from lowrank_lm.premerge import premerge

from .conftest import small_config

STYLES = {
    "gpt-lowrank": ["model.ffn.kind=lowrank", "model.ffn.rank=16"],
    "llama-gqa-blockdense": ["model.norm=rmsnorm", "model.activation=swiglu", "model.bias=false",
                             "model.num_kv_heads=2", "model.ffn.kind=blockdense", "model.ffn.rank=32",
                             "model.ffn.num_blocks=2"],
}


def _model(style, dtype, merged):
    # init_std 0.2: well-separated logits, so rounding differences cannot flip a greedy choice
    torch.manual_seed(0)
    model = Transformer(small_config(*STYLES[style], "model.init_std=0.2", "model.seq_len=64").model)
    model = model.to(dtype).eval()
    premerge(model, 16 if merged else 0)
    return model


def _greedy(decoder, prompt, n):
    out, logits = [], []
    with torch.no_grad():
        step = decoder.prefill(prompt)
        for _ in range(n):
            logits.append(step.float().clone())
            out.append(step.argmax(-1))
            step = decoder.step(out[-1])
    return torch.stack(out, 1), torch.stack(logits, 1)


def _agreeing_steps(tokens: torch.Tensor, reference: torch.Tensor, logits: torch.Tensor, rtol: float,
                    atol: float) -> int:
    """The steps before two greedy generations part, asserting that they part only at a near tie: a step whose
    top two reference logits are within twice the logits' tolerance (each side may be off by it). Such a tie may
    break either way on another CPU's kernels (bf16: oneDNN/AMX on Intel and AVX-512 BF16 on AMD round
    differently), and after a different token the generations are different texts, so nothing after is compared.
    """
    differ = (tokens != reference).any(0).nonzero()
    if len(differ) == 0:
        return tokens.shape[1]
    k = int(differ[0])
    top = logits[:, k].topk(2, dim=-1).values
    rows = (tokens[:, k] != reference[:, k]).nonzero().flatten()
    margin, bound = top[rows, 0] - top[rows, 1], 2 * (atol + rtol * top[rows, 0].abs())
    assert (margin <= bound).all(), f"step {k}: a clear choice (margin {margin.tolist()}) was not reproduced"
    return k


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("premerge", [False, True])
def test_static_steps_give_the_eager_tokens_and_logits(style, dtype, premerge, monkeypatch):
    monkeypatch.setattr(decoding, "SPAN_STEP", 8)  # the steps cross several spans (attention widths)
    model = _model(style, dtype, premerge)
    prompt = torch.randint(0, 97, (3, 5), generator=torch.Generator().manual_seed(1))
    # bf16: SDPA over the masked full cache rounds differently from SDPA over the filled slice (about 2e-3),
    # which over a long generation can flip a near tie (bf16 logits are often a ulp apart); 12 tokens stay clear
    n = 40 if dtype == torch.float32 else 12
    eager_tokens, eager_logits = _greedy(EagerDecoder(model, 3, 45, prompt.device), prompt, n)
    static = StaticDecoder(model, 3, static_cache_len(45, 64), prompt.device, dtype, compiled=False)
    assert static.cache.k[0].shape[2] == 64  # 45 positions round up to the whole context here
    static_tokens, static_logits = _greedy(static, prompt, n)
    assert static.cache.span == (5 + n - 1) // 8 * 8 + 8  # the last step's span: its position rounded up
    tol = {"rtol": 2e-2, "atol": 0.07} if dtype == torch.bfloat16 else {"rtol": 1e-4, "atol": 1e-4}  # bf16: 2 ulps
    k = _agreeing_steps(static_tokens, eager_tokens, eager_logits, **tol)  # all n here (AMD EPYC, torch 2.13)
    torch.testing.assert_close(static_logits[:, :k + 1], eager_logits[:, :k + 1], **tol)  # step k: same prefix
    # a second prompt reuses the cache: the old keys beyond the new prompt are masked, not read
    again_tokens, _ = _greedy(static, prompt[:, :2], 10)
    eager_again, eager_again_logits = _greedy(EagerDecoder(model, 3, 12, prompt.device), prompt[:, :2], 10)
    _agreeing_steps(again_tokens, eager_again, eager_again_logits, **tol)


def test_compiled_static_generation_equals_eager_generation():
    model = _model("gpt-lowrank", torch.float32, merged=True)
    prompt = torch.randint(0, 97, (2, 4), generator=torch.Generator().manual_seed(2))
    eager = decoding.generate(model, prompt, 20, temperature=0, decode="eager")
    static = decoding.generate(model, prompt, 20, temperature=0, decode="static")
    assert torch.equal(static, eager)
    kept = model._static_decoder
    assert make_decoder(model, "static", 2, 24) is kept  # the next call of the same shape reuses it
    premerge(model, 0)  # a graph would have baked the merged weights in: a new decoder
    assert make_decoder(model, "static", 2, 24, compiled=False) is not kept


def test_decode_modes_resolve_and_refuse_unknown_ones():
    assert resolve_decode("auto", torch.device("cpu")) == "eager"
    assert resolve_decode("auto", torch.device("cuda", 0)) == "static"
    assert resolve_decode("static", torch.device("cpu")) == "static"
    with pytest.raises(UserError, match="eager, static"):
        resolve_decode("fast", torch.device("cpu"))
    assert static_cache_len(3, 1024) == 128 and static_cache_len(129, 1024) == 256
    assert static_cache_len(1000, 1024) == 1024 and static_cache_len(100, 64) == 64

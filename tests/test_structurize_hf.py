"""structurize on transformers models built from small configs (no hub): train, save/load, merge back."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lowrank_lm import load_structurized, merge_structures, structurize  # noqa: E402
from lowrank_lm.layers import registry  # noqa: E402
from lowrank_lm.layers.base import StructuredLinear  # noqa: E402

LOW = registry.HEADLINE

CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(vocab_size=64, hidden_size=64, intermediate_size=128,
                                                   num_hidden_layers=2, num_attention_heads=4,
                                                   max_position_embeddings=32),
    "qwen2": lambda: transformers.Qwen2Config(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2,
                                              max_position_embeddings=32),
    "mistral": lambda: transformers.MistralConfig(vocab_size=64, hidden_size=64, intermediate_size=128,
                                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                  max_position_embeddings=32),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=64, n_embd=64, n_layer=2, n_head=4, n_positions=32,
                                            bos_token_id=0, eos_token_id=0),
}
# hand counts of the FFN layers replaced in block 1 (keep_dense=1) at rank 24 (nearest 50% of 64 x 128)
FFN_PARAMS = {"llama": (3 * 64 * 128, 3 * 192 * 24), "qwen2": (3 * 64 * 128, 3 * 192 * 24),
              "mistral": (3 * 64 * 128, 3 * 192 * 24),
              "gpt_neox": (2 * 64 * 128 + 128 + 64, 2 * 192 * 24 + 128 + 64),
              # GPT-2: 4 x 64 = 256 wide; rank 24 keeps 320 x 24 of 64 x 256 (46.9%), rank 32 62.5%
              "gpt2": (2 * 64 * 256 + 256 + 64, 2 * 320 * 24 + 256 + 64)}


def _model(arch: str):
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(CONFIGS[arch]())


def _batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 64, (4, 16), generator=g)


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_structurized_hf_model_trains_saves_loads_and_merges_onto_its_stock_class(arch, tmp_path):
    model = _model(arch)
    report = structurize(model, LOW, fraction=0.5, targets="ffn", keep_dense=1, init="from_dense")
    names = [n for n, m in model.named_modules() if isinstance(m, StructuredLinear)]
    assert len(names) == (3 if arch in ("llama", "qwen2", "mistral") else 2) and all(".1." in n for n in names)
    before = sum(r.params_before for r in report.replaced), sum(r.params_after for r in report.replaced)
    assert before == FFN_PARAMS[arch]
    assert report.params_after == sum(p.numel() for p in model.parameters())
    # a plain loop: the loss goes down
    x = _batch()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    model.train()
    for _ in range(8):
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses
    model.eval()
    with torch.no_grad():
        logits = model(x).logits
    model.save_pretrained(tmp_path / "structured")
    loaded = load_structurized(tmp_path / "structured")
    assert [n for n, m in loaded.named_modules() if isinstance(m, StructuredLinear)] == names
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, logits)
    assert merge_structures(loaded) == len(names)
    loaded.save_pretrained(tmp_path / "merged")
    stock = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert type(stock).__name__ == type(model).__name__
    assert not any(isinstance(m, StructuredLinear) for m in stock.modules())
    with torch.no_grad():
        assert torch.allclose(stock(x).logits, logits, atol=1e-5)


def test_transformers_trainer_trains_a_structurized_llama(tmp_path):
    pytest.importorskip("accelerate")
    from transformers import Trainer, TrainingArguments

    model = _model("llama")
    structurize(model, "blockdense", fraction=0.5, targets="all-linear")
    x = _batch()
    data = [{"input_ids": row, "labels": row} for row in x]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=12, per_device_train_batch_size=4,
                             learning_rate=3e-3, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                             lr_scheduler_type="constant", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 12 and losses[-1] < losses[0] - 0.5, losses


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_full_rank_from_dense_keeps_the_logits_biases_included(arch):
    # Qwen2's q/k/v and GPT-2's fused c_attn carry biases; at full rank the SVD start is the dense layer
    config = CONFIGS[arch]()
    if arch == "qwen2":
        config.num_key_value_heads = 4  # k / v 64 -> 64 wide, so rank 64 is their full rank too
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    for name, p in model.named_parameters():  # non-zero biases, so a dropped bias shows
        if name.endswith("bias"):
            p.data.normal_(0, 0.1)
    x = _batch()
    with torch.no_grad():
        ref = model(x).logits
    report = structurize(model, LOW, rank=64, targets="attention", init="from_dense")
    assert len(report.replaced) == (8 if arch == "qwen2" else 4)
    assert max(r.error for r in report.replaced) < 1e-5
    with torch.no_grad():
        assert torch.allclose(model(x).logits, ref, atol=1e-4)

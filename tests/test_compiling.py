"""train.compile: auto resolves per device; compile stays on through guidance, coins included (the
recompile-free coins themselves: tests/test_self_guided.py)."""

import pytest
import torch

from lowrank_lm.model import Transformer
from lowrank_lm.train.compiling import use_compile
from lowrank_lm.train.loop import Trainer

from .conftest import small_config


def test_auto_compiles_on_cuda_only():
    assert use_compile("auto", torch.device("cuda", 0))
    assert not use_compile("auto", torch.device("cpu"))
    assert use_compile(True, torch.device("cpu")) and not use_compile(False, torch.device("cuda", 0))


@pytest.mark.parametrize("reduce_flop", [False, True])
def test_guided_model_is_compiled_with_or_without_coins(tmp_path, reduce_flop):
    cfg = small_config("model.ffn.kind=lowrank", "model.ffn.rank=16", "train.self_guided.enabled=true",
                       f"train.self_guided.reduce_flop={str(reduce_flop).lower()}", "train.compile=true",
                       "train.tokens=4096", "train.global_batch_size=4", "train.device=cpu",
                       f"train.out_dir={tmp_path}")
    trainer = Trainer(cfg)
    model = Transformer(cfg.model)
    trainer.guidance.attach(model, 0)
    assert trainer.guidance.guides(model)  # the model is guided while it is wrapped
    _assert_compiled(trainer._wrap(model), model)  # torch.compile wraps lazily: nothing is compiled here
    assert trainer.compiled
    trainer.guidance.detach(model)
    assert not trainer.guidance.guides(model)
    _assert_compiled(trainer._wrap(model), model)
    assert trainer.compiled


def _assert_compiled(wrapped, model):
    """``wrapped`` is torch.compile's module around this very model (no DDP here: one process)."""
    assert isinstance(wrapped, torch._dynamo.eval_frame.OptimizedModule), type(wrapped)
    assert wrapped._orig_mod is model


def test_guides_with_coins_under_activation_checkpointing_wait_for_the_end_of_guidance(tmp_path, monkeypatch):
    """torch 2.13 cannot compile a torch.cond inside a checkpointed block: auto keeps those guided steps eager
    (and compiles once the guides leave); an explicit train.compile=true is a one-line error."""
    from lowrank_lm.errors import ConfigError
    from lowrank_lm.train import compiling

    setup = ["model.ffn.kind=lowrank", "model.ffn.rank=16", "train.self_guided.enabled=true",
             "train.activation_checkpointing=true", "train.tokens=4096", "train.global_batch_size=4",
             "train.device=cpu", f"train.out_dir={tmp_path}"]
    with pytest.raises(ConfigError, match=r"train\.compile=true cannot compile self-guided steps with reduce_flop"):
        small_config(*setup, "train.compile=true")
    monkeypatch.setattr(compiling, "COMPILE_ON_CPU", True)  # auto compiles here as on a GPU
    trainer = Trainer(small_config(*setup, "train.compile=auto"))
    model = Transformer(trainer.cfg.model)
    trainer.guidance.attach(model, 0)
    assert trainer._wrap(model) is model and not trainer.compiled
    trainer.guidance.detach(model)
    assert trainer._wrap(model) is not model and trainer.compiled
    # without coins nothing stops compiling
    trainer = Trainer(small_config(*setup, "train.compile=auto", "train.self_guided.reduce_flop=false"))
    trainer.guidance.attach(model, 0)
    assert trainer._wrap(model) is not model and trainer.compiled

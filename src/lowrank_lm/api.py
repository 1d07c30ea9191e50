"""The Python API: ``lowrank_lm.load(path)`` and ``lowrank_lm.build(config)``.

Both return a :class:`~lowrank_lm.model.Transformer` (``load`` in eval mode), ready for ``model(input_ids)``
(logits of shape (B, T, vocab)) and ``model.generate(input_ids, max_new_tokens, ...)``, with two
attributes added: ``.config`` (the whole :class:`~lowrank_lm.config.Config`) and ``.tokenizer``
(the run's :class:`~lowrank_lm.data.tokenizer.Tokenizer`, the one its data was encoded with, or None when
the run has no tokenizer files)::

    import lowrank_lm, torch
    model = lowrank_lm.load("runs/tiny")
    ids = torch.tensor([model.tokenizer.encode("Once upon a time")])
    out = model.generate(ids, max_new_tokens=20, temperature=0.8, top_k=50)
    print(model.tokenizer.decode(out[0].tolist()))
"""

from __future__ import annotations

from pathlib import Path

import torch

from lowrank_lm.config import Config, load_config
from lowrank_lm.model import Transformer

__all__ = ["build", "load", "resolve_device"]


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` is the first GPU when there is one, else the CPU; anything else must exist here."""
    from lowrank_lm.train.distributed import resolve_device as resolve

    return resolve(name, option="--device")


def load(path: str | Path, device: str | torch.device = "cpu", premerge: int | None = None) -> Transformer:
    """The model of a run dir (its newest checkpoint) or of a checkpoint folder, in eval mode.

    ``premerge``: calls with at most this many tokens use the merged dense FFN weights (faster for
    small batches of generation); None takes ``model.ffn.premerge_max_tokens`` from the config.
    """
    from lowrank_lm.checkpoint import load_model
    from lowrank_lm.data.tokenizer import load_run_tokenizer

    model, cfg, ckpt = load_model(path, resolve_device(device))
    model.eval()
    model.premerge(premerge)
    model.config = cfg
    model.tokenizer = load_run_tokenizer(ckpt, cfg, cfg.model.vocab_size)
    model.checkpoint = ckpt
    return model


def build(config: Config | str | Path | None = None, overrides: list[str] | None = None,
          device: str | torch.device = "cpu") -> Transformer:
    """A freshly initialised model from a Config, a YAML path, or the defaults (None), plus overrides.

    ``overrides`` are dotted ``key=value`` strings, e.g. ``["model.ffn.kind=lowrank", "model.ffn.rank=64"]``.
    """
    if isinstance(config, Config):
        if overrides:
            from lowrank_lm.config import apply_overrides, config_from_dict, config_to_dict

            config = config_from_dict(apply_overrides(config_to_dict(config), overrides))
        cfg = config
    else:
        cfg = load_config(config, overrides)
    model = Transformer(cfg.model).to(resolve_device(device))  # train mode, as nn.Module starts
    model.config = cfg
    model.tokenizer = None
    return model

"""The Python API: ``lowrank_lm.load(path)`` and ``lowrank_lm.build(config)``.

Both return a :class:`LanguageModel`: the :class:`~lowrank_lm.model.Transformer` (``load`` in eval mode), ready
for ``model(input_ids)`` (logits of shape (B, T, vocab)), with generation as methods
(``model.generate(input_ids, max_new_tokens, ...)`` and ``model.stream(...)``, from :mod:`lowrank_lm.decoding`)
and three typed attributes: ``.config`` (the whole :class:`~lowrank_lm.config.Config`), ``.tokenizer`` (the
run's :class:`~lowrank_lm.data.tokenizer.Tokenizer`, the one its data was encoded with, or None when the run
has no tokenizer files) and ``.checkpoint`` (the folder it was loaded from; None for ``build``)::

    import lowrank_lm, torch
    model = lowrank_lm.load("runs/tiny")
    ids = torch.tensor([model.tokenizer.encode("Once upon a time")])
    out = model.generate(ids, max_new_tokens=20, temperature=0.8, top_k=50)
    print(model.tokenizer.decode(out[0].tolist()))
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lowrank_lm import decoding
from lowrank_lm.config import Config
from lowrank_lm.device import resolve_device as _resolve
from lowrank_lm.model import Transformer
from lowrank_lm.premerge import premerge as _premerge
from lowrank_lm.resolve import load_config

if TYPE_CHECKING:
    from lowrank_lm.data.tokenizer import Tokenizer

__all__ = ["LanguageModel", "build", "load", "resolve_device"]


class LanguageModel(Transformer):
    """What ``load`` and ``build`` return: the Transformer plus its run's config and tokenizer, and generation.

    It adds no weights or buffers, so its state dict is the Transformer's; the methods below hand over to
    :mod:`lowrank_lm.decoding` and :mod:`lowrank_lm.premerge`, which the model itself does not import.
    """

    config: Config
    tokenizer: Tokenizer | None
    checkpoint: Path | None

    def stream(self, input_ids: torch.Tensor, max_new_tokens: int, **options: Any) -> Iterator[torch.Tensor]:
        """Yield (B,) new tokens one at a time; the options are :func:`lowrank_lm.decoding.stream`'s."""
        return decoding.stream(self, input_ids, max_new_tokens, **options)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, **options: Any) -> torch.Tensor:
        """Prompt plus up to ``max_new_tokens`` sampled tokens, (B, T + n); see :func:`lowrank_lm.decoding.stream`."""
        return decoding.generate(self, input_ids, max_new_tokens, **options)

    def premerge(self, max_tokens: int | None = None) -> dict[str, int]:
        """Eval calls of <= max_tokens tokens use merged dense weights (config value if None; 0 undoes it)."""
        return _premerge(self, max_tokens)


def _as_language_model(model: Transformer, cfg: Config, tokenizer: Tokenizer | None,
                       checkpoint: Path | None) -> LanguageModel:
    # LanguageModel adds methods and plain attributes only (no parameters, buffers or __init__ state), so the
    # loaded Transformer becomes one in place instead of being rebuilt and loaded a second time.
    model.__class__ = LanguageModel
    assert isinstance(model, LanguageModel)
    model.config, model.tokenizer, model.checkpoint = cfg, tokenizer, checkpoint
    return model


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` is the first GPU when there is one, else the CPU; anything else must exist here."""
    return _resolve(name, option="--device")


def load(path: str | Path, device: str | torch.device = "cpu", premerge: int | None = None) -> LanguageModel:
    """The model of a run dir (its newest checkpoint) or of a checkpoint folder, in eval mode.

    ``premerge``: calls with at most this many tokens use the merged dense FFN weights (faster for
    small batches of generation); None takes ``model.ffn.premerge_max_tokens`` from the config.
    """
    from lowrank_lm.checkpoint import load_model
    from lowrank_lm.data.tokenizer import load_run_tokenizer

    model, cfg, ckpt = load_model(path, resolve_device(device))
    model.eval()
    _premerge(model, premerge)
    return _as_language_model(model, cfg, load_run_tokenizer(ckpt, cfg, cfg.model.vocab_size), ckpt)


def build(config: Config | str | Path | None = None, overrides: list[str] | None = None,
          device: str | torch.device = "cpu") -> LanguageModel:
    """A freshly initialised model from a Config, a YAML path, or the defaults (None), plus overrides.

    ``overrides`` are dotted ``key=value`` strings, e.g. ``["model.ffn.kind=lowrank", "model.ffn.rank=64"]``.
    """
    if isinstance(config, Config):
        if overrides:
            from lowrank_lm.config import config_to_dict
            from lowrank_lm.resolve import config_from_dict

            config = config_from_dict(config_to_dict(config), overrides)
        cfg = config
    else:
        cfg = load_config(config, overrides)
    model = LanguageModel(cfg.model).to(resolve_device(device))  # train mode, as nn.Module starts
    model.config, model.tokenizer, model.checkpoint = cfg, None, None
    return model

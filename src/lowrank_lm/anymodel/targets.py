"""Which modules of a model ``structurize`` replaces: PEFT-style name patterns, presets, block indices.

A pattern matches a module whose full name matches it (``fnmatch``) or ends in ``.`` + a match, as PEFT's
``target_modules`` do: ``down_proj`` and ``*.down_proj`` both match ``model.layers.0.mlp.down_proj``, and
``mlp.*`` matches every module under any ``mlp``. The presets name the usual module families of transformers'
Llama / Qwen2 / Mistral / GPT-NeoX / GPT-2 / Starcoder2, torchtitan's Llama and this project's Transformer.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from torch import nn

from lowrank_lm.errors import UserError

PRESETS: dict[str, tuple[str, ...]] = {
    # HF: mlp.{gate,up,down}_proj, mlp.dense_h_to_4h, mlp.c_fc ...; torchtitan: feed_forward.w1..w3; ours: ffn.*
    "ffn": ("mlp.*", "feed_forward.*", "ffn.*"),
    # HF: self_attn.*_proj, attention.query_key_value / dense, attn.c_attn / c_proj; torchtitan: attention.wq..wo
    "attention": ("self_attn.*", "attention.*", "attn.*"),
    "all-linear": ("*",),
}
"""Named target sets; ``all-linear`` is every linear layer but the output head (as PEFT's ``all-linear``)."""
HEAD_NAMES = ("lm_head", "embed_out", "output")
"""Output heads (transformers, GPT-NeoX, torchtitan), never replaced by a preset: they map to the vocabulary."""


def is_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` or transformers' ``Conv1D`` (GPT-2: a linear layer whose weight is stored (in, out))."""
    return isinstance(module, nn.Linear) or (type(module).__name__ == "Conv1D" and hasattr(module, "nf"))


def matches(name: str, pattern: str) -> bool:
    """Whether module ``name`` matches ``pattern`` in full or as a dotted suffix."""
    return fnmatchcase(name, pattern) or fnmatchcase(name, "*." + pattern)


def _head(model: nn.Module) -> str | None:
    """The name of the module that holds the output embeddings, if the model says (transformers)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return next((n for n, m in model.named_modules() if m is head), None) if head is not None else None


def select(model: nn.Module, targets: str | Sequence[str]) -> list[str]:
    """The names of the linear layers ``targets`` (a preset, a pattern, or a list of them) picks, in model order.

    Raises a UserError for a pattern that matches no module, or only modules that are not linear layers.
    """
    items = [targets] if isinstance(targets, str) else list(targets)
    if not items:
        raise UserError(f"targets is empty; give module-name patterns (e.g. ['*.down_proj']) or a preset "
                        f"({', '.join(PRESETS)})")
    modules = dict(model.named_modules())
    head = _head(model)
    heads = {n for n in modules if n == head or n.rpartition(".")[2] in HEAD_NAMES}
    chosen: set[str] = set()
    for item in items:
        preset = item in PRESETS
        patterns = PRESETS.get(item, (item,))
        hit = [n for n in modules if n and any(matches(n, p) for p in patterns)]
        linear = [n for n in hit if is_linear(modules[n]) and not (preset and n in heads)]
        if not hit:
            raise UserError(f"target {item!r} matches no module of {type(model).__name__}; use a preset "
                            f"({', '.join(PRESETS)}) or a pattern of its module names, e.g. {_example(modules)}")
        if not linear:
            kinds = sorted({type(modules[n]).__name__ for n in hit})
            raise UserError(f"target {item!r} matches no linear layer (it matches {len(hit)} module(s) of type "
                            f"{', '.join(kinds[:3])}); structures replace nn.Linear / Conv1D layers only")
        chosen.update(linear)
    return [n for n in modules if n in chosen]


def _example(modules: dict[str, nn.Module]) -> str:
    linear = [n for n, m in modules.items() if is_linear(m)]
    return repr(linear[0]) if linear else "(it has no linear layer)"


def block_index(name: str) -> int | None:
    """The index of the block a module belongs to: the first all-digit part of its name
    (``model.layers.3.mlp.up_proj`` -> 3, ``transformer.h.0.attn.c_attn`` -> 0, ``layers.5.attention.wq`` -> 5)."""
    return next((int(part) for part in name.split(".") if part.isdigit()), None)

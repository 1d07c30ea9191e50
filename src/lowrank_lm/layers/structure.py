"""What a structure module declares (its ``SPEC``), and the setting checks several structures share.

Kept apart from :mod:`lowrank_lm.layers.registry`, which imports every structure module, so that a
structure module can import this one without importing the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lowrank_lm.errors import ConfigError

if TYPE_CHECKING:
    from lowrank_lm.config import FFNConfig
    from lowrank_lm.layers.base import StructuredLinear

DENSE = "dense"
"""The unstructured baseline every fraction is measured against."""
SIZE_SETTINGS = ("rank", "num_blocks")
"""The FFN config keys a structure may read to size itself."""


@dataclass(frozen=True)
class Structure:
    """What the toolkit needs to know about one FFN parametrisation."""

    name: str
    """The ``model.ffn.kind`` value."""
    summary: str
    """One line for help texts."""
    settings: tuple[str, ...]
    """The size settings it reads (a subset of :data:`SIZE_SETTINGS`)."""
    inits: tuple[str, ...]
    """The inits its layer implements; the first is the default."""
    build: Callable[[int, int, FFNConfig, bool], StructuredLinear]
    """(in_features, out_features, ffn config, bias) -> the layer, not yet initialised."""
    check: Callable[[FFNConfig, int, int], None] = lambda f, h, ff: None
    """Raises ConfigError when the settings do not fit a model of width h and FFN width ff."""
    candidates: Callable[[int, int, int, int | None], list[dict[str, int]]] = lambda h, ff, step, b: []
    """(h, ff, rank step, fixed block count or None) -> the settings a fraction is solved over, smallest first."""
    solved: tuple[str, ...] = ()
    """The settings :func:`solve` chooses; the other settings in ``settings`` may be fixed by the user."""
    defaults: dict[str, int] = field(default_factory=dict)
    """Values of fixed settings when the user gives none (e.g. BlockDense's block count)."""
    linear: bool = True
    """Whether the layer is a linear map, so that it has an exact merged (dense) weight: pre-merge,
    self-guided training (its guide starts at the merged weight) and ``export --merge`` need one."""

    @property
    def default_init(self) -> str:
        return self.inits[0]

    @property
    def structured(self) -> bool:
        return self.name != DENSE


def check_rank(f: FFNConfig, h: int, ff: int) -> None:
    """A rank is given and no larger than the narrower FFN width."""
    if f.rank is None:
        raise ConfigError(f"model.ffn.rank is required for kind {f.kind}; set e.g. "
                          f"model.ffn.rank={h // 4} (32%) or {h // 2} (63%)")
    if f.rank > min(h, ff):
        raise ConfigError(f"model.ffn.rank={f.rank} is larger than min(hidden_dim, ffn_dim)="
                          f"{min(h, ff)}; a rank above that saves nothing — lower it")


def check_blocks(f: FFNConfig, h: int, ff: int) -> None:
    """A block count is given and divides both FFN widths."""
    if f.num_blocks is None:
        raise ConfigError(f"model.ffn.num_blocks is required for kind {f.kind}; set e.g. "
                          "model.ffn.num_blocks=4")
    for dim, name in ((h, "hidden_dim"), (ff, "ffn_dim")):
        if dim % f.num_blocks:
            raise ConfigError(f"model.ffn.num_blocks={f.num_blocks} does not divide "
                              f"model.{name}={dim}; pick a block count that divides it")

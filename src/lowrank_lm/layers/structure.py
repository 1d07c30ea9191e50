"""What a structure module declares (its ``SPEC``), and the setting checks several structures share.

Kept apart from :mod:`lowrank_lm.layers.registry`, which imports every structure module, so that a
structure module can import this one without importing the registry.

Like every module a structure's layer needs, this one imports only torch, the standard library and its
neighbours (relatively): a remote-code export copies these files next to the model, where lowrank_lm is
not installed. So the checks raise :class:`SettingError`, which the registry turns into a ConfigError.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .base import StructuredLinear

DENSE = "dense"
"""The unstructured baseline every fraction is measured against."""
MUP_INITS = ("mup", "zero_out")
"""The inits every structure offers from its declared factors: each factor N(0, sqrt(1/fan_in) min(1,
sqrt(fan_out/fan_in))); ``zero_out`` also zeroes the last factor of the layers that end a residual branch
(the FFN's down layer, the attention output), as the BTT authors' ``zero_init`` does."""
SIZE_SETTINGS = ("rank", "num_blocks")
"""The FFN config keys a structure may read to size itself."""


class SettingError(ValueError):
    """Settings that do not fit the model: one line naming the setting and the fix (a ConfigError to the user)."""


class Settings(Protocol):
    """What a structure reads of its config section (``model.ffn``, or the remote config's ``ffn_*`` values)."""

    @property
    def section(self) -> str:
        """Where the settings live (``model.ffn``, ``model.attn``), for messages (a class constant of the config's
        sections, hence read-only here)."""

    kind: str
    rank: int | None
    num_blocks: int | None


@dataclass(frozen=True)
class Structure:
    """What the toolkit needs to know about one parametrisation of a linear layer (FFN or attention)."""

    name: str
    """The ``model.ffn.kind`` / ``model.attn.kind`` value."""
    summary: str
    """One line for help texts."""
    settings: tuple[str, ...]
    """The size settings it reads (a subset of :data:`SIZE_SETTINGS`)."""
    inits: tuple[str, ...]
    """The inits its layer implements; the first is the default."""
    build: Callable[[int, int, Settings, bool], StructuredLinear]
    """(in_features, out_features, settings section, bias) -> the layer, not yet initialised."""
    check: Callable[[Settings, int, int], None] = lambda f, h, ff: None
    """Raises SettingError when the settings do not fit a layer h -> ff (the FFN's widths, or a projection's)."""
    candidates: Callable[[int, int, int, int | None], list[dict[str, int]]] = lambda h, ff, step, b: []
    """(h, ff, rank step, fixed block count or None) -> the settings a fraction is solved over, smallest first."""
    solved: tuple[str, ...] = ()
    """The settings :func:`solve` chooses; the other settings in ``settings`` may be fixed by the user."""
    defaults: dict[str, int] = field(default_factory=dict)
    """Values of fixed settings when the user gives none (e.g. BlockDense's block count)."""
    colormap: str = ""
    """The matplotlib sequential colormap of this structure's series in every figure (empty: a spare one)."""
    linear: bool = True
    """Whether the layer is a linear map, so that it has an exact merged (dense) weight: pre-merge,
    self-guided training (its guide starts at the merged weight) and ``export --merge`` need one."""

    @property
    def default_init(self) -> str:
        return self.inits[0]

    @property
    def structured(self) -> bool:
        return self.name != DENSE


def _widths(f: Settings, h: int, ff: int) -> tuple[str, str]:
    """How messages name the widths ``h`` and ``ff`` a check is given: the FFN's config keys, else one layer's."""
    if f.section == "model.ffn":
        return f"model.hidden_dim={h}", f"model.ffn_dim={ff}"
    return f"{h} (the input width of a {h} -> {ff} layer)", f"{ff} (the output width of a {h} -> {ff} layer)"


def given(f: Settings, setting: str) -> int:
    """A size setting a structure's layer needs (``rank`` or ``num_blocks``); resolved configs always have it, so
    a missing one is a caller that built a layer from unchecked settings."""
    value = getattr(f, setting)
    if value is None:
        raise SettingError(f"{f.section}.{setting} is required for kind {f.kind}; set it (or a fraction)")
    return value


def check_rank(f: Settings, h: int, ff: int) -> None:
    """A rank is given and no larger than the narrower width (``f.section`` names the settings in messages)."""
    s = f.section
    if f.rank is None:
        raise SettingError(f"{s}.rank is required for kind {f.kind}; set e.g. "
                          f"{s}.rank={h // 4} (32%) or {h // 2} (63%)")
    if f.rank > min(h, ff):
        widths = "min(hidden_dim, ffn_dim)" if s == "model.ffn" else f"min({h}, {ff}) of a {h} -> {ff} layer"
        raise SettingError(f"{s}.rank={f.rank} is larger than {widths}="
                          f"{min(h, ff)}; a rank above that saves nothing — lower it")


def check_blocks(f: Settings, h: int, ff: int) -> None:
    """A block count is given and divides both widths (``f.section`` names the settings in messages)."""
    if f.num_blocks is None:
        raise SettingError(f"{f.section}.num_blocks is required for kind {f.kind}; set e.g. "
                          f"{f.section}.num_blocks=4")
    for dim, width in zip((h, ff), _widths(f, h, ff), strict=True):
        if dim % f.num_blocks:
            raise SettingError(f"{f.section}.num_blocks={f.num_blocks} does not divide "
                              f"{width}; pick a block count that divides it")

"""lowrank-lm: Transformer language models with low-rank and structured feed-forward layers."""

from __future__ import annotations

__version__ = "0.1.0"

"""Structures for any model: replace the linear layers of a PyTorch / transformers / torchtitan model by
registry structures (:func:`structurize`), save and load such a transformers model
(:func:`load_structurized`), and merge it back onto its stock class (:func:`merge_structures`).
See docs/integrations.md."""

from __future__ import annotations

from lowrank_lm.anymodel.core import RECORD_KEY, apply_record, linear_flops, projectable_kinds, structurize
from lowrank_lm.anymodel.hf import load_structurized, merge_structures
from lowrank_lm.anymodel.report import Replaced, StructurizeReport
from lowrank_lm.anymodel.targets import PRESETS

__all__ = ["PRESETS", "RECORD_KEY", "Replaced", "StructurizeReport", "apply_record", "linear_flops",
           "load_structurized", "merge_structures", "projectable_kinds", "structurize"]

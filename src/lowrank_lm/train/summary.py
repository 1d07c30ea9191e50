"""``summary.json``: what a finished run measured, as one typed record shared by trainer, sweep and demo.

The trainer writes it last, only when a run finished (its presence is what "done" means to a sweep);
everything that reads it goes through :meth:`RunSummary.read`, so a renamed field breaks loudly in one
place instead of silently emptying a results column. Summaries written before provenance was recorded
read with ``provenance=None``; keys added by a newer version are ignored.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from lowrank_lm.atomic import write_json_atomic
from lowrank_lm.errors import UserError
from lowrank_lm.provenance import Provenance

# Fields that only some summaries have (self-guided runs; provenance since it was recorded).
_OPTIONAL = ("guided_steps", "guide_flops", "flop_ratio_to_dense", "provenance")


@dataclass(frozen=True)
class RunSummary:
    """The record of one finished training run (``RUN/summary.json``)."""

    finished: ClassVar[bool] = True

    name: str
    """The run folder's name."""
    structure: str
    """model.ffn.kind."""
    params: int
    params_non_embedding: int
    params_ffn: int
    tokens: int
    """Tokens trained on, replayed self-guided steps included."""
    unique_tokens: int
    steps: int
    train_flops: float
    """Training FLOPs (the reference's convention), self-guided guide FLOPs included."""
    train_s: float
    """Seconds in training steps, over every session of the run."""
    wall_s: float
    tokens_per_s: float
    skipped_steps: int
    peak_memory_mb: float
    device: str
    world_size: int
    precision: str
    final_val_loss: float
    final_val_ppl: float
    val_tokens: int
    guided_steps: int | None = None
    guide_flops: float | None = None
    flop_ratio_to_dense: float | None = None
    provenance: Provenance | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: optional fields only when set, as summary.json has always had them."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["provenance"] = self.provenance.to_dict() if self.provenance is not None else None
        return {k: v for k, v in out.items() if not (k in _OPTIONAL and v is None)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "summary.json") -> RunSummary:
        """Read the JSON form; a missing required field is a one-line UserError naming it."""
        if not isinstance(d, dict):
            raise UserError(f"{source} is not a JSON object; delete it and train the run again")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d and n not in _OPTIONAL]
        if missing:
            raise UserError(f"{source} lacks {', '.join(missing)} (written by another version of lowrank-lm?); "
                            "train the run again with --overwrite")
        values = {n: d[n] for n in names if n in d}
        if values.get("provenance") is not None:
            values["provenance"] = Provenance.from_dict(values["provenance"])
        return cls(**values)

    @classmethod
    def read(cls, path: str | Path) -> RunSummary:
        """Read ``path`` (a summary.json); unreadable or malformed files are one-line UserErrors."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {path} ({e}); delete it and train the run again") from None
        return cls.from_dict(data, str(path))

    def write(self, path: str | Path) -> None:
        """Write atomically (beside, then renamed): a reader never sees half a summary."""
        write_json_atomic(path, self.to_dict())

    def replace(self, **changes: Any) -> RunSummary:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class StoppedRun:
    """What the trainer returns when a run stopped before its end (``--max-steps`` or a signal): resumable."""

    finished: ClassVar[bool] = False

    steps: int
    """Steps done so far; the newest checkpoint is at this step."""
    total_steps: int
    """Steps of the whole run."""
    stopped_by: str
    """``max_steps`` or the name of the signal (SIGINT, SIGTERM, SIGUSR1) that stopped it."""
    run_dir: str
    """The run folder, as the config names it; ``lowrank-lm train RUN_DIR`` continues the run."""

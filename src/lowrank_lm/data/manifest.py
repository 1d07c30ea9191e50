"""``manifest.json``: what a prepared data dir holds, and the checks that the data fits a model.

The manifest is written last, atomically, once every shard it lists is complete, so a manifest never points
at a half-written shard. Shard paths are relative to the data dir, so the dir can be moved or copied.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowrank_lm.config import DataConfig, ModelConfig
from lowrank_lm.data.files import first_line, write_json_atomic
from lowrank_lm.errors import UserError

MANIFEST = "manifest.json"
FORMAT = 1
SPLITS = ("train", "val")


@dataclass(frozen=True)
class ShardInfo:
    """One token file: ``tokens`` ids of ``dtype`` (raw, little-endian, no header)."""

    path: str
    split: str
    tokens: int
    sha256: str

    def __getitem__(self, key: str) -> Any:
        """``shard["path"]`` reads like the JSON entry it came from."""
        return getattr(self, key)


@dataclass
class Manifest:
    """The contents of manifest.json (plus ``data_dir``, where it was read from)."""

    source: str
    """``data.source`` as configured."""
    source_identity: dict[str, Any]
    """What identifies the source: the embedded file's sha256, local files and sizes, or the hub name."""
    tokenizer: str
    """``data.tokenizer`` as configured (bpe-8192, gpt2, ...)."""
    tokenizer_kind: str
    tokenizer_files: dict[str, str]
    """{file in the data dir: sha256} of the tokenizer's files (tokenizer.json, tokenizer.model, tokenizer/...)."""
    vocab_size: int
    eot_id: int
    dtype: str
    """uint16 when every id fits, else uint32."""
    split_mode: str
    """tail (the end of every document is validation) | documents (the first documents are)."""
    tokens: dict[str, int]
    """{"train": N, "val": N}."""
    documents: dict[str, int]
    """Documents that contributed to each split."""
    shards: list[ShardInfo]
    settings: dict[str, Any]
    """The data settings that shaped the shards: val_tokens, max_tokens, shard_tokens, text_field, hf_config."""
    tool_version: str
    created: str
    format: int = FORMAT
    data_dir: Path = field(default=Path("."), compare=False)

    def shards_of(self, split: str) -> list[ShardInfo]:
        """The shards of one split, in stream order."""
        return [s for s in self.shards if s.split == split]

    def to_dict(self) -> dict[str, Any]:
        """The manifest as written to manifest.json (without ``data_dir``, which is where it was read from)."""
        d = dataclasses.asdict(self)
        d.pop("data_dir")
        return d

    def summary(self) -> str:
        """One line: token counts, tokenizer, dtype and shard count."""
        n = len(self.shards)
        return (f"{self.tokens['train']:,} train + {self.tokens['val']:,} val tokens, {self.tokenizer} "
                f"(vocab {self.vocab_size:,}), {self.dtype}, {n} shard{'s' if n != 1 else ''}")


def write_manifest(manifest: Manifest) -> None:
    """Write manifest.json into ``manifest.data_dir`` atomically."""
    write_json_atomic(manifest.data_dir / MANIFEST, manifest.to_dict())


def load_manifest(data_dir: str | Path) -> Manifest:
    """Read ``data_dir/manifest.json``; raises UserError when it is missing or not a manifest of this tool."""
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST
    if not path.is_file():
        raise UserError(f"{data_dir} holds no prepared data (no {MANIFEST}); run lowrank-lm prepare CONFIG first")
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, this version reads format {FORMAT}")
        raw["shards"] = [ShardInfo(**s) for s in raw["shards"]]
        manifest = Manifest(**raw)
        for s in manifest.shards:
            if s.split not in SPLITS or s.tokens <= 0 or Path(s.path).is_absolute() or ".." in Path(s.path).parts:
                raise ValueError(f"bad shard entry {s.path!r}")
        if manifest.dtype not in ("uint16", "uint32"):
            raise ValueError(f"bad dtype {manifest.dtype!r}")
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise UserError(f"{path} is not a valid manifest ({first_line(e)}); delete {data_dir} and run "
                        "lowrank-lm prepare again") from None
    manifest.data_dir = data_dir
    return manifest


def check_compatible(manifest: Manifest, model_cfg: ModelConfig, data_cfg: DataConfig | None = None) -> None:
    """Refuse data that the model cannot use: ids beyond ``model.vocab_size`` or (given ``data_cfg``) shards
    made with another tokenizer than ``data.tokenizer``. Raises UserError with the fix."""
    if data_cfg is not None and data_cfg.tokenizer.strip() != manifest.tokenizer:
        raise UserError(f"{manifest.data_dir} was prepared with tokenizer {manifest.tokenizer}, but data.tokenizer="
                        f"{data_cfg.tokenizer}; use data.tokenizer={manifest.tokenizer} or prepare another data.dir")
    if manifest.vocab_size > model_cfg.vocab_size:
        raise UserError(f"the data's tokenizer {manifest.tokenizer} has {manifest.vocab_size:,} ids but "
                        f"model.vocab_size={model_cfg.vocab_size:,}; set model.vocab_size={manifest.vocab_size} "
                        "(or more) or use a smaller tokenizer")

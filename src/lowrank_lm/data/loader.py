"""The one loader used by training, evaluation and benchmarks: fixed-length sequences from memory-mapped shards.

A split is one stream of ids (its shards end to end). Sequence ``i`` is the window of ``seq_len + 1`` ids that
starts at ``i * seq_len``: inputs are its first ``seq_len`` ids, targets its last ``seq_len``, so consecutive
sequences share only their boundary id and every id is a target once per epoch.

Training order: epoch ``e`` visits the ``S = (ids - 1) // seq_len`` sequences in a permutation drawn from
``(seed, e)``; epochs follow each other without end. All ranks read one global stream of positions: rank ``r`` of
``W`` takes positions ``P + r, P + r + W, ...``, so after every rank has read ``n`` sequences they have read, together,
exactly the first ``W * n`` of the stream (the same sequences per step as one process with the global batch).
The state is the global position ``P``; restoring it continues the identical stream, even on another number
of ranks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from lowrank_lm.data.manifest import Manifest, load_manifest
from lowrank_lm.data.shards import TokenStream, verify_shards
from lowrank_lm.data.tokenizer import check_tokenizer_files
from lowrank_lm.errors import UserError


def _open(data_dir: str | Path, split: str, seq_len: int, verify: bool) -> tuple[Manifest, TokenStream, int]:
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    manifest = load_manifest(data_dir)
    if verify:
        check_tokenizer_files(manifest)
        verify_shards(manifest, (split,))
    stream = TokenStream(manifest, split)
    count = (stream.tokens - 1) // seq_len
    if count < 1:
        fix = "raise data.val_tokens" if split == "val" else "prepare more data"
        raise UserError(f"the {split} split of {manifest.data_dir} has {stream.tokens:,} ids, too few for one "
                        f"sequence of seq_len={seq_len} (+1); lower model.seq_len or {fix}")
    return manifest, stream, count


class TokenLoader:
    """Endless, deterministic, shuffled batches of ``(inputs, targets)``, each ``(batch_size, seq_len)`` int64."""

    def __init__(self, data_dir: str | Path, split: str, seq_len: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, verify: bool = True) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.manifest, self._stream, self._count = _open(data_dir, split, seq_len, verify)
        self.split, self.seq_len, self.batch_size, self.seed = split, seq_len, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self._position = 0
        self._perms: dict[int, np.ndarray] = {}

    @property
    def sequences_per_epoch(self) -> int:
        """Sequences of ``seq_len + 1`` ids in one pass over the split."""
        return self._count

    @property
    def epoch(self) -> int:
        """The epoch the next batch starts in (0-based)."""
        return self._position // self._count

    def order(self, epoch: int) -> np.ndarray:
        """The permutation of sequence indices for ``epoch`` (a function of seed and epoch only)."""
        perm = self._perms.get(epoch)
        if perm is None:
            rng = np.random.default_rng([self.seed & 0xFFFF_FFFF_FFFF_FFFF, epoch])
            perm = rng.permutation(self._count)
            if len(self._perms) >= 2:  # a batch spans at most two epochs
                self._perms.pop(min(self._perms))
            self._perms[epoch] = perm
        return perm

    def next_sequences(self) -> list[int]:
        """Indices of the sequences that the next batch of this rank holds (and advance past them)."""
        out = []
        for i in range(self.batch_size):
            g = self._position + self.rank + i * self.world_size
            out.append(int(self.order(g // self._count)[g % self._count]))
        self._position += self.batch_size * self.world_size
        return out

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``(inputs, targets)``, both ``(batch_size, seq_len)`` int64; targets are inputs shifted by one."""
        L = self.seq_len
        rows = np.stack([self._stream.read(i * L, L + 1) for i in self.next_sequences()])  # (B, L + 1)
        batch = torch.from_numpy(rows)
        return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()

    def state_dict(self) -> dict[str, int]:
        """Plain ints; :meth:`load_state_dict` continues the identical stream from here."""
        return {"position": self._position, "epoch": self.epoch, "seed": self.seed, "seq_len": self.seq_len,
                "sequences_per_epoch": self._count}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved position; refuses a state from another dataset, seed or seq_len."""
        mine = {"seed": self.seed, "seq_len": self.seq_len, "sequences_per_epoch": self._count}
        diffs = [f"{k} {state.get(k)} != {v}" for k, v in mine.items() if state.get(k) != v]
        if diffs:
            raise UserError(f"the saved {self.split} loader position belongs to other data or settings "
                            f"({', '.join(diffs)}); resume with the same data and settings, or start a new run")
        position = int(state["position"])
        if position < 0:
            raise UserError(f"saved loader position {position} is negative; the checkpoint is damaged")
        self._position = position


def validation_batches(data_dir: str | Path, seq_len: int, batch_size: int, max_tokens: int | None = None,
                       rank: int = 0, world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed validation set, in order, the same on every call: ``(inputs, targets)`` batches of the
    sequences ``rank, rank + W, ...``. ``max_tokens`` keeps the first ``max_tokens // seq_len`` sequences.

    The ranks together score exactly the sequences one process scores, whatever ``world_size``. Every rank
    yields the same number of batches (collectives inside a sharded model's forward stay in step): a rank
    whose share is one sequence short ends with a batch whose targets are all -1, which a loss with
    ``ignore_index=-1`` skips.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    _, stream, count = _open(data_dir, "val", seq_len, verify=True)
    if max_tokens is not None:
        count = min(count, max_tokens // seq_len)
    mine = range(rank, count, world_size)
    most = -(-count // world_size)  # the share of rank 0, the largest
    for start in range(0, most, batch_size):
        chosen = mine[start:start + batch_size]
        if len(chosen):
            rows = np.stack([stream.read(i * seq_len, seq_len + 1) for i in chosen])
            batch = torch.from_numpy(rows)
            yield batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
        else:  # keep in step with the ranks that still have a sequence: nothing of this batch is scored
            first = torch.from_numpy(stream.read(0, seq_len).astype(np.int64))[None]
            yield first, torch.full_like(first, -1)

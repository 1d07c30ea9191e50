"""Token shards: writing them atomically, verifying them, and reading a split as one memory-mapped stream.

A shard is a raw array of ``uint16`` (or ``uint32``) ids with no header; its length and sha256 live in the
manifest. The writer streams ids into a uniquely named temporary file beside ``NAME`` (lowrank_lm.atomic)
while hashing them, fsyncs, and renames the file into place only when it is complete, so a shard name on
disk always means a whole shard.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import IO, Any

import numpy as np

from lowrank_lm.atomic import fsync_dir, temp_beside
from lowrank_lm.data.files import file_sha256
from lowrank_lm.data.manifest import Manifest, ShardInfo
from lowrank_lm.errors import UserError
from lowrank_lm.faults import crash_point


def shard_dtype(vocab_size: int) -> str:
    """The smallest unsigned type that holds every id."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def shard_name(split: str, index: int) -> str:
    """The file name of a split's ``index``-th shard, e.g. ``train_000003.bin``."""
    return f"{split}_{index:06d}.bin"


class ShardWriter:
    """Cuts a stream of ids into shards of exactly ``shard_tokens`` ids (the last one may be shorter)."""

    def __init__(self, data_dir: Path, split: str, dtype: str, shard_tokens: int,
                 done: list[ShardInfo] | None = None) -> None:
        self.data_dir, self.split, self.dtype, self.shard_tokens = data_dir, split, np.dtype(dtype), shard_tokens
        self.shards: list[ShardInfo] = list(done or [])
        self._file: IO[Any] | None = None
        self._tmp: Path | None = None
        self._hash = hashlib.sha256()
        self._count = 0

    @property
    def tokens(self) -> int:
        """Ids in completed shards."""
        return sum(s.tokens for s in self.shards)

    def append(self, ids: np.ndarray) -> None:
        """Add ids to the stream, completing shards as they fill."""
        start = 0
        while start < len(ids):
            if self._file is None:
                self._file = self._open()
            take = min(len(ids) - start, self.shard_tokens - self._count)
            chunk = np.ascontiguousarray(ids[start:start + take], dtype=self.dtype).tobytes()
            self._file.write(chunk)
            self._hash.update(chunk)
            self._count += take
            start += take
            if self._count == self.shard_tokens:
                self._finish()

    def close(self) -> None:
        """Complete the last, partial shard (if it holds any ids)."""
        if self._file is not None and self._count:
            self._finish()
        self.abort()

    def abort(self) -> None:
        """Drop the shard being written (its .tmp file) without touching completed ones."""
        if self._file is not None:
            self._file.close()
            assert self._tmp is not None
            self._tmp.unlink(missing_ok=True)
            self._file = None

    def _name(self) -> str:
        return shard_name(self.split, len(self.shards))

    def _open(self) -> IO[Any]:
        # open across append calls; closed in _finish or abort
        self._file, self._tmp = temp_beside(self.data_dir / self._name())
        self._hash = hashlib.sha256()
        self._count = 0
        return self._file

    def _finish(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        crash_point("prepare.shard")  # fault injection: die with the shard complete but not yet in place
        assert self._tmp is not None
        os.replace(self._tmp, self.data_dir / self._name())
        fsync_dir(self.data_dir)
        self.shards.append(ShardInfo(self._name(), self.split, self._count, self._hash.hexdigest()))


# (absolute path, size, mtime_ns, expected sha256) of shards already hashed by this process: a second loader
# over the same data (eval, a replay reader) does not hash them again, while a rewritten file is hashed anew.
_verified: set[tuple[str, int, int, str]] = set()


def verify_shards(manifest: Manifest, splits: tuple[str, ...] = ("train", "val"), checksum: bool = True) -> None:
    """Check that every shard of ``splits`` exists with the size the manifest gives and (``checksum``) its
    sha256. Raises UserError naming the shard and the fix."""
    data_dir = manifest.data_dir
    itemsize = np.dtype(manifest.dtype).itemsize
    fix = f"delete {data_dir} (or run lowrank-lm prepare --force) and prepare the data again"
    for shard in manifest.shards:
        if shard.split not in splits:
            continue
        path = data_dir / shard.path
        try:
            st = path.stat()
        except FileNotFoundError:
            raise UserError(f"shard {shard.path} listed in {data_dir}/manifest.json is missing; {fix}") from None
        if st.st_size != shard.tokens * itemsize:
            raise UserError(f"shard {path} holds {st.st_size:,} bytes but the manifest says "
                            f"{shard.tokens * itemsize:,} (truncated or overwritten); {fix}")
        if not checksum:
            continue
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, shard.sha256)
        if key in _verified:
            continue
        if file_sha256(path) != shard.sha256:
            raise UserError(f"shard {path} fails its sha256 check (the file is corrupted); {fix}")
        _verified.add(key)


class TokenStream:
    """One split of a data dir as a single sequence of ids over its memory-mapped shards."""

    def __init__(self, manifest: Manifest, split: str) -> None:
        self.shards = manifest.shards_of(split)
        if not self.shards:
            raise UserError(f"{manifest.data_dir} has no {split} shards; prepare the data again")
        self._maps = [np.memmap(manifest.data_dir / s.path, dtype=manifest.dtype, mode="r") for s in self.shards]
        self._starts = np.cumsum([0] + [s.tokens for s in self.shards])
        self.tokens = int(self._starts[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        """Ids ``[start, start + length)`` as int64, read across shard boundaries when needed."""
        if start < 0 or start + length > self.tokens:
            raise IndexError(f"ids {start}..{start + length} outside a stream of {self.tokens}")
        out = np.empty(length, dtype=np.int64)
        i = int(np.searchsorted(self._starts, start, side="right")) - 1
        filled = 0
        while filled < length:
            offset = start + filled - int(self._starts[i])
            take = min(length - filled, self.shards[i].tokens - offset)
            out[filled:filled + take] = self._maps[i][offset:offset + take]
            filled += take
            i += 1
        return out

"""The loader: windows read from the shards, every sequence once per epoch across 1, 2 and 3 ranks, exact
stop-and-restore, a fixed validation set, and refusal of damaged shards."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from lowrank_lm.data import TokenLoader, load_manifest, validation_batches
from lowrank_lm.errors import UserError

from .conftest import split_ids

SEQ, BATCH, SEED = 48, 5, 1234


def global_stream(data_dir, world_size: int, steps: int, seq_len: int = SEQ, batch: int = BATCH) -> list[int]:
    """The sequences all ranks read, in global order: step by step, position by position, rank by rank."""
    loaders = [TokenLoader(data_dir, "train", seq_len, batch, SEED, r, world_size) for r in range(world_size)]
    out: list[int] = []
    for _ in range(steps):
        per_rank = [ld.next_sequences() for ld in loaders]
        for i in range(batch):
            out.extend(per_rank[r][i] for r in range(world_size))
    return out


def test_batches_are_windows_of_the_shards(gpt2_data):
    ids = split_ids(gpt2_data, "train")
    loader = TokenLoader(gpt2_data, "train", SEQ, BATCH, SEED)
    S = loader.sequences_per_epoch
    assert (len(ids) - 1) // SEQ == S
    order = loader.order(0)
    crossing = 0
    for step in range(S // BATCH):  # one whole epoch; shards hold 10,000 ids, so some windows span two
        x, y = loader.next_batch()
        assert x.shape == y.shape == (BATCH, SEQ) and x.dtype == y.dtype == torch.int64
        for row, s in enumerate(order[step * BATCH:(step + 1) * BATCH]):
            window = torch.from_numpy(ids[s * SEQ: s * SEQ + SEQ + 1])
            assert torch.equal(x[row], window[:-1]) and torch.equal(y[row], window[1:])
            crossing += (s * SEQ) // 10_000 != (s * SEQ + SEQ) // 10_000
    assert crossing >= 3


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_sequence_once_per_epoch_across_ranks(gpt2_data, world_size):
    S = TokenLoader(gpt2_data, "train", SEQ, BATCH, SEED).sequences_per_epoch
    steps = -(-2 * S // (BATCH * world_size))  # enough for two epochs
    stream = global_stream(gpt2_data, world_size, steps)
    assert sorted(stream[:S]) == list(range(S)) and sorted(stream[S:2 * S]) == list(range(S))
    assert stream[:S] != stream[S:2 * S]  # a new permutation each epoch
    # the union over ranks is the single-process stream: DDP sees what one process with the global batch sees
    single = global_stream(gpt2_data, 1, -(-len(stream) // BATCH))
    assert stream == single[:len(stream)]


def test_order_depends_on_seed_and_epoch_only(gpt2_data):
    a = TokenLoader(gpt2_data, "train", SEQ, BATCH, SEED)
    b = TokenLoader(gpt2_data, "train", SEQ, BATCH, SEED)
    c = TokenLoader(gpt2_data, "train", SEQ, BATCH, SEED + 1)
    assert np.array_equal(a.order(3), b.order(3)) and not np.array_equal(a.order(3), c.order(3))
    assert not np.array_equal(a.order(0), a.order(1))


@pytest.mark.parametrize("stop", [0, 1, 7, 60, 313])
def test_stop_and_restore_continues_the_identical_stream(gpt2_data, stop):
    seq = 512  # ~108 sequences an epoch: the later stops lie past one and several epoch boundaries
    first = TokenLoader(gpt2_data, "train", seq, 3, SEED, rank=1, world_size=2)
    for _ in range(stop):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # plain ints, as a checkpoint stores them
    assert all(isinstance(v, int) for v in state.values())
    assert state["epoch"] == first.epoch == (stop * 3 * 2) // first.sequences_per_epoch
    resumed = TokenLoader(gpt2_data, "train", seq, 3, SEED, rank=1, world_size=2)
    resumed.load_state_dict(state)
    for _ in range(25):
        x1, y1 = first.next_batch()
        x2, y2 = resumed.next_batch()
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_a_state_from_other_data_is_refused(gpt2_data, tiny_data):
    state = TokenLoader(gpt2_data, "train", SEQ, BATCH, SEED).state_dict()
    with pytest.raises(UserError, match="belongs to other data or settings"):
        TokenLoader(tiny_data, "train", SEQ, BATCH, SEED).load_state_dict(state)
    with pytest.raises(UserError, match="seq_len"):
        TokenLoader(gpt2_data, "train", SEQ + 1, BATCH, SEED).load_state_dict(state)


def test_validation_set_is_fixed_in_order_and_split_over_ranks(gpt2_data):
    val = torch.from_numpy(split_ids(gpt2_data, "val"))
    assert len(val) == 4096
    batches = list(validation_batches(gpt2_data, 64, 10))
    again = list(validation_batches(gpt2_data, 64, 10))
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert len(x) == (4096 - 1) // 64 == 63
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    assert torch.equal(x.flatten(), val[: 63 * 64]) and torch.equal(y.flatten(), val[1: 63 * 64 + 1])
    # ranks take every W-th sequence; together, the same sequences (rounded down to a multiple of W)
    parts = [torch.cat([b[0] for b in validation_batches(gpt2_data, 64, 4, rank=r, world_size=3)]) for r in range(3)]
    assert [len(p) for p in parts] == [21, 21, 21]
    assert all(torch.equal(parts[r][i], x[3 * i + r]) for r in range(3) for i in range(21))
    # max_tokens keeps the first max_tokens // seq_len sequences
    assert sum(len(b[0]) for b in validation_batches(gpt2_data, 64, 10, max_tokens=1000)) == 15


def test_too_long_sequences_are_refused(gpt2_data):
    with pytest.raises(UserError, match="too few for one sequence"):
        list(validation_batches(gpt2_data, 5000, 2))


def _copy(data_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(data_dir, dst)
    return dst, load_manifest(dst).shards_of("train")[1]


def test_a_flipped_byte_is_refused(gpt2_data, tmp_path):
    d, shard = _copy(gpt2_data, tmp_path)
    raw = bytearray((d / shard.path).read_bytes())
    raw[1234] ^= 0x01
    (d / shard.path).write_bytes(bytes(raw))
    with pytest.raises(UserError, match=f"{shard.path} fails its sha256 check"):
        TokenLoader(d, "train", SEQ, BATCH, SEED)
    TokenLoader(d, "train", SEQ, BATCH, SEED, verify=False)  # the caller may opt out


def test_a_truncated_shard_is_refused_even_without_checksums(gpt2_data, tmp_path):
    d, shard = _copy(gpt2_data, tmp_path)
    with open(d / shard.path, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(UserError, match="truncated"):
        TokenLoader(d, "train", SEQ, BATCH, SEED)


def test_a_manifest_from_another_tokenizer_is_refused(gpt2_data, tiny_data, tmp_path):
    d, _ = _copy(gpt2_data, tmp_path)
    shutil.copyfile(tiny_data / "manifest.json", d / "manifest.json")
    with pytest.raises(UserError, match=r"tokenizer files .* are not those of its manifest"):
        TokenLoader(d, "train", SEQ, BATCH, SEED)

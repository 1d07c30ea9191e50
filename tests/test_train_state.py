"""The training state is one dataclass, saved and restored whole in the checkpoint's pickle-free format."""

from __future__ import annotations

import torch

from lowrank_lm.checkpoint import OPTIMIZER_EXTRA, OPTIMIZER_GROUPS
from lowrank_lm.safe_state import read_state, write_state
from lowrank_lm.train.state import REQUIRED, TrainState, capture_rng, restore_rng


def _state() -> TrainState:
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    weight.grad = torch.full((3,), 0.5)
    optimizer.step()
    return TrainState(rng=capture_rng(torch.device("cpu")), step=7, tokens=1792, bad_in_row=1, skipped=2,
                      train_s=1.5, wall_s=3.25, guide_flops=96, loaders={"train": {"position": 1792}},
                      optimizer=optimizer.state_dict())


def test_a_state_written_and_read_back_is_the_same_state(tmp_path):
    state = _state()
    write_state(tmp_path, state.to_saved())
    saved = read_state(tmp_path)
    assert list(saved) == ["rng", "step", "tokens", "bad_in_row", "skipped", "train_s", "wall_s", "guide_flops",
                           "loaders", "optimizer"]  # the keys of every earlier release, in their order
    assert set(REQUIRED) <= set(saved)
    back = TrainState.from_saved(saved)
    assert (back.step, back.tokens, back.bad_in_row, back.skipped) == (7, 1792, 1, 2)
    assert (back.train_s, back.wall_s, back.guide_flops, back.loaders) == (1.5, 3.25, 96, {"train": {"position": 1792}})
    assert torch.equal(back.rng["cpu"], state.rng["cpu"])
    moment = back.optimizer["state"][0]["exp_avg"]
    assert torch.equal(moment, state.optimizer["state"][0]["exp_avg"]) and float(moment.abs().sum()) > 0
    assert back.optimizer["param_groups"][0]["lr"] == 0.1


def test_a_first_release_state_without_times_starts_them_at_zero():
    saved = {key: value for key, value in _state().to_saved().items() if key not in ("train_s", "wall_s")}
    back = TrainState.from_saved(saved)
    assert (back.train_s, back.wall_s, back.step) == (0.0, 0.0, 7)


def test_a_sharded_state_keeps_only_the_optimisers_plain_part():
    state = _state()
    state.optimizer = None  # a sharded checkpoint: the writer adds the plain part, the tensors go to the shards
    saved = state.to_saved()
    assert "optimizer" not in saved
    groups = [{"lr": 0.1, "params": ["weight"]}]
    back = TrainState.from_saved({**saved, OPTIMIZER_GROUPS: groups, OPTIMIZER_EXTRA: {}})
    assert back.optimizer == {OPTIMIZER_GROUPS: groups, OPTIMIZER_EXTRA: {}}


def test_restored_generators_draw_the_same_numbers():
    rng = capture_rng(torch.device("cpu"))
    first = torch.rand(4)
    torch.rand(10)
    restore_rng(rng, torch.device("cpu"))
    assert torch.equal(torch.rand(4), first)

"""Progress a person can watch: log lines with step/total, elapsed and ETA when stderr is not a terminal,
evaluation progress only for long evaluations, and the busy-core warning once."""

from __future__ import annotations

import re

import pytest

from lowrank_lm.train import run_training
from lowrank_lm.train.progress import CoreWatch, EvalProgress, TrainProgress, eval_line, format_duration, train_line

from .conftest import tiny_run_config


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (44.6, "45s"), (59.4, "59s"), (60, "1m00s"), (185, "3m05s"),
                                          (3599, "59m59s"), (7620, "2h07m"), (-3, "0s")])
def test_durations_are_short(seconds, text):
    assert format_duration(seconds) == text


def test_train_line_has_step_total_percent_elapsed_and_eta():
    rec = {"step": 120, "loss": 5.123456, "lr": 3e-4, "tokens_per_s": 12345.6}
    # 100 steps done since step 20 in 50 s: 280 steps left at 0.5 s each
    assert train_line(rec, 20, 400, 50.0) == ("step 120/400 (30%)  loss 5.1235  lr 3.00e-04  12,346 tok/s  "
                                              "elapsed 50s  ETA 2m20s")
    assert train_line({**rec, "step": 20}, 20, 400, 0.0).endswith("ETA ?")


def test_train_progress_logs_lines_off_a_terminal_and_warns_once_when_cores_are_busy():
    clock, lines = FakeClock(), []
    watch = CoreWatch(threads=2, sample=lambda: 1.8)
    watch._thread.join()
    progress = TrainProgress(0, 10, lines.append, watch=watch, terminal=False, clock=clock)
    for step in (5, 10):
        clock.now += 5
        progress.update({"step": step, "loss": 4.0, "lr": 1e-3, "tokens_per_s": 1000.0})
    progress.close()
    assert lines[0].startswith("warning: other processes keep 1.8 of ") and "cores busy; this run will be " \
        "several times slower than on an idle machine (--threads 1 avoids the worst stalls)" in lines[0]
    assert lines[1:] == ["step 5/10 (50%)  loss 4.0000  lr 1.00e-03  1,000 tok/s  elapsed 5s  ETA 5s",
                         "step 10/10 (100%)  loss 4.0000  lr 1.00e-03  1,000 tok/s  elapsed 10s  ETA 0s"]


def test_no_warning_when_the_cores_are_free_or_unknown():
    for sample in (lambda: 0.2, lambda: None):
        watch = CoreWatch(threads=1, sample=sample)
        assert watch.warning(wait=5.0) is None


def test_evaluation_progress_only_when_long():
    clock, lines = FakeClock(), []
    shown = EvalProgress(65536, lines.append, after=5.0, every=10.0, terminal=False, clock=clock)
    clock.now += 4
    shown(16384)  # a short evaluation says nothing
    assert lines == []
    clock.now += 6
    shown(26214)
    clock.now += 5
    shown(40000)  # within `every` of the last line: quiet
    clock.now += 5
    shown(52428)
    assert lines == [eval_line(26214, 65536, 10.0), eval_line(52428, 65536, 20.0)]
    assert lines[0] == "evaluating: 26,214/65,536 tokens (40%)  elapsed 10s  ETA 15s"


def test_training_off_a_terminal_logs_progress_lines(tmp_path, tiny_data, capsys):
    run_training(tiny_run_config(tiny_data, tmp_path / "run", "train.log_interval=5", "train.checkpoint_interval="))
    err = capsys.readouterr().err
    steps = re.findall(r"^step (\d+)/20 \((\d+)%\)  loss \d+\.\d{4}  lr \S+  [\d,]+ tok/s  elapsed \d+s  ETA \d+s$",
                       err, flags=re.M)
    assert [(int(a), int(b)) for a, b in steps] == [(5, 25), (10, 50), (15, 75), (20, 100)]
    assert f"loss plot: {tmp_path / 'run' / 'loss.png'}" in err  # train draws its own curve at the end
    assert (tmp_path / "run" / "loss.png").read_bytes()[:4] == b"\x89PNG"

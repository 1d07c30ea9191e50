"""Multi-process training on CPU (gloo): DDP and FSDP2 equal one process, true throughput numbers, sharded
checkpoints, validation and resume across world sizes.

The two-process side of every comparison runs in ONE torchrun launch (tests/distributed_jobs.py), made by a
module fixture; the one-process side runs in this process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lowrank_lm
from lowrank_lm.accounting import account
from lowrank_lm.checkpoint import is_sharded, list_checkpoints, load_state
from lowrank_lm.cli import main
from lowrank_lm.config import save_config
from lowrank_lm.data import TokenLoader, validation_batches
from lowrank_lm.resolve import load_config
from lowrank_lm.train import run_training
from lowrank_lm.train.metrics import FLOP_CONVENTION, read_metrics, throughput
from lowrank_lm.train.schedule import lr_at
from lowrank_lm.train.self_guided import coin_seed

from .conftest import tiny_run_config

# 10 steps of 8 sequences; micro-batches of 2: one process accumulates 4, each of two processes 2.
TEN_STEPS = ["train.tokens=2560", "train.micro_batch_size=2"]
LOWRANK = ["model.ffn.kind=lowrank", "model.ffn.rank=8"]
BLOCKSHUFFLE = ["model.ffn.kind=blockshuffle", "model.ffn.num_blocks=2"]
GUIDED = [*LOWRANK, "train.self_guided.enabled=true", "train.self_guided.ratio=0.5",
          "train.self_guided.reduce_flop=false"]
BF16_LOSS_TOL = 2.0**-5
"""bf16 losses agree to one bf16 ulp of the loss (2^-5 for losses in [4, 8); ours are 5-6.3), not bitwise: one
process autocasts fp32 weights, FSDP2 all-gathers bf16 weights (norm gains included), the ranks sum gradients in
another order, and the CPU's bf16 kernels (oneDNN/AMX on Intel, AVX-512 BF16 on AMD) block and accumulate their
products differently. Every autocast matmul rounds its output to bf16 (8 significant bits), so two kernels given
the same operands may land on neighbouring bf16 values; the loss is a mean of log-softmaxes of such logits, and
a quantity built from bf16 values is only defined to about one ulp of its own size. The tolerance is that ulp,
fixed by the format rather than by one machine's run (observed: at most 6e-4 on the 2-vCPU AMD EPYC; an Intel
Xeon with AMX kept within the earlier 2e-2, failing only on a weight). The final weights here differ by at most
0.0148 on AMD and 0.0229 on Intel, against adam_drift_bound's 0.036."""
PEAK = ["train.peak_tflops=0.001"]
MUP = [*LOWRANK, "model.parametrization=mup", "model.mup_base_width=16"]
"""muP's optimiser has several groups (learning-rate multipliers): FSDP2 and a sharded checkpoint must keep them."""


def config(data_dir: Path, out: Path, *overrides: str):
    return tiny_run_config(data_dir, out, *TEN_STEPS, *overrides)


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in lowrank_lm.load(run_dir).state_dict().items()}


def adam_step_bound(beta1: float, beta2: float, t: int) -> float:
    """The largest |m_hat / sqrt(v_hat)| Adam's step t can take, for ANY gradients (eps only shrinks it).

    m_t = sum_i a_i g_i and v_t = sum_i b_i g_i^2 with a_i = (1-beta1) beta1^k, b_i = (1-beta2) beta2^k (k = t-i),
    so by Cauchy-Schwarz |m_t| <= sqrt(sum_k a_k^2 / b_k) sqrt(v_t); the bias corrections multiply the ratio by
    sqrt(1 - beta2^t) / (1 - beta1^t). For (0.9, 0.999) this is 1.0 at step 1 and 1.04 at step 10.
    """
    ratio = sum((beta1 * beta1 / beta2) ** k for k in range(t))
    return (1 - beta1) / (1 - beta2) ** 0.5 * ratio**0.5 * (1 - beta2**t) ** 0.5 / (1 - beta1**t)


def adam_drift_bound(cfg, steps: int) -> float:
    """How far the weights of two runs from the same initialisation can differ after ``steps`` AdamW steps, on
    any machine: each step moves a weight by at most lr_t x adam_step_bound, so two runs whose gradients differ
    (bf16 rounding, reduction order) part by at most twice that per step; AdamW's decoupled weight decay
    multiplies the difference by (1 - lr_t wd) <= 1, so it never widens it."""
    t, total = cfg.train, account(cfg).steps
    return sum(2 * lr_at(s, total, t.lr, t.warmup_ratio, t.min_lr_ratio) * adam_step_bound(*t.betas, s + 1)
               for s in range(steps))


def assert_same_run(a: Path, b: Path, tol: float = 1e-5, steps: range = range(1, 11), bf16: bool = False) -> None:
    """Equal losses (to ``tol``) and final weights: to 1e-5 in fp32; in bf16 within what Adam allows (see
    adam_drift_bound) -- a weight bound from one machine's run failed on another CPU's bf16 kernels."""
    la, lb = losses(a), losses(b)
    for s in steps:
        assert lb[s] == pytest.approx(la[s], abs=tol), (s, la[s], lb[s])
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    atol = adam_drift_bound(load_config(a / "config.yaml"), steps.stop - 1) if bf16 else 1e-5
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0 if bf16 else 1e-4, atol=atol)


# ----------------------------------------------------------------------------- the one launch
# name -> (overrides, max_steps): trained by two processes, in this order
TWO_PROCESS = {
    "ddp-lowrank": (["train.distributed=ddp", *LOWRANK, *PEAK], None),
    "ddp-blockshuffle": (["train.distributed=ddp", *BLOCKSHUFFLE], None),
    "fsdp-lowrank": (["train.distributed=fsdp", *LOWRANK, "train.activation_checkpointing=true"], None),
    "fsdp-blockshuffle": (["train.distributed=fsdp", *BLOCKSHUFFLE, *PEAK], None),
    "ddp-lowrank-bf16": (["train.distributed=ddp", *LOWRANK, "train.precision=bf16"], None),
    "fsdp-blockshuffle-bf16": (["train.distributed=fsdp", *BLOCKSHUFFLE, "train.precision=bf16"], None),
    "ddp-guided": (["train.distributed=ddp", *GUIDED], None),
    "ddp-guided-coins": (["train.distributed=ddp", *GUIDED, "train.self_guided.reduce_flop=true"], None),
    "ddp-2to1": (["train.distributed=ddp", *LOWRANK], 4),
    "fsdp-2to1": (["train.distributed=fsdp", *BLOCKSHUFFLE], 4),
    "ddp-1to2": (["train.distributed=ddp", *LOWRANK], None),  # resumes a one-process checkpoint of step 4
    "fsdp-1to2": (["train.distributed=fsdp", *BLOCKSHUFFLE], None),
    "fsdp-mup": (["train.distributed=fsdp", *MUP], None),
    "fsdp-mup-2to1": (["train.distributed=fsdp", *MUP], 4),
}
# name -> overrides: the one-process references
ONE_PROCESS = {
    "lowrank": [*LOWRANK, *PEAK],
    "blockshuffle": BLOCKSHUFFLE,
    "lowrank-bf16": [*LOWRANK, "train.precision=bf16"],
    "blockshuffle-bf16": [*BLOCKSHUFFLE, "train.precision=bf16"],
    "guided": GUIDED,
    "mup": MUP,
}
EVAL_TOKENS = 2016  # 63 sequences of 32: one more for rank 0 than for rank 1


def train_everything(data: Path, root: Path) -> tuple[dict[str, Path], subprocess.CompletedProcess]:
    """The one-process references here, then all two-process jobs in one torchrun launch (its result)."""
    out = {name: root / name for name in [*ONE_PROCESS, *TWO_PROCESS]}
    for name, overrides in ONE_PROCESS.items():
        run_training(config(data, out[name], *overrides))
    # the 1 -> 2 resumes start from a one-process checkpoint of step 4
    run_training(config(data, out["ddp-1to2"], *LOWRANK), max_steps=4)
    run_training(config(data, out["fsdp-1to2"], *BLOCKSHUFFLE), max_steps=4)
    jobs = []
    for name, (overrides, max_steps) in TWO_PROCESS.items():
        save_config(config(data, out[name], *overrides), root / f"{name}.yaml")
        jobs.append({"train": str(root / f"{name}.yaml"), "max_steps": max_steps})
    jobs.append({"eval": [str(out["lowrank"]), "--json", "--tokens", str(EVAL_TOKENS), "--batch-size", "1",
                          "--device", "cpu"]})
    (root / "jobs.json").write_text(json.dumps(jobs))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(Path(__file__).with_name("distributed_jobs.py")), str(root / "jobs.json")],
                          capture_output=True, text=True, timeout=600, env=env)
    return out, proc


def killed_by_signal(stderr: str) -> int | None:
    """The signal that killed the first failed rank, from torchrun's failure report (None: no such death)."""
    cause = re.search(r"Root Cause.*?exitcode\s*:\s*-(\d+)", stderr, re.S)
    return int(cause.group(1)) if cause else None


def launch_report(proc: subprocess.CompletedProcess) -> str:
    """What a failed launch said: each rank's last finished jobs, faulthandler's stacks of a rank that died by a
    signal, then the ends of stdout and stderr."""
    lines = proc.stderr.splitlines()
    progress = [line for line in lines if line.startswith("[jobs]")][-4:]
    fault = next((i for i, line in enumerate(lines) if line.startswith("Fatal Python error")), None)
    stacks = lines[fault:fault + 12] if fault is not None else []
    return "\n".join([*progress, *stacks, "--- stdout:", proc.stdout[-500:], "--- stderr:", proc.stderr[-3000:]])


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """Every run of this module, two-process jobs included; the 2 -> 1 resumes continue their checkpoints.

    A launch whose rank died by a signal from C++ (a SIGABRT "terminate called without an active exception",
    seen once in CI and never here) is tried once more from scratch, with a warning that keeps its log; a
    Python error, or a second death, fails the fixture.
    """
    root = tmp_path_factory.mktemp("dist")
    out, proc = train_everything(tiny_data, root)
    if proc.returncode != 0 and killed_by_signal(proc.stderr) is not None:
        (root / "torchrun.log").write_text(proc.stderr)
        warnings.warn(f"the two-process launch lost a rank to signal {killed_by_signal(proc.stderr)}; tried again "
                      f"(its log: {root / 'torchrun.log'}):\n{launch_report(proc)[:1500]}", stacklevel=1)
        root = tmp_path_factory.mktemp("dist")
        out, proc = train_everything(tiny_data, root)
    assert proc.returncode == 0, launch_report(proc)
    (root / "eval-2.json").write_text(proc.stdout.strip().splitlines()[-1])
    # the 2 -> 1 resumes: one process continues the two-process checkpoints of step 4
    for name, kind in (("ddp-2to1", LOWRANK), ("fsdp-2to1", BLOCKSHUFFLE), ("fsdp-mup-2to1", MUP)):
        shutil.copytree(out[name], root / f"{name}-cut")  # keep the two-process checkpoint for the tests
        run_training(config(tiny_data, out[name], *kind))
    out["root"] = root
    return out


# ----------------------------------------------------------------------------- equal to one process
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
@pytest.mark.parametrize("kind", ["lowrank", "blockshuffle"])
def test_two_processes_train_like_one_in_fp32(runs, mode, kind):
    assert_same_run(runs[kind], runs[f"{mode}-{kind}"])
    assert summary(runs[f"{mode}-{kind}"])["world_size"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("run, reference", [("ddp-lowrank-bf16", "lowrank-bf16"),
                                            ("fsdp-blockshuffle-bf16", "blockshuffle-bf16")])
def test_two_processes_train_like_one_in_bf16(runs, run, reference):
    assert_same_run(runs[reference], runs[run], tol=BF16_LOSS_TOL, bf16=True)


@pytest.mark.slow
def test_fsdp_writes_sharded_checkpoints_that_one_process_reads(runs, capsys, tmp_path):
    ckpt = list_checkpoints(runs["fsdp-blockshuffle"])[-1]
    assert is_sharded(ckpt) and not (ckpt / "model.safetensors").exists()
    # torch's HuggingFaceStorageWriter: one safetensors file per rank, no pickled dcp/.metadata
    assert sorted(p.name for p in (ckpt / "dcp").iterdir()) == [
        "shard-00001-model-00001-of-00001.safetensors", "shard-00002-model-00001-of-00001.safetensors"]
    state = load_state(ckpt)
    assert "optimizer" not in state  # the optimiser's tensors are sharded too; its param_groups are plain data
    assert [g["params"][0] for g in state["optimizer_param_groups"]] == ["embed.weight"]
    assert not list_checkpoints(runs["ddp-lowrank"])[-1].joinpath("dcp").exists()  # DDP keeps safetensors
    # `eval` in one process, without a process group, scores the sharded weights as the two ranks did
    with pytest.raises(SystemExit) as code:
        main(["eval", str(runs["fsdp-blockshuffle"]), "--json", "--device", "cpu", "--tokens", "2048"])
    assert code.value.code == 0
    res, trained = json.loads(capsys.readouterr().out), summary(runs["fsdp-blockshuffle"])
    assert res["tokens"] == trained["val_tokens"] == 2048
    assert res["loss"] == pytest.approx(trained["final_val_loss"], rel=1e-6)
    # generate and export read it too; the export holds the sharded checkpoint's weights
    with pytest.raises(SystemExit) as code:
        main(["generate", str(ckpt), "--prompt", "The", "--max-new-tokens", "5", "--temperature", "0",
              "--device", "cpu"])
    assert code.value.code == 0 and capsys.readouterr().out.strip()
    with pytest.raises(SystemExit) as code:
        main(["export", str(ckpt), str(tmp_path / "hf"), "--merge"])
    assert code.value.code == 0
    exported = load_file(tmp_path / "hf" / "model.safetensors")
    embedding = next(v for k, v in exported.items() if "embed" in k)
    torch.testing.assert_close(embedding, final_weights(runs["fsdp-blockshuffle"])["embed.weight"], rtol=0, atol=0)


@pytest.mark.slow
def test_one_checkpoint_validated_by_one_and_two_processes_gives_the_same_numbers(runs, capsys):
    with pytest.raises(SystemExit):
        main(["eval", str(runs["lowrank"]), "--json", "--tokens", str(EVAL_TOKENS), "--batch-size", "1",
              "--device", "cpu"])
    one = json.loads(capsys.readouterr().out)
    two = json.loads((runs["root"] / "eval-2.json").read_text())
    assert one["tokens"] == two["tokens"] == EVAL_TOKENS
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)


# ----------------------------------------------------------------------------- true numbers
@pytest.mark.slow
@pytest.mark.parametrize("run", ["ddp-lowrank", "fsdp-blockshuffle"])
def test_mfu_is_per_device(runs, run):
    flops_per_token = account(load_config(runs[run] / "config.yaml")).flops_per_token
    for rec in (r for r in read_metrics(runs[run] / "metrics.jsonl") if "loss" in r):
        assert rec["tokens_per_s_per_device"] == pytest.approx(rec["tokens_per_s"] / 2, rel=1e-12)
        assert rec["mfu"] == pytest.approx(flops_per_token * rec["tokens_per_s_per_device"] / 1e9, rel=1e-12)
        assert rec["mfu_flops"] == FLOP_CONVENTION


@pytest.mark.slow
def test_guide_flops_are_summed_over_ranks(runs):
    one, two = summary(runs["guided"]), summary(runs["ddp-guided"])
    assert one["guide_flops"] > 0
    assert two["guide_flops"] == one["guide_flops"]  # reduce_flop off: every guided token counts, on every rank
    assert two["train_flops"] == one["train_flops"]
    assert two["flop_ratio_to_dense"] == one["flop_ratio_to_dense"]
    assert_same_run(runs["guided"], runs["ddp-guided"])
    # reduce_flop: each rank flips its own coins (a guide may run on one rank and not the other in the same
    # micro-batch, which DDP's unused-parameter search handles); the ranks' guided tokens still add up
    coins = summary(runs["ddp-guided-coins"])
    assert 0 < coins["guide_flops"] < one["guide_flops"] and coins["steps"] == 10


# ----------------------------------------------------------------------------- resume on another world size
@pytest.mark.slow
@pytest.mark.parametrize("run, reference", [("ddp-2to1", "lowrank"), ("fsdp-2to1", "blockshuffle"),
                                            ("ddp-1to2", "lowrank"), ("fsdp-1to2", "blockshuffle")])
def test_resume_on_another_number_of_processes_continues_the_run(runs, run, reference):
    assert_same_run(runs[reference], runs[run])
    # the checkpointed loader position is the global stream position: 8 sequences per step, any world size
    for ckpt in list_checkpoints(runs[run]):
        state = load_state(ckpt)
        assert state["loaders"]["train"]["position"] == 8 * state["step"]
    if run.endswith("2to1"):
        cut = list_checkpoints(runs["root"] / f"{run}-cut")
        assert [c.name for c in cut] == ["step-00000004"]
        assert is_sharded(cut[0]) == run.startswith("fsdp")
        assert load_state(cut[0])["loaders"]["train"]["position"] == 32


@pytest.mark.slow
@pytest.mark.parametrize("run", ["fsdp-mup", "fsdp-mup-2to1"])
def test_mup_groups_train_and_resume_under_fsdp_like_one_process(runs, run):
    assert_same_run(runs["mup"], runs[run])


def test_loader_positions_continue_the_stream_on_any_number_of_ranks(tiny_data):
    """Two ranks read 5 steps, one continues; and the other way round: per step the same 8 sequences as one
    uninterrupted reader, and over the epoch every sequence once (no sequence lost or repeated)."""
    seq_len, global_batch = 32, 8

    def reader(rank: int, world: int) -> TokenLoader:
        return TokenLoader(tiny_data, "train", seq_len, global_batch // world, seed=7, rank=rank, world_size=world)

    def step(readers: list[TokenLoader]) -> list[int]:
        return sorted(i for r in readers for i in r.next_sequences())

    whole = reader(0, 1)
    epoch = whole.sequences_per_epoch
    n_steps = epoch // global_batch
    reference = [step([whole]) for _ in range(n_steps)]
    for first, second in ((2, 1), (1, 2)):
        readers = [reader(r, first) for r in range(first)]
        seen = [step(readers) for _ in range(5)]
        saved = readers[0].state_dict()
        assert {r.state_dict()["position"] for r in readers} == {5 * global_batch}  # every rank agrees
        readers = [reader(r, second) for r in range(second)]
        for r in readers:
            r.load_state_dict(saved)
        seen += [step(readers) for _ in range(n_steps - 5)]
        assert seen == reference
        flat = [i for s in seen for i in s]
        assert len(flat) == len(set(flat)) == n_steps * global_batch  # within the epoch: no repeats


def test_validation_is_split_over_ranks_without_losing_a_sequence(tiny_data):
    seq_len = 32

    def targets(rank: int, world: int, max_tokens: int) -> list[torch.Tensor]:
        return [y for _, y in validation_batches(tiny_data, seq_len, 4, max_tokens, rank, world)]

    for world, sequences in ((2, 63), (3, 64), (4, 2)):
        one = torch.cat(targets(0, 1, sequences * seq_len))
        shares = [targets(r, world, sequences * seq_len) for r in range(world)]
        assert len({len(s) for s in shares}) == 1  # the same number of batches on every rank
        rows = [row for share in shares for batch in share for row in batch if (row != -1).all()]
        assert len(rows) == sequences == len(one)
        assert sorted(map(tuple, (r.tolist() for r in rows))) == sorted(map(tuple, one.tolist()))


# ----------------------------------------------------------------------------- guide coins
def test_each_rank_flips_its_own_guide_coins():
    seeds = {coin_seed(1005, rank, step) for rank in range(4) for step in range(50)}
    assert len(seeds) == 200  # a stream of its own for every rank and step
    assert coin_seed(1005, 1, 3) == coin_seed(1005, 1, 3)  # a resumed run flips the same coins
    draws = [torch.rand(100, generator=torch.Generator().manual_seed(coin_seed(1005, r, 0))) for r in (0, 1)]
    assert not torch.equal(*draws)


def test_activation_checkpointing_keeps_the_losses_and_the_guide_coins(tiny_data, tmp_path):
    guided = [*LOWRANK, "train.self_guided.enabled=true", "train.self_guided.ratio=0.5", "train.tokens=1536"]
    run_training(config(tiny_data, tmp_path / "plain", *guided))
    run_training(config(tiny_data, tmp_path / "ac", *guided, "train.activation_checkpointing=true"))
    assert losses(tmp_path / "ac") == losses(tmp_path / "plain")  # bitwise: the same coins, the same math
    assert summary(tmp_path / "ac")["guide_flops"] == summary(tmp_path / "plain")["guide_flops"]
    assert summary(tmp_path / "plain")["guide_flops"] > 0


def test_throughput_numbers():
    rec = throughput(tokens=4096, seconds=2.0, world_size=4, flops_per_token=1000, peak=1e6)
    assert rec["tokens_per_s"] == 2048 and rec["tokens_per_s_per_device"] == 512
    assert rec["mfu"] == pytest.approx(512 * 1000 / 1e6)
    assert throughput(10, 1.0, 1, 1000, None)["mfu"] == "unknown"


def test_a_signal_death_is_told_from_a_python_error():
    report = ("Failures:\n  [1]:\n    rank      : 0 (local_rank: 0)\n    exitcode  : -15 (pid: 10560)\n"
              "Root Cause (first observed failure):\n  [0]:\n    rank      : 1 (local_rank: 1)\n"
              "    exitcode  : {code} (pid: 10561)\n")
    assert killed_by_signal(report.format(code="-6 ")) == 6  # rank 1's SIGABRT, not rank 0's SIGTERM after it
    assert killed_by_signal(report.format(code="1 ")) is None  # a Python exception: no second try
    assert killed_by_signal("Traceback (most recent call last): ...") is None

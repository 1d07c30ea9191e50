"""sweep executors: runs side by side on GPU slots, runs as submitit jobs (its local executor here: no Slurm),
a preempted job requeued and resumed, failures retried or not, the Slurm job script, --status and --cancel."""

from __future__ import annotations

import os
import signal
import stat
import threading
import time
from pathlib import Path

import pytest

from lowrank_lm.errors import UserError
from lowrank_lm.launch.cluster import parse_cluster, parse_time
from lowrank_lm.launch.execute import InProcessRunner, execute
from lowrank_lm.launch.job_record import JobRecord
from lowrank_lm.launch.sweep import load_sweep
from lowrank_lm.stats.table import read_points

from .ecosystem import cli

pytest.importorskip("submitit")

BASE = """\
model: {{vocab_size: 512, seq_len: 32, num_layers: 2, hidden_dim: 32, num_q_heads: 2}}
data: {{source: embedded, tokenizer: bpe-512, dir: {data}, val_tokens: 8192, max_tokens: 120000}}
train:
  tokens: 5120
  global_batch_size: 8
  micro_batch_size: 4
  precision: fp32
  lr: 3.0e-3
  log_interval: 1
  eval_tokens: 2048
  checkpoint_interval: 4
  keep_checkpoints: 3
  device: cpu
"""

FOUR_RUNS = """\
sizes:
  a: {overrides: [model.hidden_dim=32]}
  b: {overrides: [model.hidden_dim=48]}
structures:
  dense: {}
  lowrank: {fractions: [0.5]}
"""


def write_sweep(root: Path, data: Path, name: str, body: str = FOUR_RUNS) -> Path:
    """A sweep of tiny runs on the test corpus, its run folders under ROOT/NAME/."""
    base = root / "base.yaml"
    if not base.exists():
        base.write_text(BASE.format(data=data))
    path = root / f"{name}.yaml"
    path.write_text(f"name: {name}\nout_dir: {root / name}\nbase: base.yaml\n{body}")
    return path


def losses(csv: Path) -> dict[str, float]:
    rows, skipped = read_points(csv)
    assert skipped == 0
    return {r["name"]: float(r["loss"]) for r in rows}


@pytest.fixture
def threads1(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the trainers beside each other and the test share 2 cores


# --------------------------------------------------------------------------- the whole grid, three ways


@pytest.mark.slow
def test_local_gpu_slots_and_submitit_jobs_write_the_sequential_results(tiny_data, tmp_path, threads1):
    # today's sweep: one run after another (in this process, the fastest way to the reference numbers)
    seq = load_sweep(write_sweep(tmp_path, tiny_data, "seq"))
    with open(os.devnull, "w") as sink:
        assert execute(seq, InProcessRunner(), out=sink).exit_code == 0
    reference = losses(seq.results_csv)
    assert sorted(reference) == ["a-dense", "a-lowrank-50", "b-dense", "b-lowrank-50"]

    # --executor local --gpus: two runs at a time, each told its own GPU (CUDA_VISIBLE_DEVICES)
    path = write_sweep(tmp_path, tiny_data, "slots")
    code, _, err = cli("sweep", str(path), "--executor", "local", "--gpus", "0,1", "--quiet")
    assert code == 0, err
    slots = load_sweep(path)
    assert losses(slots.results_csv) == pytest.approx(reference, rel=1e-5)
    seen = [(r.run_dir / "train.log").read_text().splitlines()[0].split()[1] for r in slots.runs]
    assert sorted(set(seen)) == ["CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"]

    # --executor submitit on a machine without Slurm: submitit's local executor, two jobs at a time, each on its
    # own GPU of the two this command sees (the runs train on the CPU: the test's GPUs are names only)
    path = write_sweep(tmp_path, tiny_data, "jobs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUDA_VISIBLE_DEVICES", "0,1")
        code, out, err = cli("sweep", str(path), "--executor", "submitit", "--cluster", "max_parallel=2",
                             "--cluster", "gpus_per_node=1")
    assert code == 0, err
    jobs = load_sweep(path)
    assert losses(jobs.results_csv) == pytest.approx(reference, rel=1e-5)
    assert "4 runs to submit to submitit's local executor" in err and err.count("submitted as job") == 4
    seen = []
    for r in jobs.runs:
        rec = JobRecord.load(r.run_dir)
        assert (rec.scheduler, rec.state, rec.requeues, rec.retries) == ("local", "done", 0, 0)
        first = (r.run_dir / "train.log").read_text().splitlines()[0]
        assert "lowrank_lm train" in first
        seen.append(first.split()[1])
        assert f"{r.name}: submitted as job {rec.job_id} on GPUs {seen[-1].split('=')[1]}" in err
    assert sorted(set(seen)) == ["CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"]

    # --status: every run done, its progress in steps and tokens, its job and what the scheduler says
    code, out, _ = cli("sweep", str(path), "--status")
    assert code == 0 and "4 runs, 4 done" in out
    header = next(line for line in out.splitlines() if line.lstrip().startswith("run "))
    assert header.split()[-4:] == ["job", "scheduler", "requeued", "retried"]
    row = next(line for line in out.splitlines() if line.lstrip().startswith("a-dense "))
    rec = JobRecord.load(jobs.out_dir / "a-dense")
    assert "20/20 (5.12k tok)" in row and row.split()[-4:] == [rec.job_id, "done", "0", "0"]

    # nothing left to do: a second submission submits nothing
    code, _, err = cli("sweep", str(path), "--executor", "submitit")
    assert code == 0 and "0 runs to submit" in err and err.count("skipped (finished)") == 4


# --------------------------------------------------------------------------- preemption


LONG_RUN = """\
overrides: [train.tokens=40960, train.checkpoint_interval=50]
sizes:
  a: {overrides: []}
structures:
  dense: {}
"""


@pytest.mark.slow
def test_a_preempted_job_is_requeued_and_resumes_to_the_uninterrupted_result(tiny_data, tmp_path, threads1):
    from lowrank_lm.launch.cluster import parse_cluster
    from lowrank_lm.launch.submit import run_jobs

    seq = load_sweep(write_sweep(tmp_path, tiny_data, "seq", LONG_RUN))
    with open(os.devnull, "w") as sink:
        assert execute(seq, InProcessRunner(), out=sink).exit_code == 0

    plan = load_sweep(write_sweep(tmp_path, tiny_data, "preempt", LONG_RUN))
    run_dir = plan.runs[0].run_dir
    log = tmp_path / "driver.log"
    outcome = {}

    def follow() -> None:
        with log.open("w") as fh:
            outcome["exit"] = run_jobs(plan, parse_cluster(None, [], ["a"]), poll_s=0.2, out=fh,
                                       scheduler="local").exit_code

    driver = threading.Thread(target=follow)
    driver.start()
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count('"loss"') >= 5):
        time.sleep(0.02)
    rec = JobRecord.load(run_dir)
    # what Slurm does before a time limit or on preemption: the job's signal to every process of the job
    # (the trainer ignores it; the job stops it with SIGTERM, so it checkpoints the step it is in)
    for pid in (rec.pid, rec.trainer_pid):
        os.kill(pid, signal.SIGUSR2)
    driver.join(timeout=180)
    assert not driver.is_alive() and outcome["exit"] == 0, log.read_text()

    rec = JobRecord.load(run_dir)
    assert (rec.state, rec.requeues, rec.retries) == ("done", 1, 0)
    text = (run_dir / "train.log").read_text()
    assert "received SIGTERM: checkpoint at step" in text and "resuming at step" in text
    resumed_at = int(text.split("resuming at step ")[1].split()[0].rstrip(")"))
    assert 5 <= resumed_at < 160
    assert losses(plan.results_csv) == pytest.approx(losses(seq.results_csv), rel=1e-5)
    assert "a-dense: done" in log.read_text() and "requeued 1x" in log.read_text()


TWO_LONG_RUNS = LONG_RUN.replace("  a: {overrides: []}\n",
                                 "  a: {overrides: []}\n  b: {overrides: [model.hidden_dim=48]}\n")


@pytest.mark.slow
def test_cancel_stops_the_whole_sweep_of_the_local_executor(tiny_data, tmp_path, threads1):
    from lowrank_lm.launch.submit import cancel_jobs, run_jobs

    plan = load_sweep(write_sweep(tmp_path, tiny_data, "cancel", TWO_LONG_RUNS))
    first, second = sorted(plan.runs, key=lambda r: (r.flops, r.name))
    log, outcome = tmp_path / "driver.log", {}

    def follow() -> None:  # max_parallel 1: the second run waits for the first
        with log.open("w") as fh:
            outcome["exit"] = run_jobs(plan, parse_cluster(None, [], ["a", "b"]), poll_s=0.2, out=fh,
                                       scheduler="local").exit_code

    driver = threading.Thread(target=follow)
    driver.start()
    metrics = first.run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count('"loss"') >= 3):
        time.sleep(0.02)
    with open(os.devnull, "w") as sink:
        assert cancel_jobs(plan, out=sink) == 1  # what `sweep --cancel` does from another terminal
    driver.join(timeout=120)
    text = log.read_text()
    assert not driver.is_alive() and outcome["exit"] == 0, text  # cancelled on request: not a failure
    assert f"{first.name}: cancelled (sweep --cancel)" in text and "1 runs not submitted" in text
    assert JobRecord.load(first.run_dir).state == "cancelled" and JobRecord.load(first.run_dir).retries == 0
    assert JobRecord.load(second.run_dir) is None  # never submitted
    assert [p.name for p in (plan.out_dir / "jobs").iterdir() if "%" in p.name] == []  # no stray jobs/%j


# --------------------------------------------------------------------------- failures


FAILING = """\
sizes:
  bad: {overrides: [train.device=cuda]}
  crash: {overrides: [model.hidden_dim=48]}
structures:
  dense: {}
"""


@pytest.mark.slow
def test_a_user_error_is_not_retried_and_a_crash_is_retried_a_bounded_number_of_times(tiny_data, tmp_path,
                                                                                         threads1, monkeypatch):
    monkeypatch.setenv("LOWRANK_LM_CRASH", "train.step:3")  # every attempt dies (SIGKILL) at its third step
    path = write_sweep(tmp_path, tiny_data, "failing", FAILING)
    code, _, err = cli("sweep", str(path), "--executor", "submitit", "--cluster", "max_parallel=2",
                       "--cluster", "retries=1")
    assert code == 1, err
    plan = load_sweep(path)
    bad, crash = (JobRecord.load(plan.out_dir / n) for n in ("bad-dense", "crash-dense"))
    assert (bad.state, bad.retries, bad.requeues) == ("failed", 0, 0)
    assert bad.message.startswith("lowrank-lm train: error:") and "cuda" in bad.message.lower()
    assert (crash.state, crash.retries, crash.requeues) == ("failed", 1, 0)
    assert crash.message.startswith("failed 2 times")
    assert (plan.out_dir / "crash-dense" / "train.log").read_text().count("$ ") == 2

    code, out, _ = cli("sweep", str(path), "--status")
    assert code == 0 and "2 failed" in out
    assert f"bad-dense failed: {bad.message}" in out


# --------------------------------------------------------------------------- Slurm, as far as it goes without Slurm


FAKE_SLURM = {
    "srun": "#!/bin/sh\nexit 0\n",
    # sbatch answers like Slurm (and refuses the partition "nope") and keeps the script it was given
    "sbatch": "#!/bin/sh\ngrep -q partition=nope \"$1\" && "
              "{ echo 'sbatch: error: invalid partition specified: nope' >&2; exit 1; }\n"
              "n=$(cat \"$FAKE_SLURM/next\" 2>/dev/null || echo 4242)\n"
              "echo $((n+1)) > \"$FAKE_SLURM/next\"\ncp \"$1\" \"$FAKE_SLURM/job-$n.sh\"\n"
              "echo \"Submitted batch job $n\"\n",
    "sacct": "#!/bin/sh\necho 'JobID|State|NodeList'\nfor j in $(cat \"$FAKE_SLURM\"/ids 2>/dev/null); do "
             "echo \"$j|PENDING|\"; done\n",
    "scancel": "#!/bin/sh\necho \"$@\" >> \"$FAKE_SLURM/cancelled\"\n",
}

SLURM_SWEEP = FOUR_RUNS + """\
cluster:
  gpus_per_node: 8
  cpus_per_task: 64
  mem_gb: 480
  time: "1-12:00:00"
  partition: gpu
  account: lowrank
  sbatch: {constraint: h100}
  setup: ["module load cuda/12.4"]
  sizes:
    b: {nodes: 2}
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """srun, sbatch, sacct and scancel stand-ins on PATH: submitit's Slurm executor, without Slurm."""
    bin_dir = tmp_path / "fake-slurm"
    bin_dir.mkdir()
    for name, text in FAKE_SLURM.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(bin_dir))
    return bin_dir


def test_slurm_job_scripts_carry_the_resources_and_the_torchrun_line(tmp_path, fake_slurm):
    path = write_sweep(tmp_path, tmp_path / "no-data-needed", "slurm", SLURM_SWEEP)
    code, out, _ = cli("sweep", str(path), "--dry-run", "--executor", "submitit")
    assert code == 0 and "  b: 2 nodes x 8 GPUs, 64 CPUs, 480 GB, time 2160 min, partition gpu, account lowrank" in out
    assert not (tmp_path / "slurm").exists()  # a dry run submits and writes nothing
    code, _, err = cli("sweep", str(path), "--executor", "submitit", "--detach", "--cluster", "partition=nope")
    last = err.splitlines()[-1]  # the plan is printed before the first submission
    assert code == 2 and last.startswith("lowrank-lm sweep: error: the scheduler refused the job of run a-lowrank-50")
    assert "(sbatch: error: invalid partition specified: nope)" in last and "Traceback" not in err
    code, _, err = cli("sweep", str(path), "--executor", "submitit", "--detach", "--cluster", "qos=high")
    assert code == 0, err
    assert "4 runs to submit to Slurm" in err and "submitted; watch with" in err
    plan = load_sweep(path)
    scripts = {}
    for r in plan.runs:
        rec = JobRecord.load(r.run_dir)
        assert rec.scheduler == "slurm" and rec.state == "submitted"
        scripts[r.name] = (fake_slurm / f"job-{rec.job_id}.sh").read_text()
    one, two = scripts["a-dense"], scripts["b-lowrank-50"]
    for text in (one, two):
        for flag in ("--gpus-per-node=8", "--cpus-per-task=64", "--mem=480GB", "--time=2160", "--partition=gpu",
                     "--account=lowrank", "--qos=high", "--constraint=h100", "--ntasks-per-node=1",
                     "--signal=USR2@120"):
            assert f"#SBATCH {flag}\n" in text, (flag, text)
        assert "module load cuda/12.4\n" in text
        assert "python -u -m submitit.core._submit" in text  # the job process that runs the launch line
    assert "#SBATCH --nodes=1\n" in one and "#SBATCH --job-name=a-dense\n" in one
    launch = next(x for x in one.splitlines() if x.startswith("export LOWRANK_LM_LAUNCH="))
    assert "torchrun --standalone --nnodes=1 --nproc-per-node=8 -m lowrank_lm train" in launch
    assert launch.rstrip("'").endswith(str(plan.out_dir / "a-dense" / "config.yaml"))
    # two nodes: torchrun meets at the first node of the job
    assert "#SBATCH --nodes=2\n" in two
    assert 'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"' in two
    launch = next(x for x in two.splitlines() if x.startswith("export LOWRANK_LM_LAUNCH="))
    assert ("torchrun --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d "
            '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" -m lowrank_lm train') in launch

    # --status asks the scheduler (sacct) about every job; --cancel cancels them (scancel)
    ids = sorted(JobRecord.load(r.run_dir).job_id for r in plan.runs)
    (fake_slurm / "ids").write_text(" ".join(ids))
    code, out, _ = cli("sweep", str(path), "--status")
    assert code == 0 and "4 pending" in out
    row = next(line for line in out.splitlines() if line.lstrip().startswith("b-dense "))
    assert row.split()[-4:] == [JobRecord.load(plan.out_dir / "b-dense").job_id, "PENDING", "0", "0"]
    code, _, err = cli("sweep", str(path), "--executor", "submitit", "--detach")  # queued: not submitted twice
    assert code == 0 and err.count("already submitted as job") == 4 and "0 runs to submit" in err
    code, out, _ = cli("sweep", str(path), "--cancel")
    assert code == 0 and out.count("cancelled job") == 4
    assert sorted((fake_slurm / "cancelled").read_text().split()) == ids
    assert all(JobRecord.load(r.run_dir).state == "cancelled" for r in plan.runs)


# --------------------------------------------------------------------------- the cluster section and options


def test_cluster_section_parsing_and_errors(tmp_path):
    spec = parse_cluster({"gpus_per_node": 8, "time": "02:30:00", "sizes": {"xl": {"nodes": 4}}},
                         ["partition=gpu", "sizes.xl.time=1-00:00:00", "sbatch.exclusive=true"], ["s", "xl"])
    s, xl = spec.for_size("s"), spec.for_size("xl")
    assert (s.nodes, s.gpus_per_node, s.time_min, s.partition) == (1, 8, 150, "gpu")
    assert (xl.nodes, xl.gpus_per_node, xl.time_min, xl.processes) == (4, 8, 1440, 32)
    assert spec.base.sbatch == {"exclusive": True}
    assert [parse_time(x, "t") for x in (90, "45:30", "2-00:00")] == [90, 46, 2880]
    for raw, over, message in [
        ({"gpu_per_node": 8}, [], "did you mean gpus_per_node"),
        ({"nodes": 0}, [], "cluster.nodes: 0 is not a whole number >= 1"),
        ({"time": "soon"}, [], "is not a time"),
        ({"sizes": {"xxl": {"nodes": 2}}}, [], "xxl is not a size of this sweep"),
        ({}, ["nodes"], "write KEY=VALUE"),
    ]:
        with pytest.raises(UserError, match=message):
            parse_cluster(raw, over, ["s", "xl"])
    with pytest.raises(UserError, match=r"cluster\.partition applies to Slurm"):
        parse_cluster({"partition": "gpu"}, [], ["s"]).check_scheduler("local")
    with pytest.raises(UserError, match=r"cluster\.time is not set"):
        parse_cluster({}, [], ["s"]).check_scheduler("slurm")
    with pytest.raises(UserError, match="max_parallel applies to submitit's local executor"):
        parse_cluster({"max_parallel": 2, "time": 60}, [], ["s"]).check_scheduler("slurm")


def test_the_local_executors_jobs_take_their_own_gpus_and_give_them_back(tmp_path, monkeypatch):
    from lowrank_lm.launch.submit import GpuPool, gpu_pool

    pool = GpuPool(["2", "5", "7"])
    first, second = pool.take(2), pool.take(1)
    assert (first, second, pool.take(1)) == ("2,5", "7", None)  # none left: the next job waits
    pool.give(first)
    assert (pool.free, pool.take(0)) == (["2", "5"], "")  # back in the machine's order; a CPU job takes none
    # which sweeps share GPUs out: several jobs at once on the local executor, some of them asking for GPUs
    plan = load_sweep(write_sweep(tmp_path, tmp_path / "data", "pool"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    two = parse_cluster({"max_parallel": 2, "gpus_per_node": 1}, [], ["a", "b"])
    assert gpu_pool(plan, two, plan.runs, "local").free == ["0", "1"]
    assert gpu_pool(plan, two, plan.runs, "slurm") is None
    assert gpu_pool(plan, parse_cluster({"max_parallel": 2}, [], ["a", "b"]), plan.runs, "local") is None
    assert gpu_pool(plan, parse_cluster({"gpus_per_node": 1}, [], ["a", "b"]), plan.runs, "local") is None
    big = parse_cluster({"max_parallel": 2, "sizes": {"b": {"gpus_per_node": 4}}}, [], ["a", "b"])
    with pytest.raises(UserError, match=r"a job of size b asks for 4 GPUs .* this machine has 2"):
        gpu_pool(plan, big, plan.runs, "local")


def test_executor_option_errors_are_one_line(tmp_path, monkeypatch):
    path = write_sweep(tmp_path, tmp_path / "data", "opts")
    for argv, message in [
        (["--executor", "submitit", "--gpus", "0,1"], "--gpus applies to --executor local"),
        (["--cluster", "nodes=2"], "--cluster applies to --executor submitit"),
        (["--gpus", "0,1,2", "--gpus-per-run", "2"], "does not divide the 3 GPUs"),
        (["--gpus-per-run", "2"], "--gpus-per-run needs --gpus"),
        (["--executor", "submitit", "--detach"], "--detach needs Slurm"),
    ]:
        code, _, err = cli("sweep", str(path), *argv)
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)
    monkeypatch.setitem(__import__("sys").modules, "submitit", None)  # as if the cluster extra were missing
    code, _, err = cli("sweep", str(path), "--executor", "submitit")
    assert code == 2 and "pip install 'lowrank-lm[cluster]'" in err and err.count("\n") == 1
    assert not (tmp_path / "opts").exists()  # nothing half-written


def test_the_paper_slurm_preset_is_the_paper_grid_with_a_valid_cluster_section():
    from lowrank_lm.launch.cluster import launch_line

    plan = load_sweep(Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "paper-slurm.yaml")
    assert len(plan.runs) == 28 and plan.out_dir == Path("runs/sweeps/paper")  # the same folders as paper.yaml
    cluster = parse_cluster(plan.cluster, [], ["s", "m", "l", "xl"])
    cluster.check_scheduler("slurm")
    s, xl = cluster.for_size("s"), cluster.for_size("xl")
    assert (s.nodes, s.gpus_per_node, s.time_min) == (1, 8, 240)
    assert (xl.nodes, xl.processes, xl.time_min, xl.signal_delay_s) == (2, 16, 1440, 300)
    assert "--nnodes=2 --nproc-per-node=8" in launch_line("runs/sweeps/paper/xl-dense/config.yaml", xl)
    with pytest.raises(UserError, match=r"cluster\.partition applies to Slurm"):
        cluster.check_scheduler("local")  # the paper's grid is not started on a machine without Slurm by mistake

"""Run a grid of trainings from one sweep file (sizes x structures x fractions x budgets), resumably."""

from __future__ import annotations

import argparse
import sys

EXAMPLES = ["lowrank-lm sweep configs/sweeps/cpu-mini.yaml --dry-run",
            "lowrank-lm sweep configs/sweeps/cpu-mini.yaml --status"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The sweep file and how to run it: --dry-run, --status, --shard, the launcher or executor, cluster settings."""
    p.add_argument("sweep", metavar="SWEEP.yaml", help="a sweep file (see configs/sweeps/)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only shard I of N (0-based, e.g. 0/2 and 1/2 in two terminals or on two GPUs)")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their cost; write and train nothing")
    p.add_argument("--status", action="store_true", help="print the progress view and refresh the results table")
    p.add_argument("--launcher", default=None, metavar="CMD",
                   help='how each run is started, followed by "train RUN/config.yaml" (default: this python -m '
                        'lowrank_lm); e.g. "torchrun --standalone --nproc_per_node=8 -m lowrank_lm"')
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads per run (default: all cores, divided among shards when --shard is given)")
    p.add_argument("--in-process", action="store_true",
                   help="train in this process instead of one submitit job per run (debugging)")
    p.add_argument("--stop-on-error", action="store_true", help="stop at the first failed run")
    p.add_argument("--quiet", action="store_true", help="do not echo the trainer's output (it is in RUN/train.log)")
    g = p.add_argument_group("executors", "where the runs train (docs/cluster.md)")
    g.add_argument("--executor", choices=("local", "submitit"), default=None,
                   help="local: one job per run on this machine (submitit's local executor, set by the options "
                        "above; default); submitit: one scheduler job per run through submitit (Slurm where srun "
                        "exists, submitit's local executor elsewhere), set by the sweep's cluster section")
    g.add_argument("--gpus", default=None, metavar="0,1,2,3",
                   help="local: train runs side by side, each on its own GPUs of this list (CUDA_VISIBLE_DEVICES)")
    g.add_argument("--gpus-per-run", type=int, default=None, metavar="K",
                   help="local with --gpus: GPUs per run (default 1); above 1 a run starts through torchrun")
    g.add_argument("--cluster", action="append", default=[], metavar="KEY=VALUE",
                   help="submitit: set a key of the sweep's cluster section, e.g. --cluster partition=gpu "
                        "--cluster time=24:00:00 --cluster sizes.xl.nodes=4 --cluster sbatch.constraint=h100")
    g.add_argument("--detach", action="store_true",
                   help="submitit on Slurm: submit and return (the jobs rewrite results.csv as they end)")
    g.add_argument("--cancel", action="store_true", help="cancel the sweep's queued and running jobs")
    g.add_argument("--poll", type=float, default=None, metavar="S",
                   help="submitit: seconds between looks at the jobs while following them (Slurm 60, local 0.5)")


def _ffn_text(spec) -> str:
    from lowrank_lm.layers import registry

    f = spec.cfg.model.ffn
    if not registry.get(f.kind).structured:
        return f.kind
    bits = [registry.describe(f.kind, f.rank, f.num_blocks).replace(",", "")]
    share = f" ({spec.ffn_fraction:.1%})" if spec.ffn_fraction is not None else ""
    return f"{f.kind} {' '.join(b for b in bits if b)}{share}"


def _plan_text(plan, shard: tuple[int, int]) -> str:
    from lowrank_lm.launch.execute import _corpus_train_tokens, _fmt_count
    from lowrank_lm.launch.sweep import shard_runs
    from lowrank_lm.tables import text_table

    mine = {r.name for r in shard_runs(plan.runs, *shard)}
    corpus: dict = {}
    sharded = shard[1] > 1
    header = ["run", "series", "FFN", "lr", "params", "non-emb", "tokens", "epochs", "steps", "FLOPs"]
    header += [f"shard {shard[0]}/{shard[1]}"] if sharded else []
    rows = []
    for r in plan.runs:
        n = _corpus_train_tokens(r, corpus)
        rows.append([r.name, r.series, _ffn_text(r), _lr_text(r.cfg.train.lr), _fmt_count(r.params),
                     _fmt_count(r.params_non_embedding),
                     _fmt_count(r.tokens), f"{r.tokens / n:.2f}" if n else "?", str(r.steps), f"{r.flops:.3g}"]
                    + (["yes" if r.name in mine else "-"] if sharded else []))
    lines = [f"sweep {plan.name} ({plan.path}): {len(plan.runs)} runs into {plan.out_dir}/",
             text_table(header, rows, indent="  ")]
    total = sum(r.flops for r in plan.runs)
    lines.append(f"total {total:.3g} training FLOPs, {_fmt_count(sum(r.tokens for r in plan.runs))} tokens"
                 + ("" if corpus and all(corpus.values()) else "; epochs '?' until the data has been prepared"))
    rates = sorted({r.cfg.train.lr for r in plan.runs})
    if len(rates) > 1:
        lines.append(f"learning rates: {len(rates)} ({', '.join(_lr_text(x) for x in rates)})")
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def _lr_text(lr: float) -> str:
    """A learning rate as run names write it (2e-3)."""
    from lowrank_lm.launch.sweep import lr_label

    return lr_label(lr).removeprefix("lr")


def _jobs_text(plan, overrides: list[str]) -> str:
    """What each size's jobs ask for and run (--dry-run with --executor submitit)."""
    from lowrank_lm.launch.cluster import launch_line, parse_cluster

    sizes = list(dict.fromkeys(r.size for r in plan.runs))
    cluster = parse_cluster(plan.cluster, overrides, sizes, where=f"{plan.path}: cluster")
    lines = ["jobs: one per run; resources per size, then the line each job runs"]
    for size in sizes:
        res = cluster.for_size(size)
        ask = [f"{res.nodes} node{'s' if res.nodes > 1 else ''} x {res.gpus_per_node} GPUs",
               f"{res.cpus_per_task} CPUs" if res.cpus_per_task else "", f"{res.mem_gb:g} GB" if res.mem_gb else "",
               f"time {res.time_min} min" if res.time_min else "no time limit set",
               *(f"{k} {getattr(res, k)}" for k in ("partition", "account", "qos") if getattr(res, k))]
        lines.append(f"  {size}: {', '.join(a for a in ask if a)}")
        lines.append(f"    {launch_line('RUN/config.yaml', res)}")
    return "\n".join(lines)


def _gpu_slots(args: argparse.Namespace) -> list[str] | None:
    """--gpus 0,1,2,3 --gpus-per-run 2 -> ["0,1", "2,3"]: the devices of each side-by-side runner."""
    from lowrank_lm.errors import UserError

    if args.gpus is None:
        if args.gpus_per_run is not None:
            raise UserError("--gpus-per-run needs --gpus, the GPUs to share out, e.g. --gpus 0,1,2,3 --gpus-per-run 2")
        return None
    ids = [x.strip() for x in args.gpus.split(",") if x.strip()]
    if not ids or not all(x.isdigit() for x in ids) or len(set(ids)) != len(ids):
        raise UserError(f"--gpus {args.gpus!r}: give distinct GPU numbers separated by commas, e.g. --gpus 0,1,2,3")
    k = args.gpus_per_run or 1
    if k < 1 or len(ids) % k:
        raise UserError(f"--gpus-per-run {k} does not divide the {len(ids)} GPUs of --gpus into whole groups; "
                        f"give a divisor of {len(ids)}")
    if args.in_process:
        raise UserError("--gpus trains runs side by side in child processes; drop --in-process")
    return [",".join(ids[i:i + k]) for i in range(0, len(ids), k)]


def _check_executor_options(args: argparse.Namespace, executor: str) -> None:
    """Options that belong to the other executor are errors, not silently ignored."""
    from lowrank_lm.errors import UserError

    local_only = {"--gpus": args.gpus is not None, "--gpus-per-run": args.gpus_per_run is not None,
                  "--launcher": args.launcher is not None, "--threads": args.threads is not None,
                  "--in-process": args.in_process, "--stop-on-error": args.stop_on_error}
    submitit_only = {"--cluster": bool(args.cluster), "--detach": args.detach, "--poll": args.poll is not None}
    wrong = [k for k, v in (local_only if executor == "submitit" else submitit_only).items() if v]
    if wrong:
        other = "local" if executor == "submitit" else "submitit"
        raise UserError(f"{wrong[0]} applies to --executor {other}, not {executor}; drop it or change the executor")


def run(args: argparse.Namespace) -> int:
    """Run this shard of the grid, or print its plan (--dry-run) or status; returns the exit status."""
    from lowrank_lm.launch.execute import InProcessRunner, execute
    from lowrank_lm.launch.sweep import load_sweep, parse_shard

    shard = parse_shard(args.shard) if args.shard else (0, 1)
    executor = args.executor or "local"
    _check_executor_options(args, executor)
    plan = load_sweep(args.sweep)
    if args.dry_run:
        _check_as_the_real_run(args, plan, shard, executor)
        print(_plan_text(plan, shard))
        if executor == "submitit":
            print(_jobs_text(plan, args.cluster))
        return 0
    if args.status or args.cancel:
        return _status_or_cancel(args, plan, shard)
    if executor == "submitit":
        from lowrank_lm.launch.submit import run_jobs

        cluster, scheduler = _cluster_here(args, plan)
        poll = args.poll if args.poll is not None else (60.0 if scheduler == "slurm" else 0.5)
        return run_jobs(plan, cluster, shard, detach=args.detach, poll_s=poll, scheduler=scheduler).exit_code
    slots = _gpu_slots(args)
    if args.in_process:
        # the one runner beside submitit's executors (why: lowrank_lm.launch.execute's docstring)
        return execute(plan, InProcessRunner(), shard, stop_on_error=args.stop_on_error).exit_code
    from lowrank_lm.launch.local import local_cluster
    from lowrank_lm.launch.submit import Follow, run_jobs

    cluster = local_cluster(slots, args.gpus_per_run, args.threads, args.launcher, shard[1])
    follow = Follow(poll_s=0.5, gpu_ids=[d for s in slots for d in s.split(",")] if slots else None,
                    echo=None if args.quiet else sys.stderr, stop_on_error=args.stop_on_error,
                    where="submitit's local executor")
    return run_jobs(plan, cluster, shard, out=sys.stderr, scheduler="local", follow=follow).exit_code


def _cluster_here(args: argparse.Namespace, plan):
    """(cluster settings, "slurm" or "local") for --executor submitit on this machine; refuses settings that the
    scheduler here cannot apply, and --detach without Slurm."""
    from lowrank_lm.errors import UserError
    from lowrank_lm.launch.cluster import parse_cluster
    from lowrank_lm.launch.submit import detect_scheduler

    cluster = parse_cluster(plan.cluster, args.cluster, sorted({r.size for r in plan.runs}),
                            where=f"{plan.path}: cluster")
    scheduler = detect_scheduler()
    cluster.check_scheduler(scheduler)
    if args.detach and scheduler == "local":
        raise UserError("--detach needs Slurm: without it (no srun here) this command runs the jobs itself; "
                        "drop --detach")
    return cluster, scheduler


def _check_as_the_real_run(args: argparse.Namespace, plan, shard: tuple[int, int], executor: str) -> None:
    """A dry run refuses what the real run would refuse before its first run: the executor's settings on this
    machine (Slurm-only cluster settings where there is no Slurm), GPU slots, and run folders that hold another
    configuration."""
    from lowrank_lm.launch.execute import check_existing
    from lowrank_lm.launch.sweep import shard_runs

    if executor == "submitit":
        _cluster_here(args, plan)
    else:
        _gpu_slots(args)
    check_existing(shard_runs(plan.runs, *shard))


def _status_or_cancel(args: argparse.Namespace, plan, shard: tuple[int, int]) -> int:
    """--status: the progress view with the jobs' columns, and a fresh results table; --cancel: cancel the jobs."""
    from lowrank_lm.launch.execute import progress_view, run_state, write_results
    from lowrank_lm.launch.sweep import shard_runs

    if args.cancel:
        from lowrank_lm.launch.submit import cancel_jobs

        cancel_jobs(plan, shard, out=sys.stdout)
        return 0
    from lowrank_lm.launch.submit import job_columns

    states = {r.name: run_state(r) for r in plan.runs}
    print(progress_view(plan, states, shard_runs(plan.runs, *shard) if shard[1] > 1 else None,
                        jobs=job_columns(plan)))
    if all(s.status == "pending" for s in states.values()):
        # Nothing has run: a status look creates no sweep folder and no empty table.
        print("results: none yet (no run has started)")
        return 0
    write_results(plan, states)
    print(f"results: {plan.results_csv}, {plan.results_json}")
    return 0

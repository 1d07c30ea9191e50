"""Run a grid of trainings from one sweep file (sizes x structures x fractions x budgets), resumably."""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
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
                   help="train in this process instead of one child process per run (debugging)")
    p.add_argument("--stop-on-error", action="store_true", help="stop at the first failed run")
    p.add_argument("--quiet", action="store_true", help="do not echo the trainer's output (it is in RUN/train.log)")


def _ffn_text(spec) -> str:
    f = spec.cfg.model.ffn
    if f.kind == "dense":
        return "dense"
    bits = [f"R={f.rank}" if f.rank else "", f"B={f.num_blocks}" if f.num_blocks else ""]
    share = f" ({spec.ffn_fraction:.1%})" if spec.ffn_fraction is not None else ""
    return f"{f.kind} {' '.join(b for b in bits if b)}{share}"


def _plan_text(plan, shard: tuple[int, int]) -> str:
    from lowrank_lm.scaling.execute import _corpus_train_tokens, _fmt_count
    from lowrank_lm.scaling.sweep import shard_runs

    mine = {r.name for r in shard_runs(plan.runs, *shard)}
    corpus: dict = {}
    sharded = shard[1] > 1
    header = ["run", "series", "FFN", "params", "non-emb", "tokens", "epochs", "steps", "FLOPs"]
    header += [f"shard {shard[0]}/{shard[1]}"] if sharded else []
    rows = []
    for r in plan.runs:
        n = _corpus_train_tokens(r, corpus)
        rows.append([r.name, r.series, _ffn_text(r), _fmt_count(r.params), _fmt_count(r.params_non_embedding),
                     _fmt_count(r.tokens), f"{r.tokens / n:.2f}" if n else "?", str(r.steps), f"{r.flops:.3g}"]
                    + (["yes" if r.name in mine else "-"] if sharded else []))
    widths = [max(len(h), *(len(x[i]) for x in rows)) for i, h in enumerate(header)]
    lines = [f"sweep {plan.name} ({plan.path}): {len(plan.runs)} runs into {plan.out_dir}/",
             "  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(x, widths)).rstrip() for x in rows]
    total = sum(r.flops for r in plan.runs)
    lines.append(f"total {total:.3g} training FLOPs, {_fmt_count(sum(r.tokens for r in plan.runs))} tokens"
                 + ("" if corpus and all(corpus.values()) else "; epochs '?' until the data has been prepared"))
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from lowrank_lm.scaling.execute import (
        InProcessRunner,
        SubprocessRunner,
        execute,
        progress_view,
        run_state,
        write_results,
    )
    from lowrank_lm.scaling.sweep import load_sweep, parse_shard, shard_runs

    shard = parse_shard(args.shard) if args.shard else (0, 1)
    plan = load_sweep(args.sweep)
    if args.dry_run:
        print(_plan_text(plan, shard))
        return 0
    if args.status:
        states = {r.name: run_state(r) for r in plan.runs}
        print(progress_view(plan, states, shard_runs(plan.runs, *shard) if shard[1] > 1 else None))
        write_results(plan, states)
        print(f"results: {plan.results_csv}, {plan.results_json}")
        return 0
    if args.in_process:
        runner = InProcessRunner()
    else:
        threads = args.threads
        if threads is None and shard[1] > 1 and not os.environ.get("OMP_NUM_THREADS"):
            # shards on one machine share its cores; oversubscribing them costs far more than it gains
            threads = max(1, (os.cpu_count() or 1) // shard[1])
        runner = SubprocessRunner(args.launcher, threads, echo=None if args.quiet else sys.stderr)
    outcome = execute(plan, runner, shard, stop_on_error=args.stop_on_error)
    return outcome.exit_code

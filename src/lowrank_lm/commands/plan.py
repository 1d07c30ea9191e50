"""Recommend a structure, fraction and model size for a compute budget from joint-law fits (`fit --law joint`),
or rank structures by their compute multipliers from a shared-exponent fit (`fit --law shared`)."""

from __future__ import annotations

import argparse
import json

EXAMPLES = ["lowrank-lm plan --fits runs/sweeps/isoflop-cpu/fit/fit.json --budget-flops 1e19",
            "lowrank-lm plan --fits fit.json --budget-flops 1e19 --bench runs/bench/train.json --min-speedup 1.2",
            "lowrank-lm fit paper --law shared --json > shared.json && lowrank-lm plan --fits shared.json "
            "--budget-flops 1e20"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The compute budget, the joint-law fits to plan from and the options of the recommendation."""
    p.add_argument("--fits", required=True, metavar="FIT.json",
                   help="joint-law fits: the output of `lowrank-lm fit RESULTS.csv --law joint --json` (or a "
                        "report's fit.json); or a shared-exponent fit (`--law shared --json`): compute multipliers")
    p.add_argument("--budget-flops", required=True, type=float, metavar="C", help="training FLOPs to spend, e.g. 1e19")
    p.add_argument("--bench", default=None, metavar="BENCH.json",
                   help="train.json from `lowrank-lm bench train`: adds each structure's measured speed")
    p.add_argument("--min-speedup", type=float, default=None, metavar="X",
                   help="only structures whose bench throughput is at least X times dense's (needs --bench)")
    p.add_argument("--max-step-ms", type=float, default=None, metavar="MS",
                   help="only structures whose bench step time is at most MS milliseconds (needs --bench)")
    p.add_argument("--level", type=float, default=0.95, help="interval level of the predicted loss (default 0.95)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def run(args: argparse.Namespace) -> None:
    """Print the recommended structure, fraction and model size for the budget."""
    from lowrank_lm.errors import UserError
    from lowrank_lm.stats.planner import format_plan, load_bench, load_fits, plan

    if not 0 < args.level < 1:
        raise UserError(f"--level must be between 0 and 1, got {args.level}")
    from lowrank_lm.stats.multiplier_plan import format_shared_plan, is_shared_fit, load_shared, plan_shared

    if is_shared_fit(args.fits):
        if args.min_speedup is not None or args.max_step_ms is not None:
            raise UserError("--min-speedup and --max-step-ms apply to joint-law plans; a shared fit ranks every "
                            "series by its multiplier")
        shared = plan_shared(load_shared(args.fits), args.budget_flops,
                             load_bench(args.bench) if args.bench else None, args.level)
        print(json.dumps(shared, indent=2) if args.json else format_shared_plan(shared))
        return
    fits = load_fits(args.fits)
    bench = load_bench(args.bench) if args.bench else None
    result = plan(fits, args.budget_flops, bench, args.min_speedup, args.max_step_ms, args.level)
    print(json.dumps(result.to_json(), indent=2) if args.json else format_plan(result))

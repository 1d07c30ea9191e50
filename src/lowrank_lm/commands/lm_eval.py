"""Score a checkpoint with lm-evaluation-harness (optional extra 'eval'); results saved as JSON.

The JSON goes into the checkpoint folder (lm_eval_TASKS.json) unless --output says otherwise.
"""

from __future__ import annotations

import argparse


def _limit(text: str) -> float | int:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return int(value) if value >= 1 and value == int(value) else value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names, e.g. hellaswag,piqa")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--limit", type=_limit, default=None,
                   help="examples per task (a number >= 1) or a fraction of each task (< 1)")
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--include-path", default=None, help="folder of extra task YAMLs")
    p.add_argument("--no-builtin-tasks", action="store_true",
                   help="find tasks only under --include-path (skips indexing lm-eval's own tasks: faster)")
    p.add_argument("--output", default=None, help="JSON file (default: beside the checkpoint)")


def run(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from lowrank_lm.api import load
    from lowrank_lm.errors import UserError
    from lowrank_lm.export.lm_eval_adapter import require_lm_eval, run_lm_eval

    require_lm_eval()
    if args.no_builtin_tasks and not args.include_path:
        raise UserError("--no-builtin-tasks needs --include-path, the folder where the tasks are")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise UserError("--tasks is empty; name at least one lm-eval task")
    model = load(args.checkpoint, args.device)
    if model.tokenizer is None:
        from lowrank_lm.data.tokenizer import MISSING_HINT

        raise UserError(f"no tokenizer in the run dir of {model.checkpoint}; lm-eval scores text, so {MISSING_HINT}")
    res = run_lm_eval(model, model.tokenizer, tasks, batch_size=args.batch_size, limit=args.limit,
                      num_fewshot=args.num_fewshot, include_path=args.include_path,
                      include_defaults=not args.no_builtin_tasks)
    out = Path(args.output) if args.output else model.checkpoint / f"lm_eval_{'+'.join(tasks)}.json"
    record = {"checkpoint": str(model.checkpoint), "tasks": tasks, "limit": args.limit,
              "num_fewshot": args.num_fewshot, **res}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    for task, metrics in res["results"].items():
        shown = ", ".join(f"{k.split(',')[0]} {v:.4f}" for k, v in metrics.items()
                          if isinstance(v, float) and "stderr" not in k)
        print(f"{task}: {shown}")
    print(f"saved {out}")

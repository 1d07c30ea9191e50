"""Score a checkpoint, or a structurized transformers folder (through lm-eval's HFLM), with
lm-evaluation-harness (optional extra 'eval'); results saved as JSON.

The JSON goes into RUN/lm_eval/ (outside checkpoints/, which rotation prunes) unless --output says
otherwise. Without a network, hub tasks (hellaswag...) fail in one line; local tasks still run, e.g.
the example under examples/lm-eval/.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

EXAMPLES = ["lowrank-lm lm-eval runs/demo/lowrank-32 --tasks hellaswag --batch-size 16",
            "lowrank-lm lm-eval runs/demo/lowrank-32 --include-path examples/lm-eval --no-builtin-tasks "
            "--tasks lowrank_lm_tiny_cloze   # offline"]


def _limit(text: str) -> float | int:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return int(value) if value >= 1 and value == int(value) else value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """A run or checkpoint folder, the tasks and lm-eval's options."""
    p.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="a run folder (its newest checkpoint), one checkpoint folder, or a structurized "
                   "transformers folder with its tokenizer")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names, e.g. hellaswag,piqa")
    p.add_argument("--batch-size", type=int, default=8, help="sequences scored per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--limit", type=_limit, default=None,
                   help="examples per task (a number >= 1) or a fraction of each task (< 1)")
    p.add_argument("--num-fewshot", type=int, default=None,
                   help="examples shown before each question (default: the task's own setting)")
    p.add_argument("--include-path", default=None, help="folder of extra task YAMLs, e.g. examples/lm-eval")
    p.add_argument("--no-builtin-tasks", action="store_true",
                   help="find tasks only under --include-path (skips indexing lm-eval's own tasks: faster)")
    p.add_argument("--output", default=None,
                   help="JSON file (default: RUN/lm_eval/STEP_TASKS.json, beside the run's checkpoints)")


def default_output(checkpoint: Path, tasks: list[str]) -> Path:
    """RUN/lm_eval/step-N_TASKS.json for a checkpoint inside a run; beside any other checkpoint folder."""
    from lowrank_lm.checkpoint import CHECKPOINTS

    name = f"{'+'.join(tasks)}.json"
    if checkpoint.parent.name == CHECKPOINTS:
        return checkpoint.parent.parent / "lm_eval" / f"{checkpoint.name}_{name}"
    return checkpoint / f"lm_eval_{name}"


def _check_output(out: Path, given: bool = True) -> None:
    """--output may name a new file or an earlier lm-eval record (replaced), nothing else."""
    import json

    from lowrank_lm.errors import UserError

    if not os.path.lexists(out):
        return
    try:
        ours = not out.is_symlink() and {"tasks", "results"} <= set(json.loads(out.read_text()))
    except (OSError, ValueError, TypeError):
        ours = False
    if not ours:
        raise UserError(f"{'--output ' if given else ''}{out} exists and is not an lm-eval record, which it would "
                        "replace; give a new file name" + ("" if given else " with --output"))


def _offline_error(tasks: list[str]) -> str:
    from lowrank_lm.export.hub_access import hub_host, offline_by_setting

    why = "offline mode is set (HF_HUB_OFFLINE)" if offline_by_setting() else f"{hub_host()} cannot be reached"
    return (f"the data of --tasks {','.join(tasks)} is not in the local cache and {why}; run once with a network "
            "to cache it, or score a local task such as the offline example: --include-path examples/lm-eval "
            "--no-builtin-tasks --tasks lowrank_lm_tiny_cloze")


def _our_lm(args: argparse.Namespace):
    """Our checkpoint (a run's newest, or the one given) as an lm-eval model, and the checkpoint's path."""
    from lowrank_lm.anymodel import RECORD_KEY
    from lowrank_lm.anymodel.hf_eval import transformers_config
    from lowrank_lm.api import load
    from lowrank_lm.errors import UserError
    from lowrank_lm.export.lm_eval_adapter import LowRankLM

    if transformers_config(args.checkpoint) is not None:
        raise UserError(f"{args.checkpoint} is a transformers folder without {RECORD_KEY} in its config.json (not "
                        "structurized); lowrank-lm lm-eval takes our runs and checkpoints, and structurized folders")
    model = load(args.checkpoint, args.device)
    if model.tokenizer is None:
        from lowrank_lm.data.tokenizer import MISSING_HINT

        raise UserError(f"no tokenizer in the run dir of {model.checkpoint}; lm-eval scores text, so {MISSING_HINT}")
    assert model.checkpoint is not None  # load() names the checkpoint it read
    return LowRankLM(model, model.tokenizer, batch_size=args.batch_size), model.checkpoint


def _transformers_lm(args: argparse.Namespace):
    """A structurized transformers folder, loaded with load_structurized, inside lm-eval's HFLM with the
    folder's own tokenizer (refused in one line when it has none)."""
    import torch
    import transformers
    from lm_eval.models.huggingface import HFLM

    from lowrank_lm.anymodel import load_structurized
    from lowrank_lm.anymodel.hf_eval import TOKENIZER_FILES
    from lowrank_lm.device import resolve_device
    from lowrank_lm.errors import UserError

    folder = Path(args.checkpoint)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"{folder} has no tokenizer; lm-eval scores text, so save the model's tokenizer into it "
                        "(tokenizer.save_pretrained)")
    transformers.utils.logging.disable_progress_bar()
    device = resolve_device(args.device, option="--device")
    model = load_structurized(folder, local_files_only=True, dtype=torch.float32).to(device)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size)


def run(args: argparse.Namespace) -> None:
    """Score the checkpoint on the tasks, print lm-eval's table and save its JSON."""
    import json

    from lowrank_lm.anymodel.hf_eval import is_structurized_folder
    from lowrank_lm.atomic import write_text_atomic
    from lowrank_lm.errors import UserError
    from lowrank_lm.export.hub_access import hub_failure, hub_offline, hub_reachable
    from lowrank_lm.export.lm_eval_adapter import evaluate_lm, require_lm_eval

    require_lm_eval()
    if args.no_builtin_tasks and not args.include_path:
        raise UserError("--no-builtin-tasks needs --include-path, the folder where the tasks are")
    if args.include_path and not Path(args.include_path).is_dir():
        raise UserError(f"--include-path {args.include_path} is not a folder; give the folder of the task YAMLs")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise UserError(f"--num-fewshot must be 0 or more, got {args.num_fewshot}")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise UserError("--tasks is empty; name at least one lm-eval task")
    if args.output:
        _check_output(Path(args.output))
    if is_structurized_folder(args.checkpoint):
        lm, source = _transformers_lm(args), Path(args.checkpoint)
    else:
        lm, source = _our_lm(args)
    out = Path(args.output) if args.output else default_output(source, tasks)
    _check_output(out, given=bool(args.output))
    offline = not hub_reachable()
    try:
        with hub_offline(offline):
            res = evaluate_lm(lm, tasks, limit=args.limit, num_fewshot=args.num_fewshot,
                              include_path=args.include_path, include_defaults=not args.no_builtin_tasks)
    except Exception as e:
        if offline and hub_failure(e):
            raise UserError(_offline_error(tasks)) from None
        raise
    record = {"checkpoint": str(source), "tasks": tasks, "limit": args.limit,
              "num_fewshot": args.num_fewshot, **res}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(record, indent=2, default=str) + "\n")
    for task, metrics in res["results"].items():
        shown = ", ".join(f"{k.split(',')[0]} {v:.4f}" for k, v in metrics.items()
                          if isinstance(v, float) and "stderr" not in k)
        print(f"{task}: {shown}")
    print(f"saved {out}")

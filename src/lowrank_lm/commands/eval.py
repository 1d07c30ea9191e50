"""Validation loss and perplexity of a run's newest checkpoint (or a given one); under torchrun the
processes share the validation sequences and print the same numbers as one process. A structurized
transformers folder (config.json records lowrank_lm_structures) is evaluated on --data, in one process."""

from __future__ import annotations

import argparse
import json
import sys

from lowrank_lm.errors import UserError

EXAMPLES = ["lowrank-lm eval runs/demo/lowrank-32",
            "lowrank-lm eval runs/demo/dense --tokens 16384 --json",
            "lowrank-lm eval hf-half --data data/embedded-bpe-8192 --seq-len 256   # a structurized HF folder"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """A run or checkpoint folder, and the data, token count, batch size and device of the evaluation."""
    p.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="a run folder (its newest checkpoint), one checkpoint folder, or a structurized "
                   "transformers folder (lowrank-lm structurize OUT, or save_pretrained of a structurized model)")
    p.add_argument("--data", default=None, help="a prepared data dir (default: the run's own data; required for a "
                   "transformers folder, prepared with its own tokenizer)")
    p.add_argument("--tokens", type=int, default=None, help="evaluate on the first N validation tokens")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                   help="default: the precision the run trained in (fp32 for a transformers folder)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="transformers folders only: sequence length (default: the model's context, at most 1024)")
    p.add_argument("--json", action="store_true", help='print {"loss": ..., "ppl": ..., "tokens": ...}')


def _watch(device):
    """The busy-core check of a CPU evaluation, sampling while the model loads."""
    import torch

    from lowrank_lm.train.progress import CoreWatch

    return CoreWatch(torch.get_num_threads()) if device.type == "cpu" else None


def _progress(watch, total: int, enabled: bool):
    """Progress lines for a long evaluation, after the busy-core warning when there is one."""
    from lowrank_lm.train.progress import EvalProgress

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    warning = watch.warning(wait=1.0) if watch is not None and enabled else None
    if warning:
        log(warning)
    return EvalProgress(total, log, enabled=enabled)


def _check_flags(args: argparse.Namespace) -> None:
    """Flag values checked before any process group is joined or model loaded."""
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.tokens is not None and args.tokens < 1:
        raise UserError(f"--tokens must be at least 1 (leave it out for the whole validation split), "
                        f"got {args.tokens}")


def run(args: argparse.Namespace) -> None:
    """Print the validation loss and perplexity of the checkpoint (under torchrun, the processes share the work)."""
    from pathlib import Path

    from lowrank_lm.anymodel.hf_eval import is_structurized_folder
    from lowrank_lm.checkpoint import load_model
    from lowrank_lm.data import check_compatible, load_manifest, resolve_data_dir
    from lowrank_lm.train import distributed
    from lowrank_lm.train.evaluate import evaluate, validation_size

    _check_flags(args)
    if is_structurized_folder(args.path):
        return _run_transformers(args)
    _refuse_stock_folder(args)
    d = distributed.setup(args.device, option="--device")  # joins torchrun's processes; alone otherwise
    watch = _watch(d.device) if d.is_main else None
    try:
        model, cfg, ckpt = load_model(args.path, d.device)
        data_dir = Path(args.data) if args.data else resolve_data_dir(cfg.data)
        check_compatible(load_manifest(data_dir), cfg.model, None if args.data else cfg.data)
        size = validation_size(data_dir, cfg.model.seq_len, args.tokens)
        if size == 0:
            raise UserError(f"nothing to evaluate: {'--tokens ' + str(args.tokens) if args.tokens else data_dir} "
                            f"holds less than one validation sequence ({cfg.model.seq_len} tokens); "
                            f"give more tokens or a data dir with a validation split")
        shown = _progress(watch, size, d.is_main)
        res = evaluate(model, data_dir, cfg.model.seq_len, args.batch_size, d.device,
                       args.precision or cfg.train.precision, args.tokens, d.rank, d.world_size, progress=shown)
        shown.close()
    finally:
        distributed.teardown()
    if not d.is_main:
        return
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{ckpt}: val loss {res['loss']:.4f}, ppl {res['ppl']:.2f} on {res['tokens']:,} tokens")


def _refuse_stock_folder(args: argparse.Namespace) -> None:
    """A transformers folder without recorded structures, and a flag of transformers folders on a run, are
    one-line errors (a run or checkpoint has no config.json)."""
    from lowrank_lm.anymodel import RECORD_KEY
    from lowrank_lm.anymodel.hf_eval import transformers_config

    if transformers_config(args.path) is not None:
        raise UserError(f"{args.path} is a transformers folder without {RECORD_KEY} in its config.json (not "
                        "structurized); lowrank-lm eval takes our runs and checkpoints, and structurized folders")
    if args.seq_len is not None:
        raise UserError("--seq-len applies to transformers folders; a run is evaluated at its own model.seq_len")


def _run_transformers(args: argparse.Namespace) -> None:
    """Print the validation loss and perplexity of a structurized transformers folder on --data (one process)."""
    from lowrank_lm.anymodel.hf_eval import evaluate_folder
    from lowrank_lm.device import resolve_device
    from lowrank_lm.train.distributed import under_launcher

    if not args.data:
        raise UserError(f"{args.path} is a transformers folder with no data of its own; give --data, a prepared "
                        "data dir made with its tokenizer")
    if under_launcher():
        raise UserError("a transformers folder is evaluated in one process; run lowrank-lm eval without torchrun")
    if args.seq_len is not None and args.seq_len < 1:
        raise UserError(f"--seq-len must be at least 1, got {args.seq_len}")
    res = evaluate_folder(args.path, args.data, resolve_device(args.device, option="--device"),
                          args.precision or "fp32", args.seq_len, args.batch_size, args.tokens)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{args.path}: val loss {res['loss']:.4f}, ppl {res['ppl']:.2f} on {res['tokens']:,} tokens "
              f"(sequences of {res['seq_len']})")

"""Write a checkpoint as a Hugging Face folder that transformers.AutoModelForCausalLM loads.

A dense model (or a structured one with --merge) becomes a stock class (Llama, GPT-NeoX or
Starcoder2, chosen to match the config exactly); a structured model without --merge keeps its
factors in a trust_remote_code class. The run's tokenizer.json comes along as a fast tokenizer.
See docs/export.md.
"""

from __future__ import annotations

import argparse

EXAMPLES = ["lowrank-lm export runs/demo/lowrank-32 hf-tiny --merge",
            "lowrank-lm export runs/demo/lowrank-32 hf-tiny-factors --overwrite"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """A run or checkpoint folder, OUT, and how to export (--merge, --arch, --dtype, --overwrite)."""
    p.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="a run folder (its newest checkpoint) or one checkpoint folder")
    p.add_argument("out", metavar="OUT", help="folder to write (must be new or empty)")
    p.add_argument("--merge", action="store_true",
                   help="multiply structured FFN factors into dense weights and use a stock class")
    p.add_argument("--arch", choices=["auto", "llama", "gpt_neox", "starcoder2"], default="auto",
                   help="stock class to use (default: the exact match for the config)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="weight precision of the export (default float32)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT")


def run(args: argparse.Namespace) -> None:
    """Write the Hugging Face folder and print its notes and how to load it."""
    from lowrank_lm.export.hf import export_hf

    res = export_hf(args.checkpoint, args.out, merge=args.merge, arch=args.arch, dtype=args.dtype,
                    overwrite=args.overwrite)
    for note in res.notes:
        print(f"note: {note}")
    # transformers 5 reads config.json even for AutoTokenizer, so a remote-code folder needs the flag there too
    args_ = f"{str(res.out)!r}, trust_remote_code=True" if res.remote_code else repr(str(res.out))
    load = f"AutoModelForCausalLM.from_pretrained({args_})"
    if res.tokenizer:
        load += f" and AutoTokenizer.from_pretrained({args_})"
    print(f"exported {res.architecture}{' (with tokenizer)' if res.tokenizer else ''} to {res.out}; load it with "
          f"{load}")

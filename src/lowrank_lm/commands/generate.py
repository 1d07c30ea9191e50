"""Sample text from a checkpoint, printed token by token (KV cache, pre-merged FFN weights)."""

from __future__ import annotations

import argparse
import sys

DEFAULT_PREMERGE_TOKENS = 16
"""Calls with at most this many tokens (every decoding step, at batch 1) use the merged dense FFN
weights: one matrix product instead of two or three small ones; the prompt still uses the factors."""


EXAMPLES = ['lowrank-lm generate runs/demo/lowrank-32 --prompt "It was a dark and stormy night" --seed 0']


def add_arguments(p: argparse.ArgumentParser) -> None:
    """A run or checkpoint folder, the prompt and the sampling and decoding options."""
    p.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="a run folder (its newest checkpoint) or one checkpoint folder")
    p.add_argument("--prompt", required=True, help="text to continue ('' starts a new document)")
    p.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate after the prompt")
    p.add_argument("--temperature", type=float, default=0.8, help="0 means greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold, e.g. 0.95")
    p.add_argument("--seed", type=int, default=None, help="makes sampling repeatable")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--decode", default="auto", choices=["auto", "eager", "static"],
                   help="decoding steps: static (fixed shapes; a CUDA graph on CUDA, compiled on CPU, which "
                        "takes seconds to compile), eager, or auto (static on CUDA, eager on CPU)")
    p.add_argument("--premerge-tokens", type=int, default=None,
                   help=f"pre-merge threshold in tokens per call (default: model.ffn.premerge_max_tokens, "
                        f"else {DEFAULT_PREMERGE_TOKENS}; 0 turns pre-merge off)")


def run(args: argparse.Namespace) -> None:
    """Print the prompt's continuation token by token."""
    from lowrank_lm.api import load
    from lowrank_lm.errors import UserError
    from lowrank_lm.layers import registry
    from lowrank_lm.textgen import stream_text

    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if not 0 <= args.temperature < float("inf"):  # written so that nan fails too
        raise UserError(f"--temperature must be 0 (greedy) or positive, got {args.temperature}")
    if args.top_k < 0:
        raise UserError(f"--top-k must be 0 (all tokens) or positive, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.premerge_tokens is not None and args.premerge_tokens < 0:
        raise UserError(f"--premerge-tokens must be 0 (off) or positive, got {args.premerge_tokens}")
    model = load(args.checkpoint, args.device, premerge=0)
    threshold = args.premerge_tokens
    if threshold is None:
        # a non-linear structure has no merged weight to keep
        mergeable = registry.all_linear(model.cfg)
        threshold = model.cfg.ffn.premerge_max_tokens or (DEFAULT_PREMERGE_TOKENS if mergeable else 0)
    model.premerge(threshold)
    if model.tokenizer is None:
        from lowrank_lm.data.tokenizer import MISSING_HINT

        raise UserError(f"no tokenizer in the run dir of {model.checkpoint}; {MISSING_HINT}")
    out = sys.stdout
    out.write(args.prompt)
    out.flush()
    for piece in stream_text(model, model.tokenizer, args.prompt, args.max_new_tokens, args.temperature,
                             args.top_k or None, args.top_p, args.seed, decode=args.decode):
        out.write(piece)
        out.flush()
    out.write("\n")

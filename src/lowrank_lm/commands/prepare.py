"""Tokenize a text source into token shards + manifest.json (a no-op when they are already there)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXAMPLES = ["lowrank-lm prepare configs/cpu/tiny.yaml",
            "lowrank-lm prepare data.source=corpus/ data.tokenizer=gpt2 data.dir=data/corpus --max-tokens 2e8"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """CONFIG and/or data.* overrides, and --max-tokens, --verify, --force, --quiet, --json."""
    p.add_argument("config", nargs="?", metavar="CONFIG",
                   help="YAML config (see configs/); without one, the defaults: the embedded books with bpe-8192")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. data.source=corpus/ data.tokenizer=gpt2 data.dir=data/corpus")
    p.add_argument("--max-tokens", type=_count, default=None, metavar="N",
                   help="stop after N ids (train + validation), e.g. 2.2e9: a slice of a huge stream "
                        "(sets data.max_tokens)")
    p.add_argument("--verify", action="store_true", help="re-check every shard's sha256 and the tokenizer files")
    p.add_argument("--force", action="store_true", help="replace data already prepared in data.dir")
    p.add_argument("--quiet", action="store_true", help="no progress bar or status lines")
    p.add_argument("--json", action="store_true", help="print the manifest summary as one JSON object")


def _count(text: str) -> int:
    """A positive whole number, written 2200000000, 2_200_000_000 or 2.2e9."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of tokens") from None
    if value != int(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number of tokens")
    return int(value)


def run(args: argparse.Namespace) -> None:
    """Tokenize the config's source into shards under data.dir (nothing to do when they are there)."""
    from lowrank_lm.data import check_compatible, load_manifest, prepare_data, verify_shards
    from lowrank_lm.data.tokenizer import check_tokenizer_files, parse_tokenizer_spec
    from lowrank_lm.errors import UserError
    from lowrank_lm.resolve import load_config

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).is_file():
        config, overrides = None, [config, *overrides]  # `prepare data.source=x.txt`: no file, only overrides
    cfg = load_config(config, overrides)
    if args.max_tokens is not None:
        cfg.data.max_tokens = args.max_tokens
    # with a model in view (a config file or model.* overrides), refuse data the model cannot use, before the work
    check_model = config is not None or any(o.startswith("model.") for o in overrides)
    known = parse_tokenizer_spec(cfg.data.tokenizer).known_vocab_size
    if check_model and known is not None and known > cfg.model.vocab_size:
        raise UserError(f"data.tokenizer={cfg.data.tokenizer} has {known:,} ids but model.vocab_size="
                        f"{cfg.model.vocab_size:,}; set model.vocab_size={known} (or more) or use a smaller tokenizer")
    result = prepare_data(cfg.data, progress=not args.quiet, force=args.force)
    manifest = result.manifest
    if args.verify:
        manifest = load_manifest(result.data_dir)
        check_tokenizer_files(manifest)
        verify_shards(manifest)
    if check_model:
        check_compatible(manifest, cfg.model, cfg.data)
    if args.json:
        print(json.dumps({"data_dir": str(result.data_dir), "created": result.created, "seconds": result.seconds,
                          "workers": result.workers, "source_bytes": result.source_bytes,
                          "tokenizer": manifest.tokenizer, "vocab_size": manifest.vocab_size,
                          "dtype": manifest.dtype, "tokens": manifest.tokens, "documents": manifest.documents,
                          "shards": len(manifest.shards), "verified": args.verify}))
        return
    if result.created:
        rate = (manifest.tokens["train"] + manifest.tokens["val"]) / max(result.seconds, 1e-9)
        print(f"prepared {result.data_dir}: {manifest.summary()} in {result.seconds:.1f}s "
              f"({rate:,.0f} tokens/s, {result.workers} worker{'s' if result.workers != 1 else ''})")
    else:
        print(f"already prepared, nothing to do: {result.data_dir}: {manifest.summary()}")
    if args.verify:
        print(f"verified: sha256 of all {len(manifest.shards)} shards and the tokenizer files match the manifest")

"""Compress a local Hugging Face model folder with a structure, and optionally heal it with a short training.

Replaces the targeted linear layers (default: the FFNs) by their best approximation in the structure's
family (truncated SVD for low-rank), prints the parameter and FLOP report, and with --data the validation
perplexity before, after compressing and (with --heal CONFIG) after healing, self-guided by the original
weights. OUT is loaded with lowrank_lm.load_structurized(OUT). See docs/integrations.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

EXAMPLES = ["lowrank-lm structurize hf-dense hf-half --kind lowrank --fraction 0.5 --data data/embedded-bpe-8192",
            "lowrank-lm structurize hf-dense hf-half --kind lowrank --fraction 0.5 --targets ffn "
            "--data data/embedded-bpe-8192 --heal heal.yaml"]
# Files of a model folder that describe its tokenizer and generation, copied next to the compressed weights.
KEPT_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
              "merges.txt", "generation_config.json", "chat_template.jinja")
RECORD_FILE = "lowrank_lm_structurize.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The model folder, OUT, the structure and fraction, and the optional healing."""
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a local transformers model folder (config.json + weights)")
    p.add_argument("out", metavar="OUT", help="folder to write (must be new or empty)")
    p.add_argument("--kind", required=True, help="the structure (lowrank-lm info lists them)")
    p.add_argument("--fraction", type=float, default=None, help="share of each layer's weights to keep, e.g. 0.5")
    p.add_argument("--rank", type=int, default=None, help="the structure's rank (instead of --fraction)")
    p.add_argument("--num-blocks", type=int, default=None, help="the structure's block count")
    p.add_argument("--targets", nargs="+", default=["ffn"],
                   help="presets (ffn, attention, all-linear) or module-name patterns such as '*.down_proj'")
    p.add_argument("--keep-dense", type=int, default=0, help="leave the first K blocks dense")
    p.add_argument("--init", choices=["from_dense", "fresh"], default="from_dense",
                   help="start from the best approximation of the dense weights, or from the structure's init")
    p.add_argument("--data", default=None, help="a prepared data dir (lowrank-lm prepare) in the model's tokenizer: "
                   "perplexity on its validation tokens, and the healing data")
    p.add_argument("--heal", default=None, metavar="CONFIG",
                   help="YAML of the healing run (steps, batch_size, lr, warmup_steps, guide_ratio, schedule, seed)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="sequence length for evaluation and healing (default: the model's, at most 1024)")
    p.add_argument("--eval-tokens", type=int, default=None, help="evaluate on the first N validation tokens")
    p.add_argument("--json", action="store_true", help="print the record as JSON")


def _check(args: argparse.Namespace) -> tuple[Path, Path]:
    from lowrank_lm.errors import UserError

    src, out = Path(args.model_dir), Path(args.out)
    if not (src / "config.json").is_file():
        raise UserError(f"{src} is not a transformers model folder (no config.json)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not empty; choose a new folder")
    if args.heal and not args.data:
        raise UserError("--heal trains on prepared data: give --data DIR too")
    if args.eval_tokens is not None and not args.data:
        raise UserError("--eval-tokens applies to the perplexity on --data; give --data DIR or drop it")
    return src, out


def _load(src: Path):
    import torch
    import transformers

    from lowrank_lm.anymodel import RECORD_KEY
    from lowrank_lm.errors import UserError

    transformers.utils.logging.disable_progress_bar()  # the command's output is its report and perplexities
    config = transformers.AutoConfig.from_pretrained(str(src), local_files_only=True)
    if getattr(config, RECORD_KEY, None):
        raise UserError(f"{src} is already structurized; start from a dense model (or merge it first)")
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(str(src), local_files_only=True,
                                                                 dtype=torch.float32).eval()
    except ValueError as e:  # e.g. a config that needs trust_remote_code
        raise UserError(f"transformers cannot load {src} as a causal LM: {str(e).splitlines()[0]}") from None


def _seq_len(model, data: Path, requested: int | None) -> int:
    from lowrank_lm.data import load_manifest
    from lowrank_lm.errors import UserError

    cfg = model.config
    vocab = load_manifest(data).vocab_size
    if vocab > cfg.vocab_size:
        raise UserError(f"{data} is tokenized with {vocab:,} ids and the model has {cfg.vocab_size:,}; prepare "
                        "the data with the model's own tokenizer")
    most = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 1024
    if requested is not None and not 0 < requested <= most:
        raise UserError(f"--seq-len {requested}: the model takes 1 to {most} positions")
    return requested or min(most, 1024)


def run(args: argparse.Namespace) -> None:
    """Replace the model's linear layers with the structure, heal it if asked, and write OUT."""
    from lowrank_lm.anymodel import structurize
    from lowrank_lm.anymodel.core import dense_weight
    from lowrank_lm.anymodel.heal import HealConfig, heal, perplexity
    from lowrank_lm.anymodel.targets import select
    from lowrank_lm.permissions import follow_umask, make_temp_dir

    src, out = _check(args)
    heal_cfg = HealConfig.load(args.heal) if args.heal else None
    model = _load(src)
    data = Path(args.data) if args.data else None
    seq_len = _seq_len(model, data, args.seq_len) if data else None
    ppl: dict[str, dict] = {}
    if data:
        ppl["original"] = perplexity(model, data, seq_len, max_tokens=args.eval_tokens)
    originals = {n: dense_weight(model.get_submodule(n)).detach().clone() for n in select(model, args.targets)}
    report = structurize(model, args.kind, fraction=args.fraction, rank=args.rank, num_blocks=args.num_blocks,
                         targets=args.targets, keep_dense=args.keep_dense, init=args.init)
    print(report.summary() if not args.json else "", end="\n" if not args.json else "")
    if data:
        ppl["compressed"] = perplexity(model, data, seq_len, max_tokens=args.eval_tokens)
    losses: list[float] = []
    if heal_cfg is not None:
        guides = {r.name: originals[r.name] for r in report.replaced}
        losses = heal(model, guides, data, seq_len, heal_cfg)
        ppl["healed"] = perplexity(model, data, seq_len, max_tokens=args.eval_tokens)
    healed = None if heal_cfg is None else {**vars(heal_cfg), "first_loss": losses[0], "last_loss": losses[-1]}
    record = {"source": str(src.resolve()), "report": report.to_dict(), "perplexity": ppl, "heal": healed}
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = make_temp_dir(f".{out.name}.tmp-", out.parent)
    try:  # written beside OUT and renamed into place: a failure leaves no half folder
        model.save_pretrained(str(folder))
        for name in KEPT_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, folder / name)
        (folder / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        follow_umask(folder)
        if out.exists():
            out.rmdir()  # empty (checked above)
        folder.rename(out)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if args.json:
        print(json.dumps(record))
        return
    _print_perplexity(ppl)
    print(f"wrote {out}; load it with lowrank_lm.load_structurized({str(out)!r})")


def _print_perplexity(ppl: dict[str, dict]) -> None:
    if not ppl:
        return
    line = ", ".join(f"{k} {v['ppl']:.2f}" for k, v in ppl.items())
    print(f"validation perplexity on {ppl['original']['tokens']:,} tokens: {line}")
    if "healed" in ppl:
        lost = ppl["compressed"]["ppl"] - ppl["original"]["ppl"]
        back = ppl["compressed"]["ppl"] - ppl["healed"]["ppl"]
        if lost > 0:
            print(f"healing recovered {100 * back / lost:.0f}% of the perplexity lost by compressing")

"""Show a config's parameter counts and FLOPs (paper convention and 6N) without allocating it."""

from __future__ import annotations

import argparse
import json

from lowrank_lm.commands.common import add_config_arguments, config_from_args

EXAMPLES = ["lowrank-lm info configs/cpu/tiny.yaml",
            "lowrank-lm info configs/cpu/tiny.yaml model.ffn.kind=lowrank model.ffn.rank=32 --json",
            "lowrank-lm info configs/cpu/scale-3.yaml model.attn.kind=lowrank model.attn.fraction=0.32"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """CONFIG with overrides, and --json."""
    add_config_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _m(n: float) -> str:
    return f"{n / 1e6:,.1f}M"


def _count(n: int) -> str:
    """2.2B, 1.999M, 196.6k or 512: four significant digits in the unit that suits the size."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.4g}{unit}"
    return str(n)


def run(args: argparse.Namespace) -> None:
    """Print the config's parameter counts and FLOPs (or them as JSON), without allocating the model."""
    from lowrank_lm.accounting import account
    from lowrank_lm.layers import registry

    cfg = config_from_args(args)
    acc = account(cfg)
    if args.json:
        print(json.dumps(acc.to_dict(), indent=2))
        return
    m, f, a = cfg.model, cfg.model.ffn, cfg.model.attn
    structure: str = f.kind
    if registry.get(f.kind).structured:
        bits = [registry.describe(f.kind, f.rank, f.num_blocks), f"init={f.init}"]
        structure += " (" + ", ".join(b for b in bits if b) + f"; dense blocks {f.keep_dense_layers})"
    attention: str = a.kind
    if registry.get(a.kind).structured:
        bits = [registry.describe(a.kind, a.rank, a.num_blocks), f"init={a.init}"]
        attention += " (" + ", ".join(b for b in bits if b) + "; q/k/v and output projections of every block)"
    rows = [
        ("layers / hidden / attn / ffn", f"{m.num_layers} / {m.hidden_dim} / {m.resolved_attn_dim} / "
                                         f"{m.resolved_ffn_dim}"),
        ("heads q / kv (head dim)", f"{m.num_q_heads} / {m.resolved_kv_heads} ({m.head_dim})"),
        ("vocab / context", f"{m.vocab_size} / {m.seq_len}"),
        ("FFN", structure),
        ("attention", attention),
        ("params", f"{_m(acc.params)}  (non-embedding {_m(acc.params_non_embedding)}, "
                   f"FFN {_m(acc.params_ffn)}, attention {_m(acc.params_attention)})"),
        ("FLOPs / token (paper)", f"{acc.forward_flops_per_token:.4g} forward, {acc.flops_per_token:.4g} train"),
        ("FLOPs / token (6N)", f"{acc.flops_per_token_6n:.4g} train"),
        ("token budget", f"{_count(acc.train_tokens)} tokens = {acc.steps} steps x {acc.tokens_per_step}"),
        ("training FLOPs", f"{acc.train_flops:.3e} (paper), {acc.train_flops_6n:.3e} (6N)"),
    ]
    if acc.self_guided_extra_flops:
        rows.append(("self-guided", f"+{acc.self_guided_extra_steps} steps, "
                                    f"+{acc.self_guided_extra_flops:.3e} guide FLOPs"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")

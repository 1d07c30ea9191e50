"""Measure efficiency: the FFN block alone (ffn), training steps (train), KV-cache decoding (decode).

Each sub-command times its variants interleaved in one process, prints a markdown table (or, with
--json, a JSON list of rows) and with --out DIR writes JSON, markdown and PNG plots there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from lowrank_lm.errors import UserError

EXAMPLES = ["lowrank-lm bench ffn --widths 1024 --tokens 4096 --out runs/bench-ffn",
            "lowrank-lm bench train configs/cpu/tiny.yaml --kinds dense,lowrank --compile off",
            "lowrank-lm bench decode configs/cpu/tiny.yaml --batches 1,8"]


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive whole numbers, got {text!r}")
    return values


def _counts(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected whole numbers >= 0, got {text!r}")
    return values


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _words(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: torch's, one per physical core)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds per variant (median of these)")
    p.add_argument("--out", default=None, metavar="DIR", help="write JSON, markdown and PNG plots here")
    p.add_argument("--json", action="store_true", help="print the rows as one JSON list")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``bench`` sub-verbs ffn, train and decode, each with its options and the shared ones."""
    from lowrank_lm.layers import registry  # the kinds the defaults name

    # not required=True: argparse would then say "the following arguments are required: bench"; run() says what to do
    sub = p.add_subparsers(dest="bench", metavar="{ffn,train,decode}", parser_class=type(p))

    f = sub.add_parser("ffn", help="latency of the FFN block alone: dense vs structured vs pre-merged",
                       description="Latency of the FFN block (up, GELU, down; FFN = 4 x width) for "
                                   "each width, structure and token count; speed-up over dense and "
                                   "efficiency against the FLOP bound.")
    f.add_argument("--widths", type=_ints, default=[1024, 2048], help="model widths (FFN = 4 x width)")
    f.add_argument("--kinds", type=_words, default=list(registry.kinds()),
                   help="FFN parametrisations; dense is always measured as the baseline")
    f.add_argument("--fractions", type=_floats, default=[0.63, 0.32],
                   help="parameter fractions of the dense FFN (ranks / blocks chosen per width)")
    f.add_argument("--ranks", type=_ints, default=[],
                   help=f"explicit ranks for {' and '.join(registry.readers('rank'))}")
    f.add_argument("--blocks", type=_ints, default=[],
                   help="explicit block counts for the kinds without a rank")
    f.add_argument("--blockdense-blocks", type=int, default=4,
                   help="block count of a kind with both a rank and blocks (BlockDense)")
    f.add_argument("--tokens", type=_ints, default=[4096], help="tokens per call (batch x sequence)")
    f.add_argument("--mode", default="fwd", choices=["fwd", "fwdbwd"],
                   help="fwd: no-grad inference forward; fwdbwd: forward + backward in train mode")
    f.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="weights and inputs")
    f.add_argument("--premerge", action="store_true",
                   help="also time each structured FFN with its merged dense weights kept (inference)")
    f.add_argument("--premerge-max-tokens", type=int, default=None,
                   help="pre-merge limit instead of the calibrated crossover")
    f.add_argument("--compile", action="store_true",
                   help="time every FFN under torch.compile (bias and GELU fused into one pass)")
    f.add_argument("--min-round-s", type=float, default=0.05, help="minimum seconds per timing round")
    _common(f)

    t = sub.add_parser("train", help="training-step throughput of a config, its structured variants and a peer",
                       description="Tokens/s, TFLOP/s, MFU and peak memory of whole-model training steps "
                                   "(random tokens, AdamW) for CONFIG and its structured variants, with "
                                   "and without torch.compile, beside transformers' GPT-NeoX / Llama of "
                                   "the same dimensions.")
    t.add_argument("config", metavar="CONFIG", help="YAML config (see configs/)")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
    t.add_argument("--kinds", type=_words, default=[registry.DENSE, registry.structured_kinds()[0]],
                   help="FFN kinds to compare (dense = the config with dense FFNs)")
    t.add_argument("--fractions", type=_floats, default=[0.32],
                   help="parameter fractions of the dense FFN for the structured kinds (ranks / blocks chosen)")
    t.add_argument("--batch", type=int, default=None, help="sequences per step (default: micro_batch_size)")
    t.add_argument("--seq", type=int, default=None, help="sequence length (default: model.seq_len)")
    t.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"], help="autocast dtype (weights fp32)")
    t.add_argument("--compile", type=_words, default=["off", "on"],
                   help="off, on, off,on, or auto (what train.compile's default picks on this device)")
    t.add_argument("--loss-chunk-tokens", type=_counts, default=None, metavar="N[,N...]",
                   help="our models' train.loss_chunk_tokens, one variant each, e.g. 0,4096 "
                        "(0: full logits; default: the config's)")
    t.add_argument("--no-peer", action="store_true", help="skip the transformers peer")
    t.add_argument("--peer-compile", action="store_true",
                   help="also time the peer under torch.compile (default: eager only, to save compile time)")
    _common(t)

    d = sub.add_parser("decode", help="KV-cache generation throughput over batch sizes",
                       description="Tokens/s of greedy generation with the KV cache from a 1-token prompt "
                                   "(generation length 256 by default) for each CONFIG over batch sizes; "
                                   "maximum throughput is the best over the batches that fit.")
    d.add_argument("configs", nargs="+", metavar="CONFIG",
                   help="one or more YAML configs, then optional KEY=VALUE overrides for all of them")
    d.add_argument("--batches", type=_ints, default=[1, 8, 32], help="batch sizes (sequences decoded at once)")
    d.add_argument("--gen", type=int, default=256, help="tokens generated per sequence")
    d.add_argument("--dtype", default="bf16", choices=["fp32", "bf16", "fp16"], help="weights and activations")
    d.add_argument("--premerge", default="on", choices=["on", "off", "both"],
                   help="pre-merged structured FFNs (calibrated) for decoding")
    d.add_argument("--search", action="store_true",
                   help="GPU: keep doubling the batch past the list until out of memory (the paper's protocol)")
    d.add_argument("--max-batch", type=int, default=8192, help="stop the --search here")
    d.add_argument("--decode", type=_words, default=["auto"], metavar="MODE[,MODE...]",
                   help="eager, static (fixed-shape steps: compiled on CPU, a CUDA graph on CUDA), "
                        "auto (static on CUDA, eager on CPU), or eager,static to compare")
    _common(d)


def _device(name: str) -> Any:
    from lowrank_lm.device import resolve_device

    return resolve_device(name, option="--device")


def _setup(args: argparse.Namespace) -> Any:
    import torch

    from lowrank_lm.runtime import tune_malloc

    tune_malloc()
    if args.threads is not None:
        if args.threads <= 0:
            raise UserError(f"--threads {args.threads} must be positive")
        torch.set_num_threads(args.threads)
    if args.rounds <= 0:
        raise UserError(f"--rounds {args.rounds} must be positive")
    return _device(args.device)


_warned = False


def _progress(message: str) -> None:
    """Progress on stderr; the first message of a CPU run warns when other processes load the machine."""
    global _warned
    if not _warned:
        _warned = True
        import torch

        from lowrank_lm.contention import busy_cores, contention_warning

        busy = busy_cores() if not torch.cuda.is_available() else None
        warning = None if busy is None else contention_warning(busy, os.cpu_count() or 1, torch.get_num_threads(),
                                                               "timings will be noisy")
        if warning:
            print(warning, file=sys.stderr)
    print(message, file=sys.stderr, flush=True)


def _collect(measure: Any) -> tuple[list[dict], bool]:
    """Run a bench; on Ctrl-C or SIGINT (a time limit) keep the rows it had finished: (rows, interrupted)."""
    from lowrank_lm.bench.report import Interrupted

    try:
        return measure(), False
    except Interrupted as e:
        _progress(f"interrupted: writing the {len(e.rows)} rows measured so far")
        return e.rows, True


def _finish(args: argparse.Namespace, name: str, meta: dict, rows: list[dict], table: str,
            plot: Any = None, interrupted: bool = False) -> None:
    """Write and print the results; after an interrupt, then exit as interrupted (130)."""
    from lowrank_lm.bench.report import NOT_OURS, bench_ownership, prepare_out_dir, write_results
    from lowrank_lm.permissions import make_temp_dir

    if interrupted:
        meta = {**meta, "interrupted": True}
    out = prepare_out_dir(args.out)
    if out is not None:
        # written beside, then moved in: a file of another name bench did not write is never replaced
        staging = make_temp_dir(f".{name}.tmp-", out)
        try:
            write_results(staging, name, meta, rows, table)
            if plot is not None:
                plot(rows, staging)
            paths = bench_ownership(out).move_in(staging, NOT_OURS)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _progress("wrote " + ", ".join(os.fspath(p) for p in paths))
    if args.json:
        print(json.dumps([{**meta, **r} for r in rows], indent=1))
    else:
        print(table, end="")
    if interrupted:
        raise KeyboardInterrupt


def _check_out(out: str | None, name: str) -> None:
    """Before measuring: --out may be new, empty or a folder of bench's (its NAME.json / NAME.md replaced);
    any other folder, or a NAME.json / NAME.md there that bench did not write, is refused."""
    if out is not None:
        from lowrank_lm.bench.report import NOT_OURS, bench_ownership

        bench_ownership(Path(out)).check_names({f"{name}.json", f"{name}.md"}, NOT_OURS)


def run(args: argparse.Namespace) -> None:
    """Measure what the sub-verb names and print its table; with --out also write JSON, markdown and plots."""
    if args.bench is None:
        raise UserError("say what to measure: lowrank-lm bench ffn (FFN latency), bench train CONFIG "
                        "(training steps) or bench decode CONFIG (generation)")
    _check_out(args.out, args.bench)
    device = _setup(args)
    {"ffn": _run_ffn, "train": _run_train, "decode": _run_decode}[args.bench](args, device)


def _run_ffn(args: argparse.Namespace, device: Any) -> None:
    from lowrank_lm.bench.ffn import FFNBenchSpec, ffn_table, plot_ffn, run_ffn_bench
    from lowrank_lm.bench.report import machine_meta

    if args.min_round_s <= 0:
        raise UserError(f"--min-round-s {args.min_round_s} must be positive")
    spec = FFNBenchSpec(widths=args.widths, kinds=args.kinds, fractions=args.fractions, tokens=args.tokens,
                        mode=args.mode, dtype=args.dtype, ranks=args.ranks, blocks=args.blocks,
                        blockdense_blocks=args.blockdense_blocks, premerge=args.premerge,
                        premerge_max_tokens=args.premerge_max_tokens, compile=args.compile, rounds=args.rounds,
                        min_round_s=args.min_round_s)
    rows, interrupted = _collect(lambda: run_ffn_bench(spec, device, _progress))
    _finish(args, "ffn", machine_meta(device, args.dtype), rows, ffn_table(rows), plot_ffn, interrupted)


def _compile_modes(words: list[str], device: Any) -> tuple[bool, ...]:
    from lowrank_lm.train.compiling import use_compile

    modes: dict[str, bool | str] = {"off": False, "on": True, "auto": "auto"}
    bad = [w for w in words if w not in modes]
    if bad or not words:
        raise UserError(f"--compile {','.join(words)}: use off, on, auto (train.compile's default), or off,on")
    return tuple(dict.fromkeys(use_compile(modes[w], device) for w in words))


def _run_train(args: argparse.Namespace, device: Any) -> None:
    from lowrank_lm.bench.report import machine_meta
    from lowrank_lm.bench.train import TrainBenchSpec, plot_train, run_train_bench, train_table
    from lowrank_lm.resolve import load_config

    cfg = load_config(args.config, args.overrides)
    spec = TrainBenchSpec(model=cfg.model, kinds=args.kinds, fractions=args.fractions,
                          batch=args.batch or cfg.train.micro_batch_size or cfg.train.global_batch_size,
                          seq=args.seq or cfg.model.seq_len, dtype=args.dtype,
                          compile=_compile_modes(args.compile, device), peer=not args.no_peer,
                          peer_compile=args.peer_compile, rounds=args.rounds,
                          loss_chunks=tuple(args.loss_chunk_tokens if args.loss_chunk_tokens is not None
                                            else [cfg.train.loss_chunk_tokens]))
    if spec.seq > cfg.model.seq_len:
        raise UserError(f"--seq {spec.seq} exceeds model.seq_len={cfg.model.seq_len}; lower it")
    rows, notes = run_train_bench(spec, device, _progress)
    for n in notes:
        _progress("note: " + n)
    meta = {**machine_meta(device, args.dtype), "config": args.config, "overrides": args.overrides, "notes": notes}
    _finish(args, "train", meta, rows, train_table(rows, notes), plot_train)


def _decode_modes(words: list[str], device: Any) -> list[str]:
    from lowrank_lm.decoding import DECODE_MODES, resolve_decode

    bad = [w for w in words if w not in DECODE_MODES]
    if bad or not words:
        raise UserError(f"--decode {','.join(words)}: use eager, static, auto, or eager,static")
    return list(dict.fromkeys(resolve_decode(w, device) for w in words))


def _run_decode(args: argparse.Namespace, device: Any) -> None:
    from pathlib import Path

    from lowrank_lm.bench.decode import DecodeBenchSpec, decode_table, plot_decode, run_decode_bench
    from lowrank_lm.bench.report import machine_meta
    from lowrank_lm.resolve import load_config

    paths = [c for c in args.configs if "=" not in c]
    overrides = [c for c in args.configs if "=" in c]
    if not paths:
        raise UserError("give at least one CONFIG before the KEY=VALUE overrides")
    names = [Path(p).stem for p in paths]
    names = [n if names.count(n) == 1 else f"{n}#{i + 1}" for i, n in enumerate(names)]  # keep rows apart
    configs = [(n, load_config(p, overrides).model) for n, p in zip(names, paths)]
    spec = DecodeBenchSpec(configs=configs, batches=args.batches, gen=args.gen, dtype=args.dtype,
                           premerge=args.premerge, search=args.search, max_batch=args.max_batch,
                           rounds=args.rounds, decode=_decode_modes(args.decode, device))
    rows, interrupted = _collect(lambda: run_decode_bench(spec, device, _progress))
    meta = {**machine_meta(device, args.dtype), "configs": paths, "overrides": overrides}
    _finish(args, "decode", meta, rows, decode_table(rows), plot_decode, interrupted)

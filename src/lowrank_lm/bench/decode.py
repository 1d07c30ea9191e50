"""Decoding throughput: greedy generation with the KV cache, as the paper's Table 2 "TP" column.

The paper generates 256 tokens from an empty prefill with the largest batch that fits in memory
and reports batch x 256 / time. Our models need one token to start from, so the prompt is one
token per sequence. At each batch size the configs are timed interleaved; on a GPU ``search``
keeps doubling the batch past the given list until it runs out of memory (then tries one size
half-way back), and "maximum throughput" is the best tokens/s over the batches that fit.
Structured FFNs decode with pre-merge (calibrated on the device, or the config's limit). Each model
decodes eagerly and/or with static steps (``decoding``: a CUDA graph on CUDA, compiled on CPU); the
first call of each (compilation, graph capture) is reported apart and not timed.
"""

from __future__ import annotations

import copy
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lowrank_lm import plotting
from lowrank_lm.accounting import count_model
from lowrank_lm.bench.memory import peak_bytes_during
from lowrank_lm.bench.premerge import apply_premerge
from lowrank_lm.bench.report import Interrupted, markdown_table, pyplot
from lowrank_lm.bench.timer import measure
from lowrank_lm.config import ModelConfig
from lowrank_lm.decoding import generate
from lowrank_lm.errors import UserError
from lowrank_lm.layers import registry
from lowrank_lm.model import Transformer
from lowrank_lm.premerge import premerged_layers

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class DecodeBenchSpec:
    """What to measure (the command line of ``bench decode``)."""

    configs: list[tuple[str, ModelConfig]]
    batches: list[int]
    gen: int = 256
    dtype: str = "bf16"
    premerge: str = "on"
    """on | off | both: structured FFNs decode with their merged weights kept (calibrated limit)."""
    search: bool = False
    max_batch: int = 8192
    rounds: int = 3
    seed: int = 0
    decode: list[str] = field(default_factory=lambda: ["eager"])
    """Decoding paths to time: eager and/or static (see lowrank_lm.decoding)."""


@dataclass
class DecodeVariant:
    """One model timed by bench decode: its label, config, pre-merge and decoder, and the smallest
    batch that ran out of memory (None: none yet)."""

    name: str
    cfg: ModelConfig
    model: Transformer
    premerge: bool
    params: int
    decode: str = "eager"
    oom_at: int | None = None


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def build_variants(spec: DecodeBenchSpec, device: torch.device) -> list[DecodeVariant]:
    """Each config as an eval-mode model in the dtype; structured ones with and/or without pre-merge."""
    out: list[DecodeVariant] = []
    for name, cfg in spec.configs:
        if spec.gen + 1 > cfg.seq_len:
            raise UserError(f"{name}: --gen {spec.gen} plus the 1-token prompt exceeds model.seq_len={cfg.seq_len}")
        torch.manual_seed(spec.seed)
        model = Transformer(cfg).to(device=device, dtype=DTYPES[spec.dtype]).eval()
        params = count_model(model).params
        # pre-merge needs a merged weight: structured layers of a linear kind
        mergeable = registry.all_linear(cfg) and any(True for _ in model.structured_layers())
        modes = [False] if not mergeable or spec.premerge == "off" else (
            [True] if spec.premerge == "on" else [False, True])
        for merged in modes:
            m = model
            if merged:
                m = copy.deepcopy(model) if len(modes) > 1 else model
                apply_premerge(m)
            out.extend(DecodeVariant(name, cfg, m, merged, params, mode) for mode in spec.decode)
    return out


def _generate(v: DecodeVariant, batch: int, gen: int, device: torch.device) -> Callable[[], object]:
    prompt = torch.zeros(batch, 1, dtype=torch.long, device=device)
    return lambda: generate(v.model, prompt, max_new_tokens=gen, temperature=0, decode=v.decode)


def _measure_batch(variants: list[DecodeVariant], batch: int, spec: DecodeBenchSpec,
                   device: torch.device) -> list[dict[str, Any]]:
    """Time every variant that still fits at this batch size, interleaved."""
    fns: dict[str, Callable[[], object]] = {}
    peaks: dict[str, int | None] = {}
    first: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    for i, v in enumerate(variants):
        if v.oom_at is not None and batch >= v.oom_at:
            continue
        fn = _generate(v, batch, spec.gen, device)
        oom = False
        try:
            t0 = time.perf_counter()
            peaks[str(i)] = peak_bytes_during(fn, device)  # also the warm-up call (compiles, captures)
            first[str(i)] = time.perf_counter() - t0
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            if not _is_oom(e):
                raise
            oom = True
        if oom:  # outside the except block, so the traceback no longer pins the failed call's tensors
            gc.collect()
            torch.cuda.empty_cache()
            v.oom_at = batch if v.oom_at is None else min(v.oom_at, batch)
            rows.append(_row(v, batch, spec, None, None, None))
            continue
        fns[str(i)] = fn
    if fns:
        timings = measure(fns, device, rounds=spec.rounds, min_round_s=0.0, warmup=0)
        for key, t in timings.items():
            rows.append(_row(variants[int(key)], batch, spec, t, peaks[key], first[key]))
    return rows


def _row(v: DecodeVariant, batch: int, spec: DecodeBenchSpec, t: Any, peak: int | None,
         first_s: float | None) -> dict[str, Any]:
    weights = sum(p.numel() * p.element_size() for p in v.model.parameters())
    merged = sum(m.merged.numel() * m.merged.element_size() for m in premerged_layers(v.model))
    return {
        "config": v.name, "kind": v.cfg.ffn.kind, "rank": v.cfg.ffn.rank, "attn_dim": v.cfg.resolved_attn_dim,
        "kv_heads": v.cfg.resolved_kv_heads, "ffn_dim": v.cfg.resolved_ffn_dim, "params": v.params,
        "premerge": v.premerge, "decode": v.decode, "batch": batch, "gen": spec.gen, "dtype": spec.dtype,
        "first_call_s": first_s,
        "status": "ok" if t is not None else "out of memory",
        **(t.to_dict() if t is not None else {}),
        "tokens_per_s": batch * spec.gen / (t.median_ms / 1e3) if t is not None else None,
        "peak_mem_mb": None if peak is None else (peak + weights + merged) / 2**20,
    }


def run_decode_bench(spec: DecodeBenchSpec, device: torch.device,
                     progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Rows per (config, pre-merge, batch), in batch order."""
    if spec.gen <= 0:
        raise UserError(f"--gen {spec.gen} must be positive")
    variants = build_variants(spec, device)
    rows: list[dict[str, Any]] = []
    batches = sorted(set(spec.batches))
    done: set[int] = set()

    def run(batch: int) -> None:
        if progress:
            progress(f"decode: batch {batch}, {spec.gen} tokens, {len(variants)} variants")
        rows.extend(_measure_batch(variants, batch, spec, device))
        done.add(batch)

    order = {name: i for i, (name, _) in enumerate(spec.configs)}  # keep the command line's order

    def ordered() -> list[dict[str, Any]]:
        return sorted(rows, key=lambda r: (r["batch"], order[r["config"]], r["premerge"], r["decode"]))

    try:
        for b in batches:
            run(b)
        if spec.search and device.type == "cuda":
            b = batches[-1]
            while any(v.oom_at is None for v in variants) and b * 2 <= spec.max_batch:
                b *= 2
                run(b)
            for v in variants:  # doubling overshoots by up to 2x: try once half-way back
                mid = v.oom_at * 3 // 4 if v.oom_at is not None else 0
                if mid > batches[-1] and mid not in done:
                    run(mid)
    except KeyboardInterrupt:
        if not rows:
            raise
        raise Interrupted(ordered()) from None  # the batch sizes finished so far are still worth writing
    return ordered()


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Maximum throughput per (config, pre-merge, decode path) over the batches that fit; ratio to the first."""
    best: dict[tuple[str, bool, str], dict[str, Any]] = {}
    for r in rows:
        if r["tokens_per_s"] is None:
            continue
        key = (r["config"], r["premerge"], r["decode"])
        if key not in best or r["tokens_per_s"] > best[key]["tokens_per_s"]:
            best[key] = r
    out = [{"config": c, "premerge": m, "decode": d, "kind": r["kind"], "params": r["params"],
            "best_batch": r["batch"], "max_tokens_per_s": r["tokens_per_s"]} for (c, m, d), r in best.items()]
    order = list(dict.fromkeys(r["config"] for r in rows))
    out.sort(key=lambda s: (order.index(s["config"]), s["premerge"], s["decode"]))
    if out:
        base = out[0]["max_tokens_per_s"]
        for s in out:
            s["vs_first"] = s["max_tokens_per_s"] / base
    return out


DECODE_COLUMNS = [("config", "config"), ("kind", "FFN"), ("kv_heads", "KV heads"), ("params", "params"),
                  ("premerge", "pre-merge"), ("decode", "decode"), ("batch", "batch"), ("median_ms", "median ms"),
                  ("iqr_ms", "IQR ms"), ("tokens_per_s", "tokens/s"), ("first_call_s", "first call s"),
                  ("peak_mem_mb", "peak MiB"), ("status", "status")]
SUMMARY_COLUMNS = [("config", "config"), ("kind", "FFN"), ("params", "params"), ("premerge", "pre-merge"),
                   ("decode", "decode"),
                   ("best_batch", "best batch"), ("max_tokens_per_s", "max tokens/s"), ("vs_first", "vs first")]


def decode_table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of every row, then the maximum throughput per variant."""
    return (markdown_table(rows, DECODE_COLUMNS) + "\nMaximum throughput over the batch sizes that fit:\n\n"
            + markdown_table(summary(rows), SUMMARY_COLUMNS))


@plotting.styled
def plot_decode(rows: list[dict[str, Any]], out: Any) -> list[Any]:
    """tokens/s against batch, one line per variant, written under ``out``; [] without matplotlib or
    with fewer than two batch sizes."""
    plt = pyplot()
    ok = [r for r in rows if r["tokens_per_s"] is not None]
    if plt is None or len({r["batch"] for r in ok}) < 2:
        return []
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in dict.fromkeys((r["config"], r["premerge"], r["decode"]) for r in ok):
        pts = sorted((r["batch"], r["tokens_per_s"]) for r in ok if (r["config"], r["premerge"], r["decode"]) == key)
        ax.plot(*zip(*pts), marker="o", label=key[0] + (" +pre-merge" if key[1] else "") + f" ({key[2]})")
    ax.set_xscale("log", base=2)
    plotting.finish(ax, f"Decoding throughput ({ok[0]['gen']} tokens, {ok[0]['dtype']})", "batch size",
                    "generated tokens/s")
    plotting.ticks_at(ax.xaxis, [r["batch"] for r in ok])  # the batch sizes measured, not decades
    fig.tight_layout()
    return [plotting.save(fig, out / "decode-throughput.png")]

"""Latency of the FFN block alone (up -> GELU -> down), dense against structured, as in Figure 4.

For each width (FFN = 4 x width) and token count, the dense FFN and every structured variant are
timed interleaved in one process. A row's ``speedup`` is the dense median over its own median (same
width, tokens, mode and dtype); ``flop_speedup`` is the dense FFN's FLOPs over the variant's, from
the layers' own counts (the same ones ``accounting`` sums); ``efficiency`` is their ratio: 1.0 means
the structure turns every saved FLOP into saved time. With pre-merge, each structured FFN also runs
with its merged dense weights kept for calls of up to the calibrated number of tokens.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lowrank_lm import plotting
from lowrank_lm.bench.premerge import calibrate
from lowrank_lm.bench.report import Interrupted, markdown_table, pyplot
from lowrank_lm.bench.timer import measure
from lowrank_lm.bench.variants import (
    BLOCKDENSE_BLOCKS,
    Structure,
    explicit_structures,
    ffn_model_config,
    structure_for,
)
from lowrank_lm.errors import UserError
from lowrank_lm.layers import StructuredLinear, registry
from lowrank_lm.layers.registry import DENSE
from lowrank_lm.model import FeedForward
from lowrank_lm.premerge import premerge
from lowrank_lm.runtime import raise_compile_limits

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("fwd", "fwdbwd")


@dataclass
class FFNBenchSpec:
    """What to measure (the command line of ``bench ffn``)."""

    widths: Sequence[int]
    kinds: Sequence[str]
    fractions: Sequence[float]
    tokens: Sequence[int]
    mode: str = "fwd"
    dtype: str = "fp32"
    ranks: Sequence[int] = ()
    blocks: Sequence[int] = ()
    blockdense_blocks: int = BLOCKDENSE_BLOCKS
    premerge: bool = False
    premerge_max_tokens: int | None = None
    """Fixed pre-merge limit instead of the calibrated one."""
    compile: bool = False
    """Time each FFN under torch.compile (inductor fuses bias and GELU into one pass)."""
    rounds: int = 7
    min_round_s: float = 0.05
    seed: int = 0


def structures(spec: FFNBenchSpec, width: int) -> list[Structure]:
    """Dense first, then each structured kind at each fraction (or at the given ranks / blocks)."""
    out = [Structure(DENSE, 1.0)]
    for kind in spec.kinds:
        if kind == DENSE:
            continue
        given = explicit_structures(kind, list(spec.ranks), list(spec.blocks), spec.blockdense_blocks)
        if given:
            out += given
        else:
            out += [structure_for(kind, width, 4 * width, f, spec.blockdense_blocks) for f in spec.fractions]
    return out


def build_ffn(width: int, structure: Structure, device: torch.device, dtype: torch.dtype) -> FeedForward:
    """One GPT-style FFN block (with biases, GELU-tanh) of this structure, on the device, in the dtype."""
    cfg = ffn_model_config(width, structure)
    # Built on the meta device and filled with N(0, std): latency does not depend on the values, and
    # the spectral / orthonormal initialisers' SVDs would take longer than the measurement at width 6144.
    with torch.device("meta"):
        ffn = FeedForward(cfg, dense=structure.kind == DENSE)
    ffn = ffn.to_empty(device=device)
    with torch.no_grad():
        for p in ffn.parameters():
            p.normal_(0.0, cfg.init_std)
    return ffn.to(dtype)


def ffn_layers(ffn: FeedForward) -> list[StructuredLinear]:
    """The structured linear layers of an FFN block (up, gate, down)."""
    return [m for m in ffn.modules() if isinstance(m, StructuredLinear)]


def ffn_params(ffn: FeedForward) -> int:
    """Weight parameters of the FFN's matrices (biases excluded), as the paper counts FFN size."""
    return sum(layer.num_matrix_params() for layer in ffn_layers(ffn))


def ffn_flops_per_token(ffn: FeedForward) -> int:
    """Forward FLOPs per token of the FFN's matrix products (the accounting convention)."""
    return sum(layer.flops_per_token() for layer in ffn_layers(ffn))


def _step(ffn: FeedForward, x: torch.Tensor, mode: str, compiled: bool = False) -> Callable[[], object]:
    """The timed call: a no-grad forward in eval mode, or forward + backward in train mode."""
    run = torch.compile(ffn, dynamic=False) if compiled else ffn  # compiles on its first (warm-up) call
    if mode == "fwd":
        ffn.eval()

        def forward() -> object:
            with torch.no_grad():
                return run(x)

        return forward
    ffn.train()
    x = x.detach().requires_grad_(True)
    grad = torch.randn_like(x)
    params = list(ffn.parameters())

    def forward_backward() -> object:
        for p in params:
            p.grad = None  # as optimizer.zero_grad(set_to_none=True): no accumulation pass
        x.grad = None
        run(x).backward(grad)
        return None

    return forward_backward


def premerged_copy(ffn: FeedForward, max_tokens: int | None) -> tuple[FeedForward, int]:
    """A copy of a structured FFN with pre-merge on; returns it and its smallest per-layer limit."""
    merged = copy.deepcopy(ffn).eval()
    limits = premerge(merged, max_tokens if max_tokens is not None else calibrate)
    return merged, min(limits.values(), default=0)


def run_ffn_bench(spec: FFNBenchSpec, device: torch.device,
                  progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Measure every (width, tokens) set; one row per variant, dense first."""
    if spec.mode not in MODES:
        raise UserError(f"--mode {spec.mode!r} is not one of {', '.join(MODES)}")
    if spec.dtype not in DTYPES:
        raise UserError(f"--dtype {spec.dtype!r} is not one of {', '.join(DTYPES)}")
    if spec.premerge and spec.mode != "fwd":
        raise UserError("--premerge is an inference path; use it with --mode fwd")
    dtype = DTYPES[spec.dtype]
    if spec.compile:
        raise_compile_limits()
    rows: list[dict[str, Any]] = []
    try:
        _measure_widths(spec, device, dtype, rows, progress)
    except KeyboardInterrupt:
        if not rows:
            raise
        raise Interrupted(rows) from None  # the widths measured so far are still worth writing
    return rows


def _measure_widths(spec: FFNBenchSpec, device: torch.device, dtype: torch.dtype, rows: list[dict[str, Any]],
                    progress: Callable[[str], None] | None) -> None:
    """Append one row per variant for every (width, tokens) set to ``rows`` as each set finishes."""
    for width in spec.widths:
        torch.manual_seed(spec.seed)
        variants: list[tuple[Structure, bool, FeedForward, int | None]] = []
        for s in structures(spec, width):
            ffn = build_ffn(width, s, device, dtype)
            variants.append((s, False, ffn, None))
            if spec.premerge and s.kind in registry.linear_kinds():  # the others have no merged weight
                merged, limit = premerged_copy(ffn, spec.premerge_max_tokens)
                variants.append((s, True, merged, limit))
        dense_params, dense_flops = ffn_params(variants[0][2]), ffn_flops_per_token(variants[0][2])
        for tokens in spec.tokens:
            if progress:
                progress(f"ffn width {width}, {tokens} tokens, {spec.mode} {spec.dtype}: {len(variants)} variants")
            x = torch.randn(tokens, width, device=device, dtype=dtype)
            fns = {str(i): _step(ffn, x, spec.mode, spec.compile) for i, (_, _, ffn, _) in enumerate(variants)}
            timings = measure(fns, device, rounds=spec.rounds, min_round_s=spec.min_round_s)
            dense_ms = timings["0"].median_ms
            done: list[dict[str, Any]] = []  # added to ``rows`` in one go: an interrupt never splits a set
            for i, (s, merged, ffn, limit) in enumerate(variants):
                t = timings[str(i)]
                params, flops = ffn_params(ffn), ffn_flops_per_token(ffn)
                speedup = dense_ms / t.median_ms
                flop_speedup = dense_flops / flops
                call_flops = flops * tokens * (3 if spec.mode == "fwdbwd" else 1)
                done.append({
                    "width": width, "ffn_dim": 4 * width, "kind": s.kind,
                    "fraction": s.fraction if s.fraction else round(params / dense_params, 4),
                    "param_fraction": params / dense_params, "rank": s.rank, "num_blocks": s.num_blocks,
                    "tokens": tokens, "mode": spec.mode, "dtype": spec.dtype, "compile": spec.compile,
                    "premerge": merged,
                    "premerge_max_tokens": limit,
                    "path": ("merged" if limit and tokens <= limit else "factored") if merged else None,
                    **t.to_dict(), "speedup": speedup, "flop_speedup": flop_speedup,
                    "efficiency": speedup / flop_speedup, "params": params, "flops": call_flops,
                    "tflops": call_flops / (t.median_ms / 1e3) / 1e12,
                })
            rows.extend(done)


FFN_COLUMNS = [("width", "width"), ("kind", "kind"), ("fraction", "fraction"), ("rank", "R"),
               ("num_blocks", "B"), ("tokens", "tokens"), ("premerge", "pre-merge"), ("path", "path"),
               ("median_ms", "median ms"), ("iqr_ms", "IQR ms"), ("speedup", "speed-up"),
               ("flop_speedup", "FLOP bound"), ("efficiency", "efficiency"), ("tflops", "TFLOP/s")]


PREMERGE_SMALL_TOKENS = 16
PREMERGE_LARGE_TOKENS = 1024


def premerge_summary(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How pre-merge did at its two ends: the worst latency ratio of a pre-merged FFN to dense at
    <= 16 tokens (where it should match dense) and to its own factored path at >= 1024 tokens (where
    it should cost nothing). None without pre-merge rows."""
    def key(r: dict[str, Any]) -> tuple:
        return r["width"], r["tokens"], r["mode"], r["dtype"]

    dense = {key(r): r["median_ms"] for r in rows if r["kind"] == DENSE}
    factored = {(*key(r), r["kind"], r["fraction"]): r["median_ms"] for r in rows
                if r["kind"] != DENSE and not r["premerge"]}
    merged = [r for r in rows if r["premerge"]]
    if not merged:
        return None

    def worst(subset: list[dict[str, Any]], base: Any) -> dict[str, Any] | None:
        if not subset:
            return None
        r = max(subset, key=lambda r: r["median_ms"] / base(r))
        return {"ratio": r["median_ms"] / base(r), "kind": r["kind"], "fraction": r["fraction"], "width": r["width"],
                "tokens": r["tokens"], "path": r["path"]}

    return {
        "small_vs_dense": worst([r for r in merged if r["tokens"] <= PREMERGE_SMALL_TOKENS],
                                lambda r: dense[key(r)]),
        # tuple(...): mypy reads a starred tuple inside [] as Python 3.11 syntax
        "large_vs_factored": worst([r for r in merged if r["tokens"] >= PREMERGE_LARGE_TOKENS],
                                   lambda r: factored[tuple((*key(r), r["kind"], r["fraction"]))]),
    }


def _summary_line(label: str, w: dict[str, Any] | None) -> str:
    if w is None:
        return ""
    return (f"- {label}: worst {w['ratio']:.3f}x ({w['kind']} {w['fraction']:.0%}, width {w['width']}, "
            f"{w['tokens']} tokens, {w['path']} path)\n")


def ffn_table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of every row, then the worst pre-merge ratios when pre-merge was measured."""
    text = markdown_table(rows, FFN_COLUMNS)
    summary = premerge_summary(rows)
    if summary is not None:
        text += ("\nPre-merge, latency ratios (1.0 = equal, above 1 = slower):\n\n"
                 + _summary_line(f"at <= {PREMERGE_SMALL_TOKENS} tokens, pre-merged / dense",
                                 summary["small_vs_dense"])
                 + _summary_line(f"at >= {PREMERGE_LARGE_TOKENS} tokens, pre-merged / factored",
                                 summary["large_vs_factored"]))
    return text


def _series(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by variant label (kind, fraction, pre-merge)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        label = DENSE if r["kind"] == DENSE else f"{r['kind']} {r['fraction']:.0%}"
        out.setdefault(label + (" +pre-merge" if r["premerge"] else ""), []).append(r)
    return out


@plotting.styled
def plot_ffn(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Figure 4's panels, where the rows vary along the axis: latency vs width, params, tokens."""
    plt = pyplot()
    if plt is None or not rows:
        return []
    written = []
    widths = sorted({r["width"] for r in rows})
    tokens = sorted({r["tokens"] for r in rows})
    t_max, w_max = tokens[-1], widths[-1]
    panels = [
        ("width", [r for r in rows if r["tokens"] == t_max and not r["premerge"]], "width",
         f"FFN latency vs width ({t_max} tokens)"),
        ("params", [r for r in rows if r["tokens"] == t_max and r["width"] == w_max and not r["premerge"]], "params",
         f"FFN latency vs parameters (width {w_max}, {t_max} tokens)"),
        ("tokens", [r for r in rows if r["width"] == w_max], "tokens", f"FFN latency vs tokens (width {w_max})"),
    ]
    for name, subset, axis, title in panels:
        if len({r[axis] for r in subset}) < 2:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        if axis == "params":
            kinds = plotting.series_colours(list(dict.fromkeys(r["kind"] for r in subset)), registry.colormaps())
            for kind, colour in kinds.items():
                pts = sorted((r["params"] / 1e6, r["median_ms"]) for r in subset if r["kind"] == kind)
                ax.plot(*zip(*pts), marker="o", label=kind, color=colour)
            ax.set_xlabel("FFN parameters (M)")
        else:
            groups = _series(subset)
            # a colour family per structure; a structure and its pre-merged twin share a colour
            colors = plotting.series_colours([label.removesuffix(" +pre-merge") for label in groups],
                                             registry.colormaps())
            for label, series in groups.items():
                pts = sorted((r[axis], r["median_ms"]) for r in series)
                base = label.removesuffix(" +pre-merge")
                ax.plot(*zip(*pts), marker="o", label=label, color=colors[base],
                        linestyle="--" if base != label else "-")
            ax.set_xlabel(axis)
            if axis == "tokens":
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
        plotting.finish(ax, title, None, "median latency (ms)")
        fig.tight_layout()
        written.append(plotting.save(fig, out / f"ffn-latency-vs-{name}.png"))
    return written

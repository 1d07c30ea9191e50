"""Whole-model training-step throughput: a config, its structured variants, and a transformers peer.

One step = zero grads, forward with the loss on random tokens (under bf16 autocast, fp32 weights,
as the trainer does), backward, AdamW update. The variants and the peer are timed interleaved in
one process. FLOPs per token are the paper's convention from ``accounting`` (3 x forward at the
benchmarked sequence length), so TFLOP/s and MFU are comparable with the paper's Table 1 columns.

The peer is Hugging Face's GPT-NeoX (LayerNorm, GELU-tanh, biases, full rotary, sequential
residual: our GPT-style block) or Llama (RMSNorm, SwiGLU, GQA) built with the same dimensions and
parameter count, fed the same batch, its loss computed by the same cross-entropy call as ours.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowrank_lm import plotting
from lowrank_lm.accounting import build_meta, count_model, peak_flops
from lowrank_lm.bench.memory import peak_bytes_during
from lowrank_lm.bench.report import markdown_table
from lowrank_lm.bench.timer import measure
from lowrank_lm.bench.variants import Structure, structure_for, with_structure
from lowrank_lm.config import ModelConfig
from lowrank_lm.errors import UserError
from lowrank_lm.layers.registry import DENSE
from lowrank_lm.model import Transformer
from lowrank_lm.runtime import raise_compile_limits

PAPER_LOWRANK_32_SPEEDUP = 352.2 / 260.2
"""Transformer-xl, LowRank 32% vs dense, end-to-end training time (Table 1 of 2406.16450)."""


@dataclass
class TrainBenchSpec:
    """What to measure (the command line of ``bench train``)."""

    model: ModelConfig
    kinds: list[str]
    fractions: list[float]
    batch: int
    seq: int
    dtype: str = "bf16"
    compile: tuple[bool, ...] = (False, True)
    peer: bool = True
    peer_compile: bool = False
    """Time the peer compiled too (compiling it costs as much as compiling ours)."""
    loss_chunks: tuple[int, ...] = (0,)
    """train.loss_chunk_tokens values to time our models at (0: full logits); the peer keeps its full logits."""
    rounds: int = 5
    min_round_s: float = 0.0
    seed: int = 0


@dataclass
class Variant:
    """One model timed by bench train: ours (with its structure) or the transformers peer, eager or
    compiled."""

    label: str
    structure: Structure | None  # None for the peer
    model: nn.Module
    compiled: bool
    ours: bool = True


def model_variants(spec: TrainBenchSpec) -> list[tuple[str, Structure, ModelConfig]]:
    """The config's own FFN first unless it is one of the requested kinds, then each kind x fraction."""
    m = spec.model
    out: list[tuple[str, Structure, ModelConfig]] = []
    for kind in spec.kinds:
        fractions = [1.0] if kind == DENSE else spec.fractions
        for fr in fractions:
            s = structure_for(kind, m.hidden_dim, m.resolved_ffn_dim, fr)
            out.append((s.label, s, with_structure(m, s)))
    own = Structure(m.ffn.kind, 0.0, m.ffn.rank, m.ffn.num_blocks)
    if not any((s.kind, s.rank, s.num_blocks) == (own.kind, own.rank, own.num_blocks) for _, s, _ in out):
        out.insert(0, (f"config ({own.label})", own, m))
    return out


def peer_model(m: ModelConfig) -> tuple[nn.Module | None, str]:
    """transformers' model of the same architecture and dimensions, or (None, why not)."""
    try:
        import transformers
    except ImportError:
        return None, "transformers is not installed (pip install 'lowrank-lm[hf]')"
    gpt_style = m.norm == "layernorm" and m.activation == "gelu"
    llama_style = m.norm == "rmsnorm" and m.activation == "swiglu"
    if gpt_style and m.resolved_kv_heads == m.num_q_heads and m.resolved_attn_dim == m.hidden_dim:
        cfg = transformers.GPTNeoXConfig(
            vocab_size=m.vocab_size, hidden_size=m.hidden_dim, num_hidden_layers=m.num_layers,
            num_attention_heads=m.num_q_heads, intermediate_size=m.resolved_ffn_dim,
            hidden_act="gelu_pytorch_tanh", use_parallel_residual=False, tie_word_embeddings=m.tie_embeddings,
            max_position_embeddings=m.seq_len, attention_bias=m.bias, layer_norm_eps=m.norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": m.rope_base, "partial_rotary_factor": 1.0},
            attn_implementation="sdpa", use_cache=False)
        return transformers.GPTNeoXForCausalLM(cfg), "GPTNeoXForCausalLM"
    if llama_style:
        cfg = transformers.LlamaConfig(
            vocab_size=m.vocab_size, hidden_size=m.hidden_dim, num_hidden_layers=m.num_layers,
            num_attention_heads=m.num_q_heads, num_key_value_heads=m.resolved_kv_heads, head_dim=m.head_dim,
            intermediate_size=m.resolved_ffn_dim, hidden_act="silu", attention_bias=m.bias, mlp_bias=m.bias,
            tie_word_embeddings=m.tie_embeddings, rms_norm_eps=m.norm_eps, max_position_embeddings=m.seq_len,
            rope_parameters={"rope_type": "default", "rope_theta": m.rope_base},
            attn_implementation="sdpa", use_cache=False)
        return transformers.LlamaForCausalLM(cfg), "LlamaForCausalLM"
    return None, ("no transformers model has this block (GPT-style with GQA or a narrower attention); "
                  "peer skipped")


def make_step(model: nn.Module, ours: bool, compiled: bool, inputs: torch.Tensor, targets: torch.Tensor,
              dtype: str, device: torch.device,
              loss_chunk: int = 0) -> tuple[Callable[[], object], torch.optim.Optimizer]:
    """One training step of ``model`` (ours or the peer) on a fixed batch: the timed call.

    ``loss_chunk``: our model's train.loss_chunk_tokens for this step (models are shared between variants).
    """
    # fused AdamW on GPUs (one kernel per step; what a GPU trainer uses), the default foreach on CPUs
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=device.type == "cuda" or None)
    run = torch.compile(model) if compiled else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step() -> object:
        opt.zero_grad(set_to_none=True)
        with autocast:
            if ours:
                model.loss_chunk_tokens = loss_chunk
                loss = run(inputs, targets)
            else:  # the same loss call as Transformer.forward, on the peer's logits
                logits = run(input_ids=inputs).logits
                loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        opt.step()
        return None

    return step, opt


def _state_bytes(model: nn.Module, opt: torch.optim.Optimizer) -> int:
    """Parameters and optimizer state that live between steps."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    for state in opt.state.values():
        total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    return total


def run_train_bench(spec: TrainBenchSpec, device: torch.device,
                    progress: Callable[[str], None] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Measure every variant; returns the rows and notes (e.g. why the peer was skipped)."""
    if spec.batch <= 0 or spec.seq <= 1:
        raise UserError(f"--batch {spec.batch} and --seq {spec.seq} must be positive (seq at least 2)")
    base = replace(spec.model, seq_len=spec.seq)  # FLOPs per token at the benchmarked context
    notes: list[str] = []
    torch.manual_seed(spec.seed)
    ids = torch.randint(0, base.vocab_size, (spec.batch, spec.seq + 1), device=device)
    inputs, targets = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    if any(spec.compile):
        raise_compile_limits()

    built: list[tuple[str, Structure | None, nn.Module, bool, int]] = []
    for label, s, mcfg in model_variants(replace(spec, model=base)):
        model = Transformer(mcfg).to(device).train()
        built.append((label, s, model, True, count_model(model).flops_per_token))
    dense_flops = next((f for lb, s, _, _, f in built if s is not None and s.kind == DENSE), None)
    if spec.peer:
        peer, name = peer_model(base)
        if peer is None:
            notes.append(f"peer: {name}")
        else:
            peer = peer.to(device).train()
            dense = count_model(build_meta(with_structure(base, Structure(DENSE, 1.0))))
            peer_params = sum(p.numel() for p in peer.parameters())
            if peer_params != dense.params:  # the same dimensions must give the same count
                notes.append(f"peer {name} has {peer_params:,} parameters, our dense model {dense.params:,}")
            built.append((f"peer: transformers {name}", None, peer, False, dense.flops_per_token))

    steps: dict[str, Callable[[], object]] = {}
    info: dict[str, dict[str, Any]] = {}
    for compiled in spec.compile:
        for label, s, model, ours, flops in built:
            if compiled and not ours and not spec.peer_compile:
                continue
            for chunk in spec.loss_chunks if ours else (0,):
                key = label + (f" loss-chunk {chunk}" if chunk else "") + (" +compile" if compiled else "")
                if progress:
                    progress(f"train: preparing {key}")
                step, opt = make_step(model, ours, compiled, inputs, targets, spec.dtype, device, chunk)
                t0 = time.perf_counter()
                step()  # first step: compilation, lazy optimizer state
                first_s = time.perf_counter() - t0
                transient = peak_bytes_during(step, device)
                peak = None if transient is None else transient + _state_bytes(model, opt)
                steps[key] = step
                info[key] = {"label": label, "structure": s, "compiled": compiled, "ours": ours, "flops": flops,
                             "params": sum(p.numel() for p in model.parameters()), "peak": peak,
                             "loss_chunk": chunk, "first_s": first_s}
    if progress:
        progress(f"train: timing {len(steps)} variants x {spec.rounds} rounds")
    timings = measure(steps, device, rounds=spec.rounds, min_round_s=spec.min_round_s, warmup=1)

    peak_device = peak_flops(device)
    tokens = spec.batch * spec.seq
    rows: list[dict[str, Any]] = []
    for key, t in timings.items():
        i = info[key]
        s: Structure | None = i["structure"]
        tps = tokens / (t.median_ms / 1e3)
        tflops = i["flops"] * tps / 1e12
        rows.append({
            "variant": key, "model": "ours" if i["ours"] else "peer", "kind": s.kind if s else DENSE,
            "fraction": s.fraction if s else 1.0, "rank": s.rank if s else None,
            "num_blocks": s.num_blocks if s else None, "compile": i["compiled"], "params": i["params"],
            "loss_chunk_tokens": i["loss_chunk"], "first_step_s": i["first_s"],
            "batch": spec.batch, "seq": spec.seq, "dtype": spec.dtype, "tokens_per_step": tokens,
            **t.to_dict(), "tokens_per_s": tps, "flops_per_token": i["flops"], "tflops": tflops,
            "mfu": tflops * 1e12 / peak_device if peak_device else None,
            "peak_mem_mb": None if i["peak"] is None else i["peak"] / 2**20,
        })
    _add_ratios(rows, dense_flops)
    return rows, notes


def _add_ratios(rows: list[dict[str, Any]], dense_flops: int | None) -> None:
    """speedup over our dense model and throughput relative to the peer, at the same compile setting."""
    for compiled in (False, True):
        group = [r for r in rows if r["compile"] == compiled]
        dense = next((r for r in group if r["model"] == "ours" and r["kind"] == DENSE), None)
        peer = next((r for r in group if r["model"] == "peer"), None)
        for r in group:
            r["speedup"] = r["tokens_per_s"] / dense["tokens_per_s"] if dense else None
            r["flop_speedup"] = dense_flops / r["flops_per_token"] if dense_flops else None
            r["vs_peer"] = r["tokens_per_s"] / peer["tokens_per_s"] if peer else None


TRAIN_COLUMNS = [("variant", "variant"), ("params", "params"), ("batch", "batch"), ("seq", "seq"),
                 ("median_ms", "step ms"), ("iqr_ms", "IQR ms"), ("tokens_per_s", "tokens/s"),
                 ("tflops", "TFLOP/s"), ("mfu", "MFU"), ("peak_mem_mb", "peak MiB"), ("first_step_s", "first step s"),
                 ("speedup", "speed-up"),
                 ("flop_speedup", "FLOP bound"), ("vs_peer", "vs peer")]


def train_table(rows: list[dict[str, Any]], notes: list[str]) -> str:
    """The markdown table of every row, the reading of its speed-up columns and the notes."""
    text = markdown_table(rows, TRAIN_COLUMNS)
    text += (f"\nspeed-up: tokens/s over our dense model, vs peer: over the transformers model (both at the same "
             f"compile setting); the paper's whole-model "
             f"LowRank 32% training speed-up is {PAPER_LOWRANK_32_SPEEDUP:.2f}x (Transformer-xl, GPUs).\n")
    return text + "".join(f"\nnote: {n}\n" for n in notes)


@plotting.styled
def plot_train(rows: list[dict[str, Any]], out: Any) -> list[Any]:
    """A horizontal bar chart of tokens/s per variant, written under ``out``; [] without matplotlib or rows."""
    from lowrank_lm.bench.report import pyplot

    plt = pyplot()
    if plt is None or not rows:
        return []
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.4 * len(rows)))
    labels = [r["variant"] for r in rows]
    ax.barh(labels, [r["tokens_per_s"] for r in rows],
            xerr=[[r["tokens_per_s"] - r["tokens_per_step"] / (r["max_ms"] / 1e3) for r in rows],
                  [r["tokens_per_step"] / (r["min_ms"] / 1e3) - r["tokens_per_s"] for r in rows]])
    ax.invert_yaxis()
    ax.grid(False, axis="y")
    plotting.finish(ax, "Training throughput per variant", "training tokens/s (median; bars: min..max round)")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return [plotting.save(fig, out / "train-throughput.png")]

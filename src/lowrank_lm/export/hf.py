"""Export a checkpoint as a Hugging Face folder that ``AutoModelForCausalLM.from_pretrained`` loads.

A dense model (or a structured one with ``merge=True``: factors multiplied into dense weights) maps
onto a stock transformers class, with no custom code:

- RMSNorm + SwiGLU (Llama style) -> ``LlamaForCausalLM`` (``head_dim``, grouped-query heads,
  ``attention_bias`` / ``mlp_bias``, tied or untied head);
- LayerNorm + GELU-tanh (the paper's GPT style) -> ``GPTNeoXForCausalLM`` with rotary on the full
  head dim and sequential residuals, when attention is plain multi-head and as wide as the model;
  otherwise (grouped-query heads, or ``attn_dim`` != ``hidden_dim``, as in the paper's wide structured
  models) -> ``Starcoder2ForCausalLM``, the same block with separate q/k/v projections.

Any other combination has no exact stock class: with ``merge=True`` export refuses; a dense model is
then written like a structured one without ``merge``, as a ``trust_remote_code`` class of this
project (``remote/``) that keeps the factors. docs/export.md explains each mapping.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lowrank_lm.atomic import fsync_dir
from lowrank_lm.checkpoint import load_model
from lowrank_lm.config import Config, ModelConfig, StructureConfig
from lowrank_lm.data.tokenizer import MISSING_HINT, load_run_tokenizer
from lowrank_lm.errors import UserError
from lowrank_lm.export.remote_code import WRAPPER_FILES, load_remote_class, write_remote_code
from lowrank_lm.layers import StructuredLinear, registry
from lowrank_lm.ownership import Ownership
from lowrank_lm.permissions import follow_umask, make_temp_dir

if TYPE_CHECKING:
    from lowrank_lm.model import Transformer

STOCK = {
    "llama": "LlamaForCausalLM",
    "gpt_neox": "GPTNeoXForCausalLM",
    "starcoder2": "Starcoder2ForCausalLM",
}
REMOTE_CLASS = "LowRankLMForCausalLM"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ExportResult:
    """What was written: the class that loads it, and notes worth one line each."""

    out: Path
    architecture: str
    remote_code: bool
    tokenizer: bool
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- which class


def unsupported_reason(arch: str, m: ModelConfig) -> str | None:
    """Why stock class ``arch`` cannot compute exactly this model; None when it can."""
    if arch == "llama":
        if (m.norm, m.activation) != ("rmsnorm", "swiglu"):
            return f"LlamaForCausalLM needs rmsnorm + swiglu, this model has {m.norm} + {m.activation}"
        if m.hidden_dim % m.num_q_heads:
            return (f"LlamaConfig requires hidden_dim={m.hidden_dim} to be divisible by "
                    f"num_q_heads={m.num_q_heads}")
        return None
    if arch in ("gpt_neox", "starcoder2"):
        name = STOCK[arch]
        if (m.norm, m.activation) != ("layernorm", "gelu"):
            return f"{name} needs layernorm + gelu, this model has {m.norm} + {m.activation}"
        if arch == "gpt_neox" and m.resolved_kv_heads != m.num_q_heads:
            return (f"GPTNeoXForCausalLM has no grouped-query attention (num_kv_heads={m.resolved_kv_heads}, "
                    f"num_q_heads={m.num_q_heads})")
        if arch == "gpt_neox" and m.resolved_attn_dim != m.hidden_dim:
            return f"GPTNeoXForCausalLM needs attn_dim == hidden_dim ({m.resolved_attn_dim} != {m.hidden_dim})"
        return None
    raise ValueError(f"unknown architecture {arch!r}")


def choose_architecture(m: ModelConfig, requested: str = "auto") -> tuple[str | None, str]:
    """The stock class key for this model (or None) and, when None, the one-line reason."""
    if requested != "auto":
        reason = unsupported_reason(requested, m)
        return (None, reason) if reason else (requested, "")
    if m.norm == "rmsnorm" and m.activation == "swiglu":
        order = ["llama"]
    elif m.norm == "layernorm" and m.activation == "gelu":
        order = ["gpt_neox", "starcoder2"]  # GPT-NeoX is the paper's own block; Starcoder2 adds GQA / attn_dim
    else:
        return None, (f"no stock transformers class has model.norm={m.norm} with model.activation={m.activation} "
                      "(Llama: rmsnorm + swiglu; GPT-NeoX / Starcoder2: layernorm + gelu)")
    reasons = []
    for arch in order:
        reason = unsupported_reason(arch, m)
        if reason is None:
            return arch, ""
        reasons.append(reason)
    return None, "; ".join(reasons)


# ----------------------------------------------------------------------------- weights


@torch.no_grad()
def dense_weights(model: Transformer) -> dict[str, torch.Tensor]:
    """Our weights with every FFN and attention linear as its dense ``.weight`` (merged factors) and ``.bias``."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, StructuredLinear)}
    out = {k: t for k, t in model.state_dict().items() if k.rpartition(".")[0] not in layers}
    for name, layer in layers.items():
        out[f"{name}.weight"] = layer.merged_weight()
        if layer.bias is not None:
            out[f"{name}.bias"] = layer.bias
    return out


def _split_qkv(w: torch.Tensor, m: ModelConfig) -> tuple[torch.Tensor, ...]:
    """Our fused projection is [q | k | v] along the output dim (weight rows or bias entries)."""
    return w.split((m.resolved_attn_dim, m.kv_dim, m.kv_dim), dim=0)


def _neox_qkv(w: torch.Tensor, m: ModelConfig) -> torch.Tensor:
    """[q | k | v] -> GPT-NeoX's per-head interleaving [h0: q k v, h1: q k v, ...] (it views (heads, 3 hd))."""
    heads, hd = m.num_q_heads, m.head_dim
    return w.reshape(3, heads, hd, *w.shape[1:]).transpose(0, 1).reshape(w.shape)


def _bias(src: dict[str, torch.Tensor], key: str, size: int) -> torch.Tensor:
    """A bias our model has, or zeros where the stock class always has one and we have none (exact)."""
    return src[key] if key in src else torch.zeros(size, dtype=src["embed.weight"].dtype)


def to_llama(src: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict under ``LlamaForCausalLM``'s names (q/k/v split from our fused projection)."""
    out = {"model.embed_tokens.weight": src["embed.weight"], "model.norm.weight": src["norm.weight"]}
    for i in range(m.num_layers):
        a, p = f"blocks.{i}.", f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = src[a + "attn_norm.weight"]
        out[p + "post_attention_layernorm.weight"] = src[a + "ffn_norm.weight"]
        for kind in ("weight", "bias"):
            if a + f"attn.qkv.{kind}" not in src:
                continue
            q, k, v = _split_qkv(src[a + f"attn.qkv.{kind}"], m)
            out[p + f"self_attn.q_proj.{kind}"] = q
            out[p + f"self_attn.k_proj.{kind}"] = k
            out[p + f"self_attn.v_proj.{kind}"] = v
            out[p + f"self_attn.o_proj.{kind}"] = src[a + f"attn.out.{kind}"]
            for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
                out[p + f"mlp.{theirs}.{kind}"] = src[a + f"ffn.{ours}.{kind}"]
    return out


def to_neox(src: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict under ``GPTNeoXForCausalLM``'s names (q/k/v interleaved per head, zero biases
    where we have none)."""
    h, f = m.hidden_dim, m.resolved_ffn_dim
    out = {"gpt_neox.embed_in.weight": src["embed.weight"],
           "gpt_neox.final_layer_norm.weight": src["norm.weight"],
           "gpt_neox.final_layer_norm.bias": _bias(src, "norm.bias", h)}
    for i in range(m.num_layers):
        a, p = f"blocks.{i}.", f"gpt_neox.layers.{i}."
        for ours, theirs in (("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")):
            out[p + f"{theirs}.weight"] = src[a + f"{ours}.weight"]
            out[p + f"{theirs}.bias"] = _bias(src, a + f"{ours}.bias", h)
        out[p + "attention.query_key_value.weight"] = _neox_qkv(src[a + "attn.qkv.weight"], m)
        out[p + "attention.dense.weight"] = src[a + "attn.out.weight"]
        if m.bias:  # attention_bias follows model.bias
            out[p + "attention.query_key_value.bias"] = _neox_qkv(src[a + "attn.qkv.bias"], m)
            out[p + "attention.dense.bias"] = src[a + "attn.out.bias"]
        out[p + "mlp.dense_h_to_4h.weight"] = src[a + "ffn.up.weight"]
        out[p + "mlp.dense_h_to_4h.bias"] = _bias(src, a + "ffn.up.bias", f)
        out[p + "mlp.dense_4h_to_h.weight"] = src[a + "ffn.down.weight"]
        out[p + "mlp.dense_4h_to_h.bias"] = _bias(src, a + "ffn.down.bias", h)
    return out


def to_starcoder2(src: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict under ``Starcoder2ForCausalLM``'s names (separate q/k/v, zero biases where we
    have none)."""
    h = m.hidden_dim
    out = {"model.embed_tokens.weight": src["embed.weight"], "model.norm.weight": src["norm.weight"],
           "model.norm.bias": _bias(src, "norm.bias", h)}
    for i in range(m.num_layers):
        a, p = f"blocks.{i}.", f"model.layers.{i}."
        for ours, theirs in (("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")):
            out[p + f"{theirs}.weight"] = src[a + f"{ours}.weight"]
            out[p + f"{theirs}.bias"] = _bias(src, a + f"{ours}.bias", h)
        for kind in ("weight", "bias"):  # use_bias (linears) follows model.bias
            if a + f"attn.qkv.{kind}" not in src:
                continue
            q, k, v = _split_qkv(src[a + f"attn.qkv.{kind}"], m)
            out[p + f"self_attn.q_proj.{kind}"] = q
            out[p + f"self_attn.k_proj.{kind}"] = k
            out[p + f"self_attn.v_proj.{kind}"] = v
            out[p + f"self_attn.o_proj.{kind}"] = src[a + f"attn.out.{kind}"]
            out[p + f"mlp.c_fc.{kind}"] = src[a + f"ffn.up.{kind}"]
            out[p + f"mlp.c_proj.{kind}"] = src[a + f"ffn.down.{kind}"]
    return out


CONVERT = {"llama": to_llama, "gpt_neox": to_neox, "starcoder2": to_starcoder2}


def stock_config(arch: str, m: ModelConfig, special_id: int | None, dtype: torch.dtype):
    """The transformers config object of ``arch`` for this model.

    RoPE is given in the keyword names that transformers 4.x reads and 5.x converts
    (``rope_theta``; GPT-NeoX: ``rotary_emb_base`` and ``rotary_pct``).
    """
    import transformers

    common = dict(vocab_size=m.vocab_size, hidden_size=m.hidden_dim, intermediate_size=m.resolved_ffn_dim,
                  num_hidden_layers=m.num_layers, num_attention_heads=m.num_q_heads,
                  max_position_embeddings=m.seq_len, initializer_range=m.init_std,
                  tie_word_embeddings=m.tie_embeddings, bos_token_id=special_id, eos_token_id=special_id,
                  torch_dtype=dtype, architectures=[STOCK[arch]])
    if arch == "llama":
        return transformers.LlamaConfig(
            **common, num_key_value_heads=m.resolved_kv_heads, head_dim=m.head_dim, hidden_act="silu",
            rms_norm_eps=m.norm_eps, rope_theta=m.rope_base, attention_bias=m.bias, mlp_bias=m.bias)
    if arch == "gpt_neox":
        return transformers.GPTNeoXConfig(
            **common, hidden_act="gelu_pytorch_tanh", layer_norm_eps=m.norm_eps, rotary_emb_base=m.rope_base,
            rotary_pct=1.0, use_parallel_residual=False, attention_bias=m.bias)
    return transformers.Starcoder2Config(
        **common, num_key_value_heads=m.resolved_kv_heads, head_dim=m.head_dim, hidden_act="gelu_pytorch_tanh",
        norm_epsilon=m.norm_eps, rope_theta=m.rope_base, use_bias=m.bias, sliding_window=None)


def structured_parts(m: ModelConfig) -> dict[str, StructureConfig]:
    """The model's groups of linear layers that take a structure (kind and size settings), by their prefix in the
    remote config: ``ffn`` -> ffn_kind, ffn_rank, ...; ``attn`` -> attn_kind, attn_rank, ..."""
    return {"ffn": m.ffn, "attn": m.attn}


def remote_kinds(m: ModelConfig) -> list[str]:
    """The structures a remote-code export of ``m`` carries: its parts' and the dense baseline (kept blocks)."""
    return sorted({registry.DENSE, *(part.kind for part in structured_parts(m).values())})


def remote_config(m: ModelConfig, special_id: int | None, dtype: torch.dtype):
    """The config of this project's trust_remote_code class, with the auto_map that finds its files."""
    from lowrank_lm.export.remote.configuration_lowrank_lm import LowRankLMConfig

    f = m.ffn
    structures = {f"{name}_{key}": getattr(part, key) for name, part in structured_parts(m).items()
                  for key in ("kind", *registry.SIZE_SETTINGS)}
    cfg = LowRankLMConfig(
        vocab_size=m.vocab_size, hidden_size=m.hidden_dim, intermediate_size=m.resolved_ffn_dim,
        num_hidden_layers=m.num_layers, num_attention_heads=m.num_q_heads, num_key_value_heads=m.resolved_kv_heads,
        head_dim=m.head_dim, max_position_embeddings=m.seq_len, norm=m.norm, norm_eps=m.norm_eps,
        activation=m.activation, bias=m.bias, rope_base=m.rope_base, **structures,
        dense_ffn_layers=list(f.keep_dense_layers), initializer_range=m.init_std,
        tie_word_embeddings=m.tie_embeddings, bos_token_id=special_id, eos_token_id=special_id,
        torch_dtype=dtype, architectures=[REMOTE_CLASS])
    cfg.auto_map = {"AutoConfig": "configuration_lowrank_lm.LowRankLMConfig",
                    "AutoModelForCausalLM": f"modeling_lowrank_lm.{REMOTE_CLASS}"}
    return cfg


def _check_keys(config, weights: dict[str, torch.Tensor], cls: type | None = None) -> dict[str, torch.Tensor]:
    """Match our converted weights to the parameters of the class (``cls``, else the stock class the config
    names) built on the meta device (no memory).

    A mismatch is a bug in the mapping, not a user error. GPT-NeoX's head was ``embed_out`` before
    transformers 5; the installed version's name is used.
    """
    import transformers

    cls = cls or getattr(transformers, config.architectures[0])
    with torch.device("meta"):
        expected = {k: v.shape for k, v in cls(config).state_dict().items()}
    if "lm_head.weight" in weights and "lm_head.weight" not in expected and "embed_out.weight" in expected:
        weights["embed_out.weight"] = weights.pop("lm_head.weight")
    if getattr(config, "tie_word_embeddings", False):
        expected = {k: v for k, v in expected.items() if k not in ("lm_head.weight", "embed_out.weight")}
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    wrong = [k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k])]
    if missing or extra or wrong:
        raise RuntimeError(f"export mapping onto {cls.__name__} is wrong: missing {missing[:4]}, "
                           f"unexpected {extra[:4]}, wrong shape {wrong[:4]}")
    return weights


# ----------------------------------------------------------------------------- the folder


EXPORT_RECORD = "lowrank_lm_export.json"
# What exports wrote before their record listed its files: the most an old record can stand for.
LEGACY_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", EXPORT_RECORD,
                *WRAPPER_FILES)


def _check_out(out: Path, overwrite: bool) -> set[str]:
    """Refuse an OUT that holds anything but an earlier export; return the files that export wrote
    (the only ones ``overwrite`` may replace or remove)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; give a folder for the export")
    if not out.is_dir() or not any(out.iterdir()):
        return set()
    if not overwrite:
        raise UserError(f"{out} exists and is not empty; choose a new folder or pass --overwrite")
    files = Ownership(out, EXPORT_RECORD, "an export").owned(default=LEGACY_FILES)
    if files is None:
        raise UserError(f"{out} is not an earlier export (no {EXPORT_RECORD}); --overwrite replaces only what "
                        "an export wrote — choose a new folder")
    return {f for f in files if (out / f).is_file() and not (out / f).is_symlink()}


def _move_into(folder: Path, out: Path, earlier: set[str]) -> None:
    """Put the files of ``folder`` into ``out`` in place of the earlier export's ``earlier`` files; any other
    file in ``out`` stays. Each file is renamed (atomic); the record comes last, so it lists what is there."""
    names = sorted(p.name for p in folder.iterdir())
    foreign = [n for n in names if (out / n).exists() and n not in earlier]
    if foreign:
        raise UserError(f"{out / foreign[0]} was not written by the earlier export and the new one would replace "
                        "it; move it away or choose a new folder")
    if not out.is_dir() or not any(out.iterdir()):
        os.replace(folder, out)  # a new or empty folder: the whole export in one rename
        fsync_dir(out.parent)
        return
    for gone in sorted(earlier - set(names)):
        (out / gone).unlink()
    for name in [n for n in names if n != EXPORT_RECORD] + [EXPORT_RECORD]:
        os.replace(folder / name, out / name)
    fsync_dir(out)
    folder.rmdir()


def _save_tokenizer(ckpt: Path, cfg: Config, out: Path) -> tuple[int, str] | None:
    """Write the run's tokenizer as a transformers tokenizer; return (end-of-text id, token), None without one.

    eos = bos = the end-of-text token the model saw between documents: ``<|endoftext|>`` for our bpe /
    gpt2 tokenizers, the tokenizer's own eos for llama / hub / SentencePiece ones (LLaMA: ``</s>``; its ``<s>``
    never occurs in our training data). Nothing adds special tokens, so ``tokenizer(text)`` gives the ids the
    model was trained on; ``unk`` is kept (see :meth:`lowrank_lm.data.tokenizer.Tokenizer.to_transformers`)."""
    tok = load_run_tokenizer(ckpt, cfg, cfg.model.vocab_size)
    if tok is None:
        return None
    tok.to_transformers(cfg.model.seq_len).save_pretrained(str(out))
    return tok.eot_id, tok.eot_token


def export_hf(checkpoint: str | Path, out: str | Path, merge: bool = False, arch: str = "auto",
              dtype: str = "float32", overwrite: bool = False) -> ExportResult:
    """Write checkpoint (a run dir or a checkpoint folder) as a Hugging Face model folder ``out``."""
    try:
        import transformers
    except ImportError:
        raise UserError("export needs transformers; install it with pip install 'lowrank-lm[hf]'") from None
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    out = Path(out)
    earlier = _check_out(out, overwrite)
    model, cfg, ckpt = load_model(checkpoint, "cpu")
    m = model.cfg
    if m.parametrization != "standard":  # its attention scale and readout multiplier are in no exported class
        raise UserError(f"export does not support model.parametrization={m.parametrization} models yet (their "
                        "attention scale and logit multiplier differ from the exported classes')")
    structured_attn = registry.get(m.attn.kind).structured
    structured = registry.get(m.ffn.kind).structured or structured_attn
    chosen, reason = choose_architecture(m, arch)
    notes: list[str] = []
    if arch != "auto" and chosen is None:
        raise UserError(f"--arch {arch} cannot represent this model exactly: {reason}")
    if structured and not merge and arch != "auto":
        raise UserError(f"--arch {arch} is a stock class: add --merge to multiply the structured factors "
                        "into dense weights, or leave --arch out to keep them (trust_remote_code)")
    if merge and structured:
        registry.require_linear(m, "export --merge")
    if merge and structured and chosen is None:
        raise UserError(f"cannot export a merged model onto a stock class: {reason}; "
                        "export without --merge to keep the factors in a trust_remote_code model")
    remote = chosen is None or (structured and not merge)
    if remote and not structured:
        notes.append(f"no exact stock class ({reason}); written as a trust_remote_code model instead")
    # Written into a hidden sibling folder and renamed into place: a failure leaves no half export.
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = make_temp_dir(f".{out.name}.tmp-", out.parent)
    try:
        saved = _save_tokenizer(ckpt, cfg, folder)
        special_id = saved[0] if saved is not None else None
        if saved is None:
            notes.append(f"no tokenizer next to {ckpt}, in its run dir or in data.dir; exported the model without a "
                         f"tokenizer ({MISSING_HINT} to include it)")

        torch_dtype = DTYPES[dtype]
        if remote:
            config = remote_config(m, special_id, torch_dtype)
            state = {k: v for k, v in model.state_dict().items() if not k.endswith(".guide")}
            weights = {(k if k.startswith("lm_head.") else f"model.{k}"): v for k, v in state.items()}
            write_remote_code(folder, remote_kinds(m))
            architecture = REMOTE_CLASS
            cls = load_remote_class(folder, REMOTE_CLASS)  # the class as written: its files alone build it
        else:
            config = stock_config(chosen, m, special_id, torch_dtype)
            weights = CONVERT[chosen](dense_weights(model), m)
            architecture = STOCK[chosen]
            cls = None
        if not m.tie_embeddings:
            weights.setdefault("lm_head.weight", model.lm_head.weight)
        weights = _check_keys(config, weights, cls)
        config.save_pretrained(str(folder))
        if special_id is not None:
            transformers.GenerationConfig(bos_token_id=special_id, eos_token_id=special_id,
                                          pad_token_id=special_id).save_pretrained(str(folder))
        save_file({k: v.detach().to(torch_dtype).contiguous() for k, v in weights.items()},
                  str(folder / "model.safetensors"), metadata={"format": "pt"})
        provenance = {"checkpoint": str(ckpt.resolve()), "architecture": architecture, "merged": merge and structured,
                      "ffn_kind": m.ffn.kind, "dtype": dtype, "tokenizer": saved is not None,
                      "files": sorted([p.name for p in folder.iterdir()] + [EXPORT_RECORD])}
        (folder / EXPORT_RECORD).write_text(json.dumps(provenance, indent=2) + "\n")
        follow_umask(folder)  # mkdtemp and safetensors write private modes; an export is for sharing
        _move_into(folder, out, earlier)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return ExportResult(out, architecture, remote, saved is not None, notes)

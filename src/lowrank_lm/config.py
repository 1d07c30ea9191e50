"""Typed configuration: dataclasses read from YAML, dotted command-line overrides, validation.

A config file is a YAML mapping with the sections ``model``, ``data`` and ``train``. It may name a
``base`` file (a path relative to itself) whose values it overrides, so the paper's structured
variants are a few lines each. Overrides such as ``model.ffn.rank=512`` are applied to the raw
mapping before it is converted, so a typo in an override is caught like a typo in the file.

Validation happens before anything is allocated, changes nothing, and raises :class:`ConfigError` with one
line that names the key and the fix. This module knows no structure: :func:`lowrank_lm.resolve.load_config`
reads a config with :func:`read_config`, validates it, and resolves its structures against the registry.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from lowrank_lm.atomic import write_text_atomic
from lowrank_lm.errors import ConfigError

# The config knows no structure: a kind and an init are names that lowrank_lm.resolve checks against the registry
# (layers/), which also fills the kind's default init and the settings a fraction solves to.
_T = TypeVar("_T")

DEFAULT_KIND = "dense"
"""The kind of model.ffn and model.attn when none is given: the dense baseline, declared by layers/dense.py (the
config's one structure name; a test keeps it equal to the registry's)."""


@dataclass
class FFNConfig:
    """How the two (or three, for SwiGLU) linear layers of each feed-forward block are parametrised."""

    section: ClassVar[str] = "model.ffn"  # where these settings live, for error messages
    kind: str = DEFAULT_KIND
    """The structure of the FFN linears: one of the structures declared under layers/ (dense is the baseline)."""
    rank: Optional[int] = None
    """The rank R of the kinds that read it (a bottleneck size, or a tensor-train rank: each structure says)."""
    num_blocks: Optional[int] = None
    """Number of diagonal blocks B, for the kinds that read a block count (an error for the others)."""
    fraction: Optional[float] = None
    """Share of the dense FFN's weights (e.g. 0.32): picks the kind's rank or block count, the nearest share
    counted on the layers themselves; replaces the solved setting in the resolved config."""
    init: Optional[str] = None
    """The init of the structured factors (the kinds' inits differ); empty means the paper's default for the kind."""
    keep_dense_layers: list[int] = field(default_factory=lambda: [0])
    """Indices of Transformer blocks whose FFN stays dense (the paper keeps block 0 dense)."""
    premerge_max_tokens: Optional[int] = None
    """In eval mode, calls with at most this many tokens use the merged dense weight (pre-merge); it applies to
    every structured linear, structured attention (model.attn) included."""


@dataclass
class AttnConfig:
    """How each attention block's fused q/k/v projection and output projection are parametrised."""

    section: ClassVar[str] = "model.attn"  # where these settings live, for error messages
    kind: str = DEFAULT_KIND
    """The structure of both projections, any model.ffn.kind; dense keeps plain nn.Linear layers."""
    rank: Optional[int] = None
    """Bottleneck size R for the kinds that read a rank (as model.ffn.rank)."""
    num_blocks: Optional[int] = None
    """Number of diagonal blocks B for the kinds that read one (as model.ffn.num_blocks)."""
    fraction: Optional[float] = None
    """Share of the dense projections' weights (e.g. 0.32): picks the kind's rank or block count as
    model.ffn.fraction does, counted on the attention's own layers."""
    init: Optional[str] = None
    """spectral | random | orthonormal; empty means the kind's default (std = model.init_std)."""


StructureConfig = FFNConfig | AttnConfig
"""The structure settings of one model part (model.ffn or model.attn): kind, size settings, fraction, init.
What the layers build from, and what lowrank_lm.resolve checks and sizes."""


@dataclass
class ModelConfig:
    """The Transformer: the paper's GPT-style defaults, plus Llama-style options."""

    vocab_size: int = 32000
    """Size of the embedding and output layers; at least the tokenizer's id count."""
    seq_len: int = 1024
    """Context length in tokens, for training sequences and RoPE."""
    num_layers: int = 12
    """Transformer blocks."""
    hidden_dim: int = 768
    """Model width (residual stream)."""
    attn_dim: Optional[int] = None
    """Width of Q and of the attention output; defaults to hidden_dim."""
    ffn_dim: Optional[int] = None
    """FFN intermediate size; defaults to 4 x hidden_dim."""
    num_q_heads: int = 12
    """Attention (query) heads; must divide attn_dim, with an even head dim."""
    num_kv_heads: Optional[int] = None
    """Key/value heads for grouped-query attention; defaults to num_q_heads (plain multi-head)."""
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    """layernorm (the paper's, pre-norm) | rmsnorm (Llama-style)."""
    norm_eps: float = 1e-5
    """Epsilon of the normalisation layers."""
    activation: Literal["gelu", "swiglu"] = "gelu"
    """gelu is GELU with the tanh approximation (the paper's); swiglu adds a gate projection."""
    bias: bool = True
    """Biases in the attention and FFN linear layers (the paper's GPT style has them)."""
    tie_embeddings: bool = True
    """Share the input embedding and the output layer's weight."""
    rope_base: float = 10000.0
    """Base of the rotary position embedding's frequencies."""
    init_std: float = 0.02
    """Standard deviation of the N(0, std) initialisation of every weight (no depth scaling)."""
    parametrization: Literal["standard", "mup"] = "standard"
    """standard (the paper's: one init std, one learning rate) | mup (maximal-update: init scales, Adam
    learning-rate multipliers per weight and structured factor, attention logits ~ 1/head_dim; docs/mup.md)."""
    mup_base_width: Optional[int] = None
    """Under mup, the hidden_dim the learning rate was tuned at (multipliers are 1 for dense weights there)."""
    ffn: FFNConfig = field(default_factory=FFNConfig)
    """The feed-forward blocks' parametrisation (model.ffn.*)."""
    attn: AttnConfig = field(default_factory=AttnConfig)
    """The attention projections' parametrisation (model.attn.*); every block's, block 0 included."""

    @property
    def head_dim(self) -> int:
        return self.resolved_attn_dim // self.num_q_heads

    @property
    def resolved_attn_dim(self) -> int:
        return self.attn_dim if self.attn_dim is not None else self.hidden_dim

    @property
    def resolved_ffn_dim(self) -> int:
        return self.ffn_dim if self.ffn_dim is not None else 4 * self.hidden_dim

    @property
    def resolved_kv_heads(self) -> int:
        return self.num_kv_heads if self.num_kv_heads is not None else self.num_q_heads

    @property
    def kv_dim(self) -> int:
        return self.head_dim * self.resolved_kv_heads


@dataclass
class DataConfig:
    """Where the token shards come from and where they live."""

    source: str = "embedded"
    """embedded | a local file, directory or glob (.txt, .jsonl, .parquet) | hf:NAME."""
    tokenizer: str = "bpe-8192"
    """bpe-SIZE | gpt2 | llama | a Hugging Face tokenizer name | a SentencePiece .model file."""
    dir: Optional[str] = None
    """Folder of the shards and manifest.json; defaults to a per-user cache keyed by source and tokenizer."""
    text_field: Optional[str] = None
    """Field holding the text in jsonl/parquet/HF rows; defaults to the source's usual field."""
    hf_config: Optional[str] = None
    """Configuration name of a Hugging Face dataset (e.g. sample-10BT for FineWeb)."""
    val_tokens: int = 65536
    """Size of the fixed validation set, in tokens."""
    max_tokens: Optional[int] = None
    """Stop after this many tokens (to take a slice of a huge stream)."""
    shard_tokens: int = 1 << 24
    """Tokens per shard file."""
    num_workers: int = 0
    """Tokenizer worker processes; 0 means one per CPU core."""


@dataclass
class SelfGuidedConfig:
    """Self-guided training (companion paper section 3.3): o = a*Wx + (1-a)*U(Vx), a decaying 1 -> 0."""

    enabled: bool = False
    """Train with a dense guide beside each structured linear layer (FFN and attention)."""
    ratio: float = 0.5
    """Guided steps as a fraction of the run's steps."""
    mode: Literal["fixedstep", "fixedflop"] = "fixedstep"
    """fixedstep guides within the run; fixedflop appends the guided steps again at the end."""
    schedule: Literal["cosine", "linear"] = "cosine"
    """How alpha decays from 1 to 0 over the guided steps."""
    reduce_flop: bool = True
    """Use the dense guide only with probability alpha per layer and forward (the paper's setting)."""
    guide_init: Literal["exact", "reference"] = "exact"
    """Where each guide starts: ``exact`` at the layer's own matrix (the output is continuous at alpha = 1, as the
    paper describes); ``reference`` as the reference code does, which for BlockShuffle is the product of its two
    block-diagonal factors without the shuffles (LowRank and BlockDense start exactly either way)."""


@dataclass
class TrainConfig:
    """The training recipe. Defaults are the paper's (AdamW, 10% warmup, cosine to 0.1x, bf16)."""

    tokens: Optional[int] = None
    """Token budget; the run length derives from it."""
    tokens_per_param: Optional[float] = None
    """Alternative to tokens: budget = tokens_per_param x total parameters."""
    global_batch_size: int = 512
    """Sequences per optimiser step, over all processes."""
    micro_batch_size: Optional[int] = None
    """Sequences per forward pass and process; gradient accumulation makes up the rest."""
    lr: float = 6e-4
    """Peak learning rate of AdamW (after warmup)."""
    min_lr_ratio: float = 0.1
    """The cosine schedule ends at lr x min_lr_ratio."""
    warmup_ratio: float = 0.1
    """Linear warmup over this fraction of the run's steps."""
    weight_decay: float = 0.1
    """AdamW weight decay, on every parameter (embeddings, biases and norms too, as the paper)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's (beta1, beta2)."""
    eps: float = 1e-8
    """AdamW's epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 turns clipping off."""
    precision: Literal["fp32", "bf16"] = "bf16"
    """bf16 autocast with fp32 master weights, or fp32 throughout."""
    compile: Literal["auto", True, False] = "auto"
    """torch.compile the training step: true | false | auto (on for CUDA; off on CPU, where the time to compile
    outweighed the faster steps of a typical run: measured, with its command, in docs/results/fast-paths-cpu.md)."""
    loss_chunk_tokens: int = 0
    """Compute the output layer and the loss this many tokens at a time, never holding the full logits
    (0: through the full logits); liger-kernel's fused kernel on CUDA when installed."""
    eval_interval: Optional[int] = None
    """Steps between validation passes; empty means only at the end."""
    eval_tokens: Optional[int] = None
    """Validation tokens per pass; empty means the whole validation set."""
    log_interval: int = 10
    """Steps between training log lines and metrics records."""
    seed: int = 1005
    """Seed of the initialisation and of the data order."""
    out_dir: str = "runs/default"
    """The run folder: config, metrics.jsonl, summary.json, checkpoints/, loss.png."""
    checkpoint_interval: Optional[int] = None
    """Steps between checkpoints (besides the one at the end); empty means none by step count."""
    checkpoint_minutes: Optional[float] = 30.0
    """Wall-clock minutes after which the next step is checkpointed too (rank 0's clock); empty means none.
    Together with checkpoint_interval it bounds what a crash loses; keep_checkpoints bounds the disk."""
    keep_checkpoints: int = 2
    """Newest complete checkpoints kept; older ones are deleted after each new one is written."""
    resume: str = "auto"
    """auto (continue from the newest complete checkpoint) | never | a checkpoint path."""
    device: str = "auto"
    """auto (cuda if available, else cpu) | cpu | cuda | cuda:N."""
    distributed: Literal["ddp", "fsdp"] = "ddp"
    """How torchrun's processes share the work: ddp (replicas) or fsdp (FSDP2 shards, sharded checkpoints)."""
    dist_timeout_minutes: float = 120.0
    """Minutes a process of a torchrun job waits at a collective before failing (the process group's timeout).
    It covers the longest wait of a healthy job: the other ranks wait while rank 0 prepares the data (large
    corpora: run `lowrank-lm prepare` first, or raise this) or writes a checkpoint. A failure on one rank ends
    the others at once; only a hung rank makes the others wait this long."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass: less memory, about a third more compute."""
    peak_tflops: Optional[float] = None
    """Peak dense TFLOP/s of one device for MFU (CPUs, GPUs missing from the table); empty: the table's."""
    max_bad_steps: int = 5
    """Consecutive non-finite steps after which the run stops."""
    wandb: bool = False
    """Also log metrics to Weights & Biases (needs wandb installed and logged in)."""
    self_guided: SelfGuidedConfig = field(default_factory=SelfGuidedConfig)
    """Self-guided training (train.self_guided.*)."""


@dataclass
class Config:
    """A whole run: model, data and training recipe."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------- conversion
# OmegaConf's structured configs merge a file's base chain and the overrides and check every key and type against
# the dataclasses; OmegaConf.to_object gives back the plain dataclasses. Around it stay our one-line errors (with a
# did-you-mean) and our rules where its conversions differ (_prepare).


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return _type_name(_unoptional(tp)) + " or empty"
    if origin in (list, tuple):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _unoptional(tp: Any) -> Any:
    """``X`` for ``Optional[X]``; other types as they are."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


_hints = functools.cache(typing.get_type_hints)  # a dataclass's field types (its annotations are text)


def _is_schema(tp: Any) -> typing.TypeGuard[type]:
    """Whether ``tp`` is a dataclass (the class, not an instance): a section with its own fields."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _prepare(value: Any, tp: Any, key: str) -> Any:
    """A YAML value for the field typed ``tp``, as OmegaConf should see it: where our rules differ from its own
    conversions (a bool is only a bool, 1e6 fills an int field, 2.5 does not, text is never ``${...}``
    interpolation), applied here with our messages. Unknown keys and the other types are OmegaConf's to check."""
    optional, tp = tp is not _unoptional(tp), _unoptional(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if value is None:  # an empty section (``model:`` and nothing under it) is its defaults, as it always was
        return _prepare(dataclasses.asdict(tp()), tp, key) if _is_schema(tp) and not optional else None
    if dataclasses.is_dataclass(tp) or origin is dict or (isinstance(value, dict) and tp is Any):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping{' of settings' * (origin is not dict)}, got {value!r}")
        value = {str(k): v for k, v in value.items()}  # YAML reads a size named 1 as a number; names are text
        hints = _hints(tp) if _is_schema(tp) else dict.fromkeys(value, (*args, Any)[-1])
        return {k: _prepare(v, hints.get(k, Any), f"{key}.{k}" if key else k) for k, v in value.items()}
    if origin in (list, tuple) and not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}; set it to a valid value")
    if origin is tuple and len(value) != len(args):
        raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
    if isinstance(value, (list, tuple)):
        elems = args if origin is tuple else (args or (Any,)) * len(value)
        return [_prepare(v, elem, f"{key}[{i}]") for i, (v, elem) in enumerate(zip(value, elems))]
    return _scalar(value, tp, key)


def _scalar(value: Any, tp: Any, key: str) -> Any:
    bad = ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}; set it to a valid value")
    if tp in (int, float):
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):  # YAML 1.1 reads 2.2e9 (no sign) as text
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if tp is int and isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"{key}: expected a whole number, got {value!r}")
            return int(value)
        return value
    if tp is bool and not isinstance(value, bool):
        raise bad
    if tp is str and (isinstance(value, bool) or not isinstance(value, (str, int, float))):  # 3 is "3", a date no
        raise bad
    if value == "???":  # OmegaConf's mark of a missing value; escaped, it would come back as a str subclass
        raise ConfigError(f"{key}: ??? is not a value; give the setting, or leave it empty")
    if isinstance(value, str):  # OmegaConf's escape keeps ``${...}`` the text it is (no interpolation)
        return re.sub(r"(\\*)\$\{", lambda m: m[1] * 2 + "\\${", value)
    return value


def _translate(e: OmegaConfBaseException, unknown: str) -> ConfigError:
    """OmegaConf's error as our one line: an unknown key with a did-you-mean, a value with the type it needs."""
    key, name, owner = e.full_key or "", str(e.key), e.object_type
    if isinstance(e, ConfigKeyError) and dataclasses.is_dataclass(owner):
        hint = difflib.get_close_matches(name, [f.name for f in dataclasses.fields(owner)], n=1, cutoff=0.5)
        extra = f"; did you mean {key[: len(key) - len(name)]}{hint[0]}?" if hint else ""
        return ConfigError(f"{unknown} {key}{extra}")
    if dataclasses.is_dataclass(owner):
        tp = _hints(owner).get(name, Any)
    else:  # an element of a typed list or mapping: its type is the container's last argument
        tp = (typing.get_args(_unoptional(e.ref_type)) or (Any,))[-1]
    tp = _unoptional(tp)
    if typing.get_origin(tp) is Literal:
        choices = [str(c) for c in typing.get_args(tp)]
        hint = difflib.get_close_matches(str(e.value), choices, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        return ConfigError(f"{key}: {e.value!r} is not one of {', '.join(choices)}{extra}")
    if not key:
        return ConfigError(str(e).splitlines()[0])
    return ConfigError(f"{key}: expected {_type_name(tp)}, got {e.value!r}; set it to a valid value")


_SCHEMAS: dict[type, Any] = {}


def _schema(cls: type) -> Any:
    """OmegaConf's structured config of ``cls``, built once (merge copies it, never changes it)."""
    if cls not in _SCHEMAS:
        _SCHEMAS[cls] = OmegaConf.structured(cls)
    return _SCHEMAS[cls]


def from_layers(cls: type[_T], layers: list[Any], unknown: str = "unknown config key") -> _T:
    """The dataclass ``cls`` from YAML mappings merged in order (later ones win) over its defaults: OmegaConf's
    structured config checks every key and type; a problem is one ConfigError naming the key (with a
    did-you-mean). Other files with a schema (sweep files) use this too, with their own words for an ``unknown``
    key."""
    try:
        merged = OmegaConf.merge(_schema(cls), *(_prepare(raw, cls, "") for raw in layers))
        return typing.cast(_T, OmegaConf.to_object(merged))
    except OmegaConfBaseException as e:
        raise _translate(e, unknown) from None


def from_mapping(cls: type[_T], raw: Any, unknown: str = "unknown config key") -> _T:
    """The dataclass ``cls`` read from one YAML mapping (see :func:`from_layers`)."""
    return from_layers(cls, [raw], unknown)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> list[dict]:
    """A config file and its ``base`` chain: the raw mappings, the farthest base first."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: its base chain loops back to itself; remove the cycle")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}; give the path of a YAML config (see configs/)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: malformed YAML{where}; fix the syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with model/data/train sections")
    base = raw.pop("base", None)
    return [*_read_yaml(path.parent / str(base), (*seen, path)), raw] if base is not None else [raw]


def override_layer(item: str) -> dict:
    """One ``a.b.c=value`` override (the value parsed as YAML) as the mapping ``{a: {b: {c: value}}}``."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} has no '='; write it as section.key=value")
    dotted, text = item.split("=", 1)
    return functools.reduce(lambda inner, part: {part: inner}, reversed(dotted.strip().split(".")), parse_value(text))


def parse_value(text: str) -> Any:
    """A command-line value as YAML reads it (``3`` -> 3, ``[1, 2]`` -> a list); text YAML cannot parse stays text."""
    try:
        return yaml.safe_load(text) if text != "" else None
    except yaml.YAMLError:
        return text


def set_dotted(raw: dict, dotted: str, value: Any, what: str) -> None:
    """Set ``a.b.c`` in a nested mapping, creating missing sections; ``what`` names the setting in errors."""
    node = raw
    parts = dotted.split(".")
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{what}: {p} is not a section")
        node = nxt
    node[parts[-1]] = value


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{"a.b.c": value}``, the dotted keys overrides use."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_dict(raw: dict, overrides: list[str] | None = None) -> Config:
    """A :class:`Config` read from a raw mapping and ``key=value`` overrides, each value checked against its
    field's type. Not yet resolved or validated: :func:`lowrank_lm.resolve.config_from_dict` does both."""
    return from_layers(Config, [raw, *map(override_layer, overrides or [])])


def read_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) with its base chain and apply overrides, types
    checked. Not yet resolved or validated: :func:`lowrank_lm.resolve.load_config`, which every command uses,
    does both."""
    layers = _read_yaml(Path(path)) if path is not None else []
    return from_layers(Config, [*layers, *map(override_layer, overrides or [])])


def config_to_dict(cfg: Any) -> dict:
    """The config as plain data (tuples become lists), ready for YAML or JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically: never through a symlink at ``path``)."""
    write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


# --------------------------------------------------------------------------- validation


def _positive(value: Optional[float], key: str) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):  # nan passes `<= 0`: ask the other way
        raise ConfigError(f"{key} must be positive{'' if math.isfinite(value) else ' and finite'}, got {value}")


def _check_optimizer(t: TrainConfig) -> None:
    """AdamW's settings, checked here so a bad one is one line before any folder is locked (torch's AdamW
    raises only when the optimiser is built, after the run folder is taken)."""
    for i, beta in enumerate(t.betas, 1):
        if not 0 <= beta < 1:  # also refuses nan
            raise ConfigError(f"train.betas: beta{i}={beta} must be in [0, 1)")
    for key in ("eps", "weight_decay", "grad_clip"):
        v = getattr(t, key)
        if not (v >= 0 and math.isfinite(v)):
            raise ConfigError(f"train.{key} must be zero or positive, got {v}")


def _check_shapes(m: ModelConfig) -> None:
    """Widths and head counts: positive, and dividing as attention and RoPE need."""
    for key in ("vocab_size", "seq_len", "num_layers", "hidden_dim", "num_q_heads", "attn_dim",
                "ffn_dim", "num_kv_heads", "init_std", "rope_base", "norm_eps"):
        _positive(getattr(m, key), f"model.{key}")
    a = m.resolved_attn_dim
    if a % m.num_q_heads:
        raise ConfigError(f"model.num_q_heads={m.num_q_heads} does not divide attn_dim={a}; "
                          "pick a head count that divides it")
    if m.head_dim % 2:
        raise ConfigError(f"head dim {m.head_dim} (attn_dim/num_q_heads) must be even for RoPE; "
                          "change model.attn_dim or model.num_q_heads")
    if m.num_q_heads % m.resolved_kv_heads:
        raise ConfigError(f"model.num_q_heads={m.num_q_heads} is not a multiple of "
                          f"model.num_kv_heads={m.resolved_kv_heads}; use a kv head count that divides it")


def _check_model(m: ModelConfig) -> None:
    """The model section, but for what its structures mean (lowrank_lm.resolve checks that)."""
    _check_shapes(m)
    f = m.ffn
    for i in f.keep_dense_layers:
        if not 0 <= i < m.num_layers:
            raise ConfigError(f"model.ffn.keep_dense_layers: {i} is not a block index "
                              f"(0..{m.num_layers - 1}); remove it")
    _positive(f.premerge_max_tokens, "model.ffn.premerge_max_tokens")
    _positive(m.mup_base_width, "model.mup_base_width")
    if m.parametrization == "mup" and m.mup_base_width is None:
        raise ConfigError("model.parametrization=mup needs model.mup_base_width (the hidden_dim the learning rate "
                          f"was tuned at), e.g. model.mup_base_width={m.hidden_dim}")
    if m.parametrization == "standard" and m.mup_base_width is not None:
        raise ConfigError(f"model.mup_base_width={m.mup_base_width} does not apply under "
                          "model.parametrization=standard; remove it, or set model.parametrization=mup")
    for part in (f, m.attn):
        _positive(part.rank, f"{part.section}.rank")
        _positive(part.num_blocks, f"{part.section}.num_blocks")


def _check_schedule(t: TrainConfig) -> None:
    """Budget, batch sizes and the learning-rate schedule."""
    if t.tokens is not None and t.tokens_per_param is not None:
        raise ConfigError("set only one of train.tokens and train.tokens_per_param")
    if t.micro_batch_size is not None and t.global_batch_size % t.micro_batch_size:
        raise ConfigError(f"train.micro_batch_size={t.micro_batch_size} does not divide "
                          f"train.global_batch_size={t.global_batch_size}; pick a divisor")
    for key in ("min_lr_ratio", "warmup_ratio"):
        v = getattr(t, key)
        if not 0 <= v <= 1:
            raise ConfigError(f"train.{key} must be between 0 and 1, got {v}")


def _check_train(t: TrainConfig) -> None:
    """The train section, but for what self-guided training needs of the structures (lowrank_lm.resolve)."""
    for key in ("tokens", "tokens_per_param", "global_batch_size", "micro_batch_size", "lr",
                "eval_interval", "eval_tokens", "log_interval", "checkpoint_interval", "checkpoint_minutes",
                "keep_checkpoints", "max_bad_steps", "peak_tflops"):
        _positive(getattr(t, key), f"train.{key}")
    _check_optimizer(t)
    if not 0 < t.dist_timeout_minutes <= 7 * 24 * 60:  # NaN fails too; timedelta takes no inf
        raise ConfigError(f"train.dist_timeout_minutes must be positive minutes (at most a week), got "
                          f"{t.dist_timeout_minutes}")
    if t.loss_chunk_tokens < 0:
        raise ConfigError(f"train.loss_chunk_tokens must be 0 (full logits) or positive, got {t.loss_chunk_tokens}")
    _check_schedule(t)
    sg = t.self_guided
    if sg.enabled and not 0 < sg.ratio <= 1:
        raise ConfigError(f"train.self_guided.ratio must be in (0, 1], got {sg.ratio}")
    if sg.enabled and sg.reduce_flop and t.activation_checkpointing and t.compile is True:
        # the compiled coin is a torch.cond, which torch 2.13 cannot run inside a checkpointed block
        raise ConfigError("train.compile=true cannot compile self-guided steps with reduce_flop under "
                          "train.activation_checkpointing; set train.compile=auto (those steps then run eagerly), "
                          "or turn off activation checkpointing or reduce_flop")
    if t.resume not in ("auto", "never") and not t.resume:
        raise ConfigError("train.resume must be auto, never or a checkpoint path")


def validate(cfg: Config) -> None:
    """The checks that need no structure: shapes, µP's base width, the recipe, the data. Changes nothing; raises
    ConfigError. What the structures' settings mean (kinds, fit, fractions, inits) is checked where they are
    resolved, by :func:`lowrank_lm.resolve.resolve`, which calls this first."""
    _check_model(cfg.model)
    _check_train(cfg.train)
    _positive(cfg.data.val_tokens, "data.val_tokens")
    _positive(cfg.data.shard_tokens, "data.shard_tokens")
    _positive(cfg.data.max_tokens, "data.max_tokens")

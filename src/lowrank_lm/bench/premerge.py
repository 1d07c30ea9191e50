"""Pre-merge calibration: up to how many tokens the merged dense weight beats the structured factors.

A structured layer has no non-linearity inside, so in inference it can keep its merged dense weight
beside its factors and use whichever is faster for the call at hand (reference section 3.2): for a
few tokens one dense matmul can beat two smaller, launch- or memory-bound ones. Where the crossover
lies depends on the device, dtype, thread count and layer shape, so it is measured once (a few
milliseconds to a second) and cached per device and shape; ``model.ffn.premerge_max_tokens`` in a
config overrides the measurement.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from lowrank_lm.atomic import write_text_atomic
from lowrank_lm.bench.report import device_name
from lowrank_lm.bench.timer import measure
from lowrank_lm.layers import StructuredLinear, registry
from lowrank_lm.model import Transformer
from lowrank_lm.premerge import premerge

CACHE_ENV = "LOWRANK_LM_CACHE"
MAX_TOKENS = 4096
"""Largest token count tried; beyond it structured layers win on any device we know."""
SEARCH_VERSION = 2
"""Part of the cache key: entries measured by an older search rule are measured again."""
MIN_SEARCH_TOKENS = 16
"""Token counts up to this are always tried: at 1-2 tokens the smaller factors can tie with or beat the
merged weight (fewer bytes to read) while the merged weight still wins at 4-16 (docs/results/efficiency-gpu.md)."""


def cache_path() -> Path:
    """$LOWRANK_LM_CACHE/premerge.json, or ~/.cache/lowrank-lm/premerge.json."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "lowrank-lm")
    return Path(root) / "premerge.json"


def layer_key(layer: StructuredLinear, device: torch.device, dtype: torch.dtype) -> str:
    """Cache key: device model, thread count, torch version, dtype, layer type and shape."""
    shape = f"{layer.in_features}x{layer.out_features}"
    extra = "".join(f",{name}={getattr(layer, name)}" for name in ("rank", "num_blocks") if hasattr(layer, name))
    return (f"{device_name(device)}|threads={torch.get_num_threads()}|torch={torch.__version__}|"
            f"{str(dtype).removeprefix('torch.')}|{type(layer).__name__}({shape}{extra})|search={SEARCH_VERSION}")


def _read_cache() -> dict[str, int]:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}  # a missing or damaged cache only costs a re-measurement
    return {k: int(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _write_cache(entries: dict[str, int]) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # atomic: parallel processes never read half a file
        write_text_atomic(path, json.dumps(entries, indent=1, sort_keys=True))
    except OSError:
        pass  # read-only home: calibrate again next time


@torch.no_grad()
def measure_crossover(layer: StructuredLinear, max_tokens: int = MAX_TOKENS, rounds: int = 5) -> int:
    """Largest power-of-two token count up to which the merged weight is faster (0: never).

    Token counts 1, 2, 4, ... are tried in order, merged and factored interleaved; past
    ``MIN_SEARCH_TOKENS`` the search stops once the factored path has won at two counts in a row,
    since from there its advantage only grows with the number of tokens (its FLOPs are a fixed
    fraction of the merged ones). A few-token win of the factored path below the largest merged win
    is overruled: one limit serves all calls, and a tie at 1-2 tokens costs less than losing 4-16.
    """
    p = next(iter(layer.parameters()))
    device, dtype = p.device, p.dtype
    was_training = layer.training
    layer.eval()
    merged = layer.merged_weight().to(dtype)
    best, losses, tokens = 0, 0, 1
    try:
        while tokens <= max_tokens and (losses < 2 or tokens <= MIN_SEARCH_TOKENS):
            x = torch.randn(tokens, layer.in_features, device=device, dtype=dtype)
            t = measure({"merged": lambda x=x: F.linear(x, merged, layer.bias), "factored": lambda x=x: layer(x)},
                        device, rounds=rounds, min_round_s=0.002, warmup=2)
            if t["merged"].median_ms < t["factored"].median_ms:
                best, losses = tokens, 0
            else:
                losses += 1
            tokens *= 2
    finally:
        layer.train(was_training)
    return best


def calibrate(layer: StructuredLinear, use_cache: bool = True, memo: dict[str, int] | None = None) -> int:
    """The crossover for this layer on its device and dtype: from ``memo``, the cache, or measured."""
    p = next(iter(layer.parameters()))
    key = layer_key(layer, p.device, p.dtype)
    memo = {} if memo is None else memo
    if key not in memo:
        cached = _read_cache().get(key) if use_cache else None
        memo[key] = cached if cached is not None else measure_crossover(layer)
        if use_cache and cached is None:
            _write_cache({**_read_cache(), key: memo[key]})
    return memo[key]


def apply_premerge(model: Transformer, max_tokens: int | None = None, use_cache: bool = True) -> dict[str, int]:
    """Pre-merge every structured layer (FFN and attention) of ``model``; return {layer name: its max tokens}.

    The token limit is ``max_tokens`` if given, else ``model.ffn.premerge_max_tokens`` from the
    config, else calibrated per layer shape on this device (cached). Call it after moving the model
    to its device and dtype, and again after the factors change.
    """
    registry.require_linear(model.cfg, "pre-merge")
    limit = max_tokens if max_tokens is not None else model.cfg.ffn.premerge_max_tokens
    if limit is not None:
        return premerge(model, limit)
    premerge(model, 0)  # calibrate the factored layers, not earlier wrappers
    memo: dict[str, int] = {}  # layers of one shape are measured once even without the file cache
    return premerge(model, lambda layer: calibrate(layer, use_cache, memo))

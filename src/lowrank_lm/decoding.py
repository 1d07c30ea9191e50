"""Decoding with a KV cache: the eager loop, and static steps that are compiled or captured in a CUDA graph.

An eager decode step runs the model's Python code once per token and attends to the cache sliced to
its filled length, so every step has new shapes. On a GPU the step then costs the time to launch its
few hundred small kernels, whatever the batch (measured in docs/results/efficiency-gpu.md). A *static* step
(:meth:`Transformer.decode_step`) has the same shapes at every position of a span: it writes the new
keys and values at a position held in a tensor and attends, with a mask, to the first ``span`` slots of
a preallocated cache, the span being the position rounded up to :data:`SPAN_STEP` (so a step reads at
most SPAN_STEP - 1 slots more than the eager one; attending to the whole cache would double the
key/value reads of a generation from a short prompt, which is what bounds decoding at large batches).
Each span's step can be

- captured once in a CUDA graph and replayed (CUDA): one launch per token instead of hundreds;
- compiled by torch.compile (CPU): inductor fuses the small element-wise ops between the matmuls.

The prompt is filled in by the eager forward pass (it has one shape per call anyway). Both paths give
the same logits up to rounding, hence the same greedy tokens. :func:`stream` and :func:`generate` sample
with either decoder; the model itself knows nothing of them (``lowrank_lm.load`` returns a model that has
them as methods, see :class:`lowrank_lm.api.LanguageModel`).

The cache is sized to the generation rounded up to :data:`CACHE_STEP` slots (at most the context), so
that calls of similar length share their compiled steps or graphs (one per span). One static decoder per
model is kept for the next call of the same batch and length (its graphs hold their memory; a second
decoder would double it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from lowrank_lm.errors import UserError
from lowrank_lm.fallback import try_fast
from lowrank_lm.model import KVCache, Transformer
from lowrank_lm.premerge import premerged_layers

DECODE_MODES = ("auto", "eager", "static")
CACHE_STEP = 128
"""Static caches are sized in multiples of this many slots (one compiled step serves each size)."""
SPAN_STEP = 64
_KEPT = "_static_decoder"  # the model attribute that keeps its static decoder for the next call
"""A static step attends to the filled slots rounded up to a multiple of this (one graph per span)."""


def _cache_dtype(model: Transformer, device: torch.device) -> torch.dtype:
    """The dtype keys and values come out in: autocast's when it is on, else the weights'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return next(model.parameters()).dtype


def resolve_decode(mode: str, device: torch.device) -> str:
    """``auto`` is static on CUDA (capturing the graph takes milliseconds) and eager elsewhere: on CPU the
    static step must be compiled to win, and compiling costs more than a typical generation saves
    (docs/results/fast-paths-cpu.md); anything else is taken as given."""
    if mode not in DECODE_MODES:
        raise UserError(f"decode mode {mode!r} is not one of {', '.join(DECODE_MODES)}")
    if mode != "auto":
        return mode
    return "static" if device.type == "cuda" else "eager"


class EagerDecoder:
    """The plain loop: the model's forward on the new token, the cache sliced to its filled length."""

    def __init__(self, model: Transformer, batch: int, total: int, device: torch.device) -> None:
        self.model = model
        self.cache = KVCache(model.cfg, batch, total, device, _cache_dtype(model, device))

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) of the last prompt token; the prompt's keys and values go into the cache."""
        return self.model(input_ids, cache=self.cache)[:, -1]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) after feeding ``tokens`` (B,)."""
        return self.model(tokens[:, None], cache=self.cache)[:, -1]


CUDA_GRAPHS = "CUDA-graph decoding"
"""The fast path's name in warnings and :data:`lowrank_lm.fallback.TAKEN`."""


class StaticDecoder:
    """Fixed-shape decode steps for one batch size, cache length and dtype.

    ``step`` copies the tokens into a static input buffer, runs the step (a CUDA graph replay on CUDA,
    the compiled function elsewhere, or eager when ``compiled`` is False) and advances the position
    tensor on the device. The logits it returns are the graph's output buffer on CUDA: read them
    before the next step.
    """

    def __init__(self, model: Transformer, batch: int, max_len: int, device: torch.device,
                 dtype: torch.dtype, compiled: bool) -> None:
        self.model, self.device = model, device
        self.key: tuple = ()
        self.cache: KVCache = KVCache(model.cfg, batch, max_len, device, dtype)
        self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros((), dtype=torch.long, device=device)
        self.host_pos = 0  # the position on the host too: it picks the span (no device sync needed)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.fn = model.decode_step
        if compiled and device.type != "cuda":
            from lowrank_lm.runtime import raise_compile_limits

            raise_compile_limits()
            self.fn = torch.compile(model.decode_step, dynamic=False, fullgraph=True)
        self.use_graph = device.type == "cuda"

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) of the last prompt token; earlier contents of the cache are masked from now on."""
        self.cache.pos = 0
        logits = self.model(input_ids, cache=self.cache)[:, -1]
        self.host_pos = input_ids.shape[1]
        self.pos.fill_(self.host_pos)
        return logits

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) after feeding ``tokens`` (B,) at the current position."""
        self.tokens.copy_(tokens[:, None])
        max_len = self.cache.slots.shape[0]
        self.cache.span = min(max_len, (self.host_pos // SPAN_STEP + 1) * SPAN_STEP)
        out = try_fast(CUDA_GRAPHS, self._replay, self.cache.span) if self.use_graph else None
        if out is None:  # not CUDA, or capturing/replaying failed (warned once): the same step, eagerly
            self.use_graph = False
            out = self.fn(self.tokens, self.pos, self.cache)
        self.pos.add_(1)
        self.host_pos += 1
        return out

    def _replay(self, span: int) -> torch.Tensor:
        if span not in self.graphs:
            self.graphs[span] = self._capture()
        graph, out = self.graphs[span]
        graph.replay()
        return out

    def _capture(self) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Record one step in a CUDA graph (after warm-up steps on a side stream, as CUDA graphs require).

        The warm-up and capture write keys and values at the current position, which the real step
        then overwrites with the same values.
        """
        # autocast's cache of cast weights must be off while capturing (its tensors would be freed under the graph)
        autocast = torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False,
                                  enabled=torch.is_autocast_enabled("cuda"))
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), autocast:
            for _ in range(2):
                self.fn(self.tokens, self.pos, self.cache)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        pool = next(iter(self.graphs.values()))[0].pool() if self.graphs else None  # spans share one pool
        with torch.cuda.graph(graph, pool=pool), autocast:
            out = self.fn(self.tokens, self.pos, self.cache)
        return graph, out


def static_cache_len(total: int, seq_len: int) -> int:
    """Slots of a static cache for ``total`` positions: rounded up to CACHE_STEP, at most the context."""
    return min(seq_len, -(-total // CACHE_STEP) * CACHE_STEP)


def _model_state(model: Transformer) -> tuple:
    """What a captured graph bakes in besides shapes: train/eval mode, which merged weights pre-merge uses (and
    up to how many tokens), and the self-guided guides the structured layers carry (train.self_guided)."""
    return (model.training, tuple((m.max_tokens, id(m.merged)) for m in premerged_layers(model)),
            tuple(id(getattr(layer, "guide", None)) for layer in model.structured_layers()))


def make_decoder(model: Transformer, mode: str, batch: int, total: int,
                 compiled: bool = True) -> EagerDecoder | StaticDecoder:
    """A decoder for ``batch`` sequences of up to ``total`` positions; static ones are reused between calls.

    ``compiled=False`` keeps a static step uncompiled on CPU (the same computation, for tests).
    """
    device = next(model.parameters()).device
    if resolve_decode(mode, device) == "eager":
        return EagerDecoder(model, batch, total, device)
    dtype = _cache_dtype(model, device)
    max_len = static_cache_len(total, model.cfg.seq_len)
    key = (batch, max_len, dtype, device, compiled, _model_state(model))
    kept: StaticDecoder | None = getattr(model, _KEPT, None)
    if kept is not None and kept.key == key:
        return kept
    # kept on the model as a plain attribute (setattr: the model's class does not know decoders); the old cache
    # (and graph) is freed before the new one is allocated
    setattr(model, _KEPT, None)
    decoder = StaticDecoder(model, batch, max_len, device, dtype, compiled)
    decoder.key = key
    setattr(model, _KEPT, decoder)
    return decoder


@torch.no_grad()
def stream(model: Transformer, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
           generator: torch.Generator | None = None, decode: str = "auto") -> Iterator[torch.Tensor]:
    """Yield (B,) new tokens of ``model`` one at a time, sampling with a KV cache (temperature 0 = greedy).

    ``decode``: eager (one Python pass per step, the cache sliced to the filled length), static
    (fixed-shape steps, compiled and on CUDA captured in a CUDA graph; the same tokens) or auto
    (whichever :func:`resolve_decode` finds faster on this device).
    """
    b, t = input_ids.shape
    total = min(t + max_new_tokens, model.cfg.seq_len)
    decoder = make_decoder(model, decode, b, total)
    logits = decoder.prefill(input_ids)
    done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    for produced in range(total - t):
        nxt = sample(logits.float(), temperature, top_k, top_p, generator)
        yield nxt
        if eos_token_id is not None:
            done |= nxt == eos_token_id
            if bool(done.all()):
                return
        if t + produced + 1 >= total:
            return
        logits = decoder.step(nxt)


@torch.no_grad()
def generate(model: Transformer, input_ids: torch.Tensor, max_new_tokens: int, **kwargs: Any) -> torch.Tensor:
    """Prompt plus up to ``max_new_tokens`` sampled tokens, (B, T + n); the options are :func:`stream`'s."""
    new = list(stream(model, input_ids, max_new_tokens, **kwargs))
    return torch.cat([input_ids, torch.stack(new, dim=1)], dim=1) if new else input_ids


def sample(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
           generator: torch.Generator | None) -> torch.Tensor:
    """Draw one token per row of (B, V) logits; temperature 0 means argmax."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

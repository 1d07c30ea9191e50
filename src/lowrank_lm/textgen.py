"""Text in, text out: tokenise a prompt, sample with the KV cache, yield the text piece by piece.

Shared by ``lowrank-lm generate`` (which prints each piece as it comes) and the lm-eval adapter's
``generate_until``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from lowrank_lm.decoding import stream
from lowrank_lm.errors import UserError
from lowrank_lm.text_stream import TextStream

if TYPE_CHECKING:
    from lowrank_lm.data.tokenizer import Tokenizer
    from lowrank_lm.model import Transformer


def prompt_ids(tok: Tokenizer, prompt: str, seq_len: int) -> list[int]:
    """The prompt's token ids; an empty prompt starts from the end-of-text token (as a document would)."""
    ids = tok.encode(prompt) if prompt else []
    if not ids:
        ids = [tok.eot_id]
    if len(ids) >= seq_len:
        raise UserError(f"the prompt is {len(ids)} tokens but the model's context is {seq_len} "
                        "(model.seq_len); shorten the prompt")
    return ids


def stream_text(model: Transformer, tok: Tokenizer, prompt: str, max_new_tokens: int,
                temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                seed: int | None = None, stop_at_eos: bool = True, decode: str = "auto") -> Iterator[str]:
    """Yield the generated text in pieces, one per token that completes some text.

    Sampling runs through ``model.stream`` (KV cache, ``decode`` path: auto, eager or static); temperature
    0 is greedy. Generation stops at
    ``max_new_tokens``, at the end of the context, or (``stop_at_eos``) at the end-of-text token, which
    is not printed.
    """
    ids = prompt_ids(tok, prompt, model.cfg.seq_len)
    device = next(model.parameters()).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    eos = tok.eot_id if stop_at_eos else None
    out = TextStream(tok, ids)
    x = torch.tensor([ids], dtype=torch.long, device=device)
    for token in stream(model, x, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        eos_token_id=eos, generator=generator, decode=decode):
        t = int(token[0])
        if t == eos:
            break
        piece = out.push(t)
        if piece:
            yield piece
    rest = out.flush()
    if rest:
        yield rest

"""The tokenizer a run was trained with: find ``tokenizer.json``, load it, decode a token stream.

Every prepared data dir holds a Hugging Face ``tokenizers`` file ``tokenizer.json`` and the trainer
copies it into the run dir, so a checkpoint finds its tokenizer at ``RUN/tokenizer.json``. Loading,
generation, export and lm-eval all look it up here, in one order.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lowrank_lm.errors import UserError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from lowrank_lm.config import Config

TOKENIZER_FILE = "tokenizer.json"
EOS_TOKEN = "<|endoftext|>"
"""End-of-text marker of the bpe-* and gpt2 tokenizers; also the begin-of-text and prefix token."""


def find_tokenizer_file(ckpt: Path, cfg: Config | None = None) -> Path | None:
    """``tokenizer.json`` of a checkpoint: in its folder, in its run dir, or in the run's data dir."""
    candidates = [ckpt / TOKENIZER_FILE, ckpt.parent.parent / TOKENIZER_FILE]
    if cfg is not None and cfg.data.dir:
        candidates.append(Path(cfg.data.dir) / TOKENIZER_FILE)
    return next((p for p in candidates if p.is_file()), None)


def load_tokenizer(path: Path, vocab_size: int | None = None) -> Tokenizer:
    """Read a ``tokenizers`` JSON file; refuse one with more tokens than the model's vocabulary."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise UserError(f"{path} is not a valid tokenizers file ({e}); restore it from the data dir") from None
    # As in data preparation: "<|endoftext|>" typed in a prompt is plain text; only the pipeline places it.
    tok.encode_special_tokens = True
    if vocab_size is not None and tok.get_vocab_size() > vocab_size:
        raise UserError(f"{path} has {tok.get_vocab_size()} tokens but model.vocab_size={vocab_size}; "
                        "it belongs to another run — copy the right tokenizer.json into the run dir")
    return tok


def eos_token_id(tok: Tokenizer) -> int | None:
    """The id of ``<|endoftext|>``, or None when the tokenizer has no such token."""
    return tok.token_to_id(EOS_TOKEN)


class TextStream:
    """Turns generated token ids into text pieces as they arrive, for printing token by token.

    Decoding each id alone would split multi-byte characters and drop the spaces that some decoders
    only restore in context, so the whole sequence (prompt included) is decoded each time and only
    the new suffix is returned; a trailing replacement character means an unfinished UTF-8 sequence,
    which is held back until the next token completes it.
    """

    def __init__(self, tok: Tokenizer, prompt_ids: list[int]) -> None:
        self.tok = tok
        self.ids = list(prompt_ids)
        self.done = len(tok.decode(self.ids)) if self.ids else 0
        self.start = self.done
        self.generated: list[int] = []

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly empty)."""
        self.ids.append(token_id)
        self.generated.append(token_id)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.done = text[self.done:], len(text)
        return piece

    def flush(self) -> str:
        """The text still held back (an unfinished character at the very end)."""
        text = self.tok.decode(self.ids)
        piece, self.done = text[self.done:], len(text)
        return piece

    def text(self) -> str:
        """All generated text so far."""
        return self.tok.decode(self.ids)[self.start:]

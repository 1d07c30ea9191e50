"""Generated token ids to text, piece by piece as they arrive (for printing and for stop strings)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lowrank_lm.data.tokenizer import Tokenizer


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

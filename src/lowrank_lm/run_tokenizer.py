"""The tokenizer a run was trained with: find ``tokenizer.json``, load it, decode a token stream.

A prepared data dir holds its tokenizer as a Hugging Face ``tokenizers`` file: ``tokenizer.json``
(bpe-N, gpt2) or, for ``llama`` and hub tokenizers, inside the ``save_pretrained`` folder
``tokenizer/``. The trainer copies either into the run dir, so a checkpoint finds it at
``RUN/tokenizer.json`` or ``RUN/tokenizer/tokenizer.json``. The end-of-text token is
``<|endoftext|>`` unless a ``tokenizer_config.json`` beside the file names another ``eos_token``
(``</s>`` for LLaMA). Loading, generation, export and lm-eval all look the tokenizer up here.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from lowrank_lm.errors import UserError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from lowrank_lm.config import Config

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_DIR = "tokenizer"
"""The ``save_pretrained`` folder of llama / hub tokenizers, in data dirs and run dirs."""
TOKENIZER_CONFIG = "tokenizer_config.json"
EOS_TOKEN = "<|endoftext|>"
"""End-of-text marker of the bpe-* and gpt2 tokenizers; also the begin-of-text and prefix token."""


def find_tokenizer_file(ckpt: Path, cfg: Config | None = None) -> Path | None:
    """``tokenizer.json`` of a checkpoint: in its folder, in its run dir, or in the run's data dir
    (each directly or inside a ``tokenizer/`` folder)."""
    folders = [ckpt, ckpt.parent.parent]
    if cfg is not None and cfg.data.dir:
        folders.append(Path(cfg.data.dir))
    candidates = [c for f in folders for c in (f / TOKENIZER_FILE, f / TOKENIZER_DIR / TOKENIZER_FILE)]
    return next((p for p in candidates if p.is_file()), None)


def copy_tokenizer(data_dir: Path, run_dir: Path) -> None:
    """Copy the data dir's tokenizer (``tokenizer.json`` or the ``tokenizer/`` folder) into the run dir,
    so the run stays usable when the data dir moves. Written beside and renamed: never half a copy."""
    source = data_dir / TOKENIZER_FILE
    if source.is_file():
        tmp = run_dir / (TOKENIZER_FILE + ".tmp")
        shutil.copyfile(source, tmp)
        os.replace(tmp, run_dir / TOKENIZER_FILE)
    elif (data_dir / TOKENIZER_DIR).is_dir():
        tmp = run_dir / (TOKENIZER_DIR + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(data_dir / TOKENIZER_DIR, tmp)
        shutil.rmtree(run_dir / TOKENIZER_DIR, ignore_errors=True)
        os.replace(tmp, run_dir / TOKENIZER_DIR)


def special_tokens_of(path: Path) -> tuple[str, str | None, str | None]:
    """(eos, bos, unk) token strings for the tokenizer file ``path``: from a ``tokenizer_config.json``
    beside it (a ``save_pretrained`` folder), else ``<|endoftext|>`` for eos and bos and no unk."""
    try:
        config = json.loads((path.parent / TOKENIZER_CONFIG).read_text())
    except (OSError, ValueError):
        return EOS_TOKEN, EOS_TOKEN, None

    def token(key: str) -> str | None:
        value = config.get(key) if isinstance(config, dict) else None
        if isinstance(value, dict):  # older transformers saved AddedToken as a dict
            value = value.get("content")
        return value if isinstance(value, str) else None

    return token("eos_token") or EOS_TOKEN, token("bos_token"), token("unk_token")


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
    tok.eos_token, tok.bos_token, tok.unk_token = special_tokens_of(path)  # plain attributes: it keeps none
    return tok


def eos_token(tok: Tokenizer) -> str:
    """The end-of-text token string of a tokenizer from :func:`load_tokenizer` (``<|endoftext|>`` otherwise)."""
    return getattr(tok, "eos_token", EOS_TOKEN)


def eos_token_id(tok: Tokenizer) -> int | None:
    """The id of the end-of-text token, or None when the tokenizer has no such token."""
    return tok.token_to_id(eos_token(tok))


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

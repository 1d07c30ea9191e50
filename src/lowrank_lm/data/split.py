"""Train / validation split by document, with a validation set of exactly ``val_tokens`` ids.

Two modes, chosen by the source:

* ``tail`` (embedded books, .txt files): the last ids of every document are validation. Document ``b`` gives
  ``val_tokens * bytes_b / total_bytes`` ids (largest remainders, so the quotas add up exactly), taken from
  the end of its tokenized text; everything before them is training (ended with its own end-of-text id).
  Validation text is never interleaved with training text.
* ``documents`` (jsonl, parquet, hub rows): the first documents of the stream are validation until
  ``val_tokens`` ids are reached; the document that crosses the line is cut there and the rest of it is
  dropped (it is a validation document), and every later document is training.

A trained tokenizer (bpe-N) must not see validation text, yet which text is validation is only known in ids,
after tokenizing. So before training, a generous stretch is held back (``RESERVE_CHARS_PER_TOKEN`` characters
for every validation id: about twice what English needs) and the tokenizer trains on the rest; after
tokenizing, the pipeline checks that the validation ids lie inside the held-back stretch.

``max_tokens`` caps train + validation ids: in tail mode each document keeps the head of its training part in
proportion to its size; in documents mode the stream stops once the cap is reached.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lowrank_lm.data.sources import TextSource
from lowrank_lm.errors import UserError

RESERVE_CHARS_PER_TOKEN = 8
BPE_TRAIN_MAX_CHARS = 200_000_000
"""At most this much text trains a bpe-N tokenizer (a stream can be far larger)."""

_CUT = re.compile(r"(?<=\S)\s")  # a whitespace run that follows a non-space: no pre-token crosses it


def quotas(total: int, sizes: list[int]) -> list[int]:
    """Split ``total`` over documents in proportion to ``sizes`` with largest remainders (sums to ``total``)."""
    weight = sum(sizes)
    if weight == 0:
        return [0] * len(sizes)
    exact = [total * s / weight for s in sizes]
    out = [int(x) for x in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (out[i] - exact[i], i))
    for i in by_remainder[: total - sum(out)]:
        out[i] += 1
    return out


def cut_before(text: str, pos: int) -> int:
    """The last cut point (see :func:`pieces`) at or before ``pos``; 0 when there is none, ``len(text)`` when
    ``pos`` is at or past the end."""
    if pos >= len(text):
        return len(text)
    window = 1 << 12
    while True:
        lo = max(0, pos - window)
        found = [m.start() for m in _CUT.finditer(text, lo, pos + 1)]  # lookbehind still sees text[lo - 1]
        if found:
            return found[-1]
        if lo == 0:
            return 0
        window *= 4


def pieces(text: str, size: int) -> list[str]:
    """Cut ``text`` into pieces of about ``size`` characters, each cut just before a whitespace run that follows
    a non-space. With the GPT-2 pre-tokenizer no pre-token spans such a point, so byte-level BPE gives the same
    ids for the pieces as for the whole text."""
    out, start = [], 0
    while len(text) - start > size:
        m = _CUT.search(text, start + size)
        if m is None:
            break
        out.append(text[start:m.start()])
        start = m.start()
    out.append(text[start:])
    return out


@dataclass
class SplitState:
    """Where the splitter stands (saved in prepare's progress checkpoints)."""

    doc_index: int = 0
    val_left: int = 0
    val_carry: int = 0
    train_left: int = -1
    """Training ids still wanted under max_tokens; -1 without a cap."""
    bytes_left: int = 0
    train_docs: int = 0
    val_docs: int = 0


class Splitter:
    """Decides, document after document, which ids are training and which validation."""

    def __init__(self, mode: str, val_tokens: int, max_tokens: int | None, sizes: list[int] | None,
                 eot_id: int, reserved_docs: int | None = None) -> None:
        self.mode, self.val_tokens, self.eot_id = mode, val_tokens, eot_id
        self.sizes = sizes or []
        self.val_quota = quotas(val_tokens, self.sizes) if mode == "tail" else []
        self.reserved_docs = reserved_docs
        train_left = -1 if max_tokens is None else max_tokens - val_tokens
        self.state = SplitState(val_left=val_tokens, train_left=train_left, bytes_left=sum(self.sizes))

    @property
    def done(self) -> bool:
        """True once no more ids are wanted (max_tokens reached with a complete validation set)."""
        return self.state.val_left == 0 and self.state.train_left == 0

    def split(self, name: str, ids: np.ndarray, reserved_ids: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(training ids, validation ids) of one document whose ids end with end-of-text.

        ``reserved_ids``: how many of its last ids the bpe trainer did not see (tail mode with bpe-N)."""
        st = self.state
        n = len(ids)
        if self.mode == "tail":
            b = st.doc_index
            want = self.val_quota[b] + st.val_carry
            q = min(want, n)
            st.val_carry = want - q
            if reserved_ids is not None and q > reserved_ids:
                raise UserError(f"validation tail of {name} ({q:,} ids) is longer than the text held back from "
                                f"tokenizer training ({reserved_ids:,} ids); lower data.val_tokens")
            train = ids[: n - q]
            if st.train_left >= 0:
                share = round(st.train_left * self.sizes[b] / st.bytes_left) if st.bytes_left else st.train_left
                train = train[: max(0, min(share, st.train_left) - 1)]
            if 0 < len(train) < n:
                # the training head is a document of its own: it ends with end-of-text too (the tail keeps the
                # original one), so books do not run into each other in the training stream
                train = np.concatenate([train, np.array([self.eot_id], dtype=ids.dtype)])
            if st.train_left >= 0:
                st.train_left -= len(train)
            st.bytes_left -= self.sizes[b]
            val = ids[n - q:]
            st.val_left -= q
        elif st.val_left > 0:
            if self.reserved_docs is not None and st.doc_index >= self.reserved_docs:
                raise UserError(f"the first {self.reserved_docs:,} documents, held back from tokenizer training for "
                                f"validation, hold fewer than data.val_tokens={self.val_tokens:,} ids; lower "
                                "data.val_tokens")
            val = ids[: st.val_left]
            st.val_left -= len(val)
            train = ids[:0]
        else:
            val = ids[:0]
            train = ids if st.train_left < 0 else ids[: st.train_left]
            if st.train_left >= 0:
                st.train_left -= len(train)
        st.train_docs += bool(len(train))
        st.val_docs += bool(len(val))
        st.doc_index += 1
        return train, val

    def finish(self, source: TextSource) -> None:
        """Raise UserError when the source ran out before the validation set was complete."""
        missing = self.state.val_left + self.state.val_carry
        if missing:
            got = self.val_tokens - missing
            raise UserError(f"{source.describe()} gave only {got:,} validation ids of data.val_tokens="
                            f"{self.val_tokens:,}; lower data.val_tokens or add text")

    def state_dict(self) -> dict[str, int]:
        """Where the split stands, to resume it (a flat copy of its counters)."""
        return dict(vars(self.state))  # (taken for every document: a flat copy, not dataclasses.asdict)

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume from a :meth:`state_dict`."""
        self.state = SplitState(**state)


def reserve_chars(val_ids: int, text_len: int) -> int:
    """Characters at the end of a tail document held back from tokenizer training for ``val_ids`` ids."""
    return min(text_len, val_ids * RESERVE_CHARS_PER_TOKEN)


def bpe_training_texts(source: TextSource, val_tokens: int, max_tokens: int | None,
                       piece_chars: int) -> tuple[Iterator[str], int | None]:
    """The texts a bpe-N tokenizer trains on (training split only) and, in documents mode, how many leading
    documents were held back for validation."""
    cap = BPE_TRAIN_MAX_CHARS
    if max_tokens is not None:
        cap = min(cap, max_tokens * RESERVE_CHARS_PER_TOKEN)
    if source.split_mode == "tail":
        sizes = source.sizes() or []
        val_quota = quotas(val_tokens, sizes)
        caps = quotas(cap, sizes)

        def tail_texts() -> Iterator[str]:
            for b, doc in enumerate(source.documents()):
                end = cut_before(doc.text, len(doc.text) - reserve_chars(val_quota[b], len(doc.text)))
                yield from pieces(doc.text[: min(end, caps[b])], piece_chars)

        return tail_texts(), None

    # documents mode: hold back the first documents until they are surely more than the validation set
    held_chars = val_tokens * RESERVE_CHARS_PER_TOKEN
    docs = source.documents()
    held, count = 0, 0
    for doc in docs:
        held += len(doc.text)
        count += 1
        if held >= held_chars:
            break

    def doc_texts() -> Iterator[str]:
        used = 0
        for doc in docs:
            if used >= cap:
                return
            text = doc.text[: cap - used]
            used += len(text)
            yield from pieces(text, piece_chars)

    return doc_texts(), count

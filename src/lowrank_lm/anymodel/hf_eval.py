"""Perplexity of a structurized transformers folder (``save_pretrained`` of a structurized model, or
``lowrank-lm structurize ... OUT``) on the validation tokens of a prepared data dir.

The folder is recognised by its config.json recording the structures (:data:`RECORD_KEY`); it has no config
of ours, so the data is given (``--data``), and its tokens must come from the model's own tokenizer: a
folder with a tokenizer is compared with the data's on a sample text, and any difference is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lowrank_lm.anymodel.core import RECORD_KEY
from lowrank_lm.errors import UserError

# Files that mean a transformers folder carries its own tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
MOST_POSITIONS = 1024  # default evaluation length when the model takes more (as lowrank-lm structurize does)


def transformers_config(path: str | Path) -> dict | None:
    """The parsed config.json of a transformers model folder, None when ``path`` has none (or it is not JSON)."""
    file = Path(path) / "config.json"
    if not file.is_file():
        return None
    try:
        raw = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def is_structurized_folder(path: str | Path) -> bool:
    """Whether ``path`` is a transformers folder whose config.json records structures (no transformers import)."""
    config = transformers_config(path)
    return bool(config and config.get(RECORD_KEY))


def check_tokens(model_dir: Path, data_dir: Path, vocab_size: int) -> None:
    """Refuse (one line) data whose ids the model cannot read, or tokenized otherwise than the folder's tokenizer."""
    import transformers

    from lowrank_lm.data import load_manifest
    from lowrank_lm.data.tokenizer import _EXPORT_PROBE, load_tokenizer

    manifest = load_manifest(data_dir)
    if manifest.vocab_size > vocab_size:
        raise UserError(f"{data_dir} is tokenized with {manifest.vocab_size:,} ids and {model_dir} has "
                        f"{vocab_size:,}; prepare the data with the model's own tokenizer (data.tokenizer={model_dir})")
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        return  # nothing to compare with: the vocabulary size is all that can be checked
    ours = load_tokenizer(data_dir).encode(_EXPORT_PROBE)
    theirs = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    if theirs(_EXPORT_PROBE, add_special_tokens=False, verbose=False)["input_ids"] != ours:
        raise UserError(f"{data_dir} was tokenized with {manifest.tokenizer}, not with {model_dir}'s own tokenizer "
                        f"(a sample text encodes differently); prepare it with data.tokenizer={model_dir}")


def eval_seq_len(config, requested: int | None) -> int:
    """``requested`` (checked against the model's positions), else the model's context up to 1024."""
    most = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or MOST_POSITIONS
    if requested is not None and not 0 < requested <= most:
        raise UserError(f"--seq-len {requested}: the model takes 1 to {most} positions")
    return requested or min(most, MOST_POSITIONS)


def evaluate_folder(path: str | Path, data_dir: str | Path, device: torch.device, precision: str = "fp32",
                    seq_len: int | None = None, batch_size: int = 8, max_tokens: int | None = None) -> dict:
    """Validation loss, perplexity and token count of the structurized folder ``path`` on ``data_dir``."""
    import transformers

    from lowrank_lm.anymodel.heal import perplexity
    from lowrank_lm.anymodel.hf import load_structurized

    path, data_dir = Path(path), Path(data_dir)
    transformers.utils.logging.disable_progress_bar()  # the command's output is one line of numbers
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = load_structurized(path, local_files_only=True, dtype=dtype).to(device)
    check_tokens(path, data_dir, model.config.vocab_size)
    length = eval_seq_len(model.config, seq_len)
    from lowrank_lm.data import load_manifest

    sequences = (load_manifest(data_dir).tokens["val"] - 1) // length  # as validation_batches cuts them
    if min(sequences, sequences if max_tokens is None else max_tokens // length) < 1:
        raise UserError(f"nothing to evaluate: {data_dir} holds less than one validation sequence of {length} "
                        "tokens; give a shorter --seq-len, more --tokens or a data dir with a validation split")
    return {**perplexity(model, data_dir, length, batch_size, max_tokens), "seq_len": length}

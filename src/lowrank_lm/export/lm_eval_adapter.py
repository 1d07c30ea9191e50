"""lm-evaluation-harness on our model: an ``LM`` subclass and a run through lm-eval's Python API.

lm-eval is an optional extra (``pip install 'lowrank-lm[eval]'``). The adapter scores with our own
forward pass (no transformers involved): log-likelihoods of continuations, rolling log-likelihoods
of whole documents in windows of the model's context, and greedy or sampled generation with the
KV cache (``decode="auto"``: static steps in CUDA graphs on CUDA, the eager loop on CPU). Text goes
through the run's own tokenizer (:func:`lowrank_lm.data.tokenizer.load_run_tokenizer`:
bpe, gpt2, hub and SentencePiece alike); its end-of-text token (``<|endoftext|>``, or ``</s>`` for LLaMA and
SentencePiece models) is the prefix token for empty contexts and for the first window of a document.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from lowrank_lm import decoding
from lowrank_lm.errors import UserError
from lowrank_lm.text_stream import TextStream

if TYPE_CHECKING:
    from lowrank_lm.data.tokenizer import Tokenizer
    from lowrank_lm.model import Transformer

try:
    from lm_eval.api.model import TemplateLM
except ImportError:  # the module still imports; require_lm_eval() says what to install
    TemplateLM = object  # type: ignore[assignment,misc]

DEFAULT_MAX_GEN_TOKS = 256


def require_lm_eval() -> None:
    """Raise a one-line UserError when lm-eval is not installed."""
    if TemplateLM is object:
        raise UserError("lm-eval is not installed; install it with pip install 'lowrank-lm[eval]'")


class LowRankLM(TemplateLM):  # type: ignore[misc,valid-type]
    """Our Transformer as an lm-eval language model (causal, one process)."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, batch_size: int = 8,
                 max_gen_toks: int = DEFAULT_MAX_GEN_TOKS) -> None:
        require_lm_eval()
        super().__init__()
        if batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {batch_size}")
        self.model = model.eval()
        self.tok = tokenizer
        self._eot = tokenizer.eot_id
        self.batch_size = batch_size
        self.max_gen_toks = max_gen_toks
        self._device = next(model.parameters()).device

    # -- tokenisation ------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        """The tokenizer's end-of-text id, which lm-eval also uses as the prefix of a rolling window."""
        return self._eot

    @property
    def max_length(self) -> int:
        """The model's context length (``seq_len``)."""
        return self.model.cfg.seq_len

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        # Our tokenizers add no special tokens of their own; documents are not prefixed at training either.
        """The ids of ``string``; our tokenizers add no special tokens, so the flag changes nothing."""
        return self.tok.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        """The text of ``tokens``."""
        return self.tok.decode(tokens)

    # -- scoring -----------------------------------------------------------------------------
    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Sum of log p(continuation | context) and whether greedy decoding would produce it, per pair.

        The sequence is cut on the left to the model's context. Rows are batched longest first and
        padded on the right, which causal attention makes harmless: no real position sees the padding.
        """
        seq_len = self.max_length
        rows = []
        for ctx, cont in pairs:
            if not cont:
                raise UserError("lm-eval asked to score an empty continuation; check the task's doc_to_choice")
            if len(cont) > seq_len:
                raise UserError(f"a continuation of {len(cont)} tokens exceeds the model's context of {seq_len}")
            whole = (ctx + cont)[-(seq_len + 1):]
            rows.append((whole[:-1], whole[-len(cont):]))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            width = max(len(rows[i][0]) for i in idx)
            x = torch.zeros(len(idx), width, dtype=torch.long)
            for r, i in enumerate(idx):
                x[r, :len(rows[i][0])] = torch.tensor(rows[i][0])
            logp = F.log_softmax(self.model(x.to(self._device)).float(), dim=-1).cpu()
            for r, i in enumerate(idx):
                inp, cont = rows[i]
                span = logp[r, len(inp) - len(cont):len(inp)]  # the positions that predict cont
                target = torch.tensor(cont)
                total = float(span.gather(-1, target[:, None]).sum())
                results[i] = (total, bool((span.argmax(-1) == target).all()))
        return results

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        out = self._score([(ctx, cont) for _, ctx, cont in requests])
        for (key, _, _), res in zip(requests, out):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, res)
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """The summed log-likelihood of each whole text, over disjoint windows of the context length."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        out = []
        for req in requests:
            (text,) = req.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            total = sum(lp for lp, _ in self._score(windows)) if windows else 0.0
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    # -- generation --------------------------------------------------------------------------
    @torch.no_grad()
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """The continuation of each context, greedy unless the task asks to sample, cut at the first stop
        string or end-of-text."""
        out = []
        for req in requests:
            context, gen_kwargs = req.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
            sample = bool(gen_kwargs.pop("do_sample", False))
            temperature = float(gen_kwargs.pop("temperature", 1.0)) if sample else 0.0  # 0 = greedy
            # keep room for the answer: the context is cut on the left
            ids = self.tok_encode(context)[-max(1, self.max_length - max_new):] or [self._eot]
            text = self._generate(ids, max_new, temperature, until)
            self.cache_hook.add_partial("generate_until", (context, req.args[1]), text)
            out.append(text)
        return out

    def _generate(self, ids: list[int], max_new: int, temperature: float, until: list[str]) -> str:
        stream = TextStream(self.tok, ids)
        x = torch.tensor([ids], dtype=torch.long, device=self._device)
        for token in decoding.stream(self.model, x, max_new, temperature=temperature, eos_token_id=self._eot):
            if int(token[0]) == self._eot:
                break
            stream.push(int(token[0]))
            text = stream.text()
            hits = [text.index(s) for s in until if s and s in text]
            if hits:
                return text[:min(hits)]
        return stream.text()


def check_tasks(task_manager: Any, tasks: list[str]) -> None:
    """Refuse unknown task names in one line, with the closest known name."""
    known = set(task_manager.all_tasks)
    for name in tasks:
        if name not in known:
            hint = difflib.get_close_matches(name, known, n=1)
            extra = f" (did you mean {hint[0]}?)" if hint else "; pass --include-path for a folder of task YAMLs"
            raise UserError(f"unknown lm-eval task {name!r}{extra}")


def run_lm_eval(model: Transformer, tokenizer: Tokenizer, tasks: list[str], batch_size: int = 8,
                limit: float | None = None, num_fewshot: int | None = None,
                include_path: str | Path | None = None, include_defaults: bool = True,
                bootstrap_iters: int = 100000, seed: int = 0) -> dict[str, Any]:
    """Evaluate through ``lm_eval.simple_evaluate``; returns lm-eval's results, versions and settings.

    ``include_defaults=False`` skips indexing lm-eval's thousands of built-in task files (only the
    tasks under ``include_path`` are found), which makes a run on local tasks start in a moment.
    """
    require_lm_eval()
    return evaluate_lm(LowRankLM(model, tokenizer, batch_size=batch_size), tasks, limit, num_fewshot, include_path,
                       include_defaults, bootstrap_iters, seed)


def evaluate_lm(lm: Any, tasks: list[str], limit: float | None = None, num_fewshot: int | None = None,
                include_path: str | Path | None = None, include_defaults: bool = True,
                bootstrap_iters: int = 100000, seed: int = 0) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` of any lm-eval model ``lm`` (ours, or lm-eval's HFLM around a transformers
    model), the task names checked first; returns lm-eval's results, versions and settings."""
    require_lm_eval()
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include_path) if include_path else None,
                          include_defaults=include_defaults)
    check_tasks(manager, tasks)
    res = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                                  task_manager=manager, log_samples=False, bootstrap_iters=bootstrap_iters,
                                  random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                  fewshot_random_seed=seed)
    if res is None:  # only on non-zero ranks of a distributed run, which this adapter does not start
        raise RuntimeError("lm-eval returned no results")
    return {key: res[key] for key in ("results", "versions", "n-shot", "higher_is_better", "n-samples")
            if key in res}

"""The ``torchtitan`` stage of scripts/gpu_bench.sh: torchtitan 0.2.2's trainer on its debug Llama 3, dense and with
the lowrank_lm converter (lowrank, half the FFN weights), a few steps each on one GPU.

    python scripts/torchtitan_stage.py OUT DEVICE [--small] [--steps N]

Offline assets first (the GPU machine has no network, torchtitan's wheel ships no test assets): a 2048-id
byte-level BPE trained on the embedded books (the debug model's vocabulary) in OUT/assets, and the books cut into
JSON lines in OUT/c4 (read by torchtitan's ``c4_test`` loader through ``--training.dataset_path``). On CUDA it
then runs ``torchrun -m torchtitan.train`` twice and prints a table (gpu_bench.sh keeps it as
OUT/torchtitan.txt): the last logged step of each run (loss, tokens/s, TFLOPS, MFU; the converted run's
TFLOPS/MFU use lowrank_lm's FLOP count, which the converter hands to torchtitan). torchtitan's trainer needs an
accelerator (its device type falls back to "cuda"), so on another device (the CPU dry path, ``DEVICE=cpu
SMALL=1``) it checks what it can: the job config parses with the converter's keys, torchtitan's tokenizer and
data loader read the assets, and one batch runs forward and backward through the converted model built and
initialised as the trainer does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from lowrank_lm.data.embedded import embedded_books
from lowrank_lm.data.tokenizer import EOT, train_bpe

VOCAB = 2048  # torchtitan's debugmodel
CONVERTER = ["--experimental.custom_import", "lowrank_lm.integrations.torchtitan",
             "--job.custom_config_module", "lowrank_lm.integrations.torchtitan"]
LOWRANK = ["--model.converters", "lowrank_lm", "--lowrank_lm.kind", "lowrank", "--lowrank_lm.fraction", "0.5"]


def write_assets(out: Path, small: bool) -> tuple[Path, Path]:
    """The tokenizer folder and the JSON-lines dataset folder (see the module docstring)."""
    books = [b.text for b in embedded_books()]
    texts = [t[: 200_000] for t in books] if small else books
    assets, data = out / "assets", out / "c4"
    assets.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    (assets / "tokenizer.json").write_text(train_bpe(texts, VOCAB))
    (assets / "tokenizer_config.json").write_text(json.dumps({"bos_token": EOT, "eos_token": EOT}))
    with open(data / "train.jsonl", "w") as f:
        for text in texts:
            for start in range(0, len(text), 4000):
                f.write(json.dumps({"text": text[start:start + 4000]}) + "\n")
    return assets, data


def job_args(out: Path, assets: Path, data: Path, steps: int, small: bool) -> list[str]:
    seq, batch = (128, 2) if small else (2048, 8)
    return ["--model.name", "llama3", "--model.flavor", "debugmodel", "--model.hf_assets_path", str(assets),
            "--training.dataset", "c4_test", "--training.dataset_path", str(data), "--training.steps", str(steps),
            "--training.seq_len", str(seq), "--training.local_batch_size", str(batch), "--lr_scheduler.warmup_steps",
            "2", "--metrics.log_freq", "1", "--job.dump_folder", str(out / "dump"), *CONVERTER]


def train(out: Path, args: list[str], name: str) -> dict[str, str]:
    """One torchrun of torchtitan's trainer; the numbers of its last logged step."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m",
           "torchtitan.train", *args]
    log = out / f"{name}.log"
    with open(log, "w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "LOG_RANK": "0"}).returncode
    steps = [line for line in log.read_text().splitlines() if re.search(r"step:\s*\d+", line)]
    last = re.sub(r"\x1b\[[0-9;]*m", "", steps[-1]) if steps else ""
    fields = dict(re.findall(r"(step|loss|tps|tflops|mfu|memory):\s*([\d.,]+(?:%|GiB)?)", last))
    return {"run": name, "exit": str(code), **fields}


def dry_run(assets: Path, data: Path, out: Path) -> str:
    """What runs without an accelerator: config, tokenizer and loader from torchtitan, one converted step."""
    from torchtitan.components.tokenizer import build_hf_tokenizer
    from torchtitan.config import ConfigManager
    from torchtitan.distributed import ParallelDims
    from torchtitan.hf_datasets.text_datasets import build_text_dataloader
    from torchtitan.models.llama3 import Transformer, llama3_args
    from torchtitan.protocols.model_converter import build_model_converters

    job = ConfigManager().parse_args(job_args(out, assets, data, 2, True) + LOWRANK)
    tokenizer = build_hf_tokenizer(job)
    inputs, labels = next(iter(build_text_dataloader(1, 0, tokenizer, job)))
    args = llama3_args["debugmodel"]
    with torch.device("meta"):
        model = Transformer(args)
    converters = build_model_converters(job, ParallelDims(1, 1, 1, 1, 1, 1, 1, 1))
    converters.convert(model)
    nparams, flops = args.get_nparams_and_flops(model, job.training.seq_len)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        model.init_weights(buffer_device=torch.device("cpu"))
    logits = model(inputs["input"])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
    loss.backward()
    return (f"dry run (no accelerator: torchtitan's trainer not started): vocab {tokenizer.get_vocab_size()}, "
            f"batch {tuple(inputs['input'].shape)}, converted parameters {nparams:,}, FLOPs/token {flops:,}, "
            f"loss {loss.item():.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("device")
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--steps", type=int, default=30)
    a = parser.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    assets, data = write_assets(a.out, a.small)
    if a.device != "cuda":
        print(dry_run(assets, data, a.out))
        return
    base = job_args(a.out, assets, data, a.steps, a.small)
    rows = [train(a.out, base, "dense"), train(a.out, base + LOWRANK, "lowrank-0.5")]
    keys = ["run", "exit", "step", "loss", "tps", "tflops", "mfu", "memory"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(r.get(k, "") for k in keys) + " |" for r in rows]
    print("\n".join(lines))
    sys.exit(0 if all(r["exit"] == "0" for r in rows) else 1)


if __name__ == "__main__":
    main()

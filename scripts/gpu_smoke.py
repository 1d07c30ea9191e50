"""The ``smoke`` stage of scripts/gpu_bench.sh: every GPU fast path that is a default, run once, and which path ran.

    python scripts/gpu_smoke.py OUT DEVICE [--small]

Trains the tiny config's LowRank twin for a few steps with the defaults that pick fast paths on CUDA
(train.compile=auto with self-guided reduce_flop: torch.compile and its torch.cond; train.loss_chunk_tokens: liger's
fused loss when installed), then generates with decode=auto (CUDA graphs; prefill without autograd: cuBLASLt's
bias + GELU epilogue) beside decode=eager. Prints one line per fast path: fast (it ran), eager (it failed and fell
back, with the warning above), or not taken (the defaults do not take it on this device / install), and writes
the same as OUT/smoke.json. Exit status 0 unless training or generation itself failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch

import lowrank_lm
from lowrank_lm import fallback
from lowrank_lm.decoding import CUDA_GRAPHS
from lowrank_lm.layers.fused import EPILOGUE
from lowrank_lm.loss import LIGER
from lowrank_lm.resolve import load_config
from lowrank_lm.train import run_training
from lowrank_lm.train.compiling import COMPILED

ROOT = Path(__file__).resolve().parent.parent
PATHS = (COMPILED, LIGER, EPILOGUE, CUDA_GRAPHS)


def _train(out: Path, device: str, small: bool) -> Path:
    steps, batch, seq = (6, 4, 128) if small else (20, 16, 256)
    cfg = load_config(ROOT / "configs/cpu/tiny.yaml", [
        "model.ffn.kind=lowrank", "model.ffn.rank=32", f"model.seq_len={seq}", "train.self_guided.enabled=true",
        "train.self_guided.ratio=0.5", "train.self_guided.reduce_flop=true", "train.loss_chunk_tokens=256",
        "train.compile=auto", "train.precision=bf16", f"train.global_batch_size={batch}",
        f"train.tokens={steps * batch * seq}", "train.log_interval=1", "train.eval_tokens=4096",
        "train.checkpoint_interval=100000", "train.resume=never", f"train.device={device}",
        f"train.out_dir={out / 'run'}", f"data.dir={out / 'data'}", "data.max_tokens=300000", "data.val_tokens=8192"])
    run_training(cfg, overwrite=True)
    return out / "run"


def _generate(run: Path, device: str) -> dict[str, int]:
    model = lowrank_lm.load(run, device)
    prompt = torch.randint(0, model.cfg.vocab_size, (4, 8), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        auto = model.generate(prompt, 32, temperature=0, decode="auto")
        eager = model.generate(prompt, 32, temperature=0, decode="eager")
    # bf16 rounding can break a near tie differently: report the agreement, do not require it
    return {"tokens": int(auto[:, 8:].numel()), "equal_to_eager": int((auto[:, 8:] == eager[:, 8:]).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("device")
    parser.add_argument("--small", action="store_true", help="toy sizes (checks the script on CPU)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    run = _train(args.out, args.device, args.small)
    decoded = _generate(run, args.device)
    liger = importlib.util.find_spec("liger_kernel") is not None
    report = {"device": args.device, "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "torch": torch.__version__, "liger_installed": liger, "seconds": round(time.perf_counter() - start, 1),
              "paths": {name: fallback.TAKEN.get(name, "not taken") for name in PATHS}, "decode": decoded}
    (args.out / "smoke.json").write_text(json.dumps(report, indent=1) + "\n")
    for name, path in report["paths"].items():
        print(f"{name}: {path}")
    print(f"greedy decode=auto vs eager: {decoded['equal_to_eager']}/{decoded['tokens']} tokens equal; "
          f"{report['seconds']} s on {report['gpu'] or args.device}, torch {torch.__version__}, "
          f"liger {'installed' if liger else 'not installed'}")


if __name__ == "__main__":
    main()

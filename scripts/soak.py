"""Soak: a tiny model trains for many steps with periodic checkpoints and evals; resident memory is sampled.

    python scripts/soak.py --steps 20000 [--workdir /tmp/soak]

Prints RSS samples (MB) against the step reached, and the growth between the first and the last tenth
of the run. Memory that stays flat means no leak in the loop, the loader, the metrics or the checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lowrank_lm.config import DataConfig, save_config
from lowrank_lm.data import prepare
from lowrank_lm.resolve import load_config


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def last_step(metrics: Path) -> int:
    if not metrics.exists():
        return 0
    with open(metrics, "rb") as f:
        f.seek(max(0, metrics.stat().st_size - 4096))
        lines = f.read().decode(errors="ignore").splitlines()
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between RSS samples")
    args = ap.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="lowrank-soak-"))
    data = prepare(DataConfig(source="embedded", tokenizer="bpe-512", dir=str(root / "data"), val_tokens=8192),
                   progress=False)
    cfg = load_config(None, [
        "model.vocab_size=512", "model.seq_len=32", "model.num_layers=2", "model.hidden_dim=32",
        "model.num_q_heads=2", f"data.dir={data}", "data.tokenizer=bpe-512", "data.val_tokens=8192",
        f"train.tokens={args.steps * 8 * 32}", "train.global_batch_size=8", "train.precision=fp32",
        "train.lr=1e-3", "train.log_interval=100", "train.eval_interval=1000", "train.eval_tokens=4096",
        "train.checkpoint_interval=500", "train.keep_checkpoints=2", f"train.out_dir={root / 'run'}",
        "train.device=cpu"])
    save_config(cfg, root / "soak.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lowrank_lm", "train", str(root / "soak.yaml"), "--overwrite"],
                            env=env, stderr=subprocess.DEVNULL)
    samples: list[tuple[int, float]] = []
    started = time.time()
    while proc.poll() is None:
        try:
            samples.append((last_step(root / "run" / "metrics.jsonl"), rss_mb(proc.pid)))
        except FileNotFoundError:
            break
        time.sleep(args.interval)
    if proc.returncode != 0:
        sys.exit(f"soak run failed with exit code {proc.returncode}")
    samples = [s for s in samples if s[0] > 0]
    tenth = max(1, len(samples) // 10)
    first = max(r for _, r in samples[:tenth])
    last = max(r for _, r in samples[-tenth:])
    for step, rss in samples[:: max(1, len(samples) // 20)]:
        print(f"step {step:6d}  rss {rss:7.1f} MB")
    print(json.dumps({"steps": args.steps, "wall_s": round(time.time() - started, 1), "samples": len(samples),
                      "rss_first_tenth_max_mb": round(first, 1), "rss_last_tenth_max_mb": round(last, 1),
                      "growth_mb": round(last - first, 1), "rss_max_mb": round(max(r for _, r in samples), 1)}))


if __name__ == "__main__":
    main()

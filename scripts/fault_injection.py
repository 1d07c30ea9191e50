"""Long fault-injection run: many seeds of kill-and-resume trials against one uninterrupted reference.

    python scripts/fault_injection.py --trials 40 [--workdir /tmp/faults]

Prints one line per trial and a summary (trials, kills, resumes, unreadable checkpoints, mismatches).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from lowrank_lm.config import DataConfig, load_config, save_config
from lowrank_lm.data import prepare
from lowrank_lm.reliability import CRASH_POINTS, run_trial, train_subprocess


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="lowrank-faults-"))
    data = prepare(DataConfig(source="embedded", tokenizer="bpe-512", dir=str(root / "data"), val_tokens=8192,
                              max_tokens=120_000), progress=False)
    cfg = load_config(None, [
        "model.vocab_size=512", "model.seq_len=32", "model.num_layers=2", "model.hidden_dim=32",
        "model.num_q_heads=2", "model.ffn.kind=lowrank", "model.ffn.rank=8", f"data.dir={data}",
        "data.tokenizer=bpe-512", "data.val_tokens=8192", "data.max_tokens=120000", "train.tokens=10240",
        "train.global_batch_size=8",
        "train.micro_batch_size=4", "train.precision=fp32", "train.lr=3e-3", "train.log_interval=1",
        "train.eval_tokens=2048", "train.eval_interval=10", "train.checkpoint_interval=3",
        "train.keep_checkpoints=2", f"train.out_dir={root / 'reference'}", "train.device=cpu"])
    save_config(cfg, root / "reference.yaml")
    if not (root / "reference" / "summary.json").is_file():
        assert train_subprocess(root / "reference.yaml") == 0
    rng = random.Random(args.seed)
    totals = {"trials": 0, "kills": 0, "resumes": 0, "unreadable_checkpoints": 0, "mismatches": 0}
    started = time.time()
    for i in range(args.trials):
        point = rng.choice(CRASH_POINTS)
        crash = f"{point}:{rng.randint(1, 39) if point == 'train.step' else rng.randint(1, 13)}"
        res = run_trial(root / "reference.yaml", root / "reference", crash, root / f"trial-{i % 2}")
        totals["trials"] += 1
        totals["kills"] += res.kills
        totals["resumes"] += res.resumes
        totals["unreadable_checkpoints"] += res.unreadable_checkpoints
        totals["mismatches"] += len(res.mismatches)
        print(f"trial {i:3d} crash={crash:22s} killed={res.kills} resumes={res.resumes} "
              f"unreadable={res.unreadable_checkpoints} mismatches={res.mismatches}", flush=True)
    totals["wall_s"] = round(time.time() - started, 1)
    print(json.dumps(totals))


if __name__ == "__main__":
    main()

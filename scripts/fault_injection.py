"""Long fault-injection run: many seeds of kill-and-resume trials against one uninterrupted reference.

    python scripts/fault_injection.py --trials 50 [--workdir /tmp/faults]
    python scripts/fault_injection.py --trials 20 --procs 2 --distributed ddp   # torchrun, one rank killed

With ``--procs 2`` each trial runs the job under torchrun and SIGKILLs one of its ranks (at a random step,
or inside a checkpoint write on a rank that writes), lets torchrun tear the job down, runs the same command
again until the run finishes, and compares with an uninterrupted run of the same world size, bit for bit.
Trial ``i`` draws its kill from ``Random(f"{seed}-{i}")``, so ``--first K`` continues a long run in chunks
with the same draws. Prints one line per trial and a summary; ``--log FILE`` appends one JSON line per trial
and prints the totals of the whole file at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

from lowrank_lm.config import DataConfig, save_config
from lowrank_lm.data import prepare
from lowrank_lm.reliability import CRASH_POINTS, run_trial, train_subprocess
from lowrank_lm.resolve import load_config

STEPS = 40
CHECKPOINT_INTERVAL = 3


def draw_crash(rng: random.Random, procs: int, distributed: str) -> str:
    """A kill point ``point:count[@rank]`` that the run reaches: a step, or a phase of a checkpoint write.

    One process: the five points alike. Several: half the kills at a step (on any rank), half inside a write.
    """
    if procs == 1:
        point = rng.choice(CRASH_POINTS)
    else:
        point = "train.step" if rng.random() < 0.5 else rng.choice(CRASH_POINTS[1:])
    writes = STEPS // CHECKPOINT_INTERVAL + 1  # periodic checkpoints and the final one
    crash = f"{point}:{rng.randint(1, STEPS - 1) if point == 'train.step' else rng.randint(1, writes)}"
    if procs == 1:
        return crash
    # every rank takes steps and, with FSDP, writes its own shards; the rest of a checkpoint is rank 0's
    every_rank = point == "train.step" or (point == "checkpoint.weights" and distributed == "fsdp")
    return f"{crash}@{rng.randrange(procs) if every_rank else 0}"


def reference_config(root: Path, procs: int, distributed: str) -> Path:
    """A LowRank 2 x 32 model, 40 steps of 8 x 32 tokens, a checkpoint every 3 steps, 2 kept."""
    data = prepare(DataConfig(source="embedded", tokenizer="bpe-512", dir=str(root / "data"), val_tokens=8192,
                              max_tokens=120_000), progress=False)
    name = f"reference-{procs}p-{distributed}"
    cfg = load_config(None, [
        "model.vocab_size=512", "model.seq_len=32", "model.num_layers=2", "model.hidden_dim=32",
        "model.num_q_heads=2", "model.ffn.kind=lowrank", "model.ffn.rank=8", f"data.dir={data}",
        "data.tokenizer=bpe-512", "data.val_tokens=8192", "data.max_tokens=120000",
        f"train.tokens={STEPS * 8 * 32}", "train.global_batch_size=8", "train.micro_batch_size=4",
        "train.precision=fp32", "train.lr=3e-3", "train.log_interval=1", "train.eval_tokens=2048",
        "train.eval_interval=10", f"train.checkpoint_interval={CHECKPOINT_INTERVAL}", "train.keep_checkpoints=2",
        f"train.distributed={distributed}", f"train.out_dir={root / name}", "train.device=cpu"])
    save_config(cfg, root / f"{name}.yaml")
    if not (root / name / "summary.json").is_file():
        assert train_subprocess(root / f"{name}.yaml", nproc=procs) == 0
    return root / f"{name}.yaml"


def totals(records: list[dict]) -> dict:
    """Trials, kills, resumes, unreadable checkpoints and mismatches of a list of trial records."""
    return {"trials": len(records), "kills": sum(r["kills"] for r in records),
            "resumes": sum(r["resumes"] for r in records),
            "unreadable_checkpoints": sum(r["unreadable_checkpoints"] for r in records),
            "mismatches": sum(len(r["mismatches"]) for r in records),
            "points": dict(sorted(Counter(r["crash"].split(":")[0] for r in records).items()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--first", type=int, default=0, help="index of the first trial (to continue in chunks)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--procs", type=int, default=1, help="processes per job (2: torchrun, one rank killed)")
    ap.add_argument("--distributed", choices=["ddp", "fsdp"], default="ddp")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--log", default=None, help="append one JSON line per trial; print the file's totals")
    args = ap.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="lowrank-faults-"))
    config = reference_config(root, args.procs, args.distributed)
    reference = root / config.stem
    records = []
    started = time.time()
    for i in range(args.first, args.first + args.trials):
        crash = draw_crash(random.Random(f"{args.seed}-{i}"), args.procs, args.distributed)
        t0 = time.time()
        res = run_trial(config, reference, crash, root / f"trial-{args.procs}p-{args.distributed}",
                        nproc=args.procs)
        rec = {"trial": i, "procs": args.procs, "distributed": args.distributed, "crash": crash,
               "kills": res.kills, "resumes": res.resumes, "unreadable_checkpoints": res.unreadable_checkpoints,
               "mismatches": res.mismatches, "wall_s": round(time.time() - t0, 1)}
        records.append(rec)
        print(f"trial {i:3d} {args.procs}p {args.distributed} crash={crash:24s} killed={res.kills} "
              f"resumes={res.resumes} unreadable={res.unreadable_checkpoints} mismatches={res.mismatches}",
              flush=True)
        if args.log:
            with open(args.log, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
    print(json.dumps({**totals(records), "wall_s": round(time.time() - started, 1)}))
    if args.log:
        print("whole log:", json.dumps(totals([json.loads(x) for x in Path(args.log).read_text().splitlines()])))


if __name__ == "__main__":
    main()

"""Does a compiled model stay compiled through self-guided training? Prints new dynamo graphs and time per step.

    python scripts/self_guided_compile_check.py compile|eager [KEY=VALUE ...]

A tiny LowRank 32% model with its guides, 8 x 128 random tokens, bf16 autocast, AdamW, driven by the
trainer's SelfGuidance (alpha schedule and per-layer coins) over 14 of 40 guided steps.
"""

import sys
import time

import torch
from torch._dynamo.utils import counters

from lowrank_lm.model import Transformer
from lowrank_lm.resolve import load_config
from lowrank_lm.train.self_guided import SelfGuidance

torch.set_num_threads(2)
mode, overrides = sys.argv[1], sys.argv[2:]
cfg = load_config("configs/cpu/tiny.yaml", ["model.ffn.kind=lowrank", "model.ffn.rank=32",
                                            "train.self_guided.enabled=true", *overrides])
torch.manual_seed(0)
model = Transformer(cfg.model)
guidance = SelfGuidance(cfg.train.self_guided, 40, seed=1)
guidance.attach(model, 0)
run = torch.compile(model) if mode == "compile" else model
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
x, y = torch.randint(0, 8192, (8, 128)), torch.randint(0, 8192, (8, 128))
times = []
for step in range(14):
    guidance.set_step(model, step)
    before = counters["stats"]["unique_graphs"]
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = run(x, y)
    loss.backward()
    guidance.clear_skipped_grads()  # as the trainer does: a guide whose coin was down gets no update
    opt.step()
    opt.zero_grad()
    times.append(time.perf_counter() - t0)
    print(f"step {step} alpha={guidance.alpha(step):.3f} new graphs {counters['stats']['unique_graphs'] - before} "
          f"{times[-1]:.3f} s", flush=True)
print(f"{mode}: median step {sorted(times[6:])[4]:.3f} s over steps 6-13")

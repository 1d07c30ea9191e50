"""Where a CPU training step's time goes, ours against the transformers peer: the top operators by self time.

    python scripts/profile_train_step.py CONFIG BATCH SEQ

The step is bench train's (bf16 autocast over fp32 weights, AdamW, eager), profiled over two steps after
two warm-up steps.
"""

import sys

import torch
from torch.profiler import profile

from lowrank_lm.bench.train import make_step, peer_model
from lowrank_lm.model import Transformer
from lowrank_lm.resolve import load_config
from lowrank_lm.runtime import tune_malloc

tune_malloc()
torch.set_num_threads(2)
cfg = load_config(sys.argv[1]).model
batch, seq = int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
ids = torch.randint(0, cfg.vocab_size, (batch, seq + 1))
x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
for name, model, ours in [("ours", Transformer(cfg).train(), True), ("peer", peer_model(cfg)[0].train(), False)]:
    step, _ = make_step(model, ours, False, x, y, "bf16", torch.device("cpu"))
    step()
    step()
    with profile() as prof:
        for _ in range(2):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"== {name}: {total / 2 / 1e3:.0f} ms per step (profiled)")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:10]:
        print(f"  {e.key:58s} {e.self_cpu_time_total / total:6.1%} {e.self_cpu_time_total / 2 / 1e3:8.1f} ms"
              f"  x{e.count // 2}")

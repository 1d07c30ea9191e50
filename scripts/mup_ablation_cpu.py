"""What costs µP at its base width for structured layers: the µP init and the per-factor learning-rate
multipliers, each switched back to the standard parametrization's, on lr-cpu.yaml's set-up at width 64.

At the base width µP's global rules reduce to the standard ones (width multiplier 1: hidden rates x1, readout
x1, attention scale 1/sqrt(head dim)); what still differs is (a) the init (lowrank_lm.mup.init_: each weight or
factor at σ = sqrt(1/fan_in) · min(1, sqrt(fan_out/fan_in)), the readout zeroed) and (b) each structured
factor's learning-rate multiplier d_in / (fan_in · factors) (lowrank_lm.mup._factor_mults). This script trains
the 2 x 2 combinations for BlockDense, BTT and LowRank at 32% and two rates, by replacing those two functions
in this process (a diagnostic, not a setting), and prints a table, one row per run:

    python scripts/mup_ablation_cpu.py

About 3 minutes on 2 idle CPU cores. docs/results/mup-cpu.md reports what it printed.
"""

from __future__ import annotations

import itertools

COMMON = ["model.num_layers=2", "model.seq_len=128", "model.num_q_heads=4", "model.parametrization=mup",
          "model.mup_base_width=64", "model.hidden_dim=64", "model.vocab_size=2048", "data.tokenizer=bpe-2048",
          "train.global_batch_size=16", "train.tokens=245760", "train.eval_interval=100000",
          "train.eval_tokens=65536", "train.checkpoint_interval=100000", "train.precision=bf16", "train.seed=1005"]


def main() -> None:
    from lowrank_lm import mup
    from lowrank_lm.resolve import load_config
    from lowrank_lm.train import run_training

    mup_init, factor_mults = mup.init_, mup._factor_mults

    def dense_rule(layer, m):  # every factor at the dense layer's 1/m, as a plain nn.Linear gets
        return {k: 1.0 / m for k in factor_mults(layer, m)}

    rows = ["| structure | lr | init | factor multipliers | val loss |", "|---|---|---|---|---|"]
    for kind, lr, init, mults in itertools.product(("blockdense", "btt", "lowrank"), ("5e-3", "1e-2"),
                                                   ("mup", "standard"), ("per-factor", "dense")):
        mup.init_ = mup_init if init == "mup" else (lambda model: None)  # None: the model's standard init stays
        mup._factor_mults = factor_mults if mults == "per-factor" else dense_rule
        cfg = load_config("configs/cpu/tiny.yaml", [*COMMON, f"model.ffn.kind={kind}", "model.ffn.fraction=0.32",
                                                    f"train.lr={lr}", f"train.out_dir=runs/mup-ablation/{kind}-{lr}-"
                                                    f"{init}-{mults}"])
        summary = run_training(cfg, overwrite=True)
        rows.append(f"| {kind}-32 | {lr} | {init} | {mults} | {summary.final_val_loss:.4f} |")
    print("\n".join(rows))  # after the trainers' own output


if __name__ == "__main__":
    main()

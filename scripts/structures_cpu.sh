#!/usr/bin/env bash
# Every FFN structure at 32% of the dense FFN's weights on the CPU (docs/results/structures-cpu.md):
# FFN latency at the widths of configs/cpu/scale-2 and scale-3 (128 and 192), then one equal-token training
# run per structure and size (same seed, same tokens, one thread each), then the two tables.
# Run it on a quiet machine: the latencies are only worth what the machine's load lets them be.
#
#   scripts/structures_cpu.sh [OUT]        # default OUT: runs/structures-cpu
set -euo pipefail

OUT=${1:-runs/structures-cpu}
LRLM=${LRLM:-$(dirname "$0")/../.venv/bin/lowrank-lm}
PYTHON=${PYTHON:-$(dirname "$0")/../.venv/bin/python}
KINDS=dense,lowrank,blockshuffle,blockdense,btt,cola
TOKENS=${TOKENS:-655360}
mkdir -p "$OUT"

for run in "fwd fp32" "fwd bf16" "fwdbwd bf16"; do
    set -- $run
    "$LRLM" bench ffn --widths 128,192 --kinds "$KINDS" --fractions 0.32 --tokens 4096 --mode "$1" --dtype "$2" \
        --threads 2 --device cpu --out "$OUT/ffn-$1-$2" > /dev/null
done
for scale in 2 3; do
    for kind in ${KINDS//,/ }; do
        size=()
        [ "$kind" != dense ] && size=(model.ffn.kind="$kind" model.ffn.fraction=0.32)
        OMP_NUM_THREADS=1 "$LRLM" train configs/cpu/scale-$scale.yaml "${size[@]}" train.tokens="$TOKENS" \
            train.eval_interval=80 train.checkpoint_interval=80 train.keep_checkpoints=1 \
            train.out_dir="$OUT/runs/s$scale-$kind" > "$OUT/s$scale-$kind.log"
    done
done
"$PYTHON" "$(dirname "$0")/structures_table.py" --bench "$OUT"/ffn-fwd-fp32 "$OUT"/ffn-fwd-bf16 \
    "$OUT"/ffn-fwdbwd-bf16 --runs "$OUT/runs"

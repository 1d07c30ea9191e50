#!/usr/bin/env bash
# The GPU efficiency set of issue 5, in about 7 minutes on one H100/H200:
#   1. FFN latency, widths 1536-6144, 30K tokens (30720 = 30 x 1024), bf16, forward (paper Figure 4a/b);
#   2. FFN latency over 1-4096 tokens at widths 2048/5120/6144 with pre-merge (the "latency_bs" figure);
#   1b. the FFNs of 1 at widths 2048/5120, 32%, under torch.compile (bias + GELU fused by inductor);
#   3. Transformer-s training tokens/s: dense vs LowRank 32% + the transformers peer (eager), then
#      dense vs LowRank 32% under torch.compile (a stage of its own: compiling is the slow part);
#   4. decoding throughput (256 tokens, batch doubled up to out-of-memory or --max-batch): Transformer-m
#      GQA vs wide-and-structured-m vs dense Transformer-m (paper Table 2 "TP").
# Each stage has its own time limit (seconds, overridable) so one slow stage cannot eat the others';
# the limit sends SIGINT, on which the FFN and decode benches still write the sets they finished.
# Results: OUT/<stage>/ (JSON, markdown, PNG) and OUT/<stage>.txt, the log in OUT/gpu_bench.log.
#
#   scripts/gpu_bench.sh [OUT]                       # on a GPU machine
#   DEVICE=cpu SMALL=1 scripts/gpu_bench.sh /tmp/x   # the same commands at toy sizes, to test the script
#   STAGES="ffn decode" scripts/gpu_bench.sh         # only these stages
# The command is LRLM, else lowrank-lm on the PATH, else .venv's, else `python3 -m lowrank_lm` on src/
# (a GPU machine with torch, PyYAML, safetensors and transformers needs no install).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-results/gpu-bench-$(date +%Y%m%d-%H%M%S)}
DEVICE=${DEVICE:-cuda}
if [ -n "${LRLM:-}" ]; then
    read -ra CMD <<< "$LRLM"
elif command -v lowrank-lm >/dev/null 2>&1; then
    CMD=(lowrank-lm)
elif [ -x "$ROOT/.venv/bin/lowrank-lm" ]; then
    CMD=("$ROOT/.venv/bin/lowrank-lm")
else
    export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
    CMD=(python3 -m lowrank_lm)
fi
T_FFN=${T_FFN:-45} T_FFN_COMPILE=${T_FFN_COMPILE:-75} T_TOKENS=${T_TOKENS:-60} T_TRAIN=${T_TRAIN:-45}
T_COMPILE=${T_COMPILE:-110} T_DECODE=${T_DECODE:-170}
STAGES=${STAGES:-ffn ffn-compile ffn-tokens train train-compile decode}

if [ "${SMALL:-0}" = 1 ]; then  # toy sizes: checks the commands, not the GPU
    WIDTHS=64,128 TOKENS=256 TOKEN_WIDTHS=64 TOKEN_LIST=1,16,256 COMPILE_WIDTHS=64
    TRAIN=(configs/cpu/tiny.yaml --batch 2 --seq 64)
    DECODE=(configs/paper/transformer-m-gqa.yaml configs/paper/wide-structured-m.yaml configs/paper/transformer-m.yaml
            model.num_layers=2 model.vocab_size=512 --batches 1,2 --gen 8)
    ROUNDS=(--rounds 2) FAST=(--rounds 2) DECODE_ROUNDS=(--rounds 2)
else
    WIDTHS=1536,2048,3072,4096,5120,6144 TOKENS=30720 TOKEN_WIDTHS=2048,5120,6144 COMPILE_WIDTHS=2048,5120
    TOKEN_LIST=1,16,128,256,512,1024,1536,2048,4096
    TRAIN=(configs/paper/transformer-s.yaml --batch 16 --seq 1024)
    DECODE=(configs/paper/transformer-m-gqa.yaml configs/paper/wide-structured-m.yaml configs/paper/transformer-m.yaml
            --batches 256 --search --max-batch 4096 --gen 256)
    ROUNDS=() FAST=(--rounds 5 --min-round-s 0.02) DECODE_ROUNDS=(--rounds 1)
fi

mkdir -p "$OUT"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/gpu_bench.log"; }
stage() {  # stage NAME LIMIT ARGS...: run one bench under its time limit, keep going on failure
    local name=$1 limit=$2
    shift 2
    [[ " $STAGES " == *" $name "* ]] || return 0
    log "$name: lowrank-lm $* (limit ${limit}s)"
    if timeout --signal=INT --kill-after=30 "$limit" "${CMD[@]}" "$@" --device "$DEVICE" --out "$OUT/$name" \
        > "$OUT/$name.txt" 2>> "$OUT/gpu_bench.log"; then
        log "$name: done"
    else
        log "$name: FAILED or timed out (exit $?)"
    fi
}

log "device $DEVICE, output $OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true; } >> "$OUT/gpu_bench.log"

stage ffn "$T_FFN" bench ffn --widths "$WIDTHS" --kinds dense,lowrank,blockdense,blockshuffle \
    --fractions 0.63,0.32 --tokens "$TOKENS" --mode fwd --dtype bf16 "${ROUNDS[@]}"
stage ffn-compile "$T_FFN_COMPILE" bench ffn --widths "$COMPILE_WIDTHS" --kinds dense,lowrank,blockdense,blockshuffle \
    --fractions 0.32 --tokens "$TOKENS" --mode fwd --dtype bf16 --compile "${ROUNDS[@]}"
stage ffn-tokens "$T_TOKENS" bench ffn --widths "$TOKEN_WIDTHS" --kinds dense,lowrank,blockdense,blockshuffle \
    --fractions 0.32 --tokens "$TOKEN_LIST" --mode fwd --dtype bf16 --premerge "${FAST[@]}"
stage train "$T_TRAIN" bench train "${TRAIN[@]}" --kinds dense,lowrank --fractions 0.32 --dtype bf16 \
    --compile off "${ROUNDS[@]}"
stage train-compile "$T_COMPILE" bench train "${TRAIN[@]}" --kinds dense,lowrank --fractions 0.32 --dtype bf16 \
    --compile on --no-peer "${ROUNDS[@]}"
stage decode "$T_DECODE" bench decode "${DECODE[@]}" --dtype bf16 "${DECODE_ROUNDS[@]}"

log "all stages finished; tables: $OUT/*.txt, JSON/markdown/PNG: $OUT/*/"

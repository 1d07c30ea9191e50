#!/usr/bin/env bash
# The CPU efficiency set behind docs/results/efficiency-cpu.md (about an hour on 2 cores, 35 minutes of it decoding):
# FFN latency fp32/bf16 (forward, and forward+backward in bf16), pre-merge over 1-4096 tokens,
# training steps of Transformer-s and the CPU scale-4 model against transformers' GPT-NeoX, and
# decoding throughput of Transformer-m (dense, GQA) against wide-and-structured-m.
# The load average is logged before and after each stage: numbers taken while other processes
# ran are noisy (see the doc), so run it on a quiet machine.
#
#   scripts/cpu_bench.sh [OUT]        # default OUT: docs/results/efficiency-cpu
set -uo pipefail

OUT=${1:-docs/results/efficiency-cpu}
LRLM=${LRLM:-$(dirname "$0")/../.venv/bin/lowrank-lm}
THREADS=${THREADS:-$(nproc)}
mkdir -p "$OUT"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/cpu_bench.log"; }
stage() {  # stage NAME ARGS...
    local name=$1
    shift
    log "$name: lowrank-lm $* --threads $THREADS  (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    if "$LRLM" "$@" --threads "$THREADS" --device cpu --out "$OUT/$name" > "$OUT/$name.txt" 2>> "$OUT/cpu_bench.log"; then
        log "$name: done (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    else
        log "$name: FAILED (exit $?)"
    fi
}

log "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, threads $THREADS"
stage ffn-fp32 bench ffn --widths 512,1024,2048 --fractions 0.63,0.32 --tokens 4096 --mode fwd --dtype fp32
stage ffn-bf16 bench ffn --widths 512,1024,2048 --fractions 0.63,0.32 --tokens 4096 --mode fwd --dtype bf16
stage ffn-fwdbwd-bf16 bench ffn --widths 1024,2048 --fractions 0.32 --tokens 4096 --mode fwdbwd --dtype bf16
stage premerge-bf16 bench ffn --widths 256,1024,2048 --fractions 0.32 --tokens 1,4,16,64,256,1024,4096 \
    --mode fwd --dtype bf16 --premerge
stage premerge-fp32 bench ffn --widths 256,1024,2048 --fractions 0.32 --tokens 1,4,16,64,256,1024,4096 \
    --mode fwd --dtype fp32 --premerge
stage train-scale4 bench train configs/cpu/scale-4.yaml --batch 16 --seq 256 --kinds dense,lowrank \
    --fractions 0.32 --compile off,on --peer-compile --dtype bf16
stage train-s bench train configs/paper/transformer-s.yaml --batch 4 --seq 256 --kinds dense,lowrank \
    --fractions 0.32 --compile off,on --peer-compile --dtype bf16 --rounds 5
stage decode-m bench decode configs/paper/transformer-m-gqa.yaml configs/paper/wide-structured-m.yaml \
    configs/paper/transformer-m.yaml --batches 1,8,32 --gen 256 --dtype bf16 --rounds 2
log "finished"

#!/usr/bin/env bash
# The GPU efficiency set of issue 5, in about 7 minutes on one H100/H200:
#   1. FFN latency, widths 1536-6144, 30K tokens (30720 = 30 x 1024), bf16, forward (paper Figure 4a/b);
#   2. FFN latency over 1-4096 tokens at widths 2048/5120/6144 with pre-merge (the "latency_bs" figure);
#   1b. the FFNs of 1 at widths 2048/5120, 32%, under torch.compile (bias + GELU fused by inductor);
#   3. Transformer-s training tokens/s: dense vs LowRank 32% + the transformers peer (eager), then
#      dense vs LowRank 32% under torch.compile (a stage of its own: compiling is the slow part);
#   4. decoding throughput (256 tokens, batch doubled up to out-of-memory or --max-batch): Transformer-m
#      GQA vs wide-and-structured-m vs dense Transformer-m (paper Table 2 "TP");
#   5. train-scale: the real trainer on Transformer-m (bf16, compile) for SCALE_STEPS (300) steps of 32 x 1024
#      tokens (2 micro-batches of 16) under torchrun with one process, FSDP2 then DDP: tokens/s, MFU and
#      peak memory (medians over the second half of the run, compilation excluded). Data: the embedded
#      corpus with a bpe-8192 tokenizer (prepared offline in OUT/data; SCALE_DATA="data.dir=... ..." to
#      use other prepared data; PEAK_TFLOPS=... for a GPU missing from the peak table). Its table:
#      OUT/train-scale.txt.
# Issue 13 (fast paths), each a stage of its own:
#   decode-static: decoding step time over batch 1-256, eager vs static (CUDA graph) on Transformer-m: the
#      host bound (about 10 ms a step at every batch, eager) gone;
#   table2-m / table2-l: paper Table 2 throughput with static decoding at the largest batch that fits
#      (--search): Transformer-m GQA vs wide-structured-m, Transformer-l GQA vs wide-structured-l;
#   mfu-m: Transformer-m dense training MFU compiled, full-logits loss vs chunked loss;
#   ffn-5120: LowRank 32% FFN efficiency eager at width 5120 (bias + GELU in cuBLASLt's epilogue);
# Issue 14 (structures):
#   ffn-structures-fwd, -fwdbwd: every registered structure (bench ffn's default kinds) at 32% (Block Tensor-Train and the CoLA bottleneck included),
#      forward and forward + backward, bf16, at the ffn stage's widths;
#   train-xl (not in the default STAGES): Transformer-xl dense vs LowRank 32% training speed-up, compiled.
# Issue 23 (fast paths fall back, loudly):
#   smoke: every fast path a default takes on CUDA, run once by scripts/gpu_smoke.py (the trainer with
#      train.compile=auto and torch.cond self-guidance, liger's fused loss, generation with decode=auto and the
#      cuBLASLt bias + GELU epilogue): prints fast / eager (failed and fell back) / not taken for each, in under
#      3 minutes; OUT/smoke.txt and OUT/smoke/smoke.json.
# Issue 25 (muP), stage mup: coord-check of Transformer-s (2 blocks) under muP at widths 256-2048 for dense,
#   LowRank 32% and BTT (OUT/mup-coord-<kind>/coord_check.{json,png}, slopes in OUT/mup-coord-<kind>.txt),
#   then a 5-point learning-rate sweep (x2 apart) under muP at widths 256 and 1024 for dense and LowRank 32%
#   (MUP_STEPS steps each, final train loss in OUT/mup-lr.txt).
# Issue 27 (structures for any model), stage torchtitan: torchtitan 0.2.2's trainer on its debug Llama 3 (needs
#   the torchtitan extra), dense and with the lowrank_lm converter (lowrank, half the FFN weights), TITAN_STEPS
#   (30) steps each on one GPU, by scripts/torchtitan_stage.py (offline tokenizer and data from the embedded
#   books in OUT/torchtitan): last step's loss, tokens/s, TFLOPS and MFU in OUT/torchtitan.txt. Without CUDA
#   (DEVICE=cpu SMALL=1) a dry run: torchtitan's config, tokenizer, loader and one converted step on the CPU.
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
T_COMPILE=${T_COMPILE:-110} T_DECODE=${T_DECODE:-170} T_SCALE=${T_SCALE:-300}
T_DSTATIC=${T_DSTATIC:-120} T_TABLE2=${T_TABLE2:-170} T_MFU=${T_MFU:-150} T_FFN5120=${T_FFN5120:-45}
T_STRUCT=${T_STRUCT:-60}
T_XL=${T_XL:-240} T_SMOKE=${T_SMOKE:-180} T_MUP=${T_MUP:-120} T_TITAN=${T_TITAN:-300}
STAGES=${STAGES:-smoke ffn ffn-compile ffn-tokens train train-compile decode train-scale decode-static table2-m table2-l mfu-m ffn-5120 ffn-structures-fwd ffn-structures-fwdbwd mup torchtitan}
# the trainer under torchrun needs the Python that runs lowrank_lm
if [ -n "${PY:-}" ]; then :
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi

if [ "${SMALL:-0}" = 1 ]; then  # toy sizes: checks the commands, not the GPU
    WIDTHS=64,128 TOKENS=256 TOKEN_WIDTHS=64 TOKEN_LIST=1,16,256 COMPILE_WIDTHS=64
    TRAIN=(configs/cpu/tiny.yaml --batch 2 --seq 64)
    DECODE=(configs/paper/transformer-m-gqa.yaml configs/paper/wide-structured-m.yaml configs/paper/transformer-m.yaml
            model.num_layers=2 model.vocab_size=512 --batches 1,2 --gen 8)
    ROUNDS=(--rounds 2) FAST=(--rounds 2) DECODE_ROUNDS=(--rounds 2)
    SCALE_CONFIG=configs/cpu/tiny.yaml SCALE_BATCH=8 SCALE_MICRO=4 SCALE_SEQ=256 SCALE_STEPS=${SCALE_STEPS:-20}
    TOY=(model.num_layers=2 model.vocab_size=512)
    DSTATIC=(configs/paper/transformer-m.yaml "${TOY[@]}" --batches 1,2 --gen 8)
    SEARCH=(--batches 1,2 --gen 8) MFU=(configs/cpu/tiny.yaml --batch 2 --seq 64) FFN5120=(--widths 64 --tokens 256)
    XL=(configs/cpu/tiny.yaml --batch 2 --seq 64)
    MUP_CONFIG=configs/cpu/tiny.yaml MUP_WIDTHS=32,64 MUP_LR_WIDTHS="32 64" MUP_LRS="1e-3 2e-3 4e-3 8e-3 1.6e-2"
    MUP_BASE=32 MUP_SEQ=32 MUP_BATCH=4 MUP_STEPS=${MUP_STEPS:-3} MUP_EXTRA=(model.num_layers=2)
else
    WIDTHS=1536,2048,3072,4096,5120,6144 TOKENS=30720 TOKEN_WIDTHS=2048,5120,6144 COMPILE_WIDTHS=2048,5120
    TOKEN_LIST=1,16,128,256,512,1024,1536,2048,4096
    TRAIN=(configs/paper/transformer-s.yaml --batch 16 --seq 1024)
    DECODE=(configs/paper/transformer-m-gqa.yaml configs/paper/wide-structured-m.yaml configs/paper/transformer-m.yaml
            --batches 256 --search --max-batch 4096 --gen 256)
    ROUNDS=() FAST=(--rounds 5 --min-round-s 0.02) DECODE_ROUNDS=(--rounds 1)
    SCALE_CONFIG=configs/paper/transformer-m.yaml SCALE_BATCH=32 SCALE_MICRO=16 SCALE_SEQ=1024
    TOY=()
    DSTATIC=(configs/paper/transformer-m.yaml --batches 1,16,64,256 --gen 128)
    SEARCH=(--batches 256 --search --max-batch 8192 --gen 256) MFU=(configs/paper/transformer-m.yaml --batch 16 --seq 1024)
    FFN5120=(--widths 5120 --tokens 30720) XL=(configs/paper/transformer-xl.yaml --batch 4 --seq 1024)
    SCALE_STEPS=${SCALE_STEPS:-300}
    MUP_CONFIG=configs/paper/transformer-s.yaml MUP_WIDTHS=256,512,1024,2048 MUP_LR_WIDTHS="256 1024"
    MUP_LRS="1e-3 2e-3 4e-3 8e-3 1.6e-2" MUP_BASE=256 MUP_SEQ=256 MUP_BATCH=32 MUP_STEPS=${MUP_STEPS:-200}
    MUP_EXTRA=(model.num_layers=2)
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

if [[ " $STAGES " == *" smoke "* ]]; then  # first: a fast path that fails shows before the long stages
    SMOKE_ARGS=()
    [ "${SMALL:-0}" = 1 ] && SMOKE_ARGS=(--small)
    log "smoke: $PY scripts/gpu_smoke.py (limit ${T_SMOKE}s)"
    if timeout --signal=INT --kill-after=30 "$T_SMOKE" "$PY" "$ROOT/scripts/gpu_smoke.py" "$OUT/smoke" "$DEVICE" \
        ${SMOKE_ARGS[@]+"${SMOKE_ARGS[@]}"} > "$OUT/smoke.txt" 2>> "$OUT/gpu_bench.log"; then
        log "smoke: done"
    else
        log "smoke: FAILED or timed out (exit $?)"
    fi
    cat "$OUT/smoke.txt" >> "$OUT/gpu_bench.log"
fi

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
stage decode-static "$T_DSTATIC" bench decode "${DSTATIC[@]}" --decode eager,static --dtype bf16 "${DECODE_ROUNDS[@]}"
stage table2-m "$T_TABLE2" bench decode configs/paper/transformer-m-gqa.yaml configs/paper/wide-structured-m.yaml \
    ${TOY[@]+"${TOY[@]}"} "${SEARCH[@]}" --decode static --dtype bf16 "${DECODE_ROUNDS[@]}"
stage table2-l "$T_TABLE2" bench decode configs/paper/transformer-l-gqa.yaml configs/paper/wide-structured-l.yaml \
    ${TOY[@]+"${TOY[@]}"} "${SEARCH[@]}" --decode static --dtype bf16 "${DECODE_ROUNDS[@]}"
stage mfu-m "$T_MFU" bench train "${MFU[@]}" --kinds dense --compile on --no-peer --loss-chunk-tokens 0,4096 \
    --dtype bf16 "${ROUNDS[@]}"
stage ffn-5120 "$T_FFN5120" bench ffn "${FFN5120[@]}" --kinds dense,lowrank --fractions 0.32 --mode fwd --dtype bf16 \
    "${ROUNDS[@]}"
for mode in fwd fwdbwd; do
    stage "ffn-structures-$mode" "$T_STRUCT" bench ffn --widths "$WIDTHS" --fractions 0.32 \
        --tokens "$TOKENS" --mode "$mode" --dtype bf16 "${ROUNDS[@]}"
done
stage train-xl "$T_XL" bench train "${XL[@]}" --kinds dense,lowrank --fractions 0.32 --compile on --no-peer \
    --dtype bf16 "${ROUNDS[@]}"

scale_run() {  # scale_run MODE: the trainer, one process under torchrun, train.distributed=MODE
    local mode=$1
    log "train-scale: $mode, $SCALE_CONFIG, $SCALE_STEPS steps of $SCALE_BATCH x $SCALE_SEQ tokens (limit ${T_SCALE}s)"
    # shellcheck disable=SC2086  # SCALE_DATA is a list of overrides
    if timeout --signal=INT --kill-after=60 "$T_SCALE" "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 \
        -m lowrank_lm train "$SCALE_CONFIG" "train.distributed=$mode" train.precision=bf16 train.compile=true \
        "train.global_batch_size=$SCALE_BATCH" "train.micro_batch_size=$SCALE_MICRO" "model.seq_len=$SCALE_SEQ" \
        "train.tokens=$((SCALE_STEPS * SCALE_BATCH * SCALE_SEQ))" train.log_interval=10 train.eval_tokens=32768 \
        train.resume=never train.checkpoint_interval=100000 "train.device=$DEVICE" "train.out_dir=$OUT/train-scale/$mode" \
        ${PEAK_TFLOPS:+"train.peak_tflops=$PEAK_TFLOPS"} \
        ${SCALE_DATA:-data.source=embedded data.tokenizer=bpe-8192 data.val_tokens=65536 "data.dir=$OUT/data"} \
        >> "$OUT/gpu_bench.log" 2>&1; then
        log "train-scale: $mode done"
    else
        log "train-scale: $mode FAILED or timed out (exit $?)"
    fi
}
if [[ " $STAGES " == *" train-scale "* ]]; then
    scale_run fsdp
    scale_run ddp
    "$PY" - "$OUT/train-scale" > "$OUT/train-scale.txt" 2>> "$OUT/gpu_bench.log" <<'PYEOF'
import json, statistics, sys
from pathlib import Path

from lowrank_lm.train.metrics import FLOP_CONVENTION

root = Path(sys.argv[1])
print("| mode | steps | tokens/s | tokens/s per device | MFU | peak memory (MB) |")
print("|---|---|---|---|---|---|")
for mode in ("fsdp", "ddp"):
    run = root / mode
    if not (run / "summary.json").is_file():
        print(f"| {mode} | did not finish (see gpu_bench.log) | | | | |")
        continue
    summary = json.loads((run / "summary.json").read_text())
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    late = [r for r in recs if "tokens_per_s" in r][len(recs) // 2:]  # the second half: compiled and warm
    med = lambda key: statistics.median(r[key] for r in late)  # noqa: E731
    mfu = "unknown" if any(r["mfu"] == "unknown" for r in late) else f"{med('mfu'):.1%}"
    print(f"| {mode} | {summary['steps']} | {med('tokens_per_s'):,.0f} | {med('tokens_per_s_per_device'):,.0f} "
          f"| {mfu} | {summary['peak_memory_mb']:,.0f} |")
print(f"\nMFU per device against its peak; FLOPs: {FLOP_CONVENTION}; medians over the second half of the steps")
PYEOF
    log "train-scale: table in $OUT/train-scale.txt"
    cat "$OUT/train-scale.txt" >> "$OUT/gpu_bench.log"
fi

if [[ " $STAGES " == *" mup "* ]]; then
    MUP=(model.parametrization=mup "model.mup_base_width=$MUP_BASE" "model.seq_len=$MUP_SEQ" "${MUP_EXTRA[@]}"
         "train.global_batch_size=$MUP_BATCH" data.source=embedded data.tokenizer=bpe-8192 "data.dir=$OUT/data")
    for kind in dense lowrank btt; do
        case $kind in
            dense) FFN=() ;; lowrank) FFN=(model.ffn.kind=lowrank model.ffn.fraction=0.32) ;;
            btt) FFN=(model.ffn.kind=btt model.ffn.rank=2) ;;
        esac
        STAGES="$STAGES mup-coord-$kind" stage "mup-coord-$kind" "$T_MUP" coord-check "$MUP_CONFIG" "${MUP[@]}" "${FFN[@]}" --widths "$MUP_WIDTHS" --steps 3
    done
    echo "| kind | width | lr | final train loss |" > "$OUT/mup-lr.txt"
    echo "|---|---|---|---|" >> "$OUT/mup-lr.txt"
    for kind in dense lowrank; do
        FFN=(); [ "$kind" = lowrank ] && FFN=(model.ffn.kind=lowrank model.ffn.fraction=0.32)
        for width in $MUP_LR_WIDTHS; do
            for lr in $MUP_LRS; do
                run="$OUT/mup-lr/$kind-$width-$lr"
                log "mup-lr: $kind width $width lr $lr, $MUP_STEPS steps (limit ${T_MUP}s)"
                timeout --signal=INT --kill-after=30 "$T_MUP" "${CMD[@]}" train "$MUP_CONFIG" "${MUP[@]}" "${FFN[@]}" \
                    "model.hidden_dim=$width" "train.lr=$lr" "train.tokens=$((MUP_STEPS * MUP_BATCH * MUP_SEQ))" \
                    "train.device=$DEVICE" "train.out_dir=$run" train.resume=never train.log_interval=1 \
                    train.eval_tokens=32768 train.checkpoint_interval=100000 >> "$OUT/gpu_bench.log" 2>&1 \
                    || log "mup-lr: $kind $width $lr FAILED or timed out"
                loss=$("$PY" -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1]) if '\"loss\"' in l]; print(r[-1]['loss'] if r else 'none')" "$run/metrics.jsonl" 2>/dev/null || echo none)
                echo "| $kind | $width | $lr | $loss |" >> "$OUT/mup-lr.txt"
            done
        done
    done
    log "mup: coord-check slopes in $OUT/mup-coord-*.txt, learning-rate table in $OUT/mup-lr.txt"
fi

if [[ " $STAGES " == *" torchtitan "* ]]; then
    TITAN_ARGS=(--steps "${TITAN_STEPS:-30}")
    [ "${SMALL:-0}" = 1 ] && TITAN_ARGS+=(--small)
    log "torchtitan: $PY scripts/torchtitan_stage.py (limit ${T_TITAN}s)"
    if timeout --signal=INT --kill-after=30 "$T_TITAN" "$PY" "$ROOT/scripts/torchtitan_stage.py" "$OUT/torchtitan" \
        "$DEVICE" "${TITAN_ARGS[@]}" > "$OUT/torchtitan.txt" 2>> "$OUT/gpu_bench.log"; then
        log "torchtitan: done"
    else
        log "torchtitan: FAILED or timed out (exit $?)"
    fi
    cat "$OUT/torchtitan.txt" >> "$OUT/gpu_bench.log"
fi

log "all stages finished; tables: $OUT/*.txt, JSON/markdown/PNG: $OUT/*/"

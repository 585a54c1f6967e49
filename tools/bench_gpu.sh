#!/usr/bin/env bash
# GPU figures of paper-size LV-MAE (tools/bench_model.py PAPER_TARGETS), one JSON file per part (each part < 10 min on an H100):
#   tools/bench_gpu.sh OUT_DIR [main|long|ragged|zero|memory|graphs|all]      (default: all)
# main:   16 x 256: reference, fast, +bf16, +fused AdamW, +packed, +compile, +ckpt; data-loader
#         share; profile of the fast bf16 step (top ops + chrome trace)
# long:   batch 1, 4,096 .. 65,536 segments: longest sequence that fits, speed-up at each length
# ragged: 16 x 256 with lengths uniform in [2, 256] (padding): what varlen packing saves
# zero:   DeepSpeed ZeRO 0-3 through the project's engine against the torch engine
# graphs: 16 x 256: torch.compile's default mode against reduce-overhead (CUDA graphs: is the
#         eager step bound by kernel launches? ~3,800 non-view aten ops per forward+backward at
#         paper depth under bf16 autocast, counted on CPU)
# memory: the memory fit of tools/bench_memory.py on the GPU, checked against the full paper-size
#         model at 32,768 segments (and 3+2 blocks at 12,288): predicted vs allocator peak
# EXTRA="..." is appended to every command (later flags win), e.g. a CPU smoke run:
#   EXTRA="--preset cpu-tiny --device cpu --threads 1 --length 32 64" tools/bench_gpu.sh /tmp/b
set -euo pipefail
out=${1:?usage: tools/bench_gpu.sh OUT_DIR [main|long|ragged|zero|memory|graphs|all]}
part=${2:-all}
py=${PYTHON:-python}
cd "$(dirname "$0")/.."
mkdir -p "$out"
# shellcheck disable=SC2086  # EXTRA is a list of flags
bench() { "$py" tools/bench_model.py --preset paper --device cuda "$@" ${EXTRA:-}; }
fast=fast+bf16+fused

if [[ $part == main || $part == all ]]; then
  bench --profile "$fast" --trace "$out/trace_16x256.json" --out "$out/main_16x256.json" >/dev/null
fi
if [[ $part == long || $part == all ]]; then
  bench --batch 1 --length 4096 8192 16384 32768 65536 --warmup 2 --repeats 5 --no-data \
    --variants reference "$fast" "$fast+packed" "$fast+ckpt" --out "$out/long_batch1.json" >/dev/null
fi
if [[ $part == ragged || $part == all ]]; then
  bench --ragged --no-data --variants reference "$fast" "$fast+packed" --out "$out/ragged_16x256.json" >/dev/null
fi
if [[ $part == zero || $part == all ]]; then
  bench --no-data --variants "$fast" --zero 0 1 2 3 --out "$out/zero_16x256.json" >/dev/null  # ZeRO: fused on CUDA too
fi
if [[ $part == graphs || $part == all ]]; then
  bench --no-data --variants reference "$fast" "$fast+compile" "$fast+cudagraphs" --out "$out/graphs_16x256.json" \
    >/dev/null
fi
if [[ $part == memory || $part == all ]]; then
  # shellcheck disable=SC2086
  "$py" tools/bench_memory.py --preset paper --device cuda --check 3,2,12288 32,8,32768 ${MEMEXTRA:-} \
    --out "$out/memory.json" >/dev/null
fi
echo "figures in $out/*.json"

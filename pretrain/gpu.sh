#!/usr/bin/env bash
# One GPU with the DeepSpeed launcher (paper size, bf16, ZeRO-2 by default).
USAGE="pretrain/gpu.sh STORE[,STORE...] RUN_DIR [key=value ...]" DEFAULT_CONFIG=paper.yaml
source "$(dirname "$0")/_common.sh"
exec deepspeed --num_gpus 1 --no_local_rank --module lvmae.cli "${ARGS[@]}"

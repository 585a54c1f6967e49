#!/usr/bin/env bash
# One node, NGPUS GPUs (on a CPU-only machine: NGPUS CPU processes over gloo).
USAGE="pretrain/node.sh NGPUS STORE[,STORE...] RUN_DIR [key=value ...]" DEFAULT_CONFIG=paper.yaml
NGPUS=${1:?usage: $USAGE}
shift
source "$(dirname "$0")/_common.sh"
exec deepspeed --num_gpus "$NGPUS" --master_port "${MASTER_PORT:-29500}" --no_local_rank --module lvmae.cli "${ARGS[@]}"

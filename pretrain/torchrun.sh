#!/usr/bin/env bash
# torchrun instead of the DeepSpeed launcher (same loop and engine). Multi-node: run on every
# node with NNODES, NODE_RANK and MASTER_ADDR set (e.g. from SLURM).
USAGE="pretrain/torchrun.sh NPROC STORE[,STORE...] RUN_DIR [key=value ...]" DEFAULT_CONFIG=paper.yaml
NPROC=${1:?usage: $USAGE}
shift
source "$(dirname "$0")/_common.sh"
exec torchrun --nproc_per_node "$NPROC" --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" \
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" -m lvmae.cli "${ARGS[@]}"

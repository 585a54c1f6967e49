#!/usr/bin/env bash
# Several nodes from a DeepSpeed hostfile ("host slots=8" per line; passwordless ssh + pdsh).
# Run on the first host. Every node needs the same venv, this repo at the same path, and
# STORE / RUN_DIR on a shared file system (checkpoints are written by all ranks).
USAGE="pretrain/multinode.sh HOSTFILE STORE[,STORE...] RUN_DIR [key=value ...]" DEFAULT_CONFIG=paper.yaml
HOSTFILE=${1:?usage: $USAGE}
shift
source "$(dirname "$0")/_common.sh"
exec deepspeed --hostfile "$HOSTFILE" --master_addr "${MASTER_ADDR:-$(hostname)}" \
    --master_port "${MASTER_PORT:-29500}" --no_local_rank --module lvmae.cli "${ARGS[@]}"

#!/usr/bin/env bash
# One process on CPU (CI, laptops): DeepSpeed over gloo; add deepspeed.engine=torch for plain PyTorch.
USAGE="pretrain/cpu.sh STORE[,STORE...] RUN_DIR [key=value ...]" DEFAULT_CONFIG=tiny_cpu.yaml
source "$(dirname "$0")/_common.sh"
exec lvmae "${ARGS[@]}"

# Sourced by the launch scripts. Turns "STORE[,STORE...] RUN_DIR [key=value ...]" into the
# arguments of `lvmae pretrain` in ARGS. Always passes --resume: a requeued job continues
# from RUN_DIR/checkpoints/latest, a new one starts fresh. CONFIG=FILE picks another config.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ $# -lt 2 ]]; then
    echo "usage: $USAGE" >&2
    exit 2
fi
STORE=$1 RUN=$2
shift 2
ARGS=(pretrain --resume -c "${CONFIG:-$HERE/$DEFAULT_CONFIG}" "data.stores=[$STORE]" "run.out_dir=$RUN" "$@")

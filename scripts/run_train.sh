#!/usr/bin/env bash
# Multi-process training on one machine: one process per GPU, launched by torchrun.
#
#   NGPU=2 scripts/run_train.sh --preset paper-d1024 --out runs/d1024
#   NGPU=2 scripts/run_train.sh --out runs/d1024 --resume          # any NGPU resumes any run
#
# Every `sparse-tf train` flag passes through. Each rank's output goes to its own file under
# $LOG_DIR (default OUT.logs, beside the run folder; one subfolder per launch); the console
# shows rank 0.
# The rendezvous is on localhost (--standalone); for several machines see the README.
set -euo pipefail

NGPU="${NGPU:-1}"
preset="tiny-cpu"
out=""
args=("$@")
for ((i = 0; i + 1 < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        --out) out="${args[$((i + 1))]}" ;;
        --preset) preset="${args[$((i + 1))]}" ;;
    esac
done
out="${out:-runs/$preset}"  # sparse-tf train's own default
LOG_DIR="${LOG_DIR:-${out%/}.logs}"
mkdir -p "$LOG_DIR"

exec torchrun --standalone --nproc-per-node "$NGPU" \
    --log-dir "$LOG_DIR" --tee 3 --local-ranks-filter 0 \
    -m sparse_tf.cli train "$@"

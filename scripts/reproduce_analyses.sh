#!/usr/bin/env bash
# The three analyses' reproductions (`sparse-tf analyze`), with every model trained in
# parallel on one machine first (the models are small: on one GPU they share it well):
#   ace        3 seeds x {dense, sparse} 1-layer Markov-chain models
#   rotation   3 seeds x {dense, sparse} Dyck-3 models
#   factored   {dense, sparse} models of the 5-factor process, and a dense one with noise 0.1
#
#   scripts/reproduce_analyses.sh [OUT] [train|analyze|all]    # default OUT=runs/analyses, all
#
# The analyses reuse finished models, so `train` and `analyze` can run as separate steps.
# SEEDS (default 3) and STEPS (default: each preset's) in the environment change the runs, e.g.
# SEEDS=2 STEPS=100 for a quick CPU try.
# Reports: OUT/{ace,rotation,factored,factored-eps0.1}/report.{txt,json}.
set -euo pipefail

OUT="${1:-runs/analyses}"
STAGE="${2:-all}"
SEEDS="${SEEDS:-3}"
STEPS_TRAIN=() STEPS_ANALYZE=()
if [[ -n ${STEPS:-} ]]; then STEPS_TRAIN=(--max-steps "$STEPS") STEPS_ANALYZE=(--steps "$STEPS"); fi
st() { python -m sparse_tf.cli "$@"; }

train_one() {  # PRESET KIND SEED DIR [extra train flags]
    local preset=$1 kind=$2 seed=$3 dir=$4
    shift 4
    local name=$preset
    [[ $kind == dense ]] && name="dense-$preset"
    local run="$dir/models/$kind-seed$seed"
    local flags=(--seed "$seed" --wandb disabled --progress none --eval-every 0 --keep-last 1)
    if [[ -f $run/run.json ]]; then
        st train --out "$run" --resume "${flags[@]}" "$@"
    else
        st train --preset "$name" --out "$run" "${flags[@]}" "${STEPS_TRAIN[@]}" "$@"
    fi
}

if [[ $STAGE == train || $STAGE == all ]]; then
    # Token caches first, one process each (parallel runs would all build them).
    python - <<'PY'
from sparse_tf.data.pipeline import DataConfig, prepare_data
for source, vocab, n_ctx in [("process:markov4", 5, 33), ("process:dyck3", 7, 64),
                             ("process:factored", 433, 9), ("process:factored-eps0.1", 433, 9)]:
    prepare_data(DataConfig(source=source), vocab, n_ctx)
PY
    mkdir -p "$OUT/logs"
    export OMP_NUM_THREADS=1
    pids=()
    for kind in dense sparse; do
        for ((seed = 0; seed < SEEDS; seed++)); do
            train_one ace-markov $kind $seed "$OUT/ace" >"$OUT/logs/ace-$kind-$seed.log" 2>&1 &
            pids+=($!)
            train_one rotation-dyck $kind $seed "$OUT/rotation" \
                >"$OUT/logs/rotation-$kind-$seed.log" 2>&1 &
            pids+=($!)
        done
        train_one factored-process $kind 0 "$OUT/factored" >"$OUT/logs/factored-$kind.log" 2>&1 &
        pids+=($!)
    done
    train_one factored-process dense 0 "$OUT/factored-eps0.1" --data.source process:factored-eps0.1 \
        >"$OUT/logs/factored-eps0.1-dense.log" 2>&1 &
    pids+=($!)
    failed=0
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    if ((failed)); then
        tail -n 3 "$OUT"/logs/*.log >&2
        exit 1
    fi
    unset OMP_NUM_THREADS
fi

if [[ $STAGE == analyze || $STAGE == all ]]; then
    st analyze ace --seeds "$SEEDS" --out "$OUT/ace" "${STEPS_ANALYZE[@]}"
    st analyze rotation --seeds "$SEEDS" --out "$OUT/rotation" --sae-steps 8000 "${STEPS_ANALYZE[@]}"
    st analyze factored --out "$OUT/factored" "${STEPS_ANALYZE[@]}"
    st analyze factored --noise 0.1 --kinds dense --out "$OUT/factored-eps0.1" "${STEPS_ANALYZE[@]}"
fi

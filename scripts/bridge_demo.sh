#!/usr/bin/env bash
# The bridges end to end, on the Python standard library (no network):
#   1. a dense Hugging Face GPT-2 (preset gpt2-tiny-cpu), saved with save_pretrained;
#   2. a weight-sparse model (preset tiny-cpu) trained with bridges to it;
#   3. the same sparse model trained without bridges (what bridging costs its own loss);
#   4. both sparse models on single_double_quote, and perturbations through the bridges.
#
#   scripts/bridge_demo.sh [OUT]        # default OUT=runs/bridge-demo; a GPU takes minutes
#
# Extra `sparse-tf train` flags for all three runs can go in $TRAIN_FLAGS
# (e.g. TRAIN_FLAGS="--max-steps 200" for a quick CPU try).
set -euo pipefail

OUT="${1:-runs/bridge-demo}"
FLAGS=(--wandb disabled --progress lines --log-every 100 ${TRAIN_FLAGS:-})
st() { python -m sparse_tf.cli "$@"; }

st train --preset gpt2-tiny-cpu --out "$OUT/gpt2" "${FLAGS[@]}"
st bridge --dense "$OUT/gpt2/final" --preset tiny-cpu --out "$OUT/bridged" "${FLAGS[@]}"
st train --preset tiny-cpu --out "$OUT/plain" "${FLAGS[@]}"

st eval --model "$OUT/plain/final" --task single_double_quote
st eval --model "$OUT/bridged/final" --task single_double_quote
for site in L0.attn_in L0.mlp_in L1.attn_in L1.mlp_in final; do
    st perturb --model "$OUT/bridged/final" --task single_double_quote --site "$site" \
        --mode flip --json "$OUT/perturb-$site.json"
done
st perturb --model "$OUT/bridged/final" --task single_double_quote --site L1.attn_in --mode zero

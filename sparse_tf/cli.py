"""The `sparse-tf` command line.

    sparse-tf describe --model.vocab-size 2048 --model.n-ctx 256 --model.n-layer 8 \
        --model.d-model 1024 --sparsity.l0 0.015625

Library code never parses argv; this module is the only place that does.
"""

from __future__ import annotations

import sys

import torch
import tyro

from sparse_tf.config import ConfigError
from sparse_tf.model import GPT, GPTConfig
from sparse_tf.sparsity import COLS, ROWS, SparsityConfig, abstopk_k, kept_count


def describe(model: GPTConfig, sparsity: SparsityConfig = SparsityConfig(l0=1 / 64)) -> None:  # noqa: B008
    """Print a model's shape, parameter counts and the L0 budget of every sparse matrix.

    Nothing is allocated (the model is built on the meta device), so paper-scale shapes are fine.
    """
    print(format_description(model, sparsity))


def format_description(cfg: GPTConfig, sparsity: SparsityConfig) -> str:
    with torch.device("meta"):
        model = GPT(cfg)
    weights = model.sparse_weights()
    n_total = sum(p.numel() for p in model.parameters())
    n_sparse = sum(w.param.numel() for w in weights)
    acts = "off"
    if cfg.afrac is not None:
        k_model, k_mlp = abstopk_k(cfg.afrac, cfg.d_model), abstopk_k(cfg.afrac, cfg.d_mlp)
        acts = f"{cfg.afrac} (k = {k_model} of d_model, {k_model} of q/k/v, {k_mlp} of d_mlp)"
    axis = {ROWS: "rows", COLS: "columns", None: "-"}
    l0 = sparsity.l0
    lines = [
        f"GPT: {cfg.n_layer} layers, d_model {cfg.d_model}, {cfg.n_head} heads x {cfg.d_head}, "
        f"d_mlp {cfg.d_mlp}, vocab {cfg.vocab_size}, n_ctx {cfg.n_ctx}",
        f"AbsTopK: {acts}; bigram {'on' if cfg.bigram else 'off'}; "
        f"attention sinks {'on' if cfg.attn_sink else 'off'}; "
        f"positional embedding {'on' if cfg.pos_emb else 'off'}",
        f"parameters: {n_total:,} ({n_sparse:,} in {len(weights)} sparse matrices, "
        f"{n_total - n_sparse:,} dense: biases, norms, sinks, bigram)",
        "",
        f"at L0 {l0:g} (embeddings x{sparsity.embed_mult:g}, "
        f">= {sparsity.min_per_neuron} nonzeros per neuron):",
        f"{'matrix':<32} {'shape':>13} {'entries':>12} {'kept':>10} {'density':>8}  neurons",
    ]
    kept_total = 0
    for w in weights:
        kept = kept_count(w, l0, sparsity)
        kept_total += kept
        shape = " x ".join(str(s) for s in w.param.shape)
        lines.append(
            f"{w.name:<32} {shape:>13} {w.param.numel():>12,} {kept:>10,} "
            f"{kept / w.param.numel():>8.4f}  {axis[w.neuron_dim]}"
        )
    lines.append(f"{'total':<32} {'':>13} {n_sparse:>12,} {kept_total:>10,}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `sparse-tf` console script."""
    try:
        tyro.extras.subcommand_cli_from_dict({"describe": describe}, prog="sparse-tf", args=argv)
    except ConfigError as e:
        sys.exit(f"sparse-tf: error: {e}")


if __name__ == "__main__":
    main()

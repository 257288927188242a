"""The model card (README.md) of an exported model folder: what the Hugging Face Hub shows.

`model_card(model, train, results)` is a pure function of the model config, the training config
(as saved in config.json; None for a converted model) and what is known about the result
(`summary.json`'s `steps` and `val_loss`, and task scores when a `sparse-tf eval` report is
given). The YAML header (`library_name: sparse_tf`, tags) is what the Hub indexes; the body says
what the model is and how to load it. Nothing here reads or writes files.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sparse_tf.model import GPTConfig

LIBRARY_NAME = "sparse_tf"
TAGS = ["sparse_tf", "weight-sparse", "circuit-sparsity", "interpretability", "gpt2"]


def _fraction(x: float) -> str:
    """1/64 rather than 0.015625 where the fraction is a reciprocal of an integer."""
    if 0 < x < 1 and abs(1 / x - round(1 / x)) < 1e-9:
        return f"1/{round(1 / x)}"
    return f"{x:g}"


def _architecture(m: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Rows describing a sparse_tf GPT config dict, or a dense GPT-2's."""
    if m.get("arch", GPTConfig.ARCH) != GPTConfig.ARCH:
        return [
            (
                "architecture",
                f"dense Hugging Face GPT-2: {m.get('n_layer')} layers, d_model "
                f"{m.get('d_model')}, context {m.get('n_ctx')}, vocabulary {m.get('vocab_size')}",
            )
        ]
    cfg = GPTConfig.from_dict(dict(m))
    extras = [
        name
        for name, on in (
            ("bigram table", cfg.bigram),
            ("learned positions", cfg.pos_emb),
            ("attention sinks", cfg.attn_sink),
            ("biases", cfg.bias),
        )
        if on
    ]
    rows = [
        (
            "architecture",
            f"{cfg.n_layer} layers, d_model {cfg.d_model}, {cfg.n_head} heads x {cfg.d_head}, "
            f"d_mlp {cfg.d_mlp}, context {cfg.n_ctx}, vocabulary {cfg.vocab_size}; RMSNorm, "
            f"GELU, untied embeddings{''.join(', ' + e for e in extras)}",
        )
    ]
    abstopk = (
        f"keeps {_fraction(cfg.afrac)} of the entries per token at {', '.join(cfg.afrac_sites)}"
        if cfg.afrac is not None and cfg.afrac_sites
        else "off"
    )
    rows.append(("AbsTopK (activations)", abstopk))
    return rows


def _training(train: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows = []
    if isinstance(sp := train.get("sparsity"), Mapping) and "l0" in sp:
        l0 = float(sp["l0"])
        if l0 >= 1.0:
            rows.append(("weight L0", "dense (L0 1)"))
        else:
            mult = sp.get("embed_mult", 4.0)
            ratio = "d_model/256" if mult is None else f"{mult:g}"
            rows.append(
                (
                    "weight L0",
                    f"{_fraction(l0)} of each attention and MLP matrix (embeddings "
                    f"min(1, {ratio} x L0)), annealed from dense between "
                    f"{sp.get('anneal_start', 0.01):g} and {sp.get('anneal_end', 0.5):g} of "
                    "training",
                )
            )
    if isinstance(data := train.get("data"), Mapping) and "source" in data:
        rows.append(("data", f"`{data['source']}` (tokenizer: {data.get('tokenizer', 'bpe')})"))
    if "max_steps" in train:
        tokens = ""
        if isinstance(m := train.get("model"), Mapping) and "batch_size" in train:
            tokens = f" x {train['batch_size']} sequences of {m.get('n_ctx')} tokens"
        rows.append(("steps", f"{train['max_steps']:,}{tokens}"))
    return rows


def model_card(
    model: Mapping[str, Any],
    train: Mapping[str, Any] | None = None,
    results: Mapping[str, Any] | None = None,
) -> str:
    """README.md for a model folder.

    Args:
        model: the model config dict (config.json's `model`).
        train: the training config dict (config.json's `train`), or None.
        results: what is known of the result: `val_loss`, and `tasks` (task name -> a dict
            with `loss` and `accuracy`, as `sparse-tf eval --json` writes), each optional.
    """
    # Plain YAML written out: names without characters YAML would need to quote.
    tags = "".join(f"- {t}\n" for t in TAGS)
    header = f"library_name: {LIBRARY_NAME}\ntags:\n{tags}pipeline_tag: text-generation\n"
    rows = _architecture(model)
    train = dict(train or {})
    if (source := train.get("converted_from")) is not None:
        rows.append(("source", f"converted from a circuit_sparsity folder (`{source}`)"))
    rows += _training(train)
    results = dict(results or {})
    if results.get("val_loss") is not None:
        rows.append(("validation loss", f"{results['val_loss']:.4f} (nats per token)"))
    table = "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])
    parts = [
        f"---\n{header}---",
        "# A weight-sparse transformer",
        "A GPT-2-style transformer whose weights are mostly zero, trained as in Gao et al. "
        '2025, "Weight-sparse transformers have interpretable circuits", with sparse_tf.',
        table,
    ]
    if tasks := results.get("tasks"):
        lines = ["| task | loss | accuracy |", "|---|---|---|"]
        for name, score in sorted(tasks.items()):
            lines.append(f"| {name} | {score['loss']:.3f} | {score['accuracy']:.3f} |")
        parts += ["## Hand-built tasks (contrast loss; chance 0.693 / 0.5)", "\n".join(lines)]
    parts += [
        "## Loading",
        "```python\n"
        "from sparse_tf import GPT, load_tokenizer\n"
        "from sparse_tf.hub import model_folder\n\n"
        'model = GPT.from_pretrained("REPO_ID")  # or a local folder\n'
        'tokenizer = load_tokenizer(model_folder("REPO_ID"))\n'
        "```",
        "The folder holds `model.safetensors` (dense weights, explicit zeros), "
        "`model.sparse.safetensors` (sparse runs: the same weights, sparse matrices in CSR "
        "form), "
        "`config.json`, `tokenizer.json` and `manifest.json` (size and sha256 of every file, "
        "checked on load); `sparse_tf.load_model(folder)` reads it as well.",
    ]
    return "\n\n".join(parts) + "\n"

"""Named training configs: `sparse-tf train --preset NAME`, or `preset(NAME)` in Python.

Every weight-sparse preset has a dense twin, `dense-NAME`: the same model, data, optimizer and
steps with AbsTopK off and no weight projection (L0 = 1) — the paper's dense baseline.
`gpt2-*` presets train a dense Hugging Face GPT-2 on the same data and tokenizer (the dense side
of bridges, `sparse_tf.bridges`).
"""

from __future__ import annotations

import dataclasses

# The torch-free config modules only: `sparse-tf train --help` lists the presets.
from sparse_tf.config import ConfigError
from sparse_tf.data.config import DataConfig
from sparse_tf.gpt2_config import GPT2Config
from sparse_tf.model_config import GPTConfig
from sparse_tf.optim_config import OptimConfig
from sparse_tf.sparsity_config import SparsityConfig
from sparse_tf.training.config import TrainConfig

DEFAULT_PRESET = "tiny-cpu"

_SPARSE: dict[str, tuple[str, TrainConfig]] = {
    "tiny-cpu": (
        "2 layers, d_model 128, ctx 128, L0 1/16, 32 x 128 tokens per step on the Python "
        "standard library: trains and exports in about 7 minutes on 2 CPU cores",
        TrainConfig(
            model=GPTConfig(vocab_size=2048, n_ctx=128, n_layer=2, d_model=128),
            sparsity=SparsityConfig(l0=1 / 16),
            max_steps=1000,
            batch_size=32,
        ),
    ),
    "paper-d1024": (
        "the official recipe: 8 layers, d_model 1024, 64 heads x 16, ctx 256, vocab 2048, "
        "L0 1/64, 512 x 256 tokens per step (micro-batches of 64), 32B tokens; for GPUs",
        TrainConfig(
            model=GPTConfig(vocab_size=2048, n_ctx=256, n_layer=8, d_model=1024),
            sparsity=SparsityConfig(l0=1 / 64),
            max_steps=244_140,  # 32e9 tokens / (512 x 256), the official script's budget
            batch_size=512,
            micro_batch_size=64,
        ),
    ),
    # paper-d1024 with the official train.py's step where sparse_tf's own differs: the
    # embedding densities on the official line from dense, the d_model/256 ratio, floor kept
    # counts, and the schedules read before each step (the first step has LR 0); and its
    # positional table `wpe`: block_size = 1024 rows, zeroed but trained (train.py freezes the
    # module, not the parameter), projected at the block L0 over all its rows.
    "paper-official": (
        "paper-d1024 with the official train.py's step: embedding density linear from dense, "
        "ratio d_model/256, int() kept counts, schedules at step/T (LR 0 at step 0), and its "
        "zero-initialised 1024-row positional table at the block L0; for GPUs",
        TrainConfig(
            model=GPTConfig(
                vocab_size=2048,
                n_ctx=256,
                n_layer=8,
                d_model=1024,
                pos_emb=True,
                pos_rows=1024,
                pos_init="zeros",
            ),
            sparsity=SparsityConfig(
                l0=1 / 64,
                embed_mult=None,
                embed_schedule="linear",
                kept_rounding="floor",
                anneal_clock="before_step",
                pos_density="block",
            ),
            optim=OptimConfig(warmup_clock="before_step"),
            max_steps=244_140,
            batch_size=512,
            micro_batch_size=64,
        ),
    ),
    # Small enough to train many of (dense baselines at several widths and learning rates, a
    # width x L0 sweep) and still solve most tasks: the circuit benchmarks' shape.
    "circuits-d512": (
        "4 layers, d_model 512, ctx 128, L0 1/16, 64 x 128 tokens per step, 5,000 steps on the "
        "Python standard library: the sparse model of benchmarks/circuit_size.py and the base of "
        "benchmarks/frontier.py; a few minutes on a GPU",
        TrainConfig(
            model=GPTConfig(vocab_size=2048, n_ctx=128, n_layer=4, d_model=512),
            sparsity=SparsityConfig(l0=1 / 16),
            max_steps=5000,
            batch_size=64,
        ),
    ),
    # The small models of the three analyses (`sparse-tf analyze`), on synthetic processes:
    # the papers' shapes (learned positions, no bigram table, which would let a Markov model
    # skip the residual stream altogether), weight-sparse; their dense twins are the papers'.
    "ace-markov": (
        "1 layer, d_model 64 (4 heads), ctx 33, learned positions, no bigram, L0 1/4, on the "
        "4-state Markov chain (process:markov4): the ACE analysis's model; ~10 s on a CPU",
        TrainConfig(
            model=GPTConfig(
                vocab_size=5, n_ctx=33, n_layer=1, d_model=64, bigram=False, pos_emb=True
            ),
            sparsity=SparsityConfig(l0=1 / 4),
            data=DataConfig(source="process:markov4"),
            max_steps=600,
            batch_size=64,
        ),
    ),
    "rotation-dyck": (
        "2 layers, d_model 64 (4 heads), ctx 64, learned positions, no bigram, L0 1/4, on "
        "Dyck-3 bracket strings (process:dyck3): the rotation analysis's model; minutes on a GPU",
        TrainConfig(
            model=GPTConfig(
                vocab_size=7, n_ctx=64, n_layer=2, d_model=64, bigram=False, pos_emb=True
            ),
            sparsity=SparsityConfig(l0=1 / 4),
            data=DataConfig(source="process:dyck3"),
            max_steps=4000,
            batch_size=64,
        ),
    ),
    "factored-process": (
        "4 layers, d_model 120 (3 heads x 40), ctx 9, learned positions, no bigram, L0 1/4, "
        "on the 5-factor process (process:factored, 432 tokens): the factored analysis's model; "
        "minutes on a GPU",
        TrainConfig(
            model=GPTConfig(
                vocab_size=433,
                n_ctx=9,
                n_layer=4,
                d_model=120,
                d_head=40,
                bigram=False,
                pos_emb=True,
            ),
            sparsity=SparsityConfig(l0=1 / 4),
            data=DataConfig(source="process:factored"),
            max_steps=10_000,
            batch_size=2048,
        ),
    ),
}


def dense_twin(cfg: TrainConfig) -> TrainConfig:
    """The same run with AbsTopK off and dense weights."""
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, afrac=None),
        sparsity=dataclasses.replace(cfg.sparsity, l0=1.0),
    )


_HF_GPT2: dict[str, tuple[str, TrainConfig]] = {
    "gpt2-tiny-cpu": (
        "a dense Hugging Face GPT-2 (2 layers, d_model 128, ctx 128) on tiny-cpu's data and "
        "tokenizer, saved with save_pretrained: the dense model to bridge tiny-cpu models to",
        TrainConfig(
            model=GPT2Config(vocab_size=2048, n_ctx=128, n_layer=2, d_model=128),
            sparsity=SparsityConfig(l0=1.0),
            max_steps=1000,
            batch_size=32,
        ),
    ),
}

PRESETS: dict[str, tuple[str, TrainConfig]] = {
    **_SPARSE,
    **{
        f"dense-{name}": (f"dense twin of {name}: AbsTopK off, L0 1", dense_twin(cfg))
        for name, (_, cfg) in _SPARSE.items()
    },
    **_HF_GPT2,
}


def preset(name: str) -> TrainConfig:
    """The TrainConfig of a named preset."""
    if name not in PRESETS:
        raise ConfigError(f"--preset {name!r}: unknown preset; choose from {sorted(PRESETS)}")
    return PRESETS[name][1]

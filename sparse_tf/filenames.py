"""Every name sparse_tf gives a file or folder on disk, in one place.

Folders written by earlier versions must keep loading: renaming one of these means reading
the old name too (a migration in the loader that reads it).
"""

from __future__ import annotations

# A run folder (`sparse-tf train --out OUT`).
RUN_FILE = "run.json"  # config, versions, device, git revision, corpus digest, resumes
RUN_TOML_FILE = "config.toml"  # the config and options as `sparse-tf train --config` reads them
SUMMARY_FILE = "summary.json"  # final val loss, tokens/s, export sizes, nonzeros
METRICS_FILE = "metrics.jsonl"  # one JSON record per log step
FINAL_DIR = "final"  # the exported model
WANDB_DIR = "wandb"  # the Weights & Biases run
STEP_DIR_PREFIX = "step-"  # step-N/: the checkpoint after N optimizer steps
LOCK_FILE = ".sparse_tf.lock"  # held by the job working in a folder (`sparse_tf.io`)

# A model folder: a checkpoint (step-N/) or an export (final/, `export_model`).
MODEL_FILE = "model.safetensors"
SPARSE_MODEL_FILE = "model.sparse.safetensors"  # CSR-compressed sparse matrices
OPTIMIZER_FILE = "optimizer.safetensors"  # checkpoints only
RNG_FILE = "rng.safetensors"  # checkpoints only
STATE_FILE = "state.json"  # checkpoints only: step, data position, run id
SHARDS_DIR = "shards"  # checkpoints of FSDP runs: one safetensors file per rank
CONFIG_FILE = "config.json"  # model config + training config (for a GPT-2: Hugging Face's)
TOKENIZER_FILE = "tokenizer.json"
MODEL_CARD_FILE = "README.md"  # exports only: the model card (what the Hugging Face Hub shows)
MANIFEST_FILE = "manifest.json"  # size and sha256 of every file, written last
HF_TRAIN_CONFIG_FILE = "sparse_tf.json"  # beside a dense GPT-2's Hugging Face files
BRIDGES_FILE = "bridges.safetensors"  # a bridged export's encoders and decoders
BRIDGES_META = "bridges.json"  # ... their sites, widths and dense model

# OpenAI's released circuit_sparsity layout (`sparse_tf.official`).
OFFICIAL_CONFIG_FILE = "beeg_config.json"  # the official GPTConfig as JSON
OFFICIAL_WEIGHTS_FILE = "final_model.pt"  # a plain state dict (read with weights_only=True)
VIZ_DATA_FILE = "viz_data.pt"  # a circuit for the official viewer (`pruning.circuit_data`)

# A circuit folder (`sparse-tf prune --out`).
CIRCUIT_FILE = "circuit.json"
MEANS_FILE = "means.safetensors"  # ablation means per hook name
SCORES_FILE = "scores.safetensors"  # every node's score
HTML_FILE = "circuit.html"  # the viewer
LOSS_VS_K_FILE = "loss_vs_k.png"  # the viewer's loss-vs-k curve as an image ([plot] extra)

# A run's plots (`sparse-tf plot RUN_DIR`): one PNG per chart, named in `sparse_tf.plots`
# (loss.png, l0.png, lr.png, tokens_per_s.png), and a page embedding them.
PLOTS_DIR = "plots"  # inside the run folder, by default
PLOTS_HTML_FILE = "plots.html"

# An analysis folder (`sparse-tf analyze NAME --out`).
REPORT_TEXT_FILE = "report.txt"
REPORT_JSON_FILE = "report.json"


def step_dir_name(step: int) -> str:
    """The checkpoint folder's name after `step` optimizer steps."""
    return f"{STEP_DIR_PREFIX}{step}"

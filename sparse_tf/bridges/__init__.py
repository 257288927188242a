"""Bridges between a weight-sparse model and a dense Hugging Face GPT-2 (paper section 2.3).

    from sparse_tf.bridges import GPT2Sites, SparseSites, Bridges, BridgeConfig, bridge_losses

`sites` reads and resumes both models at their 2L + 1 residual-stream sites; `bridge` holds
the per-site encoders/decoders and the training losses (normalised MSE both ways, hybrid KL
dense→sparse and sparse→dense); `dense` loads the dense GPT-2 (a real one, or the
`sparse_tf.gpt2` model trained by `sparse-tf train --preset gpt2-tiny-cpu`) and checks that
both use one tokenizer;
`model` is what `sparse-tf bridge` trains and exports (`load_bridged` reads it back);
`objective` plugs it into the trainer (`BridgedTrainConfig`, `train(BridgedTrainConfig(...),
RunOptions(...))`);
`perturb` edits the sparse residual at a site and measures the decoded edit's effect on the
dense model's task logit difference (`sparse-tf perturb`).
"""

from sparse_tf.bridges.bridge import (
    BridgeConfig,
    BridgeLosses,
    Bridges,
    bridge_losses,
    kl_from,
    nmse,
    site_map,
)
from sparse_tf.bridges.dense import (
    BridgeError,
    check_same_tokenizer,
    dense_tokenizer,
    load_gpt2,
)
from sparse_tf.bridges.model import BridgedModel, load_bridged
from sparse_tf.bridges.objective import BridgedObjective, BridgedTrainConfig
from sparse_tf.bridges.perturb import (
    Edit,
    PerturbationResult,
    class_channels,
    perturb,
    perturb_folder,
)
from sparse_tf.bridges.sites import GPT2Sites, ResidualSites, SparseSites, site_name

__all__ = [
    "BridgeConfig",
    "BridgeError",
    "BridgeLosses",
    "BridgedModel",
    "BridgedObjective",
    "BridgedTrainConfig",
    "Bridges",
    "Edit",
    "GPT2Sites",
    "PerturbationResult",
    "ResidualSites",
    "SparseSites",
    "bridge_losses",
    "check_same_tokenizer",
    "class_channels",
    "dense_tokenizer",
    "kl_from",
    "load_bridged",
    "load_gpt2",
    "nmse",
    "perturb",
    "perturb_folder",
    "site_map",
    "site_name",
]

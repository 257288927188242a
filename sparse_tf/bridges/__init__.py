"""Bridges between a weight-sparse model and a dense Hugging Face GPT-2 (paper section 2.3).

    from sparse_tf.bridges import GPT2Sites, SparseSites, Bridges, BridgeConfig, bridge_losses

`sites` reads and resumes both models at their 2L + 1 residual-stream sites; `bridge` holds
the per-site encoders/decoders and the training losses (normalised MSE both ways, hybrid KL
dense→sparse and sparse→dense); `dense` loads the dense GPT-2 (a real one, or the
`sparse_tf.gpt2` model trained by `sparse-tf train --preset gpt2-tiny-cpu`) and checks that
both use one tokenizer;
`model` is what `sparse-tf bridge` trains and exports (`load_bridged` reads it back);
`objective` plugs it into the trainer (`BridgedObjective`), and `train_config` is its config
(`BridgedTrainConfig`, `train(BridgedTrainConfig(...), RunOptions(...))`);
`perturb` edits the sparse residual at a site and measures the decoded edit's effect on the
dense model's task logit difference (`sparse-tf perturb`).
`config` (`BridgeConfig`) and `train_config` import no torch: `sparse-tf bridge --help` reads
them.
"""

from typing import TYPE_CHECKING

from sparse_tf.lazy import lazy_exports

_LAZY: dict[str, str] = {
    "BridgeLosses": "sparse_tf.bridges.bridge",
    "Bridges": "sparse_tf.bridges.bridge",
    "bridge_losses": "sparse_tf.bridges.bridge",
    "kl_from": "sparse_tf.bridges.bridge",
    "nmse": "sparse_tf.bridges.bridge",
    "site_map": "sparse_tf.bridges.bridge",
    "BridgeConfig": "sparse_tf.bridges.config",
    "BridgeError": "sparse_tf.bridges.dense",
    "check_same_tokenizer": "sparse_tf.bridges.dense",
    "dense_tokenizer": "sparse_tf.bridges.dense",
    "load_gpt2": "sparse_tf.bridges.dense",
    "BridgedModel": "sparse_tf.bridges.model",
    "load_bridged": "sparse_tf.bridges.model",
    "BridgedObjective": "sparse_tf.bridges.objective",
    "Edit": "sparse_tf.bridges.perturb",
    "PerturbationResult": "sparse_tf.bridges.perturb",
    "class_channels": "sparse_tf.bridges.perturb",
    "perturb": "sparse_tf.bridges.perturb",
    "perturb_folder": "sparse_tf.bridges.perturb",
    "GPT2Sites": "sparse_tf.bridges.sites",
    "ResidualSites": "sparse_tf.bridges.sites",
    "SparseSites": "sparse_tf.bridges.sites",
    "site_name": "sparse_tf.bridges.sites",
    "BridgedTrainConfig": "sparse_tf.bridges.train_config",
}
"""What this package exports, and the module of each: imported on first use, so that its
torch-free modules (`config`, `train_config`: what `sparse-tf bridge --help` reads) import no
torch."""

if TYPE_CHECKING:
    from sparse_tf.bridges.bridge import (
        BridgeLosses,
        Bridges,
        bridge_losses,
        kl_from,
        nmse,
        site_map,
    )
    from sparse_tf.bridges.config import BridgeConfig
    from sparse_tf.bridges.dense import (
        BridgeError,
        check_same_tokenizer,
        dense_tokenizer,
        load_gpt2,
    )
    from sparse_tf.bridges.model import BridgedModel, load_bridged
    from sparse_tf.bridges.objective import BridgedObjective
    from sparse_tf.bridges.perturb import (
        Edit,
        PerturbationResult,
        class_channels,
        perturb,
        perturb_folder,
    )
    from sparse_tf.bridges.sites import GPT2Sites, ResidualSites, SparseSites, site_name
    from sparse_tf.bridges.train_config import BridgedTrainConfig


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


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

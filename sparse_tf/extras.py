"""Optional dependencies: the extras that install them, and the one-line error when one is
missing.

The core install (torch, numpy, tokenizers, safetensors, tyro, tqdm, optuna; triton where it
has wheels) trains, evaluates, prunes and converts models. The rest is imported only where it
is used, through `require`, so a missing package is one line naming the extra to install, never
a traceback:

    [hf]        datasets, transformers   `hf:` corpora; the dense GPT-2 (presets gpt2-*, bridges)
    [wandb]     wandb                    Weights & Biases logging (`--wandb offline|online`)
    [analysis]  scipy                    `sparse-tf analyze` (Hungarian matching, KS tests)
    [plot]      matplotlib               `sparse-tf plot`, the loss-vs-k PNG of `sparse-tf prune`
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from sparse_tf.errors import SparseTFError


class MissingExtraError(SparseTFError):
    """An optional package is not installed; the message names the extra that installs it."""


def install_hint(extra: str) -> str:
    return f"needs the [{extra}] extra: pip install 'sparse_tf[{extra}]'"


def installed(module: str) -> bool:
    """Whether `module` can be imported (found, without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a blocked import
        return False


def require(module: str, extra: str, what: str) -> ModuleType:
    """`module`, imported; a MissingExtraError "WHAT: needs the [EXTRA] extra: pip install ..."
    when it (or its top-level package) is not installed. A module that is installed but fails
    to import for another reason (a broken dependency of its own) raises as it is."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.partition(".")[0]
        if e.name is None or e.name.partition(".")[0] != top:
            raise
        raise MissingExtraError(f"{what}: {install_hint(extra)}") from None

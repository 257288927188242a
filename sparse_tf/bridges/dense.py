"""The dense side of a bridge: a Hugging Face `GPT2LMHeadModel`.

No weights can be downloaded here, so the dense model is trained locally by the ordinary
trainer: a `sparse_tf.gpt2.GPT2Config` builds a `DenseGPT2` (a `GPT2LMHeadModel` behind the
trainable-model interface), e.g. `sparse-tf train --preset gpt2-tiny-cpu`, and its
`OUT/final` is a Hugging Face folder (`save_pretrained`: config.json + model.safetensors) plus
the run's tokenizer.json and sparse_tf.json (the training config). A real GPT-2 folder (e.g.
`gpt2` saved with `save_pretrained`, with its vocab.json + merges.txt or tokenizer.json) loads
the same way with `load_gpt2`; a sparse model bridged to it must use GPT-2's BPE
(`--data.tokenizer gpt2 --model.vocab-size 50257`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from torch import nn

from sparse_tf.checkpoint import CheckpointError, verify
from sparse_tf.data.tokenizer import EOT
from sparse_tf.errors import SparseTFError
from sparse_tf.extras import require
from sparse_tf.filenames import MANIFEST_FILE, TOKENIZER_FILE
from sparse_tf.io import read_json


class BridgeError(SparseTFError):
    """A dense model or its tokenizer cannot be bridged; the message names the file."""


def load_gpt2(
    path: str | Path, device: str | torch.device = "cpu", *, check_files: bool = True
) -> nn.Module:
    """A `GPT2LMHeadModel` from a `save_pretrained` folder with safetensors weights (a folder
    with only pickled weights is refused): SDPA attention (what `GPT2Sites` runs), eval mode,
    every parameter frozen. A folder this library exported carries a manifest.json, against
    which every file is checked first (`check_files=False` skips it)."""
    require("transformers", "hf", f"--dense {path}")  # one line without the [hf] extra
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar for a small local folder
    path = Path(path)
    if not (path / "config.json").is_file():
        raise BridgeError(f"--dense {path}: not a Hugging Face model folder (no config.json)")
    if check_files and (path / MANIFEST_FILE).is_file():
        try:
            verify(path)
        except CheckpointError as e:
            raise BridgeError(f"--dense {e}") from None
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        found = f"only {', '.join(pickled)}, " if pickled else ""
        raise BridgeError(
            f"--dense {path}: no .safetensors weights ({found}pickle files are never loaded: "
            "save the model with save_pretrained(..., safe_serialization=True))"
        )
    try:
        model_type = read_json(path / "config.json").get("model_type")
    except (ValueError, AttributeError) as e:
        raise BridgeError(f"--dense {path}: unreadable config.json ({e})") from None
    if model_type != "gpt2":
        raise BridgeError(
            f"--dense {path}: cannot load a GPT2LMHeadModel (config.json has model_type "
            f"{model_type!r}, not 'gpt2')"
        )
    try:
        # safetensors only: a pickled pytorch_model.bin could run code when loaded.
        model, info = GPT2LMHeadModel.from_pretrained(
            path, attn_implementation="sdpa", use_safetensors=True, output_loading_info=True
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BridgeError(f"--dense {path}: cannot load a GPT2LMHeadModel ({first})") from None
    # transformers fills weights missing from the file with fresh random ones: never here.
    if missing := sorted(info.get("missing_keys", ())):
        raise BridgeError(
            f"--dense {path}: the weights lack {len(missing)} GPT-2 tensor(s) ({missing[0]}, ...)"
        )
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model


def dense_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a dense model folder: our tokenizer.json, else GPT-2's vocab.json +
    merges.txt (a Hugging Face GPT-2 folder)."""
    path = Path(path)
    if (path / TOKENIZER_FILE).is_file():
        try:
            return Tokenizer.from_file(str(path / TOKENIZER_FILE))
        except Exception as e:
            raise BridgeError(f"{path / TOKENIZER_FILE}: not a valid tokenizer ({e})") from None
    vocab, merges = path / "vocab.json", path / "merges.txt"
    if not (vocab.is_file() and merges.is_file()):
        raise BridgeError(
            f"--dense {path}: no tokenizer (needs {TOKENIZER_FILE}, or vocab.json + merges.txt)"
        )
    try:
        tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    except Exception as e:
        raise BridgeError(f"{path}: cannot read vocab.json + merges.txt ({e})") from None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if tok.token_to_id(EOT) is not None:
        tok.add_special_tokens([EOT])
    return tok


def check_same_tokenizer(dense: Tokenizer, sparse: Tokenizer, dense_path: Path) -> None:
    """A BridgeError unless both tokenizers give every string the same ids (same vocabulary,
    merges and pre-tokenisation; checked on the vocabulary and a probe text)."""
    probe = 'def f(x):\n    return [x, "y", 3.0]  # ünï\n\n'
    if dense.get_vocab() != sparse.get_vocab():
        n_dense, n_sparse = dense.get_vocab_size(), sparse.get_vocab_size()
        raise BridgeError(
            f"--dense {dense_path}: its tokenizer differs from the sparse model's "
            f"({n_dense} vs {n_sparse} tokens, or other token ids); bridge models trained "
            "with the same tokenizer"
        )
    if dense.encode(probe).ids != sparse.encode(probe).ids:
        raise BridgeError(
            f"--dense {dense_path}: its tokenizer splits text differently from the sparse "
            "model's (same vocabulary, other merges or pre-tokenisation)"
        )

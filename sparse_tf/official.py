"""OpenAI's circuit_sparsity checkpoints in and out: the released folder layout as a
`sparse_tf.GPT` and back.

A released model folder (`csp_yolo1`, `csp_yolo2`, the sweep models; and what the official
`train.py` writes) holds two files:

    beeg_config.json    the official GPTConfig as JSON (`dataclasses.asdict`)
    final_model.pt      a plain state dict; every weight dense, explicit zeros

The parameters map one to one, with no transposes (`_NAMES`). The config maps field by field
(`read_config`); where the official model can do something sparse_tf's cannot (LayerNorm,
concatenated positions, ReLU, AbsTopK on the residual stream itself, a nonzero logit bias), the
key is named in a one-line error. Keys that change nothing in the forward pass (dropout,
`flash`, `grad_checkpointing`, ...) are accepted; keys the public config does not have (the
released files carry internal ones: `bigram_table_rank`, `pfrac`, ...) are ignored with one
note naming them. The state dict is read with `torch.load(weights_only=True)`: tensors only,
no code.

The official model always has a positional table (`wpe`, `block_size` rows) and adds it; a table
of zeros (what `train.py` starts from) becomes `pos_emb=False`, which computes the same. The
official config has no training context: a model reads as `n_ctx = block_size` (the context the
released models are used at, up to their table's end), so a sparse_tf model whose table has more
rows than its n_ctx (`pos_rows`, as `paper-official`'s 1024 at n_ctx 256) is written with
`block_size = pos_rows` and comes back with n_ctx = pos_rows: the same weights and logits. The
official `GPTConfig` applies AbsTopK only at the sites its `afrac_loctypes` lists, by default
four of the eight: `GPTConfig.afrac_sites` carries the list.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import Tensor

from sparse_tf.config import ConfigError
from sparse_tf.data.tokenizer import TINYPYTHON_FILES, TokenizerError, tinypython_bpe
from sparse_tf.errors import SparseTFError
from sparse_tf.filenames import OFFICIAL_CONFIG_FILE, OFFICIAL_WEIGHTS_FILE, TOKENIZER_FILE
from sparse_tf.io import atomic_dir, read_json, write_json
from sparse_tf.model import GPT, GPTConfig
from sparse_tf.sites import ABSTOPK_SITES
from sparse_tf.sparsity import count_nonzeros, mark_sparse


class OfficialFormatError(SparseTFError):
    """An official checkpoint that sparse_tf cannot read as it is, or cannot express."""


_DEFAULTS: dict[str, Any] = {
    # The official GPTConfig's defaults, for keys a saved config leaves out.
    "block_size": 1024,
    "vocab_size": 50304,
    "n_layer": 12,
    "n_head": 12,
    "d_head": None,
    "d_model": 768,
    "bias": True,
    "rms_norm": False,
    "residual_activation_type": "identity",
    "activation_type": "gelu",
    "afrac": None,
    "afrac_loctypes": "attn_in,attn_out,mlp_in,mlp_out",
    "tied_unembed": True,
    "d_mlp": None,
    "enable_bigram_table": False,
    "learnable_bigram_table": False,
    "d_pos_emb": None,
    "sinusoidal_cat_pos_emb": False,
    "sink": False,
}
_NO_EFFECT = {
    # Official keys that change nothing in an inference forward pass.
    "dropout", "ln_bias", "debug_nans", "tokenizer_name", "grad_checkpointing", "flash",
    "enable_sparse_kernels", "dropout_cat_pos_emb", "learnable_bigram_table",
}  # fmt: skip


def is_official(path: str | Path) -> bool:
    """Whether `path` is a folder in the released circuit_sparsity layout."""
    path = Path(path)
    return (path / OFFICIAL_CONFIG_FILE).is_file() and (path / OFFICIAL_WEIGHTS_FILE).is_file()


def read_config(data: dict[str, Any], source: str) -> tuple[GPTConfig, list[str]]:
    """The sparse_tf config of an official config dict, and the keys it ignored as unknown.
    `source` names the file in errors."""
    if not isinstance(data, dict):
        raise OfficialFormatError(f"{source}: not a JSON object")
    data = dict(data)
    if "n_mlp" in data:  # the old name of d_mlp, as the official loader renames it
        data.setdefault("d_mlp", data.pop("n_mlp"))
    known = set(_DEFAULTS) | _NO_EFFECT | {"use_tied_aux_matrix"}
    unknown = sorted(k for k in data if k not in known)
    c = {**_DEFAULTS, **{k: v for k, v in data.items() if k in known}}

    def refuse(key: str, why: str) -> OfficialFormatError:
        return OfficialFormatError(f"{source}: {key}={c.get(key)!r}: {why}")

    if c["rms_norm"] is not True:
        raise refuse("rms_norm", "a LayerNorm model; sparse_tf's models use RMSNorm")
    if c["residual_activation_type"] != "identity":
        raise refuse("residual_activation_type", "sparse_tf adds sublayer outputs unchanged")
    if c["activation_type"] != "gelu":
        raise refuse("activation_type", "sparse_tf's MLP uses GELU")
    if c["d_pos_emb"] is not None or c["sinusoidal_cat_pos_emb"]:
        raise refuse("d_pos_emb", "concatenated positions are not supported (added ones are)")
    if c.get("use_tied_aux_matrix"):
        raise refuse("use_tied_aux_matrix", "the official loader refuses it too")
    n_head, d_model = c["n_head"], c["d_model"]
    d_head = c["d_head"] if c["d_head"] is not None else d_model // n_head
    if n_head * d_head != d_model:
        raise refuse("d_head", f"n_head · d_head = {n_head * d_head} must equal d_model {d_model}")
    sites = tuple(s for s in str(c["afrac_loctypes"]).split(",") if s)
    if bad := [s for s in sites if s not in ABSTOPK_SITES]:
        raise refuse("afrac_loctypes", f"AbsTopK at {bad} is not supported ({ABSTOPK_SITES})")
    try:
        cfg = GPTConfig(
            vocab_size=c["vocab_size"],
            n_ctx=c["block_size"],
            n_layer=c["n_layer"],
            d_model=d_model,
            d_head=d_head,
            d_mlp=c["d_mlp"],
            afrac=c["afrac"] or None,
            afrac_sites=sites,
            bigram=bool(c["enable_bigram_table"]),
            attn_sink=bool(c["sink"]),
            pos_emb=True,  # decided from the weights by `load`
            bias=bool(c["bias"]),
        )
    except (ConfigError, TypeError) as e:
        raise OfficialFormatError(f"{source}: {e}") from None
    return cfg, unknown


def _names(cfg: GPTConfig) -> dict[str, str]:
    """sparse_tf parameter name -> official state-dict key."""
    names = {
        "embed.weight": "transformer.wte.weight",
        "ln_final.weight": "transformer.ln_f.weight",
        "unembed.weight": "lm_head.weight",
    }
    if cfg.pos_emb:
        names["pos_embed.weight"] = "transformer.wpe.weight"
    if cfg.bigram:
        names["bigram"] = "bigram_table"
    for i in range(cfg.n_layer):
        ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        pairs = [("ln1.weight", "ln_1.weight"), ("ln2.weight", "ln_2.weight")]
        for o, t in (("attn.qkv", "attn.c_attn"), ("attn.out_proj", "attn.c_proj"),
                     ("mlp.in_proj", "mlp.c_fc"), ("mlp.out_proj", "mlp.c_proj")):  # fmt: skip
            pairs.append((f"{o}.weight", f"{t}.weight"))
            if cfg.bias:
                pairs.append((f"{o}.bias", f"{t}.bias"))
        if cfg.attn_sink:
            pairs.append(("attn.sink_logit", "attn.attn_imp.sink_logit"))
        names.update({ours + o: theirs + t for o, t in pairs})
    return names


def load(path: str | Path, device: str | torch.device = "cpu") -> GPT:
    """The `GPT` of a released circuit_sparsity folder, in eval mode on `device`, with the
    same logits as the official model."""
    path = Path(path)
    source = str(path / OFFICIAL_CONFIG_FILE)
    try:
        data = read_json(path / OFFICIAL_CONFIG_FILE)
    except ValueError as e:
        raise OfficialFormatError(str(e)) from None
    cfg, unknown = read_config(data, source)
    if unknown:
        print(f"sparse_tf: {source}: ignored keys the official GPTConfig lacks: "
              f"{', '.join(unknown)}", file=sys.stderr)  # fmt: skip
    weights = path / OFFICIAL_WEIGHTS_FILE
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, a pickle of code, ...: one line each
        raise OfficialFormatError(f"{weights}: not a tensor state dict ({e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise OfficialFormatError(f"{weights}: not a state dict of tensors")
    wpe = state.get("transformer.wpe.weight")
    cfg = GPTConfig.from_dict({**cfg.to_dict(), "pos_emb": bool(wpe is not None and wpe.any())})
    if "lm_head.weight" not in state and "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]  # tied_unembed: one tensor
    bias = state.get("final_logits_bias")
    if bias is not None and bias.any():
        raise OfficialFormatError(f"{weights}: final_logits_bias is nonzero; sparse_tf's model "
                                  "has no logit bias")  # fmt: skip
    names = _names(cfg)
    expected = {*names.values(), "final_logits_bias", "transformer.wpe.weight"}
    if extra := sorted(k for k in state if k not in expected):
        raise OfficialFormatError(f"{weights}: tensors this config does not use: {extra}")
    with torch.device(device):
        model = GPT(cfg)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for ours, theirs in names.items():
            if theirs not in state:
                raise OfficialFormatError(f"{weights}: missing {theirs}")
            src, dst = state[theirs], params[ours]
            if ours == "pos_embed.weight" and src.shape[0] != dst.shape[0]:
                raise OfficialFormatError(f"{weights}: {theirs} has {src.shape[0]} rows, "
                                          f"block_size says {dst.shape[0]}")  # fmt: skip
            if src.shape != dst.shape:
                raise OfficialFormatError(
                    f"{weights}: {theirs} is {tuple(src.shape)}, the config says {tuple(dst.shape)}"
                )
            dst.copy_(src)
    mark_sparse(model, count_nonzeros(model))  # lets the layers use the sparse matmul
    return model.eval()


TOKENIZER_DIR_ENV = "TINYPYTHON_TOK_DIR"
"""Where the official tiktoken plugin reads tinypython_2k's files from, as here."""


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a released folder: `tinypython_2k`, read from its encoder.json +
    vocab.bpe beside beeg_config.json or in `$TINYPYTHON_TOK_DIR` (the official plugin's
    variable); an OfficialFormatError naming the files when neither has them."""
    path = Path(path)
    source = path / OFFICIAL_CONFIG_FILE
    try:
        name = read_json(source).get("tokenizer_name", "tinypython_2k")
    except (ValueError, AttributeError) as e:
        raise OfficialFormatError(f"{source}: {e}") from None
    if name != "tinypython_2k":
        raise OfficialFormatError(f"{source}: tokenizer_name={name!r}: only tinypython_2k is known")
    folders = [path] + (
        [Path(os.environ[TOKENIZER_DIR_ENV])] if TOKENIZER_DIR_ENV in os.environ else []
    )
    for folder in folders:
        if all((folder / f).is_file() for f in TINYPYTHON_FILES):
            try:
                return tinypython_bpe(folder)
            except TokenizerError as e:
                raise OfficialFormatError(str(e)) from None
    raise OfficialFormatError(
        f"{path}: no tokenizer: tinypython_2k needs {' + '.join(TINYPYTHON_FILES)} (the official "
        f"tinypython/ folder) beside {OFFICIAL_CONFIG_FILE} or in ${TOKENIZER_DIR_ENV}"
    )


def official_config(cfg: GPTConfig, tokenizer_name: str) -> dict[str, Any]:
    """The official GPTConfig (as `beeg_config.json`) of a sparse_tf config."""
    return {
        # The official block_size is the positional table's length (`wpe` has that many rows).
        "block_size": cfg.pos_table_rows if cfg.pos_emb else cfg.n_ctx,
        "vocab_size": cfg.vocab_size,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "d_head": cfg.d_head,
        "d_model": cfg.d_model,
        "dropout": 0.0,
        "bias": cfg.bias,
        "ln_bias": False,
        "rms_norm": True,
        "residual_activation_type": "identity",
        "activation_type": "gelu",
        "afrac": cfg.afrac,
        "afrac_loctypes": ",".join(cfg.afrac_sites),
        "debug_nans": False,
        "tied_unembed": False,
        "tokenizer_name": tokenizer_name,
        "grad_checkpointing": False,
        "d_mlp": cfg.d_mlp,
        "enable_bigram_table": cfg.bigram,
        "learnable_bigram_table": cfg.bigram,
        "d_pos_emb": None,
        "dropout_cat_pos_emb": False,
        "sinusoidal_cat_pos_emb": False,
        "enable_sparse_kernels": False,
        "flash": True,  # the official model has sinks only on its flash path
        "sink": cfg.attn_sink,
    }


def save(model: GPT, path: str | Path, tokenizer: Path | None = None) -> None:
    """Write `model` as a released circuit_sparsity folder (atomically): the official code's
    `load_model(path)` builds the same model. `tokenizer` (a sparse_tf tokenizer.json) is copied
    beside it, and the config's tokenizer_name names that file ("unknown" without one: the
    official code only knows its own tiktoken encodings by name)."""
    cfg = model.cfg
    params = dict(model.named_parameters())
    state = {theirs: params[ours].detach().to("cpu", torch.float32).clone()
             for ours, theirs in _names(cfg).items()}  # fmt: skip
    if not cfg.pos_emb:  # the official model always adds a table: zeros change nothing
        state["transformer.wpe.weight"] = torch.zeros(cfg.n_ctx, cfg.d_model)
    state["final_logits_bias"] = torch.zeros(cfg.vocab_size)
    with atomic_dir(Path(path)) as tmp:
        torch.save(state, tmp / OFFICIAL_WEIGHTS_FILE)
        name = "unknown"
        if tokenizer is not None:
            shutil.copyfile(tokenizer, tmp / TOKENIZER_FILE)
            name = TOKENIZER_FILE
        write_json(tmp / OFFICIAL_CONFIG_FILE, official_config(cfg, name))

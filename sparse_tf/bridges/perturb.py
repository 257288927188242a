"""Interpretable perturbation through a bridge: edit the sparse model's residual at a site,
decode the edit into the dense model, and measure what it does to the dense model's task.

    result = perturb(sparse, bridges, dense, tokenizer, "single_double_quote",
                     Edit(site="L1.attn_in", channels=[17, 40], mode="flip"))
    print(result.table())

The edit is applied at each prompt's last position (where the task's answer is predicted) or
at every position. Its effect on the dense model is the decoded difference
decode(h + edit) − decode(h) = W_dec · edit (the decoder's bias cancels), added to the dense
residual at the paired site, from where the dense model runs on. The same edit inside the
sparse model is reported beside it: a bridge that carries the sparse model's meaning moves the
dense model's logit difference the same way.

`class_channels` finds the channels that carry the task's contrast at a site (largest
difference between the two members' mean residual, in units of its spread), the natural
candidates for editing; `mode="flip"` moves each prompt's channels to the other member's mean.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from sparse_tf.bridges.bridge import Bridges
from sparse_tf.bridges.dense import load_gpt2
from sparse_tf.bridges.model import load_bridged
from sparse_tf.bridges.sites import GPT2Sites, SparseSites, site_name
from sparse_tf.data.tokenizer import load_tokenizer
from sparse_tf.devices import resolve_device
from sparse_tf.filenames import BRIDGES_META
from sparse_tf.io import read_json
from sparse_tf.model import GPT
from sparse_tf.tasks import batches, candidate_logits, encode_pairs, get_task
from sparse_tf.tasks.base import Split
from sparse_tf.tasks.encoding import TaskBatch

EditMode = Literal["zero", "scale", "set", "add", "flip"]


@dataclasses.dataclass(frozen=True)
class Edit:
    """What to change in the sparse residual stream."""

    site: int | str
    """Sparse-model site: an index 0 .. 2L or a name ('L1.attn_in', 'L0.mlp_in', 'final')."""
    channels: list[int]
    """Residual channels to edit."""
    mode: EditMode = "flip"
    """'zero'; 'scale' (× value); 'set' (= value); 'add' (+ value); 'flip': set each prompt's
    channels to the mean of the other member of its pair (measured on the same prompts)."""
    value: float = 0.0
    positions: Literal["last", "all"] = "last"
    """Edit at each prompt's last token (the prediction) or at every position."""


@dataclasses.dataclass(frozen=True)
class Effect:
    """A model's mean target − alternative logit and accuracy, before and after the edit."""

    margin_before: float
    margin_after: float
    accuracy_before: float
    accuracy_after: float


@dataclasses.dataclass(frozen=True)
class PerturbationResult:
    task: str
    site: str
    dense_site: str
    channels: list[int]
    mode: str
    value: float
    prompts: int
    dense: Effect
    """The dense model with the decoded edit added at the paired site."""
    sparse: Effect
    """The sparse model with the edit itself (for comparison)."""

    def table(self) -> str:
        edit = f"{self.mode}" + (f" {self.value:g}" if self.mode in ("scale", "set", "add") else "")
        lines = [
            f"{self.task}: {edit} of channels {self.channels} at sparse site {self.site} "
            f"(decoded into the dense model at {self.dense_site}), {self.prompts} prompts",
            f"{'model':<8} {'margin before':>14} {'after':>8} {'accuracy before':>16} {'after':>8}",
        ]
        for name, e in (("dense", self.dense), ("sparse", self.sparse)):
            lines.append(
                f"{name:<8} {e.margin_before:>14.3f} {e.margin_after:>8.3f} "
                f"{e.accuracy_before:>16.3f} {e.accuracy_after:>8.3f}"
            )
        return "\n".join(lines)


def site_index(site: int | str, n_layer: int) -> int:
    names = [site_name(s, n_layer) for s in range(2 * n_layer + 1)]
    if isinstance(site, int):
        site_name(site, n_layer)  # range check
        return site
    if site not in names:
        raise ValueError(f"site {site!r}: choose from {', '.join(names)}")
    return names.index(site)


def _task_batches(
    tok: Tokenizer, task: str, n_pairs: int, split: Split, seed: int, model: GPT
) -> list[TaskBatch]:
    """The task's prompts in batches, on `model`'s device."""
    encoded = encode_pairs(get_task(task).pairs(n_pairs, seed=seed, split=split), tok)
    device = next(model.parameters()).device
    return [b.to(device) for b in batches(encoded, 16, model.cfg.n_ctx)]


def _last(batch: TaskBatch) -> tuple[Tensor, Tensor]:
    return torch.arange(len(batch.lengths), device=batch.lengths.device), batch.lengths - 1


@torch.no_grad()
def _last_residuals(sparse: SparseSites, site: int, data: list[TaskBatch]) -> Tensor:
    """[M, d]: the residual at `site` at each prompt's last position (rows alternate the
    pairs' members a, b)."""
    return torch.cat([sparse.sites(b.tokens)[site][_last(b)] for b in data]).float()


def _class_means(values: Tensor) -> Tensor:
    """[2, d]: the mean of members a (even rows) and of members b (odd rows)."""
    return torch.stack([values[0::2].mean(0), values[1::2].mean(0)])


@torch.no_grad()
def class_channels(
    sparse_model: GPT,
    tokenizer: Tokenizer,
    task: str,
    site: int | str,
    k: int = 4,
    n_pairs: int = 64,
    split: Split = "train",
    seed: int = 0,
) -> list[int]:
    """The k residual channels at `site` (last position) whose means differ most between the
    task's two members, relative to their spread: the task's contrast lives there."""
    sites = SparseSites(sparse_model)
    j = site_index(site, sites.n_layer)
    data = _task_batches(tokenizer, task, n_pairs, split, seed, sparse_model)
    values = _last_residuals(sites, j, data)  # [M, d]
    means = _class_means(values)
    score = (means[0] - means[1]).abs() / values.std(0).clamp_min(1e-6)
    return score.topk(k).indices.sort().values.tolist()


def _edited(h: Tensor, batch: TaskBatch, edit: Edit, means: Tensor | None) -> Tensor:
    """h [M, T, d] with the edit applied."""
    out = h.clone()
    ch = torch.tensor(edit.channels, device=h.device)
    rows, cols = _last(batch)
    where = (slice(None), slice(None)) if edit.positions == "all" else (rows, cols)
    region = out[where][..., ch]  # [M, c] or [M, T, c]
    if edit.mode == "zero":
        new = torch.zeros_like(region)
    elif edit.mode == "scale":
        new = region * edit.value
    elif edit.mode == "set":
        new = torch.full_like(region, edit.value)
    elif edit.mode == "add":
        new = region + edit.value
    else:  # flip: the other member's mean (members alternate a, b, a, b, ...)
        assert means is not None
        other = means[(torch.arange(len(h), device=h.device) + 1) % 2][:, ch].to(h.dtype)
        new = other if edit.positions == "last" else other[:, None].expand_as(region)
    if edit.positions == "all":
        out[..., ch] = new
    else:
        out[rows[:, None], cols[:, None], ch[None]] = new
    return out


@torch.no_grad()
def perturb(
    sparse_model: GPT,
    bridges: Bridges,
    dense_model: nn.Module,
    tokenizer: Tokenizer,
    task: str,
    edit: Edit,
    n_pairs: int = 64,
    split: Split = "test",
    seed: int = 0,
) -> PerturbationResult:
    """Apply `edit` to the sparse residual, decode it into the dense model (see the module
    docstring) and compare both models' task logit differences before and after."""
    sparse, dense = SparseSites(sparse_model), GPT2Sites(dense_model)
    j = site_index(edit.site, sparse.n_layer)
    m = bridges.dense_sites[j]
    if not edit.channels or max(edit.channels) >= sparse.d_model or min(edit.channels) < 0:
        raise ValueError(f"channels {edit.channels}: need indices in [0, {sparse.d_model})")
    data = _task_batches(tokenizer, task, n_pairs, split, seed, sparse_model)
    means = _class_means(_last_residuals(sparse, j, data)) if edit.mode == "flip" else None
    pair_logits: dict[str, list[Tensor]] = {k: [] for k in ("db", "da", "sb", "sa")}
    for batch in data:
        t = batch.tokens
        h_sparse = sparse.sites(t)
        h_edit = _edited(h_sparse[j], batch, edit, means)
        delta = bridges.decode(j, h_edit) - bridges.decode(j, h_sparse[j])  # [M, T, d_dense]
        h_dense = dense.sites(t)
        pair_logits["db"].append(candidate_logits(dense.run_from(m, h_dense[m], t), batch))
        pair_logits["da"].append(candidate_logits(dense.run_from(m, h_dense[m] + delta, t), batch))
        pair_logits["sb"].append(candidate_logits(sparse.run_from(j, h_sparse[j], t), batch))
        pair_logits["sa"].append(candidate_logits(sparse.run_from(j, h_edit, t), batch))
    stats = {}
    for key, parts in pair_logits.items():
        diff = torch.cat(parts)  # [M, 2]
        diff = diff[:, 0] - diff[:, 1]
        right = (diff > 0).float() + 0.5 * (diff == 0).float()  # a tie counts half
        stats[key] = (float(diff.mean()), float(right.mean()))
    return PerturbationResult(
        task=task,
        site=site_name(j, sparse.n_layer),
        dense_site=site_name(m, dense.n_layer),
        channels=list(edit.channels),
        mode=edit.mode,
        value=edit.value,
        prompts=sum(len(b.lengths) for b in data),
        dense=Effect(stats["db"][0], stats["da"][0], stats["db"][1], stats["da"][1]),
        sparse=Effect(stats["sb"][0], stats["sa"][0], stats["sb"][1], stats["sa"][1]),
    )


def perturb_folder(
    model: str | Path,
    task: str,
    site: int | str,
    channels: Sequence[int] | None = None,
    *,
    dense: str | Path | None = None,
    k: int = 4,
    mode: EditMode = "flip",
    value: float = 0.0,
    positions: Literal["last", "all"] = "last",
    n_pairs: int = 64,
    seed: int = 0,
    device: str = "auto",
) -> PerturbationResult:
    """`perturb` on the folders `sparse-tf perturb` names: the sparse model, its bridges and
    tokenizer from a `sparse-tf bridge` export `model`, the dense GPT-2 from `dense` (default:
    the folder the bridges were trained against). `channels` None: the `k` channels that
    separate the task's two classes most at `site` (`class_channels`, train split). A site,
    channel or dense folder that does not fit is a ValueError."""
    where = resolve_device(device, "--device")
    sparse, bridges = load_bridged(model, where)
    dense_dir = dense or read_json(Path(model) / BRIDGES_META).get("dense")
    if dense_dir is None:
        raise ValueError("--dense DIR: the bridges do not record their dense model")
    dense_model = load_gpt2(dense_dir, where)
    tok = load_tokenizer(model)
    if channels is None:
        channels = class_channels(sparse, tok, task, site, k=k, seed=seed)
    edit = Edit(site, list(channels), mode, value, positions)
    return perturb(sparse, bridges, dense_model, tok, task, edit, n_pairs, seed=seed)

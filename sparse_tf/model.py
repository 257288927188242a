"""The weight-sparse GPT of Gao et al. 2025, in one file.

GPT-2 style decoder: RMSNorm (no mean subtraction, so zero stays meaningful), GELU MLP, biases
on Linear layers, untied embedding and unembedding, many small heads (d_head 16), a dense
bigram table on the logits, optional learned positions and attention sinks, and AbsTopK at the
eight node sites of every layer. A dense baseline is the same class with `afrac=None` and no
weight projection, so dense and sparse runs share every line of this file.

Every activation has a TransformerLens-style hook point (`blocks.0.attn.hook_q`); the sites,
their widths and their other names (the official circuit_sparsity ones, the pruning node
sites) are listed once in `sparse_tf.sites`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor, nn

from sparse_tf.hooks import HookedModule, HookPoint
from sparse_tf.linear import SparseLinear
from sparse_tf.model_config import GPTConfig
from sparse_tf.sites import official_aliases
from sparse_tf.sparsity import COLS, ROWS, AbsTopK, SparseWeight


class RMSNorm(nn.Module):
    """RMSNorm with a learned gain (eps: torch's default, as the official model)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.hook_normalized = HookPoint()  # [B, T, d]

    def forward(self, x: Tensor) -> Tensor:
        return self.hook_normalized(F.rms_norm(x, (x.shape[-1],), self.weight))


class Attention(nn.Module):
    """Causal multi-head attention with fused qkv (order q, k, v) and AbsTopK on q, k and v."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.d_head = cfg.n_head, cfg.d_head
        d_attn = cfg.d_attn
        self.topk_q, self.topk_k, self.topk_v = (
            AbsTopK(cfg.site_afrac(site)) for site in ("attn_q", "attn_k", "attn_v")
        )
        self.hook_in = HookPoint()  # [B, T, d_model]
        self.qkv = SparseLinear(cfg.d_model, 3 * d_attn, bias=cfg.bias)
        self.hook_q = HookPoint()  # [B, T, d_attn]
        self.hook_k = HookPoint()  # [B, T, d_attn]
        self.hook_v = HookPoint()  # [B, T, d_attn]
        self.sink_logit = nn.Parameter(torch.zeros(cfg.n_head)) if cfg.attn_sink else None
        self.hook_pattern = HookPoint()  # [B, H, T, T]
        self.hook_z = HookPoint()  # [B, T, d_attn]
        self.out_proj = SparseLinear(d_attn, cfg.d_model, bias=cfg.bias)

    def forward(self, x: Tensor, out_bias_grad_elsewhere: bool = False) -> Tensor:
        """The sublayer's output [B, T, d_model] for its input x [B, T, d_model] after AbsTopK
        (hook_in's value; the block reads it from the residual stream: `Block.read`).
        `out_bias_grad_elsewhere`: the output projection's bias gradient is left to the
        consumer of the output (`SparseLinear.forward`)."""
        B, T, _ = x.shape
        # q, k and v: each [B, T, d_attn], AbsTopK over all heads jointly (not per head), as in
        # the official model; one launch for the three when they share a fraction, which then
        # also computes the qkv bias's gradient (`AbsTopK.selects`).
        topks = (self.topk_q, self.topk_k, self.topk_v)
        one_launch = len({t.frac for t in topks}) == 1
        bias = _bias_for(self.qkv, one_launch and self.topk_q.selects(self.out_proj.in_features))
        qkv = self.qkv(x, bias_grad_elsewhere=bias is not None)
        if one_launch:
            q, k, v = self.topk_q.split(qkv, 3, bias)
        else:
            q, k, v = (t(part) for t, part in zip(topks, qkv.chunk(3, dim=-1), strict=True))
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        q, k, v = (t.view(B, T, self.n_head, self.d_head).transpose(1, 2) for t in (q, k, v))
        z = self._fused_attention(q, k, v)  # [B, H, T, d_head]
        if self.hook_pattern.active:
            # Only computed when someone reads or edits it. Unless a hook edits the pattern,
            # z still comes from the fused kernel, so hooked and plain runs are bit-identical.
            pattern = self._pattern(q, k)
            version = pattern._version
            seen = self.hook_pattern(pattern)
            if seen is not pattern or pattern._version != version:
                z = seen @ v
        z = self.hook_z(z.transpose(1, 2).reshape(B, T, self.n_head * self.d_head))
        return self.out_proj(z, bias_grad_elsewhere=out_bias_grad_elsewhere)

    def _fused_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.sink_logit is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        # The sink is key slot 0 with a zero key and a zero value; its logit is the learned
        # per-head bias, added unscaled. It only enlarges each softmax denominator.
        T = q.shape[-2]
        k = F.pad(k, (0, 0, 1, 0))
        v = F.pad(v, (0, 0, 1, 0))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self._sink_bias(T, q.dtype))

    def _sink_bias(self, T: int, dtype: torch.dtype) -> Tensor:
        """[1, H, T, T+1] additive mask: the sink logit in column 0, causal over real keys."""
        device = self.sink_logit.device
        causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
        real = torch.zeros(T, T, dtype=dtype, device=device).masked_fill(~causal, -math.inf)
        sink = self.sink_logit.to(dtype).view(1, -1, 1, 1).expand(1, self.n_head, T, 1)
        return torch.cat([sink, real.expand(1, self.n_head, T, T)], dim=-1)

    def _pattern(self, q: Tensor, k: Tensor) -> Tensor:
        """[B, H, T, T] attention probabilities over real keys (the sink's share left out)."""
        T = q.shape[-2]
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)
        causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, -math.inf)
        if self.sink_logit is None:
            return scores.softmax(dim=-1)
        sink = self.sink_logit.to(scores.dtype).view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        return torch.cat([sink, scores], dim=-1).softmax(dim=-1)[..., 1:]


class MLP(nn.Module):
    """GELU MLP with AbsTopK on its hidden neurons."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.topk = AbsTopK(cfg.site_afrac("mlp_neuron"))
        self.hook_in = HookPoint()  # [B, T, d_model]
        self.in_proj = SparseLinear(cfg.d_model, cfg.d_mlp, bias=cfg.bias)
        self.hook_pre = HookPoint()  # [B, T, d_mlp]
        self.hook_post = HookPoint()  # [B, T, d_mlp]
        self.out_proj = SparseLinear(cfg.d_mlp, cfg.d_model, bias=cfg.bias)

    def forward(self, x: Tensor, out_bias_grad_elsewhere: bool = False) -> Tensor:
        """The sublayer's output [B, T, d_model] for its input x [B, T, d_model] after AbsTopK
        (hook_in's value; the block reads it from the residual stream: `Block.read`).
        `out_bias_grad_elsewhere`: as in `Attention.forward`."""
        # Unless a hook sits between them, AbsTopK's backward computes in_proj's bias gradient.
        selects = not self.hook_pre.active and self.topk.selects(self.in_proj.out_features)
        bias = _bias_for(self.in_proj, selects)
        h = self.hook_pre(self.in_proj(x, bias_grad_elsewhere=bias is not None))
        h = self.hook_post(self.topk.gelu(h, bias))  # AbsTopK(GELU(h))
        return self.out_proj(h, bias_grad_elsewhere=out_bias_grad_elsewhere)


def _bias_for(layer: SparseLinear, topk_selects: bool) -> Tensor | None:
    """The bias of `layer` whose gradient the AbsTopK consuming its output computes (in the
    pass that writes the output's gradient): where that AbsTopK selects and the bias trains
    (a frozen one needs no sums), else None."""
    bias = layer.bias
    return bias if topk_selects and bias is not None and bias.requires_grad else None


class Block(nn.Module):
    """Pre-norm transformer block; AbsTopK on each sublayer's input and on its residual write."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        # AbsTopK where each sublayer reads the residual stream and where it writes to it.
        self.topk_read = nn.ModuleDict(
            {"attn": AbsTopK(cfg.site_afrac("attn_in")), "mlp": AbsTopK(cfg.site_afrac("mlp_in"))}
        )
        self.topk_write = nn.ModuleDict(
            {"attn": AbsTopK(cfg.site_afrac("attn_out")), "mlp": AbsTopK(cfg.site_afrac("mlp_out"))}
        )
        self.hook_resid_pre = HookPoint()  # [B, T, d_model]
        self.ln1 = RMSNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.hook_attn_out = HookPoint()  # [B, T, d_model]
        self.hook_resid_mid = HookPoint()  # [B, T, d_model]
        self.ln2 = RMSNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        self.hook_mlp_out = HookPoint()  # [B, T, d_model]
        self.hook_resid_post = HookPoint()  # [B, T, d_model]

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp_half(self.attn_half(self.hook_resid_pre(x)))

    def attn_half(self, x: Tensor) -> Tensor:
        """resid_pre [B, T, d_model] -> resid_mid: the attention sublayer and its write."""
        topk, hook = self.topk_write["attn"], self.hook_attn_out
        bias = self._write_bias(self.attn.out_proj, hook, topk)
        sublayer_in = self.read(x, self.ln1, self.attn.hook_in, self.topk_read["attn"])
        out = self.attn(sublayer_in, out_bias_grad_elsewhere=bias is not None)
        return self.hook_resid_mid(self._write(x, out, hook, topk, bias))

    def mlp_half(self, x: Tensor) -> Tensor:
        """resid_mid [B, T, d_model] -> resid_post: the MLP sublayer and its write."""
        topk, hook = self.topk_write["mlp"], self.hook_mlp_out
        bias = self._write_bias(self.mlp.out_proj, hook, topk)
        sublayer_in = self.read(x, self.ln2, self.mlp.hook_in, self.topk_read["mlp"])
        out = self.mlp(sublayer_in, out_bias_grad_elsewhere=bias is not None)
        return self.hook_resid_post(self._write(x, out, hook, topk, bias))

    def read(self, x: Tensor, ln: RMSNorm, hook_in: HookPoint, topk: AbsTopK) -> Tensor:
        """AbsTopK(ln(x)) [B, T, d_model]: a sublayer's input read from the residual stream x.
        Unless something reads the normalized stream or the input at their hooks, the norm
        and AbsTopK run as one pass (`AbsTopK.norm`: the same kept values, already in the
        dtype the sublayer's first product computes in)."""
        if ln.hook_normalized.active or hook_in.active:
            return hook_in(topk(ln(x)))
        return topk.norm(x, ln.weight)

    @staticmethod
    def _write_bias(layer: SparseLinear, hook: HookPoint, topk: AbsTopK) -> Tensor | None:
        """The bias of the sublayer's output projection whose gradient the write's AbsTopK
        computes: unless the write is hooked (then the plain path runs)."""
        return _bias_for(layer, not hook.active and topk.selects(layer.out_features))

    def _write(
        self, x: Tensor, out: Tensor, hook: HookPoint, topk: AbsTopK, bias: Tensor | None
    ) -> Tensor:
        """x + AbsTopK(out): a sublayer's write into the residual stream. Unless something
        reads the write at its hook, AbsTopK and the addition run as one pass (the same
        numbers: the kept values are added exactly as torch adds them), whose backward also
        computes the gradient of `bias` (`_write_bias`)."""
        if hook.active:
            return x + hook(topk(out))
        return topk.add_to(x, out, bias)


class Hub(Protocol):
    """What `GPT.from_pretrained` and `GPT.push_to_hub` call: `sparse_tf.hub`, which loads and
    writes model folders through `sparse_tf.checkpoint` (a layer above this one) and registers
    itself when imported (`register_hub`), as importing `sparse_tf` does."""

    def from_pretrained(
        self,
        repo_id_or_dir: str | os.PathLike[str],
        *,
        revision: str | None,
        cache_dir: str | os.PathLike[str] | None,
        token: str | bool | None,
        local_files_only: bool,
        device: str | torch.device,
    ) -> GPT: ...

    def push_to_hub(
        self,
        model: GPT,
        repo_id: str,
        *,
        tokenizer: Tokenizer | None,
        config: Mapping[str, Any] | None,
        results: Mapping[str, Any] | None,
        private: bool | None,
        token: str | None,
        revision: str | None,
        commit_message: str,
    ) -> str: ...


_hub: Hub | None = None


def register_hub(hub: Hub) -> None:
    """Let `GPT.from_pretrained` / `push_to_hub` use `hub` (called by `sparse_tf.hub`)."""
    global _hub
    _hub = hub


def _registered_hub() -> Hub:
    if _hub is None:
        raise RuntimeError(
            "GPT.from_pretrained / push_to_hub need sparse_tf.hub: import it, or take GPT from "
            "sparse_tf (`from sparse_tf import GPT` imports it)"
        )
    return _hub


class GPT(HookedModule):
    """Decoder-only transformer; `forward(tokens [B, T]) -> logits [B, T, vocab]`.

    Build one with `GPT(GPTConfig(vocab_size=..., n_ctx=..., n_layer=..., d_model=...))`;
    initialisation draws from torch's global RNG (seed it with `torch.manual_seed`). Load one
    with `GPT.from_pretrained(repo_id_or_folder)` (`sparse_tf.hub`).
    """

    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_dir: str | os.PathLike[str],
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        device: str | torch.device = "cpu",
    ) -> GPT:
        """The model of a local model folder (anything `sparse_tf.load_model` reads) or of a
        Hugging Face Hub repository holding one (downloaded into the Hub cache; with
        `HF_HUB_OFFLINE=1` or `local_files_only`, read from the cache alone), in eval mode."""
        return _registered_hub().from_pretrained(
            repo_id_or_dir,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            device=device,
        )

    def push_to_hub(
        self,
        repo_id: str,
        *,
        tokenizer: Tokenizer | None = None,
        config: Mapping[str, Any] | None = None,
        results: Mapping[str, Any] | None = None,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str = "Upload a sparse_tf model",
    ) -> str:
        """Export this model (`sparse_tf.export_model`: the folder `from_pretrained` reads,
        with its model card) and upload it to the Hub repository `repo_id`, created if missing;
        returns the commit's URL. `config` (a training config dict) and `results` (`val_loss`,
        `tasks`) fill in the card. To upload a run's `final/` folder as it is, with the card
        training wrote: `sparse_tf.hub.push_folder`."""
        return _registered_hub().push_to_hub(
            self,
            repo_id,
            tokenizer=tokenizer,
            config=config,
            results=results,
            private=private,
            token=token,
            revision=revision,
            commit_message=commit_message,
        )

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.hook_embed = HookPoint()  # [B, T, d_model]
        if cfg.pos_emb:
            self.pos_embed = nn.Embedding(cfg.pos_table_rows, cfg.d_model)
            self.hook_pos_embed = HookPoint()  # [B, T, d_model]
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_final = RMSNorm(cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.bigram:
            self.bigram = nn.Parameter(torch.empty(cfg.vocab_size, cfg.vocab_size))
        self.reset_parameters()
        self.setup_hooks()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise as the official script: N(0, σ) weights, smaller output projections."""
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        for block in self.blocks:
            for proj in (block.attn.out_proj, block.mlp.out_proj):
                nn.init.normal_(proj.weight, std=std / math.sqrt(2 * self.cfg.n_layer))
            if block.attn.sink_logit is not None:
                nn.init.zeros_(block.attn.sink_logit)
        if self.cfg.pos_emb and self.cfg.pos_init == "zeros":
            # Zeroed after its normal draw, so that every other weight draws the same numbers
            # as with pos_init="normal".
            nn.init.zeros_(self.pos_embed.weight)
        if self.cfg.bigram:
            nn.init.uniform_(self.bigram, 0.0, 0.02)

    def forward(self, tokens: Tensor, positions: Tensor | None = None) -> Tensor:
        """Logits [B, T, vocab_size] for integer tokens [B, T] (T ≤ n_ctx).

        With `positions` [B] (one position per row), only the logits there: [B, vocab_size].
        Everything before the final norm runs as usual (hooks see every position); the
        unembedding, the costliest matmul of a small model, runs on B rows instead of B·T.
        """
        if tokens.dim() != 2 or tokens.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"GPT expects integer tokens of shape [batch, seq], got {tokens.dtype} "
                f"{tuple(tokens.shape)}"
            )
        x = self.embed_tokens(tokens)
        for block in self.blocks:
            x = block(x)
        if positions is not None:
            rows = torch.arange(len(tokens), device=tokens.device)
            x, tokens = x[rows, positions], tokens[rows, positions]  # [B, d_model], [B]
        return self.logits_from_residual(x, tokens)

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """The residual stream entering block 0: [B, T, d_model] for tokens [B, T]."""
        T = tokens.shape[1]
        if T > self.cfg.n_ctx:
            raise ValueError(f"sequence length {T} exceeds the model's n_ctx={self.cfg.n_ctx}")
        x = self.hook_embed(self.embed(tokens))
        if self.cfg.pos_emb:
            x = x + self.hook_pos_embed(self.pos_embed(torch.arange(T, device=tokens.device)))
        return x

    def logits_from_residual(self, x: Tensor, tokens: Tensor) -> Tensor:
        """Logits [..., vocab] from the final residual stream x [..., d_model]; `tokens` [...]
        (the current tokens) index the bigram table."""
        logits = self.unembed(self.ln_final(x))
        if self.cfg.bigram:
            # F.embedding, not self.bigram[tokens]: its backward is deterministic on CPU.
            logits = logits + F.embedding(tokens, self.bigram)  # [B, (T,) vocab]
        return logits

    def sparse_weights(self) -> list[SparseWeight]:
        """The L0-constrained matrices; biases, norms, sinks and the bigram table stay dense.
        The positional table (all its rows) is "positional": an embedding's density or the block
        L0, as `SparsityConfig.pos_density` says."""
        # Named from the structure, not looked up in named_parameters(): the optimizer asks
        # for these three times a step, and a walk over every module (287 at 8 layers, hook
        # points included) made each call take 0.26 ms of host time instead of 0.08 (2-core
        # CPU), which an eager step bound by its host pays in full.

        def sw(name: str, layer: nn.Module, kind: str, neuron_dim: int | None) -> SparseWeight:
            linear = layer if isinstance(layer, SparseLinear) else None
            return SparseWeight(f"{name}.weight", layer.weight, kind, neuron_dim, linear)  # type: ignore[arg-type]

        out = [sw("embed", self.embed, "embedding", None)]
        if self.cfg.pos_emb:
            out.append(sw("pos_embed", self.pos_embed, "positional", None))
        for i, block in enumerate(self.blocks):
            out += [
                sw(f"blocks.{i}.attn.qkv", block.attn.qkv, "block", ROWS),  # q/k/v channels
                sw(f"blocks.{i}.attn.out_proj", block.attn.out_proj, "block", COLS),  # channels
                sw(f"blocks.{i}.mlp.in_proj", block.mlp.in_proj, "block", ROWS),  # MLP neurons
                sw(f"blocks.{i}.mlp.out_proj", block.mlp.out_proj, "block", COLS),  # neurons
            ]
        out.append(sw("unembed", self.unembed, "embedding", None))
        return out

    def grad_rms_groups(self) -> list[str]:
        """One group: the optimizer normalises the whole gradient at once."""
        return [""]

    def hook_aliases(self) -> dict[str, str]:
        """Official circuit_sparsity names → ours (`{i}.attn.act_in`, ..., `final_resid`)."""
        return official_aliases(self.cfg.n_layer)


def lm_loss(logits: Tensor, tokens: Tensor) -> Tensor:
    """Mean next-token cross-entropy: logits at position t predict tokens[:, t + 1]."""
    # Shift the targets, not the logits: slicing [B, T, vocab] logits would copy them forward
    # and allocate a zero gradient of their full size backward.
    targets = F.pad(tokens[:, 1:], (0, 1), value=-100)  # [B, T]; the last position is ignored
    return target_loss(logits, targets)


def target_loss(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy of logits [B, T, vocab] against targets [B, T]; targets of -100 are
    skipped. `reduction` is "mean" (over counted targets) or "sum"."""
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction=reduction
    )

"""The GPT's architecture config (`GPTConfig`), and `ModelConfig`, the configs of every model
the trainer builds, without torch: the command line's `--help` builds its parser from them
(`sparse_tf.model` and `sparse_tf.trainable` re-export them)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal, Self

from sparse_tf.config import ARCH_KEY, Config, ConfigError, check
from sparse_tf.gpt2_config import GPT2Config
from sparse_tf.sites import ABSTOPK_SITES
from sparse_tf.sparsity_config import abstopk_k


@dataclasses.dataclass(frozen=True, kw_only=True)
class GPTConfig(Config):
    """Architecture of a (weight-sparse) GPT. Defaults follow the paper's models."""

    vocab_size: int
    """Tokens in the vocabulary (2048 in the paper)."""
    n_ctx: int
    """Longest sequence the model accepts (256 in the paper)."""
    n_layer: int
    """Transformer blocks."""
    d_model: int
    """Residual stream width; a multiple of d_head (heads = d_model / d_head)."""
    d_head: int = 16
    """Width of one attention head."""
    d_mlp: int | None = None
    """MLP hidden width; None means 4 · d_model (resolved on construction)."""
    afrac: float | None = 0.25
    """AbsTopK keeps int(afrac · width) entries per token at the node sites; None or 0: off."""
    afrac_sites: tuple[str, ...] = ABSTOPK_SITES
    """The sites AbsTopK runs at, by the official model's names (`ABSTOPK_SITES`: all eight, as
    the paper's models; the official code's own default is attn_in, attn_out, mlp_in, mlp_out)."""
    bigram: bool = True
    """Add a dense, learnable vocab × vocab bigram table (row = current token) to the logits."""
    attn_sink: bool = False
    """Give every head a learnable logit on an extra all-zero key/value slot."""
    pos_emb: bool = False
    """Add a learned absolute positional embedding (most paper models use none)."""
    pos_rows: int | None = None
    """Rows of the positional table (with pos_emb); None: n_ctx. More rows than n_ctx is the
    official models' table of `block_size` (1024) rows trained at a shorter context: only the
    first n_ctx rows are read in training, but all of them count in the weight projection's
    kept count and in the gradient RMS."""
    pos_init: Literal["normal", "zeros"] = "normal"
    """Initial positional table: N(0, init_std) like every weight, or zeros (the official
    train.py, which zeroes `wpe` and then trains it)."""
    bias: bool = True
    """Biases on the Linear layers of attention and MLP."""
    init_std: float = 0.02
    """Std of the normal init of weights; output projections use init_std / √(2 · n_layer)."""
    ARCH: ClassVar[str] = "sparse_tf"
    """The value of `ARCH_KEY` in a saved config of this model (the dense GPT-2 is another
    model with its own config: `sparse_tf.gpt2.GPT2Config`)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d_mlp is None:
            object.__setattr__(self, "d_mlp", 4 * self.d_model)
        if self.afrac == 0.0:
            object.__setattr__(self, "afrac", None)  # one spelling of "off" in saved configs
        for name in ("vocab_size", "n_ctx", "n_layer", "d_model", "d_head", "d_mlp"):
            check(getattr(self, name) >= 1, self, name, "must be >= 1")
        check(
            self.pos_rows is None or self.pos_rows >= self.n_ctx,
            self,
            "pos_rows",
            f"must be >= n_ctx={self.n_ctx} (None: n_ctx rows)",
        )
        check(
            self.d_model % self.d_head == 0,
            self,
            "d_model",
            f"must be a multiple of d_head={self.d_head}",
        )
        check(self.init_std > 0, self, "init_std", "must be > 0")
        for site in self.afrac_sites:
            check(
                site in ABSTOPK_SITES,
                self,
                "afrac_sites",
                f"{site!r} is not one of {ABSTOPK_SITES}",
            )
        check(
            len(set(self.afrac_sites)) == len(self.afrac_sites),
            self,
            "afrac_sites",
            "repeats a site",
        )
        if self.afrac is not None:
            check(0.0 < self.afrac <= 1.0, self, "afrac", "must be in (0, 1], or None/0 for off")
            narrowest = min(self.d_model, self.d_mlp)
            check(
                abstopk_k(self.afrac, narrowest) >= 1,
                self,
                "afrac",
                f"keeps no entry of the narrowest AbsTopK site (width {narrowest})",
            )

    @property
    def pos_table_rows(self) -> int:
        """Rows of the positional table: pos_rows, or n_ctx when that is None. (None is kept
        as it is, not resolved, so that a config derived with another n_ctx follows it.)"""
        return self.pos_rows if self.pos_rows is not None else self.n_ctx

    @property
    def n_head(self) -> int:
        return self.d_model // self.d_head

    @property
    def d_attn(self) -> int:
        """Width of q, k, v and z: all heads side by side (equal to d_model)."""
        return self.n_head * self.d_head

    def site_afrac(self, site: str) -> float | None:
        """AbsTopK's fraction at `site` (one of `ABSTOPK_SITES`): afrac, or None where off."""
        if site not in ABSTOPK_SITES:
            raise KeyError(f"{site!r} is not one of {ABSTOPK_SITES}")
        return self.afrac if site in self.afrac_sites else None

    def to_dict(self) -> dict[str, Any]:
        """The fields plus `"arch": "sparse_tf"`, which tells a saved config of this model
        from a dense GPT-2's (the form every earlier version wrote, too)."""
        return {**super().to_dict(), ARCH_KEY: self.ARCH}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> Self:
        """Build from a saved config. `"arch"` may be absent or `"sparse_tf"`; a config of
        another model (`"hf_gpt2"`) is a ConfigError naming it."""
        if isinstance(data, dict) and ARCH_KEY in data:
            if data[ARCH_KEY] != cls.ARCH:
                where = f"{source}: " if source else ""
                raise ConfigError(
                    f"{where}a {data[ARCH_KEY]!r} model config, not a GPTConfig ({ARCH_KEY} "
                    f"{cls.ARCH!r})"
                )
            data = {k: v for k, v in data.items() if k != ARCH_KEY}
        return super().from_dict(data, source)


ModelConfig = GPTConfig | GPT2Config
"""The configs of the models the trainer builds itself (`TrainConfig.model`): the weight-sparse
GPT and the dense Hugging Face GPT-2."""

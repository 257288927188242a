"""Configs: validation names the field at fault; dict round trips are exact."""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

import pytest

from sparse_tf import ConfigError, GPTConfig, OptimConfig, SparsityConfig
from sparse_tf.config import Config
from tests.helpers import tiny_config


@pytest.mark.parametrize(
    "cfg",
    [
        tiny_config(),
        tiny_config(d_mlp=100, afrac=None, attn_sink=True, pos_emb=True, bias=False),
        SparsityConfig(l0=1 / 64, sharkfin=False),
        OptimConfig(betas=(0.8, 0.99), grad_rms=None),
    ],
)
def test_json_round_trip_is_exact(cfg: GPTConfig | SparsityConfig | OptimConfig) -> None:
    data = json.loads(json.dumps(cfg.to_dict()))
    assert type(cfg).from_dict(data) == cfg


def test_derived_fields_are_resolved_and_saved() -> None:
    cfg = GPTConfig(vocab_size=10, n_ctx=8, n_layer=1, d_model=32)
    assert cfg.d_mlp == 128
    assert cfg.n_head == 2
    assert cfg.to_dict()["d_mlp"] == 128  # a saved config never depends on today's defaults
    assert GPTConfig(vocab_size=10, n_ctx=8, n_layer=1, d_model=32, afrac=0).afrac is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"d_model": 100}, r"GPTConfig.d_model=100: must be a multiple of d_head=16"),
        ({"d_model": "64"}, r"GPTConfig.d_model: expected an integer \(got '64'\)"),
        ({"n_layer": True}, r"GPTConfig.n_layer: expected an integer"),
        ({"n_layer": 0}, r"GPTConfig.n_layer=0: must be >= 1"),
        ({"afrac": 1.5}, r"GPTConfig.afrac=1.5: must be in \(0, 1\]"),
        ({"afrac": 0.01}, r"GPTConfig.afrac=0.01: keeps no entry of the narrowest AbsTopK site"),
        ({"bigram": "yes"}, r"GPTConfig.bigram: expected bool"),
    ],
)
def test_gpt_config_errors_name_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_config(**kwargs)


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (SparsityConfig, {"l0": 0.0}, r"SparsityConfig.l0=0.0: must be in \(0, 1\]"),
        (
            SparsityConfig,
            {"l0": 0.1, "anneal_start": 0.6},
            r"anneal_end=0.5: must be in \[anneal_start=0.6, 1\]",
        ),
        (SparsityConfig, {"l0": 0.1, "min_per_neuron": -1}, r"min_per_neuron=-1: must be >= 0"),
        (
            OptimConfig,
            {"betas": (0.9, 1.0)},
            r"OptimConfig.betas=\(0.9, 1.0\): each must be in \[0, 1\)",
        ),
        (OptimConfig, {"betas": [0.9]}, r"OptimConfig.betas: expected a list of 2 values"),
        (
            OptimConfig,
            {"grad_rms": 0.0},
            r"OptimConfig.grad_rms=0.0: must be finite and > 0, or None",
        ),
        (OptimConfig, {"warmup_frac": 1.0}, r"warmup_frac=1.0: must be in \[0, 1\)"),
    ],
)
def test_other_config_errors_name_the_field(
    cls: type, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        cls(**kwargs)


def test_from_dict_rejects_unknown_and_missing_keys_naming_the_file() -> None:
    data = tiny_config().to_dict()
    with pytest.raises(
        ConfigError, match=r"run/config.json: unknown GPTConfig field\(s\) \['n_embd'\]"
    ):
        GPTConfig.from_dict({**data, "n_embd": 64}, source="run/config.json")
    del data["vocab_size"]
    with pytest.raises(ConfigError, match=r"missing required field\(s\) \['vocab_size'\]"):
        GPTConfig.from_dict(data)
    with pytest.raises(ConfigError, match=r"x.json: GPTConfig.n_ctx: expected an integer"):
        GPTConfig.from_dict({**tiny_config().to_dict(), "n_ctx": 2.5}, source="x.json")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        SparsityConfig.from_dict([0.1])  # type: ignore[arg-type]


def test_configs_are_frozen() -> None:
    cfg = tiny_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 128  # type: ignore[misc]
    assert dataclasses.replace(cfg, n_layer=3).n_layer == 3


@dataclasses.dataclass(frozen=True, kw_only=True)
class _EnumConfig(Config):
    anneal: Literal["linear", "power"] = "linear"
    maybe: int | None = None


def test_enum_fields_reject_unlisted_values() -> None:
    """The guard against a config enum being silently ignored ("exponential" vs "exp")."""
    assert _EnumConfig.from_dict({"anneal": "power"}).anneal == "power"
    with pytest.raises(ConfigError, match=r"anneal: expected one of \['linear', 'power'\]"):
        _EnumConfig.from_dict({"anneal": "exponential"}, source="cfg.json")
    with pytest.raises(ConfigError, match=r"maybe: expected int or null"):
        _EnumConfig(maybe=1.5)  # type: ignore[arg-type]

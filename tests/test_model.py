"""The GPT: hook names, AbsTopK at every node site, hook semantics, attention details."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sparse_tf import GPT, GPTConfig, export_model, lm_loss, load_model
from sparse_tf.config import ConfigError
from sparse_tf.hooks import HookPoint
from tests.helpers import tiny_config, tiny_model, tokens

LAYER_HOOKS = [
    "hook_resid_pre",
    "ln1.hook_normalized",
    "attn.hook_in",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_pattern",
    "attn.hook_z",
    "hook_attn_out",
    "hook_resid_mid",
    "ln2.hook_normalized",
    "mlp.hook_in",
    "mlp.hook_pre",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
]
# Snapshot: the ordered hook names of a 2-layer model. Renaming a hook breaks every saved
# circuit and analysis script, so a change here must be deliberate.
EXPECTED_HOOK_NAMES = [
    "hook_embed",
    *[f"blocks.0.{h}" for h in LAYER_HOOKS],
    *[f"blocks.1.{h}" for h in LAYER_HOOKS],
    "ln_final.hook_normalized",
]

# The eight AbsTopK sites per layer (the pruning node locations) and their widths.
NODE_SITES = {
    "attn.hook_in": "d_model",
    "attn.hook_q": "d_model",
    "attn.hook_k": "d_model",
    "attn.hook_v": "d_model",
    "hook_attn_out": "d_model",
    "mlp.hook_in": "d_model",
    "mlp.hook_post": "d_mlp",
    "hook_mlp_out": "d_model",
}


def test_hook_names_snapshot() -> None:
    model = GPT(GPTConfig(vocab_size=50, n_ctx=16, n_layer=2, d_model=64))
    assert model.hook_names == EXPECTED_HOOK_NAMES
    with_pos = tiny_model(pos_emb=True)
    assert with_pos.hook_names == ["hook_embed", "hook_pos_embed", *EXPECTED_HOOK_NAMES[1:]]


def test_hook_order_is_execution_order() -> None:
    model = tiny_model(pos_emb=True)
    seen: list[str] = []
    model.run_with_hooks(
        tokens(model.cfg), fwd_hooks=[(lambda name: True, lambda x, hook: seen.append(hook.name))]
    )
    assert seen == model.hook_names
    _, cache = model.run_with_cache(tokens(model.cfg))
    assert list(cache) == model.hook_names


def test_run_with_cache_shapes() -> None:
    cfg = tiny_config(d_mlp=96)
    B, T, H = 2, 10, cfg.n_head
    _, cache = GPT(cfg).run_with_cache(tokens(cfg, B, T))
    widths = {"d_model": cfg.d_model, "d_mlp": 96}
    for i in range(cfg.n_layer):
        for site, width in NODE_SITES.items():
            assert cache[f"blocks.{i}.{site}"].shape == (B, T, widths[width])
        assert cache[f"blocks.{i}.attn.hook_pattern"].shape == (B, H, T, T)
        assert cache[f"blocks.{i}.attn.hook_z"].shape == (B, T, cfg.d_model)
        assert cache[f"blocks.{i}.mlp.hook_pre"].shape == (B, T, 96)


@pytest.mark.parametrize("afrac", [0.25, 0.5, 0.1])
def test_exactly_k_nonzeros_per_token_at_every_abstopk_site(afrac: float) -> None:
    cfg = tiny_config(afrac=afrac, d_mlp=160)
    _, cache = GPT(cfg).run_with_cache(tokens(cfg))
    widths = {"d_model": cfg.d_model, "d_mlp": 160}
    for i in range(cfg.n_layer):
        for site, width in NODE_SITES.items():
            k = int(afrac * widths[width])
            nonzeros = (cache[f"blocks.{i}.{site}"] != 0).sum(-1)
            assert (nonzeros == k).all(), (site, k, nonzeros.unique())
        # Not sparsified: the residual stream, the norms' outputs, z.
        for site in ("hook_resid_mid", "ln2.hook_normalized", "attn.hook_z", "mlp.hook_pre"):
            assert (cache[f"blocks.{i}.{site}"] != 0).float().mean() > 0.5, site


def test_qkv_topk_is_joint_over_heads() -> None:
    """A dominant head can take every one of the k slots: selection is not per head."""
    model = tiny_model()
    attn = model.blocks[0].attn
    with torch.no_grad():
        attn.qkv.weight[:16] *= 1000.0  # head 0 of q (channels 0..15)
        attn.qkv.bias.zero_()
    _, cache = model.run_with_cache(tokens(model.cfg), names_filter="blocks.0.attn.hook_q")
    q = cache["blocks.0.attn.hook_q"]
    assert (q[..., :16] != 0).all()  # k = 16 = d_head: head 0 has all of them
    assert (q[..., 16:] == 0).all()


def test_dense_model_forces_no_zeros() -> None:
    model = tiny_model(afrac=None)
    _, cache = model.run_with_cache(tokens(model.cfg))
    for name, act in cache.items():
        if "hook_pattern" in name:
            continue  # causal zeros above the diagonal are not sparsity
        assert (act != 0).all(), name
    assert tiny_config(afrac=0.0).afrac is None  # 0 is the same as off


def test_identity_hooks_leave_logits_bit_identical() -> None:
    model = tiny_model(attn_sink=True, pos_emb=True)
    x = tokens(model.cfg)
    plain = model(x)

    def returns_same(t: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        return t

    def returns_none(t: torch.Tensor, hook: HookPoint) -> None:
        return None

    for fn in (returns_same, returns_none):
        hooked = model.run_with_hooks(x, fwd_hooks=[(lambda name: True, fn)])
        assert torch.equal(hooked, plain)
    logits, _ = model.run_with_cache(x)
    assert torch.equal(logits, plain)


def test_bias_gradients_from_abstopk_equal_the_plain_path_s() -> None:
    """The biased products feeding an AbsTopK leave their bias gradient to it (qkv, MLP-in,
    both output projections); a hook between a product and its AbsTopK (`mlp.hook_pre`, the
    writes' hooks) runs the plain path. Both give the same gradients, every bias included."""
    torch.manual_seed(0)
    model = tiny_model()
    x = tokens(model.cfg, batch=2, seq=8)

    def grads(hooked: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        names = ("hook_pre", "hook_attn_out", "hook_mlp_out")
        identity = [(lambda n: n.endswith(names), lambda t, hook: None)] if hooked else []
        with model.hooks(fwd_hooks=identity):
            lm_loss(model(x), x).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    fused, plain = grads(False), grads(True)
    biases = [n for n in plain if n.endswith(("qkv.bias", "out_proj.bias", "in_proj.bias"))]
    assert len(biases) == 4 * model.cfg.n_layer
    for name, g in plain.items():
        assert fused[name] is not None, name
        torch.testing.assert_close(fused[name], g, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("attn_sink", [False, True])
def test_edited_pattern_path_matches_fused_attention(attn_sink: bool) -> None:
    """A pattern hook that returns a copy forces z = pattern @ v; it must agree with SDPA."""
    model = tiny_model(attn_sink=attn_sink)
    if attn_sink:
        with torch.no_grad():
            for b in model.blocks:
                b.attn.sink_logit.copy_(torch.randn(model.cfg.n_head))
    x = tokens(model.cfg)
    copied = model.run_with_hooks(
        x, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda t, hook: t.clone())]
    )
    torch.testing.assert_close(copied, model(x), rtol=1e-5, atol=1e-5)


def test_editing_hooks_change_logits() -> None:
    model = tiny_model()
    x = tokens(model.cfg)
    plain = model(x)
    zeroed = model.run_with_hooks(x, fwd_hooks=[("blocks.1.mlp.hook_post", lambda t, hook: t * 0)])
    assert not torch.allclose(zeroed, plain)

    def uniform_in_place(t: torch.Tensor, hook: HookPoint) -> None:
        t.copy_(torch.ones_like(t).tril() / torch.arange(1, t.shape[-1] + 1).view(-1, 1))

    edited = model.run_with_hooks(x, fwd_hooks=[("blocks.0.attn.hook_pattern", uniform_in_place)])
    assert not torch.allclose(edited, plain)  # in-place edits of the pattern take effect too


def test_hooks_are_removed_on_exit_and_on_error() -> None:
    model = tiny_model()
    x = tokens(model.cfg)
    model.run_with_hooks(x, fwd_hooks=[(lambda n: True, lambda t, hook: None)])
    model.run_with_cache(x)
    assert not any(hp._forward_hooks for hp in model.modules() if isinstance(hp, HookPoint))

    def boom(t: torch.Tensor, hook: HookPoint) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks(x, fwd_hooks=[("blocks.0.hook_resid_pre", boom)])
    assert not any(hp._forward_hooks for hp in model.modules() if isinstance(hp, HookPoint))


def test_names_filter_forms_and_aliases() -> None:
    model = tiny_model()
    x = tokens(model.cfg)
    _, one = model.run_with_cache(x, names_filter="blocks.0.attn.hook_q")
    assert list(one) == ["blocks.0.attn.hook_q"]
    _, some = model.run_with_cache(x, names_filter=["1.mlp.post_act", "hook_embed"])
    assert list(some) == ["hook_embed", "blocks.1.mlp.hook_post"]
    _, pred = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_v"))
    assert list(pred) == ["blocks.0.attn.hook_v", "blocks.1.attn.hook_v"]

    _, cache = model.run_with_cache(x)
    official = {
        "0.attn.act_in": "blocks.0.attn.hook_in",
        "0.attn.resid_delta": "blocks.0.hook_attn_out",
        "1.mlp.act_in": "blocks.1.mlp.hook_in",
        "1.mlp.post_act": "blocks.1.mlp.hook_post",
        "1.mlp.resid_delta": "blocks.1.hook_mlp_out",
        "1.resid_mid": "blocks.1.hook_resid_mid",
        "final_resid": "blocks.1.hook_resid_post",
    }
    for alias, name in official.items():
        assert cache[alias] is cache[name]
    assert set(model.hook_aliases().values()) <= set(model.hook_names)


def test_unknown_hook_name_error_suggests_the_right_one() -> None:
    model = tiny_model()
    with pytest.raises(KeyError, match=r"unknown hook name 'blocks.0.attn.hook_qq'.*hook_q"):
        model.run_with_hooks(tokens(model.cfg), fwd_hooks=[("blocks.0.attn.hook_qq", print)])
    _, cache = model.run_with_cache(tokens(model.cfg), names_filter="hook_embed")
    with pytest.raises(KeyError, match="not in this cache"):
        cache["blocks.0.hook_resid_pre"]


def test_residual_bookkeeping() -> None:
    model = tiny_model()
    _, c = model.run_with_cache(tokens(model.cfg))
    for i in range(2):
        b = f"blocks.{i}"
        torch.testing.assert_close(
            c[f"{b}.hook_resid_mid"], c[f"{b}.hook_resid_pre"] + c[f"{b}.hook_attn_out"]
        )
        torch.testing.assert_close(
            c[f"{b}.hook_resid_post"], c[f"{b}.hook_resid_mid"] + c[f"{b}.hook_mlp_out"]
        )
    torch.testing.assert_close(c["blocks.1.hook_resid_pre"], c["blocks.0.hook_resid_post"])


def test_model_is_causal() -> None:
    model = tiny_model(attn_sink=True, pos_emb=True)
    x = tokens(model.cfg)
    y = x.clone()
    y[:, 15:] = (y[:, 15:] + 1) % model.cfg.vocab_size
    torch.testing.assert_close(model(x)[:, :15], model(y)[:, :15], rtol=0, atol=0)


def test_attention_sink_shrinks_pattern_rows_by_the_sink_share() -> None:
    model = tiny_model(attn_sink=True)
    attn = model.blocks[0].attn
    b = torch.linspace(-2.0, 2.0, model.cfg.n_head)
    with torch.no_grad():
        attn.sink_logit.copy_(b)
    _, cache = model.run_with_cache(
        tokens(model.cfg),
        names_filter=["blocks.0.attn.hook_q", "blocks.0.attn.hook_k", "blocks.0.attn.hook_pattern"],
    )
    q, k = cache["blocks.0.attn.hook_q"], cache["blocks.0.attn.hook_k"]
    B, T, _ = q.shape
    q = q.view(B, T, -1, 16).transpose(1, 2)
    k = k.view(B, T, -1, 16).transpose(1, 2)
    scores = (q @ k.transpose(-2, -1) / 4.0).masked_fill(
        ~torch.ones(T, T, dtype=torch.bool).tril(), -math.inf
    )
    z = scores.exp().sum(-1)  # [B, H, T]: the softmax denominator without the sink
    expected = z / (z + b.exp().view(1, -1, 1))
    torch.testing.assert_close(cache["blocks.0.attn.hook_pattern"].sum(-1), expected)


def test_very_negative_sink_equals_no_sink() -> None:
    torch.manual_seed(1)
    with_sink = tiny_model(attn_sink=True)
    torch.manual_seed(1)
    without = tiny_model(attn_sink=False)
    with torch.no_grad():
        for b in with_sink.blocks:
            b.attn.sink_logit.fill_(-1e4)
    x = tokens(with_sink.cfg)
    torch.testing.assert_close(with_sink(x), without(x), rtol=1e-5, atol=1e-5)


def test_bigram_row_of_current_token_is_added_to_logits() -> None:
    model = tiny_model(bigram=True)
    x = tokens(model.cfg)
    table = model.bigram.detach().clone()
    with_table = model(x)
    with torch.no_grad():
        model.bigram.zero_()
    torch.testing.assert_close(with_table - model(x), table[x])


def test_optional_parts_exist_only_when_enabled() -> None:
    bare = tiny_model(bigram=False, attn_sink=False, pos_emb=False, bias=False)
    names = {n for n, _ in bare.named_parameters()}
    assert "bigram" not in names
    assert "pos_embed.weight" not in names
    assert not any("sink" in n or n.endswith(".bias") for n in names)
    full = tiny_model(bigram=True, attn_sink=True, pos_emb=True)
    names = {n for n, _ in full.named_parameters()}
    assert {
        "bigram",
        "pos_embed.weight",
        "blocks.0.attn.sink_logit",
        "blocks.0.attn.qkv.bias",
    } <= names


def test_initialisation_follows_the_official_script() -> None:
    model = GPT(tiny_config(n_layer=8, d_model=256, vocab_size=512))
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].mlp.out_proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)
    assert (model.blocks[0].mlp.in_proj.bias == 0).all()
    assert (model.ln_final.weight == 1).all()
    assert model.bigram.min() >= 0
    assert model.bigram.max() < 0.02


def test_a_positional_table_longer_than_the_context() -> None:
    """pos_rows: a table of more rows than n_ctx (the official block_size), of which a
    sequence reads its first T rows; pos_init="zeros" zeroes it and changes no other draw."""
    torch.manual_seed(0)
    normal = tiny_model(pos_emb=True, pos_rows=96)
    torch.manual_seed(0)
    model = tiny_model(pos_emb=True, pos_rows=96, pos_init="zeros")
    assert model.pos_embed.weight.shape == (96, 64)  # [pos_rows, d_model]
    assert not model.pos_embed.weight.any()
    for (name, p), q in zip(normal.named_parameters(), model.parameters(), strict=True):
        assert name == "pos_embed.weight" or torch.equal(p, q), name
    with torch.no_grad():
        model.pos_embed.weight.normal_()
    x = tokens(model.cfg)
    before = model(x)
    with torch.no_grad():
        model.pos_embed.weight[24:] = 7.0  # rows past n_ctx = 24 are never read
    assert torch.equal(model(x), before)
    with pytest.raises(ValueError, match="exceeds the model's n_ctx=24"):
        model(torch.zeros(1, 25, dtype=torch.long))
    assert [w.kind for w in model.sparse_weights() if w.name == "pos_embed.weight"] == [
        "positional"
    ]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"pos_rows": 23}, "pos_rows"),
        ({"pos_rows": 0}, "pos_rows"),
        ({"pos_init": "ones"}, "pos_init"),
    ],
)
def test_the_positional_table_fields_are_checked(change: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=rf"GPTConfig\.{named}\b") as e:
        tiny_config(pos_emb=True, **change)
    assert "\n" not in str(e.value)


def test_configs_without_the_table_fields_load_as_before() -> None:
    cfg = tiny_config(pos_emb=True)
    saved = cfg.to_dict()
    del saved["pos_rows"], saved["pos_init"]  # a config.json written before they existed
    assert GPTConfig.from_dict(saved) == cfg
    assert (cfg.pos_rows, cfg.pos_init, cfg.pos_table_rows) == (None, "normal", 24)
    longer = tiny_config(pos_emb=True, pos_rows=96, pos_init="zeros")
    assert GPTConfig.from_dict(json.loads(json.dumps(longer.to_dict()))) == longer


def test_a_longer_table_round_trips_through_export(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tiny_model(pos_emb=True, pos_rows=96, pos_init="zeros")
    with torch.no_grad():
        model.pos_embed.weight[:30].normal_()  # trained rows, and some past n_ctx
    export_model(tmp_path / "m", model, None)
    back = load_model(tmp_path / "m")
    assert back.cfg == model.cfg
    for (name, p), q in zip(model.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_forward_rejects_bad_tokens() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="exceeds the model's n_ctx=24"):
        model(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tokens of shape"):
        model(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="integer tokens of shape"):
        model(torch.zeros(5, dtype=torch.long))


def test_lm_loss_is_next_token_cross_entropy() -> None:
    logits = torch.randn(2, 5, 7)
    x = torch.randint(0, 7, (2, 5))
    manual = -torch.log_softmax(logits[:, :-1], -1).gather(-1, x[:, 1:, None]).mean()
    torch.testing.assert_close(lm_loss(logits, x), manual)


def test_module_tree_reaches_hook_points_for_nnsight_users() -> None:
    model = tiny_model()
    assert model.blocks[0].hook_resid_pre is model.get_submodule("blocks.0.hook_resid_pre")
    assert model.blocks[1].attn.hook_q.name == "blocks.1.attn.hook_q"


def test_hooks_follow_transformer_lens_conventions() -> None:
    """Hooks are called with the keyword `hook`; backward hooks see (and may replace) the
    gradient of the activation; the cache takes TransformerLens shorthands."""
    model = tiny_model()
    x = tokens(model.cfg, batch=2, seq=8)
    seen: dict[str, str] = {}

    def keyword_only(act: torch.Tensor, *, hook: HookPoint) -> None:
        seen["fwd"] = hook.name

    grads: dict[str, torch.Tensor] = {}

    def grab(grad: torch.Tensor, hook: HookPoint) -> None:
        grads[hook.name] = grad.clone()

    name = "blocks.0.hook_resid_mid"
    with model.hooks(fwd_hooks=[(name, keyword_only)], bwd_hooks=[(name, grab)]):
        _, cache = model.run_with_cache(x, names_filter=name)
        resid = cache[name]
    assert seen["fwd"] == name
    # The gradient a backward hook sees is the gradient of the activation.
    act = {}

    def keep(t: torch.Tensor, hook: HookPoint) -> None:
        t.retain_grad()
        act["t"] = t

    with model.hooks(fwd_hooks=[(name, keep)], bwd_hooks=[(name, grab)]):
        lm_loss(model(x), x).backward()
    torch.testing.assert_close(grads[name], act["t"].grad)
    # A backward hook's return value replaces the gradient: zero it, and nothing before the
    # point (the embedding, layer 0's attention) gets a gradient through it.
    model.zero_grad()
    with model.hooks(bwd_hooks=[(name, lambda g, hook: torch.zeros_like(g))]):
        lm_loss(model(x), x).backward()
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() == 0
    assert model.blocks[1].mlp.in_proj.weight.grad.abs().sum() > 0
    # run_with_hooks: backward hooks fire for the graph of its forward pass; the hooks stay
    # for later passes only with reset_hooks_end=False, until reset_hooks().
    for keep_hooks in (False, True):
        grads.clear()
        out = model.run_with_hooks(x, bwd_hooks=[(name, grab)], reset_hooks_end=not keep_hooks)
        lm_loss(out, x).backward()
        assert name in grads
        grads.clear()
        lm_loss(model(x), x).backward()
        assert (name in grads) == keep_hooks
    model.reset_hooks()
    grads.clear()
    lm_loss(model(x), x).backward()
    assert not grads
    # Cache shorthands.
    _, cache = model.run_with_cache(x)
    assert cache["resid_mid", 0] is cache[name] is not resid
    assert cache["q", 1] is cache["blocks.1.attn.hook_q"]
    assert cache["post", 1] is cache["blocks.1.mlp.hook_post"]
    assert cache["normalized", 0, "ln2"] is cache["blocks.0.ln2.hook_normalized"]
    with pytest.raises(KeyError, match="ambiguous"):
        cache["in", 0]  # attn.hook_in and mlp.hook_in
    assert cache["in", 0, "mlp"] is cache["blocks.0.mlp.hook_in"]
    with pytest.raises(KeyError, match=r"a shorthand is \(kind, layer\)"):
        cache["q",]

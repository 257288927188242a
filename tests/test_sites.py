"""The site registry (`sparse_tf.sites`) against the model and every consumer of site names:
a site added to the model, the pruning, the bridges, the analyses or the official format
without the registry (or the other way round) fails here."""

from __future__ import annotations

import json

import pytest
import torch

from sparse_tf import official, sites
from sparse_tf.analysis.studies.common import final_site, residual_sites
from sparse_tf.bridges.sites import SparseSites, site_name
from sparse_tf.pruning.edges import READS, WRITES
from sparse_tf.pruning.nodes import node_sites
from sparse_tf.pruning.viewer import ViewData, render_html
from sparse_tf.sparsity import abstopk_k
from tests.helpers import tiny_model, tokens


@pytest.mark.parametrize("pos_emb", [False, True])
def test_every_hook_point_is_a_registry_site(pos_emb: bool) -> None:
    model = tiny_model(pos_emb=pos_emb)
    assert model.hook_names == sites.hook_names(model.cfg)


def test_widths_and_shorthands() -> None:
    model = tiny_model(pos_emb=True, d_mlp=96)  # d_mlp unlike d_model: a wrong rule shows
    x = tokens(model.cfg, batch=2)
    _, cache = model.run_with_cache(x)
    cfg = model.cfg
    for site in (*sites.INPUT_SITES, *sites.OUTPUT_SITES):
        assert cache[site.name()].shape[-1] == site.channels(cfg), site
    for i in range(cfg.n_layer):
        for site in sites.LAYER_SITES:
            act = cache[site.name(i)]
            if site.width is None:
                assert act.shape == (2, cfg.n_head, cfg.n_ctx, cfg.n_ctx), site
            else:
                assert act.shape == (2, cfg.n_ctx, site.channels(cfg)), site
            assert cache[site.shorthand(i)] is act, site
    final = cache[sites.final_resid_name(cfg.n_layer)]
    assert final.shape[-1] == sites.FINAL_RESID.channels(cfg)


def test_official_names_round_trip() -> None:
    model = tiny_model()
    n = model.cfg.n_layer
    aliases = model.hook_aliases()
    assert aliases == sites.official_aliases(n)
    official_sites = [s for s in sites.LAYER_SITES if s.official]
    assert len(aliases) == n * len(official_sites) + 1
    for i in range(n):
        for site in official_sites:
            assert model.resolve_hook_name(f"{i}.{site.kind}") == site.name(i)
    assert model.resolve_hook_name("final_resid") == sites.final_resid_name(n)
    # The official AbsTopK names: every one is accepted by the config and the official format.
    assert sites.ABSTOPK_SITES == tuple(s.abstopk for s in sites.NODE_SITES)
    cfg = tiny_model(afrac_sites=sites.ABSTOPK_SITES).cfg
    loaded, _ = official.read_config(official.official_config(cfg, "unknown"), "test")
    assert loaded.afrac_sites == sites.ABSTOPK_SITES


@pytest.mark.parametrize("site", sites.NODE_SITES, ids=lambda s: s.kind)
def test_each_abstopk_name_is_the_activation_it_sparsifies(site: sites.Site) -> None:
    """AbsTopK at one official site only: that site's activation keeps k per token, and every
    other node site stays dense."""
    torch.manual_seed(0)
    model = tiny_model(afrac=0.25, afrac_sites=(site.abstopk,), d_mlp=96)
    _, cache = model.run_with_cache(tokens(model.cfg, batch=2))
    for other in sites.NODE_SITES:
        act = cache[other.name(0)]
        k = abstopk_k(0.25, other.channels(model.cfg))
        kept = int((act != 0).sum(-1).max())
        if other is site:
            assert kept <= k, other
        else:
            assert kept > k, other


def test_pruning_nodes_come_from_the_registry() -> None:
    cfg = tiny_model(d_mlp=96).cfg
    nodes = node_sites(cfg, final_resid=True)
    expected = [(s.name(i), s.kind, i) for i in range(cfg.n_layer) for s in sites.NODE_SITES]
    expected.append((sites.final_resid_name(cfg.n_layer), "final_resid", cfg.n_layer))
    assert [(n.name, n.kind, n.layer) for n in nodes] == expected
    aliases = sites.official_aliases(cfg.n_layer)
    for n in nodes:
        assert aliases[n.alias] == n.name
    node_kinds = {s.kind for s in sites.NODE_SITES} | {sites.FINAL_RESID.kind}
    assert {*READS, *WRITES} <= node_kinds
    # The page names the head of a node of these kinds.
    page = render_html(ViewData({"task": "t"}, [], [], 0, [], {}, {}, [], {}))
    head_kinds = [s.kind for s in sites.NODE_SITES if s.per_head]
    assert head_kinds == ["attn.q", "attn.k", "attn.v"]
    assert f"{json.dumps(head_kinds)}.includes(s.kind)" in page


def test_residual_sites_of_bridges_and_analyses() -> None:
    model = tiny_model()
    n = model.cfg.n_layer
    x = tokens(model.cfg, batch=2)
    _, cache = model.run_with_cache(x)
    residual = sites.residual_sites(n)
    assert len(residual) == 2 * n + 1
    assert [site_name(s, n) for s in range(2 * n + 1)] == [name for name, _ in residual]
    streams = SparseSites(model).sites(x)
    for s, (_, hook) in enumerate(residual):
        assert torch.equal(streams[s], cache[hook]), hook
    assert residual_sites(model) == [hook for _, hook in residual]
    assert final_site(model) == residual[-1][1]

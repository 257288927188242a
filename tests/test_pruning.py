"""Circuit pruning: gates, mean ablation, bisection, edge counting, a planted circuit, the CLI
and the viewer (rendered in headless Chromium)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers

from sparse_tf import GPT, GPTConfig, load_model
from sparse_tf.cli import main
from sparse_tf.cli.commands import TARGET_MISSED_STATUS
from sparse_tf.config import ConfigError
from sparse_tf.extras import installed
from sparse_tf.filenames import CIRCUIT_FILE, HTML_FILE, LOSS_VS_K_FILE, MEANS_FILE, SCORES_FILE
from sparse_tf.io import user_entries
from sparse_tf.pruning import (
    Circuit,
    CircuitError,
    MeansError,
    NodeError,
    NodeMasks,
    PruneConfig,
    PruneError,
    check_nodes,
    count_edges,
    fit_logit_scale,
    heaviside,
    keep_gates,
    kept_within,
    load_circuit,
    load_means,
    mean_ablation,
    node_sites,
    prune,
    prune_model,
    prune_model_targets,
    prune_targets,
    smallest_k,
    top_k_gates,
)
from sparse_tf.pruning.edges import EDGE_TYPES
from sparse_tf.pruning.search import Pool, Pruner
from sparse_tf.pruning.study import SEARCHED, Hyper, space
from sparse_tf.pruning.viewer import ViewData, render_html
from sparse_tf.tasks import CHANCE_LOSS, Example, Pair, Task, contrast_loss
from tests.helpers import assert_plot_drawn, run_prune, tiny_config, tiny_model, tokens

# -- gates and mean ablation -------------------------------------------------------------


def test_heaviside_is_binary_forward_and_a_sigmoid_derivative_backward() -> None:
    tau = torch.tensor([-1.0, -0.3, 0.0, 1e-6, 0.4, 1.0], requires_grad=True)
    for temp in (1.0, 0.25):
        tau.grad = None
        gate = heaviside(tau, temp)
        assert gate.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]  # exactly binary; 0 is off
        upstream = torch.arange(1.0, 7.0)
        (gate * upstream).sum().backward()
        s = torch.sigmoid(tau.detach() / temp)
        torch.testing.assert_close(tau.grad, upstream * s * (1 - s) / temp)


def test_masks_start_on_stay_in_range_and_rank_deterministically() -> None:
    sites = node_sites(tiny_config())
    masks = NodeMasks(sites, generator=torch.Generator().manual_seed(0))
    assert masks.n_active() == masks.n_nodes == sum(s.width for s in sites)
    with torch.no_grad():
        for t in masks.taus:
            t.mul_(40)  # far outside [-1, 1]
            t[::3] = -5.0
    masks.clamp_()
    flat = torch.cat([t.detach() for t in masks.taus])
    assert flat.min() >= -1
    assert flat.max() <= 1
    ranking = masks.ranking()
    assert torch.equal(ranking, masks.ranking())
    ordered = flat[ranking]
    assert (ordered[:-1] >= ordered[1:]).all()
    ties = ranking[ordered == -1.0]  # clamped ties keep site and channel order
    assert torch.equal(ties, ties.sort().values)


def _means(model: GPT, sites: list, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {s.name: torch.randn(s.width, generator=g) for s in sites}


def test_all_kept_reproduces_the_model_exactly() -> None:
    model = tiny_model()
    x = tokens(model.cfg)
    sites = node_sites(model.cfg, final_resid=True)
    means = _means(model, sites)
    full = {s.name: range(s.width) for s in sites}
    with torch.no_grad():
        base = model(x)
        with mean_ablation(model, keep_gates(sites, full), means):
            kept = model(x)
        masks = NodeMasks(sites)  # τ ≈ 0.1 > 0: every gate on, through the surrogate path
        with mean_ablation(model, masks.gates(), means):
            soft = model(x)
    assert torch.equal(base, kept)
    assert torch.equal(base, soft)


def test_all_pruned_replaces_every_site_by_its_means() -> None:
    model = tiny_model()
    sites = node_sites(model.cfg, final_resid=True)
    means = _means(model, sites)
    x = tokens(model.cfg)
    with torch.no_grad(), mean_ablation(model, keep_gates(sites, {}), means):
        logits, cache = model.run_with_cache(x, names_filter=[s.name for s in sites])
    for s in sites:
        assert torch.equal(cache[s.name], means[s.name].expand_as(cache[s.name]))
    # With the final residual at its means, only the bigram table still sees the tokens.
    with torch.no_grad():
        expected = model.unembed(model.ln_final(means[sites[-1].name]))  # [vocab]
        torch.testing.assert_close(logits - model.bigram[x], expected.expand_as(logits))


def test_partial_gates_ablate_exactly_the_listed_channels() -> None:
    model = tiny_model()
    sites = node_sites(model.cfg)
    means = _means(model, sites)
    keep = {"blocks.1.mlp.hook_post": [0, 5, 200], "blocks.0.attn.hook_q": [3]}
    with torch.no_grad(), mean_ablation(model, keep_gates(sites, keep), means):
        _, cache = model.run_with_cache(tokens(model.cfg), names_filter=list(keep))
    with torch.no_grad():
        # The same run, ablating by hand: the kept channels hold their own values.
        post = cache["blocks.1.mlp.hook_post"]
        ablated = torch.ones(post.shape[-1], dtype=torch.bool)
        ablated[[0, 5, 200]] = False
        assert torch.equal(
            post[..., ablated],
            means["blocks.1.mlp.hook_post"][ablated].expand(*post.shape[:-1], -1),
        )
    with torch.no_grad(), mean_ablation(model, keep_gates(sites, keep, invert=True), means):
        _, inverse = model.run_with_cache(tokens(model.cfg), names_filter=list(keep))
    q = inverse["blocks.0.attn.hook_q"]
    assert torch.equal(q[..., 3], means["blocks.0.attn.hook_q"][3].expand(*q.shape[:-1]))


def test_ablating_a_site_without_means_is_a_clear_error() -> None:
    model = tiny_model()
    sites = node_sites(model.cfg, final_resid=True)
    means = _means(model, sites[:-1])
    with (
        pytest.raises(MeansError, match="no ablation means for hook"),
        mean_ablation(model, keep_gates(sites, {}), means),
    ):
        pass


def test_gradients_reach_tau_through_the_ablation() -> None:
    model = tiny_model()
    sites = node_sites(model.cfg)
    masks = NodeMasks(sites)
    with mean_ablation(model, masks.gates(), _means(model, sites)):
        model(tokens(model.cfg)).square().mean().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in masks.taus)


# -- bisection and calibration -----------------------------------------------------------


@pytest.mark.parametrize("start", [1, 7, 40, 64, 1000])
@pytest.mark.parametrize("threshold", [0, 1, 2, 17, 63, 64])
def test_bisection_returns_the_smallest_k(start: int, threshold: int) -> None:
    calls: list[int] = []

    def loss_at(k: int) -> float:
        calls.append(k)
        return 0.1 if k >= threshold else 0.5 + 1 / (k + 1)

    assert smallest_k(loss_at, 64, 0.15, start=start) == threshold
    assert len(calls) <= 2 * math.ceil(math.log2(64)) + 3


def test_bisection_says_when_the_target_is_out_of_reach() -> None:
    assert smallest_k(lambda k: 0.3, 50, 0.15, start=10) is None


def test_logit_scale_fit_improves_a_timid_circuit_and_never_flips() -> None:
    margins = torch.tensor([0.5, 0.4, 0.6, -0.1, 0.3, 0.2])
    logits = torch.stack([margins, torch.zeros(6)], dim=1)
    s = fit_logit_scale(logits)
    assert s > 1
    assert contrast_loss(logits * s) < contrast_loss(logits)
    wrong = torch.stack([-margins, torch.zeros(6)], dim=1)  # mostly wrong: shrink, never flip
    s_wrong = fit_logit_scale(wrong)
    assert 0 < s_wrong < 1
    assert contrast_loss(wrong * s_wrong) <= CHANCE_LOSS + 1e-4


# -- edges -----------------------------------------------------------------------------------


def _edges_by_definition(model: GPT, nodes: dict[str, list[int]]) -> tuple[dict[str, int], int]:
    """An independent oracle: walk every pair of kept nodes and look the weight up. Returns
    the edges by type and, apart, the residual links."""
    cfg = model.cfg
    d_attn = cfg.n_head * cfg.d_head
    counts = dict.fromkeys(EDGE_TYPES, 0)

    def kept(name: str) -> list[int]:
        return nodes.get(name, [])

    for i, blk in enumerate(model.blocks):
        b = f"blocks.{i}"
        w = blk.attn.qkv.weight
        for j, kind in enumerate("qkv"):
            for c in kept(f"{b}.attn.hook_{kind}"):
                for r in kept(f"{b}.attn.hook_in"):
                    counts[f"attn.{kind}"] += bool(w[j * d_attn + c, r] != 0)
        for o in kept(f"{b}.hook_attn_out"):
            for c in kept(f"{b}.attn.hook_v"):
                counts["attn.out"] += bool(blk.attn.out_proj.weight[o, c] != 0)
        for n in kept(f"{b}.mlp.hook_post"):
            for r in kept(f"{b}.mlp.hook_in"):
                counts["mlp.in"] += bool(blk.mlp.in_proj.weight[n, r] != 0)
        for o in kept(f"{b}.hook_mlp_out"):
            for n in kept(f"{b}.mlp.hook_post"):
                counts["mlp.out"] += bool(blk.mlp.out_proj.weight[o, n] != 0)
    # Residual links: a write at sublayer p reaches every read at a later sublayer, channel by
    # channel.
    links = 0
    writes = [
        (2 * i + m, f"blocks.{i}.{h}")
        for i in range(cfg.n_layer)
        for m, h in ((0, "hook_attn_out"), (1, "hook_mlp_out"))
    ]
    reads = [
        (2 * i + m, f"blocks.{i}.{h}", norm)
        for i, blk in enumerate(model.blocks)
        for m, h, norm in ((0, "attn.hook_in", blk.ln1), (1, "mlp.hook_in", blk.ln2))
    ]
    for p_r, r_name, norm in reads:
        for p_w, w_name in writes:
            if p_w < p_r:
                both = set(kept(r_name)) & set(kept(w_name))
                links += sum(bool(norm.weight[c] != 0) for c in both)
    return counts, links


def test_edge_counts_on_a_hand_built_model() -> None:
    torch.manual_seed(3)
    cfg = tiny_config(d_model=32, d_head=8, d_mlp=48, n_layer=2)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():  # a sparse model: most weights exactly zero
            if p.dim() == 2:
                p.mul_((torch.rand_like(p) < 0.2).float())
        model.blocks[1].ln1.weight[4] = 0.0  # a zero gain cuts residual channel 4 into L1 attn
    rng = random.Random(0)
    sites = node_sites(cfg, final_resid=False)  # the oracle walks the blocks' reads only
    nodes = {
        s.name: sorted(rng.sample(range(s.width), rng.randint(0, s.width // 2))) for s in sites
    }
    nodes["blocks.0.hook_attn_out"] = [4, 5]
    nodes["blocks.1.attn.hook_in"] = [4, 5]
    counted = count_edges(model, sites, nodes)
    by_type, links = _edges_by_definition(model, nodes)
    assert counted.by_type == by_type
    assert counted.total == sum(counted.by_type.values())  # residual links never summed in
    assert counted.resid_links == links > 0
    assert sum(counted.resid_links_by_layer.values()) == links
    assert {k: sum(layer[k] for layer in counted.by_layer.values()) for k in EDGE_TYPES} == (
        counted.by_type
    )


def test_edge_counts_of_tiny_known_circuits() -> None:
    # The paper's example: one neuron reading one channel and writing one channel is 3 nodes
    # and 2 edges.
    cfg = tiny_config(n_layer=1)
    model = GPT(cfg)  # dense: every weight nonzero
    sites = node_sites(cfg)
    mlp = {"blocks.0.mlp.hook_in": [3], "blocks.0.mlp.hook_post": [7], "blocks.0.hook_mlp_out": [9]}
    assert count_edges(model, sites, mlp).by_type == {
        **dict.fromkeys(EDGE_TYPES, 0),
        "mlp.in": 1,
        "mlp.out": 1,
    }
    # A dense model's circuit is complete between consecutive kept sets.
    attn = {
        "blocks.0.attn.hook_in": [0, 1, 2],
        "blocks.0.attn.hook_q": [5, 6],
        "blocks.0.attn.hook_v": [1],
        "blocks.0.hook_attn_out": [0, 3, 8, 9],
        "blocks.0.mlp.hook_in": [0, 3, 4],
    }
    got = count_edges(model, sites, attn)
    assert got.by_type["attn.q"] == 6
    assert got.by_type["attn.k"] == 0
    assert got.by_type["attn.v"] == 3
    assert got.by_type["attn.out"] == 4
    assert got.total == 6 + 3 + 4  # the weights only: residual links are not edges
    assert got.resid_links == 2  # channels 0 and 3: written by attention, read by the MLP
    assert got.resid_links_by_layer == {"0": 2, "final": 0}
    final = node_sites(cfg, final_resid=True)
    with_final = {**attn, "blocks.0.hook_resid_post": [3, 9, 10]}
    counted = count_edges(model, final, with_final)
    assert counted.resid_links_by_layer["final"] == 2  # 3 and 9
    assert counted.total == got.total  # final_resid nodes add nodes, never edges
    assert "final" not in counted.by_layer


# -- a planted circuit ------------------------------------------------------------------------

FILLER = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "omega",
    "kappa",
    "sigma",
    "theta",
    "zeta",
    "iota",
    "rho",
    "tau",
]


def _planted_task() -> Task:
    def make(rng: random.Random) -> Pair:
        head = " ".join(rng.choice(FILLER) for _ in range(3)) + "\nx = "
        return Pair("planted", Example(head + "A ", "yes", ""), Example(head + "B ", "no", ""))

    return Task(
        name="planted",
        summary="x = A -> yes, x = B -> no",
        make=make,
        rule=lambda c: "yes" if c.rstrip().endswith("A") else "no",
        tokens=frozenset({"yes", "no"}),
        differ="A|B",
    )


def _word_tokenizer() -> Tokenizer:
    words = ["<|endoftext|>", "[UNK]", "x", "=", "A", "B", "yes", "no", *FILLER]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def _planted_model(tok: Tokenizer) -> GPT:
    """1 layer, d_model 16, no AbsTopK. Token A writes +1 to residual channel 3, B −1. MLP
    neuron 5 = GELU(2·ch3) writes +ch7, neuron 9 = GELU(−2·ch3) writes −ch7; the unembedding
    reads only channel 7: +0.5 for "yes", −0.5 for "no" (a margin of about 4: a model so
    sure that its loss is 1e-17 gives the masks no gradient, and the penalty wins). Attention
    has zero weights; every token also carries noise in channels 10–15, which nothing reads.
    The task's circuit is therefore mlp.act_in 3 -> post_act 5, 9 -> resid_delta 7 and final
    residual channel 7 (what the unembedding reads): 5 nodes, 4 edges."""
    cfg = GPTConfig(
        vocab_size=tok.get_vocab_size(),
        n_ctx=16,
        n_layer=1,
        d_model=16,
        d_head=8,
        d_mlp=16,
        afrac=None,
        bigram=False,
    )
    model = GPT(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            norm_gains = (model.blocks[0].ln1.weight, model.blocks[0].ln2.weight)
            if p.dim() == 2 or all(p is not g for g in norm_gains):
                p.zero_()
        model.ln_final.weight.fill_(1.0)
        model.embed.weight[:, 10:] = 0.1 * torch.randn(cfg.vocab_size, 6, generator=g)
        model.embed.weight[tok.token_to_id("A"), 3] = 1.0
        model.embed.weight[tok.token_to_id("B"), 3] = -1.0
        mlp = model.blocks[0].mlp
        mlp.in_proj.weight[5, 3], mlp.in_proj.weight[9, 3] = 2.0, -2.0
        mlp.out_proj.weight[7, 5], mlp.out_proj.weight[7, 9] = 1.0, -1.0
        model.unembed.weight[tok.token_to_id("yes"), 7] = 0.5
        model.unembed.weight[tok.token_to_id("no"), 7] = -0.5
    return model.eval()


def test_a_planted_circuit_is_recovered() -> None:
    tok = _word_tokenizer()
    model = _planted_model(tok)
    sites = node_sites(model.cfg, final_resid=True)  # the default
    means = {s.name: torch.zeros(s.width) for s in sites}
    cfg = PruneConfig(steps=150, batch_pairs=16, n_train=64, n_val=32, n_test=32)
    result = prune(model, tok, _planted_task(), means, cfg)
    c = result.circuit
    planted = {
        "blocks.0.mlp.hook_in": [3],
        "blocks.0.mlp.hook_post": [5, 9],
        "blocks.0.hook_mlp_out": [7],
        "blocks.0.hook_resid_post": [7],
    }
    assert c.nodes == planted
    assert c.n_nodes == 5
    assert c.reached_target
    assert c.n_edges == 4
    assert c.n_resid_links == 1  # mlp_out 7 -> final_resid 7
    assert c.edges_by_type == {**dict.fromkeys(EDGE_TYPES, 0), "mlp.in": 2, "mlp.out": 2}
    assert c.sufficiency["loss"] < 0.15
    assert c.sufficiency["accuracy"] == 1.0
    assert c.necessity["loss"] == pytest.approx(CHANCE_LOSS, abs=1e-3)  # nothing else carries it
    assert c.full_model["accuracy"] == 1.0
    # The curve is in ascending k, contains the chosen size, and hits chance at k = 0.
    ks = [k for k, _ in c.loss_vs_k]
    assert ks == sorted(ks)
    assert c.n_nodes in ks
    assert ks[0] == 0
    assert c.loss_vs_k[0][1] == pytest.approx(CHANCE_LOSS, abs=1e-3)
    # The scores rank the planted nodes first.
    assert set(result.scores) == {s.name for s in sites}
    ranked = top_k_gates(
        sites,
        torch.cat([result.scores[s.name] for s in sites])
        .sort(descending=True, stable=True)
        .indices,
        5,
    )
    assert {n: torch.nonzero(g).flatten().tolist() for n, g in ranked.items() if g.any()} == planted


def test_pruning_is_reproducible_and_leaves_the_model_unchanged() -> None:
    tok = _word_tokenizer()
    model = _planted_model(tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    sites = node_sites(model.cfg, final_resid=True)
    means = {s.name: torch.zeros(s.width) for s in sites}
    cfg = PruneConfig(steps=30, batch_pairs=8, n_train=32, n_val=16, n_test=16, budget=2)
    a, b = (prune(model, tok, _planted_task(), means, cfg).circuit.to_dict() for _ in range(2))
    for trial in (*a["trials"], *b["trials"]):
        assert trial.pop("seconds") >= 0  # wall time is the one thing that may differ
    assert a == b
    assert len(a["trials"]) == 2
    assert a["trials"][0]["hyper"]["k_coef"] == cfg.k_coef
    assert a["trials"][1]["hyper"] != a["trials"][0]["hyper"]  # the search moved
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags


def test_a_searchs_first_trials_keep_what_a_search_of_that_budget_keeps() -> None:
    """`kept_within(records, b)` read off a larger search's trials is the circuit a search of
    budget b keeps (a trial's parameters and seed depend only on the trials before it), and at
    the whole budget the circuit that search kept."""
    tok = _word_tokenizer()
    model = _planted_model(tok)
    sites = node_sites(model.cfg, final_resid=True)
    means = {s.name: torch.zeros(s.width) for s in sites}
    cfg = PruneConfig(steps=30, batch_pairs=8, n_train=32, n_val=16, n_test=16, budget=3)
    full = prune(model, tok, _planted_task(), means, cfg).circuit
    for budget in (1, 2, 3):
        small = prune(model, tok, _planted_task(), means, dataclasses.replace(cfg, budget=budget))
        kept = kept_within(full.trials, budget)
        c = small.circuit
        assert (kept.k, kept.n_edges, kept.reached) == (c.n_nodes, c.n_edges, c.reached_target)
    assert kept_within(full.trials, 99) == kept_within(full.trials, 3)


def test_kept_within_takes_the_first_completed_trials_by_number() -> None:
    """Records out of order, a failed trial among them, equal circuits: the best of the first
    `budget` completed trials by number, the earliest of equals."""

    def record(number: int, edges: int, reached: bool = True, state: str = "COMPLETE") -> dict:
        if state != "COMPLETE":
            return {"number": number, "state": state, "hyper": {}}
        trial = {
            "hyper": {f.name: 1 for f in dataclasses.fields(Hyper)},
            "trained_k": 5, "k": edges // 2, "reached": reached, "val_loss": 0.1,
            "val_loss_uncalibrated": 0.2, "n_edges": edges, "seconds": 1.0,
        }  # fmt: skip
        return {"number": number, "state": state, "seed": number, **trial}

    records = [
        record(3, 8),
        record(0, 40),
        record(1, 0, state="FAIL"),
        record(2, 10, reached=False),
        record(4, 8),
        record(5, 6),
    ]
    assert kept_within(records, 1).n_edges == 40
    assert kept_within(records, 2).n_edges == 40  # a miss never beats a met target
    assert kept_within(records, 3).n_edges == 8
    assert kept_within(records, 4).n_edges == 8
    assert kept_within(records, 5).n_edges == 6
    with pytest.raises(ValueError, match="budget 0"):
        kept_within(records, 0)
    with pytest.raises(ValueError, match="no completed trial"):
        kept_within([record(0, 0, state="RUNNING")], 1)


def test_a_target_sweep_trains_each_trials_masks_once_and_finds_each_targets_circuit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`prune_targets` gives every target the circuit a `prune` of its own would (same trials,
    nodes, edges and test scores), while each trial's masks are trained once for all targets:
    the later targets' trials say so, and `train_masks` runs once per trial."""
    tok = _word_tokenizer()
    model = _planted_model(tok)
    sites = node_sites(model.cfg, final_resid=True)
    means = {s.name: torch.zeros(s.width) for s in sites}
    cfg = PruneConfig(
        steps=40, batch_pairs=8, n_train=32, n_val=16, n_test=16, budget=2, calibrate=False
    )
    # The last is out of reach uncalibrated (the full model's loss is about 0.02): its circuit
    # is the best size its own search measured, whatever the other targets' searches measured.
    targets = (0.3, 0.05, 1e-4)
    alone = {
        t: prune(model, tok, _planted_task(), means, dataclasses.replace(cfg, target_loss=t))
        for t in targets
    }
    trainings: list[Hyper] = []
    train_masks = Pruner.train_masks

    def counted(self: Pruner, hyper: Hyper, seed: int) -> NodeMasks:
        trainings.append(hyper)
        return train_masks(self, hyper, seed)

    monkeypatch.setattr(Pruner, "train_masks", counted)
    swept = dict(prune_targets(model, tok, _planted_task(), means, cfg, targets))
    assert list(swept) == list(targets)
    assert len(trainings) == cfg.budget  # not budget x targets
    for i, t in enumerate(targets):
        a, b = alone[t].circuit, swept[t].circuit
        assert b.target_loss == t
        assert (b.nodes, b.n_nodes, b.n_edges, b.reached_target) == (
            a.nodes, a.n_nodes, a.n_edges, a.reached_target,
        )  # fmt: skip
        assert b.sufficiency == a.sufficiency
        assert b.necessity == a.necessity
        # The kept run's curve: plus the sizes the other target's bisection measured on it.
        assert {tuple(x) for x in a.loss_vs_k} <= {tuple(x) for x in b.loss_vs_k}

        def plain(trials: list[dict]) -> list[dict]:
            return [{k: v for k, v in x.items() if k not in ("seconds", "reused_masks")}
                    for x in trials]  # fmt: skip

        assert plain(b.trials) == plain(a.trials)
        assert all(x["reused_masks"] == (i > 0) for x in b.trials)
        assert all(torch.equal(swept[t].scores[k], alone[t].scores[k]) for k in a.nodes)
    assert not alone[1e-4].circuit.reached_target
    with pytest.raises(ConfigError, match="target_loss"):
        prune_targets(model, tok, _planted_task(), means, cfg, [0.1, 0.9])  # 0.9: above chance


def test_pool_batches_trim_padding_and_keep_pairs_together() -> None:
    tok = _word_tokenizer()
    model = _planted_model(tok)
    pool = Pool(model, tok, _planted_task(), 8, 0, "train")
    batch = pool.batch(torch.tensor([2, 3]))
    assert batch.tokens.shape[1] == int(batch.lengths.max())
    assert tok.decode([int(batch.targets[0])]) == "yes"
    assert tok.decode([int(batch.targets[1])]) == "no"
    pruner = Pruner(
        model,
        tok,
        _planted_task(),
        node_sites(model.cfg),
        {s.name: torch.zeros(s.width) for s in node_sites(model.cfg)},
        PruneConfig(n_train=8, n_val=8, n_test=8),
    )
    assert pruner.pair_logits(pruner.val, None).shape == (16, 2)


# -- the command, its files, and the viewer ----------------------------------------------------


SHORT_PRUNE = [
    "--task", "single_double_quote", "--steps", "12", "--batch-pairs", "8", "--n-train", "32",
    "--n-val", "16", "--n-test", "16", "--curve-points", "6",
]  # fmt: skip
"""A pruning run of a second or two on the tiny trained model."""


@pytest.fixture(scope="module")
def pruned(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prune") / "quote"
    run_prune(
        ["prune", "--model", str(trained), "--out", str(out), "--mean-windows", "16", *SHORT_PRUNE]
    )
    return out


def test_prune_command_writes_the_result_folder(pruned: Path, trained: Path) -> None:
    plot = [LOSS_VS_K_FILE] if installed("matplotlib") else []  # the [plot] extra's
    assert user_entries(pruned) == sorted([CIRCUIT_FILE, HTML_FILE, MEANS_FILE, SCORES_FILE, *plot])
    data = json.loads((pruned / CIRCUIT_FILE).read_text())
    for key in (
        "task",
        "target_loss",
        "nodes",
        "n_nodes",
        "n_edges",
        "edges_by_type",
        "sufficiency",
        "necessity",
        "loss_vs_k",
    ):
        assert key in data
    c = load_circuit(pruned)
    assert c.task == "single_double_quote"
    assert c.target_loss == 0.15
    assert c.n_nodes == sum(len(v) for v in c.nodes.values())
    model = load_model(trained)
    sites = node_sites(model.cfg, final_resid=True)  # a node site by default
    edges = count_edges(model, sites, c.nodes)
    assert c.n_edges == edges.total
    assert c.n_resid_links == edges.resid_links
    assert c.edges_by_type == edges.by_type
    assert "resid" not in c.edges_by_type
    for figures in (c.sufficiency, c.full_model):  # calibrated and uncalibrated, side by side
        assert {"loss", "accuracy"} <= set(figures)
    assert {"loss_uncalibrated", "meets_target"} <= set(c.sufficiency)
    assert {"loss_calibrated", "logit_scale"} <= set(c.full_model)
    assert c.full_model["loss_calibrated"] <= c.full_model["loss"] + 1e-9
    assert all("val_loss_uncalibrated" in t for t in c.trials)
    assert c.run["versions"]["torch"]
    assert "git" in c.run
    assert c.config["steps"] == 12
    means = load_means(pruned / MEANS_FILE, node_sites(model.cfg, final_resid=True))
    assert set(means) == {s.name for s in node_sites(model.cfg, final_resid=True)}
    scores = load_file(str(pruned / SCORES_FILE))
    assert {k: v.shape[0] for k, v in scores.items()} == {s.name: s.width for s in sites}


def test_the_loss_vs_k_png_draws_the_circuits_curve(pruned: Path) -> None:
    pytest.importorskip("matplotlib")  # the [plot] extra
    from sparse_tf.plots import loss_vs_k_figure, png_bytes

    png = (pruned / LOSS_VS_K_FILE).read_bytes()
    assert_plot_drawn(png)
    c = load_circuit(pruned)
    fig = loss_vs_k_figure(c.loss_vs_k, c.target_loss, c.n_nodes, c.task)
    assert png_bytes(fig) == png  # the saved image is this figure (Agg draws the same bytes)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "nodes kept (k, log scale)"
    assert ax.get_ylabel() == "task loss (val split, calibrated)"
    assert ax.get_title() == "single_double_quote: loss vs circuit size"
    curve = ax.get_lines()[0]
    assert [[k, loss] for k, loss in zip(curve.get_xdata(), curve.get_ydata(), strict=True)] == [
        p for p in c.loss_vs_k if p[0] >= 1
    ]
    assert f"chosen: {c.n_nodes} nodes" in [line.get_label() for line in ax.get_lines()]


def test_prune_without_matplotlib_skips_the_png_in_one_line(
    pruned: Path,
    trained: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "no-plot"
    shutil.copytree(pruned, out)  # an earlier result: its PNG would show another circuit
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails: not found
    means = ["--means", str(pruned / MEANS_FILE)]
    run_prune(["prune", "--model", str(trained), *SHORT_PRUNE, "--out", str(out), *means,
               "--overwrite"])  # fmt: skip
    said = [line for line in capsys.readouterr().out.splitlines() if LOSS_VS_K_FILE in line]
    assert said == [
        "loss_vs_k.png: skipped, matplotlib is not installed (needs the [plot] extra: "
        "pip install 'sparse_tf[plot]')"
    ]
    assert user_entries(out) == sorted([CIRCUIT_FILE, HTML_FILE, MEANS_FILE, SCORES_FILE])
    assert load_circuit(out).task == "single_double_quote"


def test_prune_refuses_to_overwrite_and_reuses_means(
    pruned: Path, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["prune", "--model", str(trained), *SHORT_PRUNE]
    with pytest.raises(SystemExit) as e:
        main([*args, "--out", str(pruned)])
    assert e.value.code == 1
    assert "pass --overwrite" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main([*args, "--out", str(other)])
    assert "holds no pruning result" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "mine"
    # The same means from the file give the same circuit as the first run.
    again = tmp_path / "again"
    run_prune([*args, "--out", str(again), "--means", str(pruned / MEANS_FILE)])
    first, second = load_circuit(pruned), load_circuit(again)
    assert first.nodes == second.nodes
    assert first.loss_vs_k == second.loss_vs_k


def test_prune_model_targets_writes_a_folder_per_target_and_checks_them_all_first(
    pruned: Path, trained: Path, tmp_path: Path
) -> None:
    """Each target's folder holds what a run at that target writes, its circuit.json naming
    the targets it was pruned with; a bad folder among them stops the call before any work,
    and nothing is written into any of them."""
    cfg = PruneConfig(steps=12, batch_pairs=8, n_train=32, n_val=16, n_test=16, curve_points=6)
    means = pruned / MEANS_FILE
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    outs = {0.3: tmp_path / "t30", 0.1: mine}
    with pytest.raises(PruneError, match="holds no pruning result"):
        prune_model_targets(trained, "single_double_quote", outs, cfg, means_file=means)
    assert not (tmp_path / "t30").exists()
    assert user_entries(mine) == ["notes.txt"]
    with pytest.raises(ConfigError, match="target_loss"):  # above chance
        prune_model_targets(trained, "single_double_quote", {0.9: tmp_path / "t90"}, cfg)
    with pytest.raises(PruneError, match="no target loss"):
        prune_model_targets(trained, "single_double_quote", {}, cfg)
    assert not (tmp_path / "t90").exists()
    with pytest.raises(PruneError, match="share an output folder"):
        prune_model_targets(
            trained, "single_double_quote", {0.3: mine, 0.1: mine}, cfg, means_file=means
        )
    outs = {0.3: tmp_path / "t30", 0.1: tmp_path / "t10"}
    lines: list[str] = []
    results = prune_model_targets(
        trained, "single_double_quote", outs, cfg, means_file=means, log=lines.append
    )
    # Each folder is written as its search ends: the first before the second search starts.
    starts = [i for i, line in enumerate(lines) if line.startswith("trial 0 ")]
    wrote = [i for i, line in enumerate(lines) if line.startswith("wrote ")]
    assert len(starts) == len(wrote) == 2
    assert starts[0] < wrote[0] < starts[1] < wrote[1]
    assert str(outs[0.3]) in lines[wrote[0]]
    for target, folder in outs.items():
        c = load_circuit(folder)
        assert c.target_loss == target
        assert c.run["pruned_with_targets"] == [0.1, 0.3]
        assert c.nodes == results[target].circuit.nodes
        assert c.config == dataclasses.replace(cfg, target_loss=target).to_dict()
        assert (folder / HTML_FILE).is_file()
    # The 0.3 circuit is the one a run at 0.3 alone finds.
    alone = tmp_path / "alone"
    single = dataclasses.replace(cfg, target_loss=0.3)
    prune_model(trained, "single_double_quote", alone, single, means_file=means, log=lambda _: None)
    assert load_circuit(alone).nodes == load_circuit(outs[0.3]).nodes
    assert "pruned_with_targets" not in load_circuit(alone).run


def test_prune_command_sweeps_targets_into_a_folder_each(
    pruned: Path, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sparse-tf prune --targets A B` writes OUT/target-A and OUT/target-B; its exit status
    and stderr name the targets the tiny model's circuits miss; a bad --targets is one line
    before any work."""
    out = tmp_path / "sweep"
    args = ["prune", "--model", str(trained), *SHORT_PRUNE]
    means = ["--means", str(pruned / MEANS_FILE)]
    status = run_prune([*args, "--out", str(out), *means, "--targets", "0.3", "0.1"])
    assert user_entries(out) == ["target-0.1", "target-0.3"]
    circuits = {t: load_circuit(out / f"target-{t}") for t in (0.3, 0.1)}
    assert all(c.target_loss == t for t, c in circuits.items())
    missed = [t for t, c in circuits.items() if not c.met_target]
    assert status == (TARGET_MISSED_STATUS if missed else 0)
    err = capsys.readouterr().err
    for t in missed:
        assert f"target-{t}" in err
    bad_means = tmp_path / "bad.safetensors"
    bad_means.write_bytes(b"not a safetensors file")
    bad = [
        # Fails inside the run, after OUT/target-* were made: OUT goes with them.
        (["--targets", "0.1", "0.3", "--means", str(bad_means)], "unreadable"),
        (["--targets", "0.1", "0.8"], "--targets"),
        (["--targets", "0.1", "0.1"], "a repeat"),
        (["--targets", "0.1", "--target-loss", "0.2"], "not both"),
    ]
    for extra, needle in bad:
        with pytest.raises(SystemExit):
            main([*args, "--out", str(tmp_path / "o"), *extra])
        err = capsys.readouterr().err.strip()
        assert needle in err, err
        assert len(err.splitlines()) == 1, err
        assert not (tmp_path / "o").exists()


def test_prune_errors_are_one_line(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_means = tmp_path / "means.safetensors"
    bad_means.write_bytes(b"not a safetensors file")
    cases = [
        (["--task", "no_such_task"], "no_such_task"),
        (["--task", "single_double_quote", "--means", str(bad_means)], "unreadable"),
        (["--task", "single_double_quote", "--steps", "0"], "steps"),
    ]
    for extra, needle in cases:
        with pytest.raises(SystemExit):
            main(["prune", "--model", str(trained), "--out", str(tmp_path / "o"), *extra])
        err = capsys.readouterr().err.strip()
        assert needle in err, err
        assert len(err.splitlines()) == 1, err
        assert not (tmp_path / "o").exists()


def test_circuit_files_are_validated(tmp_path: Path) -> None:
    (tmp_path / CIRCUIT_FILE).write_text(json.dumps({"task": "x"}))
    with pytest.raises(CircuitError, match="missing field"):
        load_circuit(tmp_path)
    save_file({"x": torch.zeros(3)}, str(tmp_path / "m.safetensors"))
    with pytest.raises(MeansError, match="no means for hook"):
        load_means(tmp_path / "m.safetensors", node_sites(tiny_config()))


def _browser():
    """Headless Chromium through chromedriver (Debian's chromium and chromium-driver). CI sets
    SPARSE_TF_REQUIRE_BROWSER=1 so that a missing browser fails instead of skipping."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("SPARSE_TF_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium and chromedriver are required (SPARSE_TF_REQUIRE_BROWSER=1)")
        pytest.skip("needs chromium and chromedriver (Debian packages chromium, chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_viewer_renders_the_circuit_in_chromium(
    pruned: Path, trained: Path, tmp_path: Path
) -> None:
    from PIL import Image
    from selenium.webdriver.common.by import By

    circuit = load_circuit(pruned)
    browser = _browser()
    try:
        browser.get((pruned / HTML_FILE).resolve().as_uri())
        nodes = browser.find_elements(By.CSS_SELECTOR, "circle.node")
        edges = browser.find_elements(By.CSS_SELECTOR, "path.edge")
        assert len(nodes) == circuit.n_nodes > 0
        assert len(edges) == circuit.n_edges
        body = browser.find_element(By.TAG_NAME, "body")
        assert body.get_attribute("data-nodes-drawn") == str(circuit.n_nodes)
        assert f"{circuit.n_nodes} nodes, {circuit.n_edges} edges" in browser.title + (
            browser.find_element(By.ID, "title").text
        )
        assert browser.find_elements(By.CSS_SELECTOR, "#curve polyline.curve")
        # Rows by the hook API's names: the names circuit.json, model.hooks and the summary use.
        labels = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "tspan.sitename")]
        assert labels == [s.name for s in node_sites(load_model(trained).cfg, final_resid=True)]
        assert set(circuit.nodes) <= set(labels)
        browser.execute_script(
            "arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", nodes[0]
        )
        panel = browser.find_element(By.ID, "panel")
        name = browser.find_element(By.ID, "nodename").text
        assert "channel" in name
        assert len(panel.find_elements(By.CSS_SELECTOR, ".prompt")) == 6  # 3 pairs, both classes
        assert panel.find_elements(By.CSS_SELECTOR, "span.tok")
        assert "class a" in panel.text
        assert "class b" in panel.text
        assert browser.find_elements(By.CSS_SELECTOR, "circle.node.sel")
        png = browser.get_screenshot_as_png()
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        browser.quit()
    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None
    assert len(colours) > 50
    dark = sum(n for n, rgb in colours if max(rgb) < 80)  # node circles and text
    assert dark > 500


def test_viewer_escapes_the_embedded_data() -> None:
    circuit = Circuit(
        task="</script><b>x",
        target_loss=0.15,
        reached_target=True,
        nodes={},
        n_nodes=0,
        n_total_nodes=1,
        n_edges=0,
        edges_by_type={},
        edges_by_layer={},
        logit_scale=1.0,
        sufficiency={},
        necessity={},
        full_model={},
        all_ablated={},
        loss_vs_k=[],
    )
    circuit = dataclasses.replace(circuit, model="runs/<!--<script>/final & co")
    view = ViewData(circuit.to_dict(), [], [], 0, [], {}, {}, [], {"a": "x", "b": "y"})
    page = render_html(view)
    assert page.count("</script>") == 2  # the two real ones; the data's is escaped
    assert page.count("<script") == 2  # a "<script" in the data would open one
    assert "<!--" not in page
    assert "<title>circuit: &lt;/script&gt;&lt;b&gt;x</title>" in page
    # The embedded JSON reads back to the very strings.
    data = page.split('<script id="data" type="application/json">')[1].split("</script>")[0]
    assert json.loads(data)["circuit"]["model"] == "runs/<!--<script>/final & co"
    assert json.loads(data)["circuit"]["task"] == "</script><b>x"


TRICKY_PROMPT = "x = \"</script><b>&amp;\"\ny = '\\n' </SCRIPT> <!--"
"""A prompt a code task may well have: a closing script tag, quotes, `&`, a newline, an escape."""


def _big_view() -> ViewData:
    """A synthetic circuit of the tiny model's node sites with 300 nodes in one row, 3,000
    edges drawn of 5,123 and 40 residual links of 45, and the tricky prompt."""
    rng = random.Random(0)
    sites = node_sites(tiny_config(), final_resid=True)
    counts = [
        300 if s.kind == "mlp.post_act" and s.layer == 0 else 1 + i % 5 for i, s in enumerate(sites)
    ]
    view_sites = [
        {
            "name": s.name,
            "layer": s.layer,
            "kind": s.kind,
            "width": max(s.width, n),
            "d_head": 16,
            "nodes": list(range(n)),
        }
        for s, n in zip(sites, counts, strict=True)
    ]
    edges: list[list[object]] = []
    for _ in range(3000):
        a = rng.randrange(len(sites) - 1)
        b = rng.randrange(a + 1, min(len(sites), a + 5))
        w = round(rng.uniform(-1, 1), 4)
        edges.append([a, rng.randrange(counts[a]), b, rng.randrange(counts[b]), w, "mlp.in"])
    for k in range(40):
        edges.append([0, 0, len(sites) - 1, k % counts[-1], 1.0, "resid"])
    circuit = Circuit(
        task="t", target_loss=0.15, reached_target=True,
        nodes={s.name: list(range(n)) for s, n in zip(sites, counts, strict=True)},
        n_nodes=sum(counts), n_total_nodes=5000, n_edges=5123, edges_by_type={"mlp.in": 5123},
        edges_by_layer={"0": {"mlp.in": 5123}}, logit_scale=1.0, sufficiency={}, necessity={},
        full_model={}, all_ablated={}, loss_vs_k=[[1, 0.5], [10, 0.1]], n_resid_links=45,
    )  # fmt: skip
    tokens = [TRICKY_PROMPT[:9], TRICKY_PROMPT[9:20], TRICKY_PROMPT[20:]]
    prompts = [
        {"cls": c, "tokens": tokens, "target": t, "alternative": a}
        for c, t, a in (("a", ' "', " '"), ("b", " '", ' "'))
    ]
    key = f"{len(sites) - 1}:0"
    return ViewData(
        circuit.to_dict(), view_sites, edges, 5123 - 3000, prompts,
        {key: [[0.5, -1.0, 2.0]] * 2}, {key: [0.5, -0.5]}, ["a", "b"],
        {"a": ' "', "b": "</script>'\n"}, links_left_out=5,
    )  # fmt: skip


def test_viewer_embeds_prompts_and_labels_as_data() -> None:
    page = render_html(_big_view())
    assert page.count("</script>") == 2  # the two real ones
    assert page.count("<script") == 2
    assert "</SCRIPT" not in page
    assert "<!--" not in page
    data = json.loads(page.split('type="application/json">')[1].split("</script>")[0])
    assert "".join(data["prompts"][0]["tokens"]) == TRICKY_PROMPT
    assert data["classes"]["b"] == "</script>'\n"
    assert (data["edges_left_out"], data["links_left_out"]) == (2123, 5)
    # A task named like a placeholder gets its own name in the title, not the data.
    view = dataclasses.replace(_big_view(), circuit={**_big_view().circuit, "task": "__DATA__"})
    assert "<title>circuit: __DATA__</title>" in render_html(view)


def test_viewer_fits_a_large_circuit_in_chromium(tmp_path: Path) -> None:
    """300 nodes in a row stay inside the panel; the note gives the right counts; prompts and
    class labels are their own text; rows are labelled by hook name; zoom and pan work."""
    from selenium.webdriver.common.by import By

    view = _big_view()
    page = tmp_path / "big.html"
    page.write_text(render_html(view))
    browser = _browser()
    try:
        browser.get(page.as_uri())
        box = browser.execute_script(
            "return document.getElementById('graphbox').getBoundingClientRect().toJSON()"
        )
        rects = browser.execute_script(
            "return [...document.querySelectorAll('circle.node')]"
            ".map(c => c.getBoundingClientRect().toJSON())"
        )
        assert len(rects) == sum(len(s["nodes"]) for s in view.sites)
        outside = [
            r for r in rects
            if r["left"] < box["left"] or r["right"] > box["right"] + 0.5 or r["width"] <= 0
        ]  # fmt: skip
        assert not outside, (box, outside[:3])
        svg = browser.find_element(By.ID, "graph")
        assert svg.get_dom_attribute("viewBox").startswith("0 0 ")
        assert svg.size["width"] <= box["width"]
        note = browser.find_element(By.ID, "leftout").text
        assert "the 3,000 strongest of 5,123 edges (by |weight|)" in note
        assert "the first 40 of 45 residual links" in note
        labels = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "tspan.sitename")]
        assert labels == [s.name for s in node_sites(tiny_config(), final_resid=True)]
        shown = TRICKY_PROMPT.replace("\n", "\u21b5\n")
        texts = browser.execute_script(
            "return [...document.querySelectorAll('#prompts .text')].map(e => e.textContent)"
        )
        assert texts == [shown, shown]
        classes = browser.execute_script(
            "return ['class-a', 'class-b'].map(i => document.getElementById(i).textContent)"
        )
        assert classes == [' "', "</script>'\u21b5\n"]
        # Zoom: the buttons and the wheel narrow the viewBox, reset fits again.
        fit = svg.get_dom_attribute("viewBox")
        browser.find_element(By.ID, "zoomin").click()
        width = float(svg.get_dom_attribute("viewBox").split()[2])
        assert width < float(fit.split()[2])
        browser.execute_script(
            "arguments[0].dispatchEvent(new WheelEvent('wheel', {deltaY: -300, clientX: 400,"
            " clientY: 200, bubbles: true, cancelable: true}))",
            svg,
        )
        assert float(svg.get_dom_attribute("viewBox").split()[2]) < width
        # Zoomed in and panned right, the row labels stay at the panel's left edge, unscaled.
        label_box = (
            "return [...document.querySelectorAll('text.pinned')]"
            ".map(t => t.getBoundingClientRect().toJSON())"
        )
        browser.find_element(By.ID, "zoomreset").click()
        fitted = browser.execute_script(label_box)
        browser.find_element(By.ID, "zoomin").click()
        browser.find_element(By.ID, "zoomin").click()
        browser.execute_script(
            "const g = arguments[0], r = g.getBoundingClientRect(), x = r.left + r.width / 2,"
            " y = r.top + 20;"
            "g.dispatchEvent(new PointerEvent('pointerdown', {clientX: x, clientY: y,"
            " bubbles: true}));"
            "window.dispatchEvent(new PointerEvent('pointermove', {clientX: x - 200,"
            " clientY: y}));"
            "window.dispatchEvent(new PointerEvent('pointerup', {}));",
            svg,
        )
        assert float(svg.get_dom_attribute("viewBox").split()[0]) > 0  # panned
        zoomed = browser.execute_script(label_box)
        for before, after in zip(fitted, zoomed, strict=True):
            assert after["left"] == pytest.approx(before["left"], abs=1.0)
            assert after["height"] == pytest.approx(before["height"], abs=0.5)
        browser.find_element(By.ID, "zoomreset").click()
        assert svg.get_dom_attribute("viewBox") == fit
        # The last site's node 0 carries token activations: its prompts are the text too.
        node = browser.find_element(By.CSS_SELECTOR, f'circle[data-id="{len(view.sites) - 1}:0"]')
        browser.execute_script(  # a click's events: a press that is not a drag, then the click
            "for (const e of ['pointerdown', 'pointerup']) arguments[0].dispatchEvent("
            "new PointerEvent(e, {bubbles: true}));"
            "arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))",
            node,
        )
        assert browser.find_element(By.ID, "nodename").text.startswith(view.sites[-1]["name"])
        tokens = browser.execute_script(
            "return [...document.querySelectorAll('#panel .prompt')]"
            ".map(p => [...p.querySelectorAll('.tok')].map(t => t.textContent).join(''))"
        )
        assert tokens == [shown, shown]
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        browser.quit()


def test_the_summary_names_sites_by_hook_name() -> None:
    sites = node_sites(tiny_config(), final_resid=True)
    nodes = {s.name: [0, 1] if i % 3 == 0 else [] for i, s in enumerate(sites)}
    scores = {"loss": 0.1, "loss_uncalibrated": 0.2, "accuracy": 0.9}
    circuit = dataclasses.replace(
        Circuit.from_dict(_big_view().circuit),
        nodes=nodes,
        sufficiency=scores,
        necessity=scores,
        full_model=scores,
        all_ablated=scores,
    )
    line = circuit.summary().splitlines()[-1]
    kept = [s.name for i, s in enumerate(sites) if i % 3 == 0]
    assert line == "nodes by site: " + ", ".join(f"{name} 2" for name in kept)


def test_hand_edited_nodes_are_refused_with_the_entry_named(tmp_path: Path) -> None:
    """Negative or repeated indices (load_circuit), unknown sites and channels past a site's
    width (against the model): one line naming the entry, never a wrap-around or a skip."""
    good = Circuit(
        task="t", target_loss=0.15, reached_target=True, nodes={}, n_nodes=0, n_total_nodes=1,
        n_edges=0, edges_by_type={}, edges_by_layer={}, logit_scale=1.0, sufficiency={},
        necessity={}, full_model={}, all_ablated={}, loss_vs_k=[],
    ).to_dict()  # fmt: skip
    for nodes, message in [
        ({"blocks.0.attn.hook_q": [-1]}, r"nodes\['blocks\.0\.attn\.hook_q'\]: -1 is not a"),
        ({"blocks.0.attn.hook_q": [3, 3]}, "repeats a channel"),
        ({"blocks.0.attn.hook_q": ["7"]}, "'7' is not a channel index"),
    ]:
        with pytest.raises(CircuitError, match=message):
            Circuit.from_dict({**good, "nodes": nodes}, source="c.json")
    sites = node_sites(tiny_model().cfg, final_resid=False)  # d_attn 64
    check_nodes({"blocks.0.attn.hook_q": [0, 63]}, sites)
    for nodes, message in [
        ({"blocks.0.attn.hook_qq": [0]}, "'blocks.0.attn.hook_qq' is not a node site"),
        ({"blocks.9.attn.hook_q": [0]}, "'blocks.9.attn.hook_q' is not a node site"),
        ({"blocks.0.attn.hook_q": [64]}, r"blocks\.0\.attn\.hook_q channel 64 is not in \[0, 64\)"),
        ({"blocks.1.hook_resid_post": [0]}, r"final_resid=True"),
    ]:
        with pytest.raises(NodeError, match=message):
            keep_gates(sites, nodes)
        with pytest.raises(NodeError, match=message):
            count_edges(tiny_model(), sites, nodes)


# -- the hyperparameter search: an Optuna study ------------------------------------------------


def test_the_search_space_surrounds_the_centre_and_stays_valid() -> None:
    centre = Hyper(
        k_coef=1e-4, lr=3e-3, steps=500, weight_decay=1e-3, inv_beta2=0.05, init_bias=0.1,
        init_noise=0.01, temperature=1.0,
    )  # fmt: skip
    dists = space(centre)
    assert set(dists) == set(SEARCHED) == {f.name for f in dataclasses.fields(Hyper)}
    for name, dist in dists.items():
        assert dist.low <= getattr(centre, name) <= dist.high, name
        assert dist.low < dist.high, name
    assert (dists["k_coef"].low, dists["k_coef"].high) == pytest.approx((1e-5, 1e-3))
    assert (dists["steps"].low, dists["steps"].high) == (250, 1000)
    assert dists["init_bias"].high <= 1.0  # τ starts inside its clamp
    assert dists["inv_beta2"].high < 1.0


def _short_study_args(
    trained: Path, pruned: Path, out: Path, study: Path, *extra: str
) -> list[str]:
    return [
        "prune", "--model", str(trained), "--out", str(out), "--means", str(pruned / MEANS_FILE),
        "--study", str(study), *SHORT_PRUNE, *extra,
    ]  # fmt: skip


def test_a_study_file_persists_and_a_larger_budget_resumes_it(
    trained: Path, pruned: Path, tmp_path: Path
) -> None:
    study = tmp_path / "quote.db"
    run_prune(_short_study_args(trained, pruned, tmp_path / "a", study, "--budget", "2"))
    first = load_circuit(tmp_path / "a")
    assert [t["number"] for t in first.trials] == [0, 1]
    assert first.trials[0]["hyper"]["k_coef"] == PruneConfig().k_coef  # the centre first
    assert first.run["study"] == str(study)
    run_prune(_short_study_args(trained, pruned, tmp_path / "b", study, "--budget", "3"))
    second = load_circuit(tmp_path / "b")
    assert [t["number"] for t in second.trials] == [0, 1, 2]  # one new trial, two kept
    assert second.trials[:2] == first.trials
    assert all(t["state"] == "COMPLETE" for t in second.trials)
    for t in second.trials:  # every trial's parameters inside the searched space
        for name, dist in space(Hyper(**first.trials[0]["hyper"])).items():
            assert dist.low <= t["hyper"][name] <= dist.high
    # The smallest circuit that meets the target is the one kept.
    met = [t for t in second.trials if t["reached"]]
    if met:
        assert second.n_edges == min(t["n_edges"] for t in met)
    # A study of another configuration in the same file never mixes with this one.
    run_prune(_short_study_args(trained, pruned, tmp_path / "c", study, "--target-loss", "0.3"))
    assert [t["number"] for t in load_circuit(tmp_path / "c").trials] == [0]


@pytest.mark.slow
def test_a_killed_study_resumes_with_the_result_of_an_uninterrupted_one(
    trained: Path, pruned: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna

    from sparse_tf.pruning import study as study_module

    study = tmp_path / "kill.db"
    slow = ["--steps", "200"]  # long enough (seconds) to be killed mid-trial
    args = _short_study_args(trained, pruned, tmp_path / "killed", study, *slow)
    worker = subprocess.Popen(
        [sys.executable, "-m", "sparse_tf.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        running: list = []
        while not running and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.1)
            if study.exists():
                with contextlib.suppress(Exception):  # the file may be mid-creation
                    names = optuna.get_all_study_names(f"sqlite:///{study}")
                    running = [
                        t
                        for name in names
                        for t in optuna.load_study(
                            study_name=name, storage=f"sqlite:///{study}"
                        ).get_trials(states=(optuna.trial.TrialState.RUNNING,))
                    ]
        assert running, "the worker never started a trial"
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert not (tmp_path / "killed").exists() or not (tmp_path / "killed" / CIRCUIT_FILE).exists()
    monkeypatch.setattr(study_module, "HEARTBEAT_S", 1)
    monkeypatch.setattr(study_module, "GRACE_S", 2)
    time.sleep(3)  # the killed trial's heartbeat goes stale
    run_prune(args)  # the same command again: resumes
    resumed = load_circuit(tmp_path / "killed")
    assert [(t["number"], t["state"]) for t in resumed.trials] == [(0, "FAIL"), (1, "COMPLETE")]
    assert resumed.trials[1]["hyper"] == resumed.trials[0]["hyper"]  # the centre, again
    assert resumed.trials[1]["seed"] == 0  # with the killed trial's seed
    run_prune(["prune", "--model", str(trained), "--out", str(tmp_path / "plain"), "--means",
               str(pruned / MEANS_FILE), *SHORT_PRUNE, *slow])  # fmt: skip
    assert resumed.nodes == load_circuit(tmp_path / "plain").nodes


@pytest.mark.slow
def test_parallel_workers_share_a_study(trained: Path, pruned: Path, tmp_path: Path) -> None:
    study = tmp_path / "shared.db"
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sparse_tf.cli",
                *_short_study_args(trained, pruned, tmp_path / f"w{i}", study, "--budget", "3"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == TARGET_MISSED_STATUS, err  # the tiny model's circuits miss it
    a, b = (load_circuit(tmp_path / f"w{i}") for i in range(2))
    numbers = [t["number"] for t in b.trials if t["state"] == "COMPLETE"]
    assert 3 <= len(numbers) <= 4  # the budget, overshot by at most one trial per extra worker
    assert len(set(numbers)) == len(numbers)
    for c in (a, b):  # whichever finished, the study's best circuit
        assert c.trials[0]["hyper"]["k_coef"] == PruneConfig().k_coef


def test_a_study_path_that_is_not_a_study_is_refused_untouched(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = tmp_path / "notes.db"
    notes.write_text("my notes")
    for study, needle in [
        (notes, "not an SQLite database"),
        (tmp_path / "missing" / "s.db", "folder does not exist"),
    ]:
        with pytest.raises(SystemExit):
            main(
                ["prune", "--model", str(trained), "--out", str(tmp_path / "o"),
                 "--study", str(study), *SHORT_PRUNE]
            )  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert needle in err, err
        assert len(err.splitlines()) == 1, err
    assert notes.read_text() == "my notes"
    assert not (tmp_path / "o").exists()

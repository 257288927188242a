"""Analysis building blocks on planted ground truth: what they must recover, and nulls that
behave as nulls."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse_tf import GPT
from sparse_tf.analysis import (
    SubspaceEdit,
    apply_edit,
    cca,
    dims_at_variance,
    explained_variance,
    haar_orthogonal,
    nearest_signed_permutation,
    orthonormalize,
    principal_angles,
    procrustes,
    projector,
    projector_overlap,
    random_overlap_baseline,
    subspace_hook,
    weighted_pca,
)
from tests.helpers import tiny_config, tokens


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_procrustes_recovers_a_planted_rotation_and_reflection(rng: np.random.Generator) -> None:
    d = 12
    a = rng.standard_normal((500, d)) * np.linspace(0.5, 3.0, d) + 4.0  # anisotropic, off-centre
    r = haar_orthogonal(d, rng)
    if np.linalg.det(r) > 0:
        r[:, 0] *= -1  # a reflection: Procrustes works in O(d), not SO(d)
    b = (a - a.mean(0)) @ r + rng.standard_normal(d)  # another centre
    fitted = procrustes(a, b)
    np.testing.assert_allclose(fitted, r, atol=1e-10)
    assert explained_variance((a - a.mean(0)) @ fitted + b.mean(0), b) == pytest.approx(1.0)
    # Null: unrelated targets get nothing out of a rotation.
    other = rng.standard_normal((500, d))
    assert explained_variance((a - a.mean(0)) @ procrustes(a, other), other - other.mean(0)) < 0.1


def test_haar_rotations_look_haar_and_signed_permutations_are_found(
    rng: np.random.Generator,
) -> None:
    d = 16
    draws = [haar_orthogonal(d, rng) for _ in range(200)]
    for q in draws[:3]:
        np.testing.assert_allclose(q.T @ q, np.eye(d), atol=1e-12)
    traces = np.array([np.trace(q) for q in draws])
    assert abs(traces.mean()) < 0.25  # E tr = 0 under Haar on O(d)
    distances = np.array([np.linalg.norm(q - np.eye(d)) for q in draws])
    assert abs(distances.mean() - np.sqrt(2 * d)) < 0.3
    perm = np.eye(d)[rng.permutation(d)] * rng.choice([-1.0, 1.0], d)[:, None]
    p, dist = nearest_signed_permutation(perm)
    np.testing.assert_array_equal(p, perm)
    assert dist == 0.0
    _, haar_dist = nearest_signed_permutation(draws[0])
    assert 0.7 * np.sqrt(2 * d - 2) < haar_dist <= np.sqrt(2 * d)


def test_subspace_comparisons_and_their_random_baseline(rng: np.random.Generator) -> None:
    d, r = 40, 3
    q = orthonormalize(rng.standard_normal((d, r)))
    assert q.shape == (d, r)
    np.testing.assert_allclose(principal_angles(q, q @ haar_orthogonal(r, rng)), 0, atol=1e-5)
    assert projector_overlap(q, q) == pytest.approx(1.0)
    np.testing.assert_allclose(projector(q) @ projector(q), projector(q), atol=1e-12)
    complement = orthonormalize((np.eye(d) - projector(q)) @ rng.standard_normal((d, r)))
    np.testing.assert_allclose(principal_angles(q, complement), 90.0, atol=1e-6)
    assert projector_overlap(q, complement) == pytest.approx(0.0, abs=1e-12)
    overlaps = [
        projector_overlap(q, orthonormalize(rng.standard_normal((d, r)))) for _ in range(400)
    ]
    assert np.mean(overlaps) == pytest.approx(random_overlap_baseline(r, r, d), rel=0.1)
    # Rank deficiency is detected: a rank-2 matrix of 3 columns gives 2 basis vectors.
    assert orthonormalize(np.c_[q[:, :2], q[:, 0] + q[:, 1]]).shape == (d, 2)


def test_cca_finds_shared_linear_structure_and_not_noise(rng: np.random.Generator) -> None:
    x = rng.standard_normal((2000, 4))
    mix = rng.standard_normal((4, 4))
    np.testing.assert_allclose(cca(x, x @ mix + 3.0), 1.0, atol=1e-6)
    noise = cca(x, rng.standard_normal((2000, 4)))
    assert noise.max() < 0.1
    partial = cca(x, np.c_[x[:, :2] @ mix[:2, :2], rng.standard_normal((2000, 2))], k=3)
    assert partial.shape == (3,)
    np.testing.assert_allclose(partial[:2], 1.0, atol=1e-6)
    assert partial[2] < 0.1


def test_weighted_pca_counts_planted_dimensions(rng: np.random.Generator) -> None:
    d, k = 30, 5
    basis = orthonormalize(rng.standard_normal((d, k)))
    x = rng.standard_normal((3000, k)) * np.array([5, 4, 3, 2, 1.5]) @ basis.T
    x += 1e-3 * rng.standard_normal(x.shape)
    axes, ratios = weighted_pca(x)
    assert dims_at_variance(ratios, 0.999) == k
    assert dims_at_variance(ratios, 0.5) == 2  # 25 + 16 of 56.25
    np.testing.assert_allclose(principal_angles(axes[:, :k], basis), 0, atol=0.1)
    # A weight of 2 is the sample counted twice.
    w = rng.integers(1, 3, len(x)).astype(float)
    repeated = np.repeat(x, w.astype(int), axis=0)
    np.testing.assert_allclose(weighted_pca(x, w)[1], weighted_pca(repeated)[1], atol=1e-10)
    with pytest.raises(ValueError, match="weights"):
        weighted_pca(x, -w)


def test_interventions_decompose_reflect_and_fill(rng: np.random.Generator) -> None:
    d = 16
    q = orthonormalize(rng.standard_normal((d, 3)))
    mu = torch.tensor(rng.standard_normal(d), dtype=torch.float32)
    h = torch.randn(2, 5, d)
    keep, remove = apply_edit(h, SubspaceEdit(q, "keep")), apply_edit(h, SubspaceEdit(q, "remove"))
    torch.testing.assert_close(keep + remove, h)
    flip = SubspaceEdit(q, "flip", mean=mu)
    torch.testing.assert_close(apply_edit(apply_edit(h, flip), flip), h, atol=1e-5, rtol=0)
    torch.testing.assert_close(apply_edit(mu.expand(2, 5, d), SubspaceEdit(q, "keep", mu)),
                               mu.expand(2, 5, d))  # fmt: skip
    torch.testing.assert_close(apply_edit(h, SubspaceEdit(q, "scale", scale=1.0)), h)
    torch.testing.assert_close(
        apply_edit(h, SubspaceEdit(q, "scale", scale=0.0)), remove, atol=1e-6, rtol=0
    )
    last = apply_edit(h, SubspaceEdit(q, "remove", positions="last"))
    torch.testing.assert_close(last[:, :-1], h[:, :-1])
    torch.testing.assert_close(last[:, -1], remove[:, -1])
    with pytest.raises(ValueError, match="mode"):
        SubspaceEdit(q, "erase")  # type: ignore[arg-type]


def test_a_subspace_hook_edits_the_model_where_it_is_attached() -> None:
    model = GPT(tiny_config(n_layer=2)).eval()
    t = tokens(model.cfg)
    d = model.cfg.d_model
    everything, nothing = np.eye(d), np.zeros((d, 0))
    site = "blocks.1.hook_resid_pre"
    with torch.no_grad():
        clean = model(t)
        kept = model.run_with_hooks(
            t, fwd_hooks=[(site, subspace_hook(SubspaceEdit(everything, "keep")))]
        )
        none = model.run_with_hooks(
            t, fwd_hooks=[(site, subspace_hook(SubspaceEdit(nothing, "keep")))]
        )
    torch.testing.assert_close(kept, clean, atol=1e-5, rtol=0)
    assert not torch.allclose(none, clean, atol=1e-3)


def planted(rng: np.random.Generator, n: int = 20000, d: int = 24) -> tuple[np.ndarray, ...]:
    """Activations with a 3-D core B (varied and read), a loud direction nobody reads, a
    read direction that never varies, and noise; the linear readout W [5, d]."""
    basis = orthonormalize(rng.standard_normal((d, 5)))
    core, loud, silent = basis[:, :3], basis[:, 3], basis[:, 4]
    z = rng.standard_normal((n, 3)) * np.array([3.0, 2.0, 1.0])
    acts = z @ core.T + 5.0 * rng.standard_normal((n, 1)) * loud + 0.01 * rng.standard_normal(
        (n, d)
    ) + 2.0  # fmt: skip
    readout = rng.standard_normal((5, 3)) @ core.T + 4.0 * rng.standard_normal((5, 1)) * silent
    return acts, readout, core


def test_ace_finds_the_planted_core_and_only_it(rng: np.random.Generator) -> None:
    from sparse_tf.analysis.ace import extract_core

    acts, readout, core = planted(rng)
    found = extract_core(acts, readout=readout, threshold=0.999)
    assert found.rank == 3
    # Within a few degrees: in a finite sample the loud direction correlates a little with the
    # weakest core mode, and L_c amplifies that by √(loud variance / mode variance).
    np.testing.assert_allclose(principal_angles(found.basis, core), 0.0, atol=5.0)  # degrees
    axes, _ = weighted_pca(acts)
    top = axes[:, 0]  # PCA's first axis is the loud unread direction; ACE ignores it
    assert np.abs(top @ core).max() < 0.01
    assert np.abs(top @ found.basis).max() < 0.1
    assert found.energy > 0.999
    np.testing.assert_allclose(found.mean, acts.mean(0))
    # The same with the observability Gramian given, and with the rank fixed.
    same = extract_core(acts, observability=readout.T @ readout, rank=2)
    assert same.rank == 2
    assert same.threshold is None
    # Sufficiency and necessity through the linear head: keep preserves the logits,
    # remove leaves only the mean's.
    h = torch.tensor(acts, dtype=torch.float32)
    w = torch.tensor(readout, dtype=torch.float32)
    logits = h @ w.T
    kept = apply_edit(h, SubspaceEdit(found.basis, "keep", mean=found.mean)) @ w.T
    removed = apply_edit(h, SubspaceEdit(found.basis, "remove", mean=found.mean)) @ w.T
    assert explained_variance(kept.numpy(), logits.numpy()) > 0.99
    assert explained_variance(removed.numpy(), logits.numpy()) < 0.01
    with pytest.raises(ValueError, match="exactly one"):
        extract_core(acts)


def test_linear_dynamics_recover_planted_eigenvalues(rng: np.random.Generator) -> None:
    from sparse_tf.analysis.ace import fit_linear_dynamics

    # The 4-state circulant chain's non-trivial spectrum: 0.75 ± 0.25i and 0.5.
    a = np.array([[0.75, 0.25, 0.0], [-0.25, 0.75, 0.0], [0.0, 0.0, 0.5]])
    z = [rng.standard_normal(3)]
    for _ in range(20000):
        z.append(z[-1] @ a + 0.1 * rng.standard_normal(3))
    z = np.array(z)
    fit = fit_linear_dynamics(z[:-1], z[1:])
    expected = np.array([0.75 + 0.25j, 0.75 - 0.25j, 0.5])
    got = sorted(fit.eigenvalues, key=lambda v: (-abs(v), v.imag))
    want = sorted(expected, key=lambda v: (-abs(v), v.imag))
    np.testing.assert_allclose(got, want, atol=0.02)
    assert 0.5 < fit.r2 < 1.0


def test_cores_of_rotated_models_match_by_cca_not_by_overlap(rng: np.random.Generator) -> None:
    """Two 'models' hold the same core in differently rotated bases: the cores' coordinates
    agree (CCA ≈ 1), their subspaces overlap no more than random ones (the null)."""
    from sparse_tf.analysis.ace import compare_cores, extract_core

    acts, readout, _ = planted(rng)
    core_a = extract_core(acts, readout=readout, threshold=0.999)
    overlaps = []
    for _ in range(30):
        r = haar_orthogonal(acts.shape[1], rng)
        core_b = extract_core(acts @ r, readout=readout @ r, threshold=0.999)
        result = compare_cores(core_a, acts, core_b, acts @ r)
        np.testing.assert_allclose(result.canonical_correlations, 1.0, atol=1e-4)
        overlaps.append(result.overlap)
    assert np.mean(overlaps) == pytest.approx(result.overlap_baseline, rel=0.35)
    same = compare_cores(core_a, acts, core_a, acts)
    assert same.overlap == pytest.approx(1.0)
    np.testing.assert_allclose(same.angles, 0.0, atol=1e-5)


def _latent_pair(
    rng: np.random.Generator, transform: np.ndarray, n: int = 6000, d: int = 16
) -> tuple[np.ndarray, ...]:
    """Model A's activations (anisotropic, off-centre) and B = A·transform + another centre
    + a little noise; split into fit and test halves."""
    a = rng.standard_normal((n, d)) * np.linspace(0.5, 3.0, d) + rng.standard_normal(d)
    b = a @ transform + rng.standard_normal(d) + 0.01 * rng.standard_normal((n, d))
    return a[: n // 2], b[: n // 2], a[n // 2 :], b[n // 2 :]


def test_rotation_analysis_separates_rotated_twins_from_unrelated_models(
    rng: np.random.Generator,
) -> None:
    from sparse_tf.analysis.rotation import compare_by_rotation

    d = 16
    haar = haar_orthogonal(d, rng)
    twin = compare_by_rotation(*_latent_pair(rng, haar, d=d), rng)
    assert twin.ev_rotated > 0.999
    assert twin.ev_linear > 0.999
    assert twin.ev_raw < 0.5  # unrotated, the twin looks like another model
    assert twin.ev_shuffled < 0.05  # the mispaired null explains nothing
    np.testing.assert_allclose(twin.rotation, haar, atol=1e-3)
    assert abs(twin.distance_to_identity - twin.haar_distance_to_identity) < 3.0
    assert twin.distance_to_signed_permutation > 0.6 * twin.haar_distance_to_signed_permutation

    perm = np.eye(d)[rng.permutation(d)] * rng.choice([-1.0, 1.0], d)
    relabelled = compare_by_rotation(*_latent_pair(rng, perm, d=d), rng)
    assert relabelled.ev_rotated > 0.999
    assert relabelled.distance_to_signed_permutation < 0.01  # a privileged basis, relabelled
    assert relabelled.haar_distance_to_signed_permutation > 3.0

    # Unrelated activations pass the Haar checks too (the paper's weak evidence), but the
    # held-out EV shows nothing is shared.
    n = 6000
    a, b = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    unrelated = compare_by_rotation(a[:3000], b[:3000], a[3000:], b[3000:], rng)
    assert unrelated.ev_rotated < 0.0
    assert abs(unrelated.distance_to_identity - unrelated.haar_distance_to_identity) < 3.0
    assert unrelated.ks_pvalue > 0.01


def test_synthetic_processes_have_their_known_structure(rng: np.random.Generator) -> None:
    from sparse_tf.data.processes import factored_process, markov_chain, tom_quantum

    chain = markov_chain()
    eig = sorted(np.linalg.eigvals(chain.transitions.sum(0)), key=lambda v: (abs(v), v.imag))
    np.testing.assert_allclose(eig, [0.5, 0.75 - 0.25j, 0.75 + 0.25j, 1.0], atol=1e-12)
    process = factored_process()
    assert process.vocab == 432
    tokens, beliefs = process.sample(300, 8, rng)
    assert tokens.shape == (300, 8)
    assert 0 <= tokens.min() <= tokens.max() < 432
    np.testing.assert_array_equal(process.compose(process.decompose(tokens)), tokens)
    for f, b in zip(process.factors, beliefs, strict=True):
        p = f.probabilities(b.reshape(-1, 3))
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-9)  # beliefs stay normalised
    np.testing.assert_allclose(beliefs[3][..., 0], 1.0, atol=1e-9)  # tom_quantum: first coord 1
    assert tom_quantum().transitions.min() < 0  # a GHMM, not an HMM
    varied, vb = process.vary_one(2, 50, 8, rng)
    parts = process.decompose(varied)
    for i in (0, 1, 3, 4):
        assert (parts[:, :, i] == parts[0, :, i]).all()  # frozen: one stream for all rows
        np.testing.assert_allclose(vb[i], vb[i][:1].repeat(50, 0))
    assert len(np.unique(parts[:, :, 2], axis=0)) > 1


def test_factored_and_joint_baselines_of_the_five_factor_process(
    rng: np.random.Generator,
) -> None:
    """The paper's numbers from the generator itself: factored beliefs need 10 dimensions
    (9 at 95%), the joint belief 242 (about 138 at 95%)."""
    from sparse_tf.analysis.factored import belief_geometry
    from sparse_tf.data.processes import factored_process

    _, beliefs = factored_process().sample(4000, 8, rng)
    g = belief_geometry(beliefs)
    assert g.factored_rank == 10
    assert g.factored_dims == 9
    assert g.joint_rank == 242
    assert 125 <= g.joint_dims <= 150


def test_vary_one_finds_orthogonal_factor_subspaces_only_when_factored(
    rng: np.random.Generator,
) -> None:
    from sparse_tf.analysis.factored import belief_regression, vary_one
    from sparse_tf.data.processes import factored_process

    process, d = factored_process(), 64
    embed_f = orthonormalize(rng.standard_normal((d, 15))).T  # [15, d]: factored, orthogonal
    embed_j = rng.standard_normal((243, d)) / np.sqrt(243)  # joint: a generic map of Π beliefs

    def factored(beliefs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(beliefs, axis=-1) @ embed_f

    def joint(beliefs: list[np.ndarray]) -> np.ndarray:
        out = beliefs[0]
        for b in beliefs[1:]:
            out = np.einsum("...i,...j->...ij", out, b).reshape(*out.shape[:-1], -1)
        return out @ embed_j

    _, beliefs = process.sample(2000, 8, rng)
    acts = factored(beliefs).reshape(-1, d) + 1e-3 * rng.standard_normal((16000, d))
    r2 = belief_regression(acts, beliefs)
    assert min(r2) > 0.99
    results = {}
    for name, embed in (("factored", factored), ("joint", joint)):
        per_factor = []
        for f in range(5):
            _, vb = process.vary_one(f, 200, 8, rng)
            a = embed(vb)  # [200, 8, d]
            per_factor.append((a - a.mean(0)).reshape(-1, d))  # per-position batch mean off
        results[name] = vary_one(per_factor, k_max=4)
    fac, jnt = results["factored"], results["joint"]
    assert fac.dims == [2, 2, 2, 2, 2]  # each factor's belief moves in its own plane
    assert fac.union_dims <= 10
    off_diagonal = ~np.eye(5, dtype=bool)
    assert fac.overlaps[off_diagonal][:, :2].max() < 1e-6  # orthogonal factor subspaces
    # A joint code: each factor's slice spans many more dimensions (its tangent directions
    # change with the frozen factors), and the slices overlap like random subspaces.
    assert sum(jnt.dims) >= 4 * sum(fac.dims)
    assert jnt.union_dims > 2 * fac.union_dims
    assert jnt.overlaps[off_diagonal][:, 1].mean() > 0.3 * jnt.baseline[1]
    np.testing.assert_allclose(fac.baseline, np.arange(1, 5) / d)


def test_synthetic_processes_are_corpora_with_their_own_symbols(tmp_path: Path) -> None:
    from sparse_tf.data import CorpusError, DataConfig, open_corpus
    from sparse_tf.data.pipeline import prepare_data

    corpus = open_corpus("process:markov4", 0.1)
    assert corpus.digest == open_corpus("process:markov4", 0.1).digest  # a pure function
    assert corpus.size == 6000
    docs = [d.split() for d in corpus.documents("train")]
    pairs = np.array([(int(a[1]), int(b[1])) for d in docs for a, b in itertools.pairwise(d)])
    stay = (pairs[:, 0] == pairs[:, 1]).mean()
    step = (pairs[:, 1] == (pairs[:, 0] + 1) % 4).mean()
    assert stay == pytest.approx(0.75, abs=0.01)
    assert stay + step == 1.0  # the chain never does anything else

    data = prepare_data(DataConfig(source="process:modadd53"), 64, 8, cache=tmp_path)
    assert data.tokenizer.get_vocab_size() == 54  # <|endoftext|> + 53 numbers
    ids = data.tokenizer.encode("n7 n50 n4").ids
    assert ids == [8, 51, 5]
    for doc in open_corpus("process:modadd53", 0.0).documents("train"):
        a, b, c = (int(s[1:]) for s in doc.split())
        assert c == (a + b) % 53

    valid = [d.split() for d in list(open_corpus("process:dyck3", 0.0).documents("train"))[::2]]
    for doc in valid[:200]:
        depth = np.cumsum([1 if s in "([{" else -1 for s in doc])
        assert depth.min() >= 0
        assert depth.max() <= 8
    with pytest.raises(CorpusError, match="unknown process"):
        open_corpus("process:lorenz", 0.1)
    with pytest.raises(CorpusError, match="unknown process"):
        open_corpus("process:factored-eps2", 0.1)

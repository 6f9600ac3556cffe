"""SVD-Prune against an independent brute-force reference (numpy, explicit loops over tokens)."""
import numpy as np
import pytest
import torch

from svdprune.svd import leverage, leverage_scores, select_tokens, spectral_rank, top_k_raster


def reference_leverage(x: np.ndarray, tau: float) -> tuple[np.ndarray, int]:
    """Eqs. 1-4 of the paper for one image, written out: x (N, D) float64."""
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    energy = s ** 2 / np.sum(s ** 2)
    rank = int(np.sum(s > s[0] * max(x.shape) * np.finfo(np.float32).eps))
    r, cumulative = 0, 0.0
    while r < len(s) and cumulative < tau:
        cumulative += energy[r]
        r += 1
    r = max(1, min(r, rank))
    scores = np.zeros(x.shape[0])
    for i in range(x.shape[0]):
        for j in range(r):
            scores[i] += u[i, j] ** 2
    return scores / r, r


def reference_select(scores: np.ndarray, k: int) -> list[int]:
    """Top-k by score, ties to the lower index, back in raster order."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(order[:k])


def random_batch(seed=0, b=3, n=64, d=48):
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(b, n, d)).astype(np.float32))


def low_rank_batch(rank=5, seed=1, b=2, n=64, d=48):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(b, n, rank)) * np.array([10.0, 5.0, 3.0, 2.0, 1.0][:rank])
    return torch.from_numpy((a @ rng.normal(size=(b, rank, d))).astype(np.float32))


@pytest.mark.parametrize("make", [random_batch, low_rank_batch])
@pytest.mark.parametrize("tau", [0.3, 0.9, 0.99])
def test_leverage_scores_match_reference(make, tau):
    x = make()
    result = leverage(x, tau)
    for b in range(x.shape[0]):
        expected, r = reference_leverage(x[b].double().numpy(), tau)
        assert int(result.rank[b]) == r
        np.testing.assert_allclose(result.scores[b].numpy(), expected, rtol=1e-4, atol=1e-6)
        assert abs(float(result.scores[b].sum()) - 1.0) < 1e-5


@pytest.mark.parametrize("make", [random_batch, low_rank_batch])
@pytest.mark.parametrize("k", [1, 7, 32, 64])
def test_select_tokens_match_reference(make, k):
    x = make()
    selected = select_tokens(x, k, 0.9)
    assert selected.shape == (x.shape[0], k) and selected.dtype == torch.long
    scores = leverage_scores(x, 0.9).double().numpy()
    for b in range(x.shape[0]):
        assert selected[b].tolist() == reference_select(scores[b], k)
        expected, _ = reference_leverage(x[b].double().numpy(), 0.9)
        # the float64 reference picks the same set where its scores are not tied within float32 noise
        top = np.sort(expected)[::-1]
        if k < len(top) and top[k - 1] - top[k] > 1e-5:
            assert selected[b].tolist() == reference_select(expected, k)


def test_rank_boundaries():
    x = random_batch()
    full_rank = min(x.shape[1], x.shape[2])
    assert leverage(x, 1.0).rank.tolist() == [full_rank] * 3
    assert leverage(x, 1e-9).rank.tolist() == [1] * 3
    # a rank-5 matrix: tau = 1 needs all 5 components, never the null space
    assert leverage(low_rank_batch(rank=5), 1.0).rank.tolist() == [5, 5]
    # s = (2, 1, 1, 1, 1): energies 4/8, 1/8, ... are exact in binary, cumulative 0.5, 0.625, 0.75, 0.875, 1
    s = torch.tensor([[2.0, 1.0, 1.0, 1.0, 1.0]])
    assert spectral_rank(s, 0.5).item() == 1  # reaching tau exactly is enough (>=, not >)
    assert spectral_rank(s, 0.5000001).item() == 2
    assert spectral_rank(s, 0.75).item() == 3
    assert spectral_rank(s, 0.76).item() == 4
    assert spectral_rank(s, 1.0).item() == 5
    # zero singular values are never counted, whatever tau
    assert spectral_rank(torch.tensor([[1.0, 1.0, 0.0, 0.0]]), 1.0).item() == 2


def test_at_full_rank_uniform_leverage_is_row_norm_of_u():
    # at tau = 1 with N <= D every token has leverage 1/N (U is square orthogonal)
    x = random_batch(n=16, d=48)
    np.testing.assert_allclose(leverage_scores(x, 1.0).numpy(), np.full((3, 16), 1 / 16), rtol=1e-4)


def test_ties_go_to_lower_index_and_output_is_raster_order():
    scores = torch.tensor([[0.1, 0.3, 0.2, 0.3, 0.3, 0.0]])
    assert top_k_raster(scores, 2).tolist() == [[1, 3]]  # three tied at 0.3: the two lowest indices
    assert top_k_raster(scores, 4).tolist() == [[1, 2, 3, 4]]
    assert top_k_raster(scores, 4).tolist()[0] == reference_select(scores[0].numpy(), 4)


def test_batched_equals_one_by_one():
    x = random_batch(b=4)
    batched = select_tokens(x, 10, 0.9)
    for b in range(4):
        assert torch.equal(batched[b], select_tokens(x[b:b + 1], 10, 0.9)[0])


def test_ablation_switches_change_scores_and_stay_normalised():
    x = random_batch()
    base = leverage_scores(x, 0.9)
    for options in [dict(center=True), dict(weighting="sigma"), dict(energy="sigma")]:
        scores = leverage_scores(x, 0.9, **options)
        assert not torch.allclose(scores, base)
        np.testing.assert_allclose(scores.sum(-1).numpy(), 1.0, rtol=1e-5)


def test_centering_matches_reference_on_centred_input():
    x = random_batch()
    centred = x - x.mean(dim=1, keepdim=True)
    torch.testing.assert_close(leverage_scores(x, 0.9, center=True), leverage_scores(centred, 0.9))


def test_sigma_weighting_reference():
    x = random_batch()[0].double().numpy()
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    r = leverage(torch.from_numpy(x[None]).float(), 0.9).rank.item()
    expected = [sum(s[j] ** 2 * u[i, j] ** 2 for j in range(r)) / sum(s[:r] ** 2) for i in range(x.shape[0])]
    np.testing.assert_allclose(leverage_scores(torch.from_numpy(x[None]).float(), 0.9, weighting="sigma")[0].numpy(),
                               expected, rtol=1e-4, atol=1e-7)


def test_budget_outside_range_is_rejected():
    with pytest.raises(ValueError, match="budget must be in 1..64"):
        select_tokens(random_batch(), 65, 0.9)


@pytest.mark.parametrize("make", [random_batch, low_rank_batch])
@pytest.mark.parametrize("tau", [0.5, 0.9, 0.99])
def test_gram_solver_gives_the_same_selection(make, tau):
    x = make()
    svd, gram = leverage(x, tau), leverage(x, tau, solver="gram")
    assert torch.equal(svd.rank, gram.rank)
    torch.testing.assert_close(gram.scores, svd.scores, rtol=1e-3, atol=1e-6)
    for k in (1, 8, 16, 32):
        assert torch.equal(select_tokens(x, k, tau, solver="gram"), select_tokens(x, k, tau))


def test_gram_solver_rank_at_tau_one_ignores_null_space():
    assert leverage(low_rank_batch(rank=5), 1.0, solver="gram").rank.tolist() == [5, 5]
    assert leverage(random_batch(), 1.0, solver="gram").rank.tolist() == [48] * 3

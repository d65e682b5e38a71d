"""Metrics against closed forms: Frechet distance of Gaussians, nearest distances, precision/recall, coverage, MMD."""
import math

import pytest
import torch
from scipy.linalg import sqrtm

from diffusion_lab.evaluation import metrics as M


def test_frechet_distance_of_diagonal_gaussians_matches_closed_form():
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.5])
    var1, var2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    # ||mu1 - mu2||^2 + sum (s1 + s2 - 2 sqrt(s1 s2)) = 7.25 + (4 + 1 + 0) = 12.25
    expected = (mu1 - mu2).pow(2).sum() + (var1 + var2 - 2 * (var1 * var2).sqrt()).sum()
    got = M.frechet_distance(mu1, torch.diag(var1), mu2, torch.diag(var2))
    assert got.item() == pytest.approx(expected.item(), abs=1e-9) and expected.item() == pytest.approx(12.25)


def test_frechet_distance_of_full_covariances_matches_scipy_sqrtm():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 5, generator=g, dtype=torch.float64), torch.randn(5, 5, generator=g, dtype=torch.float64)
    c1, c2 = a @ a.T + 0.1 * torch.eye(5), b @ b.T + 0.1 * torch.eye(5)
    mu1, mu2 = torch.randn(5, generator=g, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    root = sqrtm(c1.numpy() @ c2.numpy()).real
    expected = ((mu1 - mu2) ** 2).sum().item() + (c1 + c2).trace().item() - 2 * root.trace()
    assert M.frechet_distance(mu1, c1, mu2, c2).item() == pytest.approx(expected, rel=1e-8)
    assert M.frechet_distance(mu1, c1, mu1, c1).item() == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_feature_sets_estimates_the_gaussians():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20000, 2, generator=g, dtype=torch.float64)  # N(0, I)
    y = torch.randn(20000, 2, generator=g, dtype=torch.float64) * torch.tensor([2.0, 1.0]) + torch.tensor([1.0, 0.0])
    # closed form: 1 + (1 + 4 - 2 * 2) + 0 = 2
    assert M.frechet_distance_features(x, y).item() == pytest.approx(2.0, abs=0.1)


def test_mean_distance_to_data_is_the_shift_of_a_lattice():
    grid = torch.stack(torch.meshgrid(torch.arange(5.0), torch.arange(5.0), indexing="ij"), -1).reshape(-1, 2)
    assert M.mean_distance_to_data(grid, grid).item() == 0.0
    assert M.mean_distance_to_data(grid + torch.tensor([0.3, 0.0]), grid).item() == pytest.approx(0.3, abs=1e-6)


def test_precision_recall_of_points_on_a_line():
    real = torch.arange(10.0).unsqueeze(1)  # 0, 1, ..., 9; k=1 radii are all 1
    fake = torch.tensor([[0.5], [20.0]])  # one inside the real manifold, one far away
    precision, recall = M.precision_recall(real, fake, k=1)
    assert precision.item() == 0.5  # 0.5 is within 1 of 0; 20 is not within 1 of any real point
    assert recall.item() == 1.0  # each fake point's radius is 19.5, the ball around 0.5 holds all of 0..9
    precision, recall = M.precision_recall(real, real, k=3)
    assert precision.item() == recall.item() == 1.0


def test_coverage_counts_data_points_reached_by_a_sample():
    data = torch.arange(10.0).unsqueeze(1)  # k=1 radius of every point is 1
    assert M.coverage(data, data, k=1).item() == 1.0
    assert M.coverage(torch.tensor([[0.2], [5.0]]), data, k=1).item() == pytest.approx(0.3)  # 0, 1, 5 (strictly inside)
    assert M.coverage(data + 100, data, k=1).item() == 0.0


def test_mmd_matches_the_unbiased_estimator_written_out():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(7, 2, generator=g, dtype=torch.float64), torch.randn(9, 2, generator=g, dtype=torch.float64) + 1
    k = lambda a, b: math.exp(-((a - b) ** 2).sum().item() / (2 * 0.8**2))  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(9)) / (7 * 9)
    assert M.mmd_rbf(x, y, bandwidth=0.8).item() == pytest.approx(xx + yy - 2 * xy, rel=1e-5)


def test_mmd_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(3)
    data = torch.randn(1000, 2, generator=g)
    same, shifted = torch.randn(1000, 2, generator=g), torch.randn(1000, 2, generator=g) + 1.0
    assert abs(M.mmd_rbf(same, data).item()) < 0.01 < M.mmd_rbf(shifted, data).item()


def test_knn_radii_rejects_k_beyond_the_set():
    assert M.knn_radii(torch.arange(4.0).unsqueeze(1), 2).tolist() == [2.0, 1.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="k=4"):
        M.knn_radii(torch.arange(4.0).unsqueeze(1), 4)

"""Sample-quality metrics on tensors: distances between a set of samples and a set of data points.

Point sets are (N, D): toy data as is, images as feature vectors. Everything is torch only.
"""
import torch

CHUNK = 2048  # query rows per distance matrix: bounds memory at CHUNK x M


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, projections: int = 128, seed: int = 0) -> torch.Tensor:
    """Sliced 2-Wasserstein distance between point sets x (N, D) and y (M, D) (Rabin et al. 2011).

    Each random unit direction reduces both sets to 1-D, where W2 compares sorted quantiles; the
    result averages the squared 1-D distances over directions and takes the square root.
    """
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(x.shape[1], projections, generator=g).to(x)
    theta = theta / theta.norm(dim=0, keepdim=True)  # (D, P)
    px, py = (x @ theta).sort(dim=0).values, (y.to(x) @ theta).sort(dim=0).values  # (N, P), (M, P)
    q = torch.linspace(0, 1, max(len(x), len(y)), device=x.device)
    qx = _quantiles(px, q)
    qy = _quantiles(py, q)
    return ((qx - qy) ** 2).mean().sqrt()


def _quantiles(sorted_vals: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of sorted columns (N, P) at quantile levels q (Q,)."""
    pos = q * (len(sorted_vals) - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=len(sorted_vals) - 1)
    w = (pos - lo).unsqueeze(1)
    return sorted_vals[lo] * (1 - w) + sorted_vals[hi] * w  # (Q, P)


def nearest_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean distance from each row of x (N, D) to its nearest row of y (M, D); shape (N,)."""
    y = y.to(x)
    return torch.cat([torch.cdist(xb, y).min(dim=1).values for xb in x.split(CHUNK)])


def mean_distance_to_data(samples: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """Mean distance from each sample to its nearest data point: 0 when every sample sits on the data."""
    return nearest_distance(samples, data).mean()


def knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of x (N, D) to its k-th nearest other row; shape (N,)."""
    if not 1 <= k < len(x):
        raise ValueError(f"k={k} must be in [1, {len(x) - 1}] for {len(x)} points")
    # the k+1 smallest distances of a row include the row itself at distance 0
    return torch.cat([torch.cdist(xb, x).topk(k + 1, dim=1, largest=False).values[:, k] for xb in x.split(CHUNK)])


def in_manifold(query: torch.Tensor, points: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """Whether each query row lies in the union of balls B(points_j, radii_j) (Kynkaanniemi et al. 2019, eq. 2)."""
    points, radii = points.to(query), radii.to(query)
    return torch.cat([(torch.cdist(qb, points) <= radii).any(dim=1) for qb in query.split(CHUNK)])


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, eq. 1-2) with k-NN manifolds of real and fake points.

    precision: fraction of fake points inside the real manifold (fidelity); recall: fraction of real
    points inside the fake manifold (diversity). Both in [0, 1].
    """
    precision = in_manifold(fake, real, knn_radii(real, k)).float().mean()
    recall = in_manifold(real, fake, knn_radii(fake, k)).float().mean()
    return precision, recall


def coverage(samples: torch.Tensor, data: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Fraction of data points whose k-NN ball holds at least one sample (Naeem et al. 2020, eq. 4); in [0, 1]."""
    return (nearest_distance(data, samples) < knn_radii(data, k).to(samples)).float().mean()


def _rbf_sum(a: torch.Tensor, b: torch.Tensor, h: float) -> torch.Tensor:
    """Sum of exp(-||a_i - b_j||^2 / (2 h^2)) over all pairs, a chunk of rows at a time."""
    return sum(torch.exp(-torch.cdist(ab, b) ** 2 / (2 * h**2)).sum() for ab in a.split(CHUNK))


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> torch.Tensor:
    """Unbiased squared MMD with the kernel exp(-||a - b||^2 / (2 h^2)) (Gretton et al. 2012, eq. 3).

    bandwidth h defaults to the median distance between points of y (the median heuristic on the
    data alone, so that every sample set is scored with the same kernel).
    """
    x, y = x.double(), y.double().to(x.device)
    h = float(torch.pdist(y[:2000]).median()) if bandwidth is None else bandwidth
    n, m = len(x), len(y)
    xx = (_rbf_sum(x, x, h) - n) / (n * (n - 1))  # k(a, a) = 1 on the diagonal
    yy = (_rbf_sum(y, y, h) - m) / (m * (m - 1))
    return (xx + yy - 2 * _rbf_sum(x, y, h) / (n * m)).float()


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    f = features.double()
    return f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix, by eigendecomposition."""
    w, v = torch.linalg.eigh(a)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> torch.Tensor:
    """Squared Frechet distance between N(mu1, cov1) and N(mu2, cov2) (Dowson & Landau 1982; FID, Heusel et al. 2017).

    ||mu1 - mu2||^2 + Tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)); the trace of the root is computed as
    Tr((s1 cov2 s1)^(1/2)) with s1 = cov1^(1/2), a symmetric PSD matrix with the same eigenvalues.
    """
    mu1, cov1, mu2, cov2 = (t.double() for t in (mu1, cov1, mu2, cov2))
    s1 = _sqrtm_psd(cov1)
    tr_root = torch.linalg.eigvalsh(s1 @ cov2 @ s1).clamp(min=0).sqrt().sum()
    return (mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * tr_root


def frechet_distance_features(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Frechet distance between Gaussians fitted to feature sets x (N, D) and y (M, D)."""
    return frechet_distance(*gaussian_stats(x), *gaussian_stats(y))


def image_patches(x: torch.Tensor, size: int = 4, stride: int = 2, max_patches: int = 65536,
                  seed: int = 0) -> torch.Tensor:
    """The size x size pixel patches of images x (B, C, H, W), every stride pixels, as rows (P, C * size^2).

    At most max_patches rows, a fixed random subset when there are more.
    """
    size = min(size, x.shape[-2], x.shape[-1])
    rows = torch.nn.functional.unfold(x.float(), size, stride=stride).transpose(1, 2)  # (B, L, C * size^2)
    rows = rows.reshape(-1, rows.shape[-1])  # (B * L, C * size^2)
    if len(rows) > max_patches:
        keep = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:max_patches]
        rows = rows[keep.to(rows.device)]
    return rows


def patch_frechet_distance(x: torch.Tensor, y: torch.Tensor, size: int = 4) -> torch.Tensor:
    """Frechet distance between the distributions of small pixel patches of two image sets (B, C, H, W).

    Low-level statistics (grain, blur, contrast) that a classifier's pooled features ignore: a patch-level
    distance in the spirit of the sliced Wasserstein on Laplacian-pyramid patches of Karras et al. 2018 (sec. 5).
    """
    return frechet_distance_features(image_patches(x, size), image_patches(y, size))

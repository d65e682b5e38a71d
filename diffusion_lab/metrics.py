"""Sample-quality metrics on tensors: distances between a set of samples and a set of data points."""
import torch


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

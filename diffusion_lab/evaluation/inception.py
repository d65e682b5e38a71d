"""FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) in Inception-v3 features through torchmetrics.

torch-fidelity's FeatureExtractorInceptionV3 needs the file weights-inception-2015-12-05-6726825d.pth:
torch downloads it into $TORCH_HOME/hub/checkpoints on first use, or `weights` gives a local copy.
"""
import torch

from diffusion_lab.errors import ConfigError, first_line

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"


def local_inception_weights(path: str | None = None) -> str | None:
    """The Inception weights file for FID/KID when it is on this machine (path, or torch's hub cache), else None."""
    if path:
        return path
    from pathlib import Path

    cached = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE
    return str(cached) if cached.is_file() else None


def inception_features(weights: str | None = None) -> torch.nn.Module:
    """torchmetrics' Inception-v3 (2048-d pool features); ConfigError saying how to provide the weights if absent."""
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3

        return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                  feature_extractor_weights_path=weights)
    except ModuleNotFoundError as err:
        raise ConfigError(f"metric fid/kid needs torch-fidelity ({err}): pip install torch-fidelity") from None
    except Exception as err:  # noqa: BLE001 - download and unpickling failures have many types
        why = first_line(err, 160)
        if weights:
            raise ConfigError(f"inception_weights={weights}: cannot load it ({why}); give a local copy of "
                              f"{WEIGHTS_FILE}") from None
        raise ConfigError(f"metric fid/kid: the Inception weights {WEIGHTS_FILE} are not cached and cannot be "
                          f"downloaded ({why}); pass inception_weights=PATH to a local copy of that file, or run once "
                          "online so torch caches it") from None


def to_uint8_rgb(x: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) in [-1, 1] as uint8 RGB (B, 3, H, W), the input the Inception metrics expect."""
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class InceptionMetrics:
    """FID and KID of sample sets against fixed real images, whose features are computed once."""

    def __init__(self, real: torch.Tensor, weights: str | None = None, batch_size: int = 64,
                 device: str | torch.device = "cpu"):
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        net = inception_features(weights)
        self.batch_size, self.subset_size, self.device = batch_size, min(1000, len(real)), device
        self.fid = FrechetInceptionDistance(feature=net, reset_real_features=False).to(device)
        self.kid = KernelInceptionDistance(feature=net, reset_real_features=False, subset_size=self.subset_size)
        self.kid.to(device)
        self._update(real, real=True)

    def _update(self, x: torch.Tensor, real: bool) -> None:
        for xb in x.split(self.batch_size):
            xb = to_uint8_rgb(xb).to(self.device)
            self.fid.update(xb, real=real)
            self.kid.update(xb, real=real)

    @torch.no_grad()
    def __call__(self, fake: torch.Tensor) -> dict[str, float]:
        """{"fid": ..., "kid": ...} of the images fake (B, C, H, W) in [-1, 1]."""
        self.fid.reset()
        self.kid.reset()
        self.kid.subset_size = min(self.subset_size, len(fake))  # KID draws subsets of both sets
        self._update(fake, real=False)
        with torch.random.fork_rng(devices=[]):  # KID's random subsets: the same for every call
            torch.manual_seed(0)
            kid_mean, _ = self.kid.compute()
        return {"fid": float(self.fid.compute()), "kid": float(kid_mean)}

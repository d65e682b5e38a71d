"""Tests of the latent-diffusion parts: the KL autoencoder, the noise-aware classifier and classifier guidance."""

import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from diffusion_lab.core import ClassifierGuidance, ScheduleLogLinear, sample_ddim
from diffusion_lab.errors import ConfigError
from diffusion_lab.models.classifier import NoiseAwareClassifier, noisy_classification_loss
from diffusion_lab.models.vae import VAE
from tests.helpers import ROOT


def small_vae(channels: int = 3) -> VAE:
    return VAE(in_dim=32, channels=channels, latent_channels=2, ch=8, ch_mult=(1, 2, 4), num_res_blocks=1)


def digits(n: int, offset: int = 0) -> torch.Tensor:
    """n sklearn digits (bundled, offline) upsampled to (n, 1, 32, 32) in [-1, 1]."""
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images[offset:offset + n], dtype=torch.float32)[:, None] / 8 - 1  # (n, 1, 8, 8)
    return F.interpolate(images, size=32, mode="bilinear", align_corners=False)  # (n, 1, 32, 32)




@torch.no_grad()
def held_out_mse(vae: VAE, x: torch.Tensor) -> float:
    return F.mse_loss(vae.decode(vae.mean_latent(x)), x).item()


@pytest.fixture(scope="module")
def trained() -> tuple[VAE, float, torch.Tensor]:
    """(VAE trained 120 Adam steps on 64 digits, its held-out MSE before training, the 64 held-out digits)."""
    torch.manual_seed(0)
    train, test = digits(64), digits(64, offset=1000)
    vae = small_vae(channels=1)
    before = held_out_mse(vae, test)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(120):
        batch = train[torch.randint(len(train), (16,), generator=g)]
        total, _, _ = vae.loss(batch, generator=g)
        opt.zero_grad()
        total.backward()
        opt.step()
    return vae.eval(), before, test


@pytest.mark.parametrize("channels", [3, 1])
def test_vae_latent_shape(channels):
    vae = small_vae(channels)
    x = torch.randn(2, channels, 32, 32)
    mean, logvar = vae.encode(x)
    assert vae.latent_dims == (2, 8, 8)
    assert mean.shape == logvar.shape == (2, 2, 8, 8)
    assert vae.sample_latent(x, generator=torch.Generator().manual_seed(0)).shape == (2, 2, 8, 8)
    recon, _, _ = vae(x)
    assert recon.shape == x.shape and vae.decode(mean).shape == x.shape


def test_vae_loss_parts():
    vae = small_vae(1)
    x = torch.randn(4, 1, 32, 32)
    total, recon_mse, kl = vae.loss(x, generator=torch.Generator().manual_seed(0))
    assert recon_mse > 0 and kl >= 0
    torch.testing.assert_close(total, recon_mse + vae.kl_weight * kl / x[0].numel())


@pytest.mark.parametrize("kwargs, key", [
    (dict(in_dim=30), "in_dim"), (dict(ch_mult=()), "ch_mult"), (dict(latent_channels=0), "latent_channels"),
    (dict(channels=0), "channels"), (dict(ch=3), "ch"), (dict(kl_weight=-1.0), "kl_weight"),
])
def test_vae_rejects_bad_arguments(kwargs, key):
    with pytest.raises(ConfigError, match=f"{key}="):
        VAE(**kwargs)


def test_vae_training_lowers_held_out_reconstruction_error(trained):
    vae, before, test = trained
    after = held_out_mse(vae, test)
    assert after < 0.1 * before, (before, after)
    assert after < 0.03, after  # digits span [-1, 1]: variance about 0.5


def test_fit_scale_factor_gives_unit_std_and_is_saved(trained):
    vae, _, test = trained
    vae = pickle.loads(pickle.dumps(vae))  # a copy: the fixture is shared
    scale = vae.fit_scale_factor(DataLoader(TensorDataset(test, torch.zeros(len(test))), batch_size=16),
                                 generator=torch.Generator().manual_seed(0))
    assert scale == pytest.approx(vae.scale_factor.item()) and scale != pytest.approx(1.0, rel=0.05)
    z = vae.sample_latent(test, generator=torch.Generator().manual_seed(1))  # (64, 2, 8, 8)
    assert z.std().item() == pytest.approx(1.0, rel=0.03)
    restored = small_vae(channels=1)
    restored.load_state_dict(vae.state_dict())
    assert restored.scale_factor.item() == scale
    with torch.no_grad():
        torch.testing.assert_close(restored.decode(z), vae.decode(z))
        torch.testing.assert_close(vae.decode(z[:4]), vae.decoder(z[:4] / scale))


def test_vae_and_classifier_pickle():
    x = torch.randn(2, 3, 32, 32)
    vae = small_vae()
    clf = NoiseAwareClassifier(in_dim=8, channels=2, num_classes=10, ch=16, depth=2)
    with torch.no_grad():
        torch.testing.assert_close(pickle.loads(pickle.dumps(vae)).encode(x)[0], vae.encode(x)[0])
        z = torch.randn(2, 2, 8, 8)
        torch.testing.assert_close(pickle.loads(pickle.dumps(clf))(z, 0.5), clf(z, 0.5))


def test_classifier_shapes_and_sigma_dependence():
    clf = NoiseAwareClassifier(in_dim=8, channels=2, num_classes=10, ch=16, depth=3)
    z = torch.randn(3, 2, 8, 8)
    assert clf(z, 1.0).shape == (3, 10)
    assert clf(z, torch.tensor([0.1, 1.0, 10.0])).shape == (3, 10)
    # the same network input z / sqrt(1 + 0.1^2) at two noise levels: only the sigma embedding differs
    same_input = z * ((1 + 10.0**2) / (1 + 0.1**2)) ** 0.5
    assert not torch.allclose(clf(z, 0.1), clf(same_input, 10.0), atol=1e-4)


@pytest.mark.parametrize("kwargs, key", [
    (dict(num_classes=1), "num_classes"), (dict(in_dim=6, depth=3), "in_dim"), (dict(depth=0), "depth"),
    (dict(channels=0), "channels"),
])
def test_classifier_rejects_bad_arguments(kwargs, key):
    with pytest.raises(ConfigError, match=f"{key}="):
        NoiseAwareClassifier(**kwargs)


class TwoPointDenoiser(nn.Module):
    """Exact eps for data at the two points -1 and +1 (every pixel) with equal weight."""

    input_dims = (1, 4, 4)

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("points", torch.stack([-torch.ones(self.input_dims), torch.ones(self.input_dims)]))

    def forward(self, x, sigma, cond=None):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1)  # (B or 1, 1)
        logits = -((x.flatten(1)[:, None] - self.points.flatten(1)) ** 2).sum(-1) / (2 * sigma**2)  # (B, 2)
        x0 = torch.einsum("bk,kd->bd", logits.softmax(-1), self.points.flatten(1)).view_as(x)
        return (x - x0) / sigma.view(-1, 1, 1, 1)


def train_toy_classifier(schedule) -> tuple[NoiseAwareClassifier, float, float]:
    """(classifier of which point x0 is, first loss, last loss) after 150 Adam steps."""
    torch.manual_seed(0)
    clf = NoiseAwareClassifier(in_dim=4, channels=1, num_classes=2, ch=8, depth=1)
    points = TwoPointDenoiser().points
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(150):
        labels = torch.randint(2, (128,), generator=g)
        loss, _ = noisy_classification_loss(clf, points[labels], labels, schedule, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return clf.eval(), sum(losses[:10]) / 10, sum(losses[-10:]) / 10


def test_classifier_guidance_steers_samples_to_the_label():
    schedule = ScheduleLogLinear(N=100, sigma_min=0.02, sigma_max=10.0)
    clf, first, last = train_toy_classifier(schedule)
    assert last < 0.6 * first, (first, last)
    model, sigmas, target = TwoPointDenoiser(), schedule.sample_sigmas(20), torch.ones(256, dtype=torch.long)

    def mean_prob(guidance) -> float:
        xt = sigmas[0] * torch.randn(256, 1, 4, 4, generator=torch.Generator().manual_seed(3))  # (B, 1, 4, 4)
        *_, x = sample_ddim(model, sigmas, xt=xt, cond=target if guidance else None, guidance=guidance)
        with torch.no_grad():
            return clf(x, sigmas[-1]).softmax(-1)[:, 1].mean().item()

    plain, guided = mean_prob(None), mean_prob(ClassifierGuidance(clf, scale=2.0))
    assert 0.3 < plain < 0.7, plain
    assert guided > plain + 0.3 and guided > 0.9, (plain, guided)


def test_pretrained_imports_without_diffusers():
    code = ("import sys; sys.modules['diffusers'] = sys.modules['transformers'] = None; "
            "import diffusion_lab.pretrained as p; assert p.DiffusersDenoiser and p.text_to_image")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)

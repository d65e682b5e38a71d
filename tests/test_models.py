"""Tests of the denoiser networks: the shared forward contract, conditioning and the ideal denoiser."""

import pickle

import pytest
import torch
from torch.utils.data import TensorDataset

from diffusion_lab.errors import ConfigError
from diffusion_lab.models import (
    ConditionalMLP,
    DenoiserNet,
    DiT,
    IdealDenoiser,
    SigmaEmbedding,
    TimeInputMLP,
    ToyUNet,
    Unet,
)


def small_dit(in_dim: int, **kw) -> DiT:
    return DiT(in_dim=in_dim, channels=2, patch_size=2, depth=2, head_dim=8, num_heads=2, **kw)


def small_unet(in_dim: int, **kw) -> Unet:
    return Unet(in_dim=in_dim, channels=2, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                attn_levels=(1,), dropout=0.0, **kw)


def make_models() -> list[tuple[str, DenoiserNet]]:
    torch.manual_seed(0)
    return [
        *[(f"TimeInputMLP-{d}", TimeInputMLP(dim=d, hidden_dims=(16, 32, 16))) for d in (2, 3)],
        *[(f"ConditionalMLP-{d}", ConditionalMLP(dim=d, hidden_dims=(16, 32, 16), num_classes=3)) for d in (2, 3)],
        *[(f"ToyUNet-{d}", ToyUNet(dim=d, hidden_dims=(16, 32, 16), time_dim=8, num_classes=3)) for d in (2, 3)],
        *[(f"DiT-{n}", small_dit(n, num_classes=3)) for n in (8, 16)],
        *[(f"DiT-cross-{n}", small_dit(n, num_classes=3, cond_mode="cross_attn")) for n in (8, 16)],
        *[(f"Unet-{n}", small_unet(n, num_classes=3)) for n in (8, 16)],
        ("Unet-28", Unet(in_dim=28, ch=8, ch_mult=(1, 1, 2), num_res_blocks=1, attn_levels=(1,))),
        ("IdealDenoiser-2", IdealDenoiser(torch.randn(5, 2))),
        ("IdealDenoiser-img", IdealDenoiser(torch.randn(5, 2, 8, 8))),
    ]


MODELS = make_models()
CONDITIONAL = [(name, m) for name, m in MODELS if m.num_classes > 0]


def perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Move every parameter off its (possibly zero) initial value so that every input matters."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("name, model", MODELS, ids=[n for n, _ in MODELS])
@pytest.mark.parametrize("sigma", [torch.tensor([0.1, 1.0, 10.0]), torch.tensor(0.5), 0.5], ids=["B", "0dim", "float"])
def test_output_shape_equals_input_shape(name, model, sigma):
    x = model.eval().rand_input(3)
    assert x.shape == (3, *model.input_dims)
    out = model(x, sigma)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name, model", MODELS, ids=[n for n, _ in MODELS])
def test_pickle_round_trip_gives_same_output(name, model):
    model = perturb(pickle.loads(pickle.dumps(model)))
    x = model.rand_input(3, generator=torch.Generator().manual_seed(0))
    clone = pickle.loads(pickle.dumps(model))
    torch.testing.assert_close(clone(x, 0.7), model(x, 0.7), rtol=0, atol=0)


@pytest.mark.parametrize("name, model", MODELS, ids=[n for n, _ in MODELS])
def test_sigma_extremes_stay_finite(name, model):
    x = model.eval().rand_input(2)
    assert torch.isfinite(model(x, torch.tensor([1e-4, 1e3]))).all()


def test_sigma_embedding_is_bounded_and_distinct():
    emb = SigmaEmbedding(16)
    feats = emb(torch.logspace(-4, 3, 50))  # (50, 16)
    assert feats.abs().max() <= 1.0
    assert torch.cdist(feats, feats).add(torch.eye(50)).min() > 1e-3


@pytest.mark.parametrize("name, model", CONDITIONAL, ids=[n for n, _ in CONDITIONAL])
def test_labels_change_output_and_none_means_null(name, model):
    model = perturb(pickle.loads(pickle.dumps(model)))
    x = model.rand_input(3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2])
    out0, out1 = model(x, 1.0, labels), model(x, 1.0, (labels + 1) % 3)
    assert (out0 - out1).abs().amax(dim=tuple(range(1, x.ndim))).min() > 1e-5
    null = model.null_cond(labels)
    assert null.shape == labels.shape and (null == model.num_classes).all()
    torch.testing.assert_close(model(x, 1.0, None), model(x, 1.0, null))


@pytest.mark.parametrize("name, model", CONDITIONAL, ids=[n for n, _ in CONDITIONAL])
def test_full_cond_dropout_in_training_equals_null_label(name, model):
    model = perturb(pickle.loads(pickle.dumps(model))).train()
    model.cond_dropout = 1.0  # the constructor only accepts [0, 1); set here to force every label to null
    x = model.rand_input(3)
    labels = torch.tensor([0, 1, 2])
    torch.testing.assert_close(model(x, 1.0, labels), model(x, 1.0, model.null_cond(labels)))
    model.eval()
    assert not torch.allclose(model(x, 1.0, labels), model(x, 1.0, model.null_cond(labels)))


@pytest.mark.parametrize("name, model", CONDITIONAL, ids=[n for n, _ in CONDITIONAL])
@pytest.mark.parametrize("bad", [[0, 1, 4], [-1, 0, 0]])
def test_out_of_range_labels_raise(name, model, bad):
    with pytest.raises(ConfigError, match=r"cond.*\[0, 3\]"):
        model(model.rand_input(3), 1.0, torch.tensor(bad))


UNCONDITIONAL = [TimeInputMLP(), ToyUNet(), small_dit(8), small_unet(8), IdealDenoiser(torch.ones(2, 2))]


@pytest.mark.parametrize("model", UNCONDITIONAL, ids=lambda m: type(m).__name__)
def test_unconditional_models_reject_cond_and_null_cond(model):
    labels = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ConfigError, match="unconditional"):
        model(model.rand_input(3), 1.0, labels)
    with pytest.raises(ConfigError, match="num_classes > 0 and cond_dropout > 0"):
        model.null_cond(labels)


def test_dit_cross_attn_accepts_a_condition_sequence_with_zero_null():
    model = perturb(small_dit(8, cond_mode="cross_attn"))
    x, ctx = model.rand_input(3), torch.randn(3, 5, model.width)
    assert not torch.allclose(model(x, 1.0, ctx), model(x, 1.0, ctx.flip(0)))
    torch.testing.assert_close(model.null_cond(ctx), torch.zeros_like(ctx))
    torch.testing.assert_close(model(x, 1.0, None), model(x, 1.0, torch.zeros(3, 1, model.width)))
    with pytest.raises(ConfigError, match="float cond"):
        model(x, 1.0, torch.randn(3, 5, model.width + 1))


@pytest.mark.parametrize(
    "build, key",
    [
        (lambda: DiT(in_dim=28, patch_size=3), r"patch_size=3 must divide in_dim=28"),
        (lambda: small_dit(8, cond_mode="film"), "cond_mode"),
        (lambda: Unet(in_dim=28, ch_mult=(1, 2, 2, 2)), "in_dim=28"),
        (lambda: Unet(in_dim=28, attn_levels=(3,)), "attn_levels"),
        (lambda: ToyUNet(hidden_dims=(64, 128, 64, 32)), "hidden_dims"),
        (lambda: ToyUNet(hidden_dims=(64, 128, 32)), "hidden_dims"),
        (lambda: ToyUNet(num_classes=-1), "num_classes"),
        (lambda: ConditionalMLP(cond_dropout=1.0), "cond_dropout"),
        (lambda: Unet(cond_dropout=-0.1), "cond_dropout"),
        (lambda: IdealDenoiser(torch.ones(4, 2), max_points=0), "max_points"),
    ],
)
def test_bad_constructor_arguments_raise_config_error(build, key):
    with pytest.raises(ConfigError, match=key):
        build()


def test_ideal_denoiser_one_point_is_exact():
    x0 = torch.tensor([[1.0, -2.0, 0.5]])
    model = IdealDenoiser(x0)
    x, sigma = torch.randn(4, 3), torch.tensor([0.01, 0.3, 2.0, 50.0])
    torch.testing.assert_close(model(x, sigma), (x - x0) / sigma[:, None])


def test_ideal_denoiser_two_points_match_float64_posterior():
    data = torch.tensor([[0.0, 0.0], [1.0, 0.5]])
    model = IdealDenoiser(TensorDataset(data, torch.tensor([0, 1])))  # (x, label) items
    x, sigma = torch.randn(6, 2), torch.tensor([0.1, 0.3, 0.5, 1.0, 2.0, 5.0])
    xd, dd, sd = x.double(), data.double(), sigma.double()
    d2 = ((xd[:, None] - dd[None]) ** 2).sum(-1)  # (6, 2)
    w = torch.exp(-d2 / (2 * sd[:, None] ** 2))
    x0_hat = (w / w.sum(1, keepdim=True)) @ dd  # (6, 2)
    expected = ((xd - x0_hat) / sd[:, None]).float()
    torch.testing.assert_close(model(x, sigma), expected, rtol=1e-4, atol=1e-4)


def test_ideal_denoiser_small_sigma_returns_nearest_point():
    torch.manual_seed(0)
    data = torch.randn(50, 1, 4, 4)
    model = IdealDenoiser(data, max_points=40)
    x = data[torch.tensor([3, 17, 39])] + 0.01 * torch.randn(3, 1, 4, 4)
    eps = model(x, 1e-3)
    assert torch.isfinite(eps).all()
    nearest = data[:40].flatten(1)[torch.cdist(x.flatten(1), data[:40].flatten(1)).argmin(1)].view_as(x)
    torch.testing.assert_close(x - 1e-3 * eps, nearest, rtol=0, atol=1e-5)
    assert len(list(model.parameters())) == 0 and model.data.shape == (40, 1, 4, 4)


def test_toy_mlp_sigma_features_are_sin_and_cos_of_half_log_sigma():
    sigma = torch.tensor([0.005, 0.3, 1.0, 10.0])
    seen = {}
    net = TimeInputMLP()
    net.net[0].register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
    net(torch.zeros(4, 2), sigma)
    half_log = torch.log(sigma) / 2  # smalldiffusion's get_sigma_embeds: scaling_factor 0.5
    assert torch.allclose(seen["x"][:, 2:], torch.stack([half_log.sin(), half_log.cos()], 1), atol=1e-7)


class SmalldiffusionMLP(torch.nn.Module):
    """An independent implementation of smalldiffusion's toy MLPs (model.py): Linear+GELU layers over
    [x, sin(log(sigma)/2), cos(log(sigma)/2), label embedding], the embedding (after the MLP is built) through SiLU
    and a linear layer, labels dropped to the null label with probability 0.1 in training."""

    def __init__(self, hidden=(16, 128, 128, 128, 128, 16), num_classes=0, cond_dim=4):
        super().__init__()
        widths = [2 + 2 + (cond_dim if num_classes else 0), *hidden]
        layers = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.GELU()]
        self.net = torch.nn.Sequential(*layers, torch.nn.Linear(hidden[-1], 2))
        if num_classes:
            self.embed = torch.nn.Embedding(num_classes + 1, cond_dim)
            self.embed_mlp = torch.nn.Sequential(torch.nn.SiLU(), torch.nn.Linear(cond_dim, cond_dim))
        self.num_classes = num_classes

    def forward(self, x, sigma, labels=None):
        s = torch.log(sigma).reshape(-1, 1) * 0.5
        parts = [x, torch.sin(s), torch.cos(s)]
        if self.num_classes:
            if self.training:
                labels = torch.where(torch.rand(labels.shape[0]) < 0.1, self.num_classes, labels)
            parts.append(self.embed_mlp(self.embed(labels)))
        return self.net(torch.cat(parts, 1))


def smalldiffusion_training(model, loader, sigmas, epochs):
    """smalldiffusion's training_loop: AdamW(1e-3); for each batch of a DataLoader (whose iterator draws a seed from
    the global generator each epoch), sigma from the schedule's levels by randint, then eps by randn_like, loss
    MSE(eps, model(x0 + sigma eps, sigma)); returns the losses."""
    opt, losses = torch.optim.AdamW(model.parameters(), lr=1e-3), []
    for _ in range(epochs):
        for batch in loader:
            x0, labels = batch if isinstance(batch, list) else (batch, None)
            model.train()
            opt.zero_grad()
            sigma = sigmas[torch.randint(len(sigmas), (x0.shape[0],))]
            eps = torch.randn_like(x0)
            loss = torch.nn.functional.mse_loss(model(x0 + sigma[:, None] * eps, sigma, labels), eps)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses


@pytest.mark.parametrize("conditional", [False, True], ids=["TimeInputMLP", "ConditionalMLP"])
def test_toy_mlps_train_exactly_as_smalldiffusions_seed_for_seed(conditional):
    from torch.utils.data import DataLoader, TensorDataset

    from diffusion_lab.core import PredEps, ScheduleLogLinear, training_loop
    from diffusion_lab.data import Swissroll

    x0 = Swissroll(N=100).data  # smalldiffusion's toy: its 100 points, one batch
    labels = torch.arange(100) % 3
    schedule = ScheduleLogLinear(N=200, sigma_min=0.005, sigma_max=10.0)
    loader = DataLoader(TensorDataset(x0, labels) if conditional else x0, batch_size=2048)
    torch.manual_seed(0)
    reference = SmalldiffusionMLP(num_classes=3 if conditional else 0)
    want = smalldiffusion_training(reference, loader, schedule.sigmas, 30)
    torch.manual_seed(0)
    net = ConditionalMLP(num_classes=3) if conditional else TimeInputMLP()
    got = [s.loss.item() for s in training_loop(loader, PredEps(net), schedule, epochs=30, conditional=conditional)]
    assert got == want
    ours = [p for p in net.parameters()]
    theirs = [*reference.net.parameters(), *(reference.embed.parameters() if conditional else []),
              *(reference.embed_mlp.parameters() if conditional else [])]
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_bf16_attention_on_cpu_attends_in_fp32(monkeypatch):
    """Under CPU bf16 autocast the projections run in bf16 and the attention itself in fp32 (its bf16 kernel is the
    slower one there); the result stays within bf16 rounding of fp32 attention."""
    import torch.nn.functional as F

    from diffusion_lab.models.layers import Attention

    torch.manual_seed(0)
    attn, x = Attention(64, num_heads=4), torch.randn(2, 10, 64)
    reference = attn(x)
    seen, sdpa = [], F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, k, v: seen.append(q.dtype) or sdpa(q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(x)
    assert seen == [torch.float32] and out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), reference, atol=0.03) and not torch.equal(out.float(), reference)

"""Toy data of any dimension trains, validates and is drawn: 1D histograms, 2D/3D scatters, >3D pairwise projections."""
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from diffusion_lab.data import GaussianMixture
from diffusion_lab.evaluation.plotting import save_samples, save_trajectory
from diffusion_lab.app.train import train
from tests.helpers import FAST



def assert_png(path) -> tuple[int, int]:
    """The file exists and decodes as a PNG; returns its size."""
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
        return image.size


@pytest.fixture
def figures(monkeypatch):
    """Records every matplotlib figure as it is saved: its axes' labels and its legends' entries."""
    seen = []
    save = Figure.savefig

    def record(fig, *args, **kwargs):
        axes = [ax for ax in fig.axes if ax.axison]
        legends = [lg for lg in [*fig.legends, *(ax.get_legend() for ax in axes)] if lg is not None]
        seen.append({"labels": [(ax.get_xlabel(), ax.get_ylabel()) for ax in axes],
                     "legend": {t.get_text() for lg in legends for t in lg.get_texts()},
                     "title": fig.get_suptitle() or axes[0].get_title()})
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return seen


def points(dim: int, n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    data = GaussianMixture(n_samples=2 * n, num_modes=4, dim=dim).data
    return data[:n] + 0.05 * torch.randn(n, dim), data[n:]  # samples, reference


def test_save_samples_draws_1d_points_as_histograms_of_samples_over_data(tmp_path, figures):
    x, ref = points(1)
    x[:3] = float("nan")  # a diverged sample must not break the picture
    path = save_samples(x, tmp_path / "s1.png", reference=ref, title="step 7")
    assert_png(path)
    (fig,) = figures
    assert fig["labels"] == [("$x_1$", "density")]
    assert fig["legend"] == {"samples", "data"} and fig["title"] == "step 7"


def test_save_samples_draws_5d_points_as_pairwise_projections_of_the_first_four_dims(tmp_path, figures):
    x, ref = points(5)
    path = save_samples(x, tmp_path / "s5.png", reference=ref, title="step 7")
    width, height = assert_png(path)
    (fig,) = figures
    pairs = [(1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4)]
    assert fig["labels"] == [(f"$x_{{{i}}}$", f"$x_{{{j}}}$") for i, j in pairs]
    assert fig["legend"] == {"samples", "data"} and "first 4 of 5 dims" in fig["title"]
    assert width > height  # three panels a row, two rows


def test_save_samples_without_reference_and_bad_shapes(tmp_path, figures):
    assert_png(save_samples(torch.randn(20, 1), tmp_path / "a.png"))
    assert_png(save_samples(torch.randn(20, 4), tmp_path / "b.png"))
    assert figures[0]["legend"] == {"samples"} and len(figures[1]["labels"]) == 6
    with pytest.raises(ValueError, match="reference points have 2 dimensions, samples 5"):
        save_samples(torch.randn(20, 5), tmp_path / "c.png", reference=torch.randn(20, 2))
    with pytest.raises(ValueError, match="cannot draw samples of shape"):
        save_samples(torch.randn(20, 2, 3), tmp_path / "d.png")


@pytest.mark.parametrize("dim", [1, 5])
def test_save_trajectory_of_1d_and_5d_points_draws_six_frames(tmp_path, figures, dim):
    x, ref = points(dim)
    frames = [x * s + (1 - s) * torch.randn_like(x) for s in torch.linspace(0, 1, 10)]
    assert_png(save_trajectory(frames, tmp_path / "t.png", reference=ref))
    (fig,) = figures
    assert len(fig["labels"]) == 6
    if dim == 1:
        assert fig["legend"] == {"samples", "data"} and fig["labels"][0] == ("$x_1$", "density")
    else:
        assert "$x_1$, $x_2$ of 5" in fig["title"]


@pytest.mark.parametrize("dim", [1, 5])
def test_training_on_1d_and_5d_gaussian_data_validates_and_writes_sample_pictures(compose_cfg, tmp_path, dim):
    cfg = compose_cfg([*FAST, "data=gaussian", f"data.input_dims=[{dim}]", "trainer.max_steps=4",
                       "trainer.val_check_interval=2", "callbacks.model_checkpoint.every_n_train_steps=2",
                       "data.batch_size=16", "data.val_size=32"])
    assert train(cfg) is not None  # val/swd was computed on the dim-D samples
    pictures = sorted((tmp_path / "samples").glob("*.png"))
    assert [p.name for p in pictures] == ["samples_step0000002.png", "samples_step0000004.png"]
    for p in pictures:
        assert_png(p)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["config"]["data"]["dataset"]["dim"] == dim and ckpt["config"]["model"]["dim"] == dim

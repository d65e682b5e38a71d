"""Post-hoc EMA: power-function profiles against closed forms and quadrature, reconstruction against an independent
least-squares solve, and the EMA callback's snapshots of a real run."""
import numpy as np
import pytest
import torch
from scipy import integrate

from diffusion_lab.app.train import train
from diffusion_lab.errors import ConfigError
from diffusion_lab.posthoc_ema import (PowerEMA, gamma_to_std, profile_inner_products, read_snapshots, reconstruct,
                                       reconstruction_weights, save_snapshot, std_to_gamma)
from tests.helpers import FAST, assert_same_training_state


def discrete_average(values: np.ndarray, gamma: float) -> np.ndarray:
    """The power-function average at step T of values[0..T-1] (the weights after steps 1..T), each held over its
    step: weight of step s = (s^(gamma+1) - (s-1)^(gamma+1)) / T^(gamma+1)."""
    s = np.arange(1, len(values) + 1, dtype=np.float64)
    w = (s ** (gamma + 1) - (s - 1) ** (gamma + 1)) / len(values) ** (gamma + 1)  # (T,)
    return np.tensordot(w, values, axes=1)


def test_std_and_gamma_match_the_papers_pairs_and_invert():
    # EDM2 sec. 3.1: sigma_rel 0.05 <-> gamma 16.97 and 0.10 <-> 6.94
    assert std_to_gamma(0.05) == pytest.approx(16.97, abs=0.005) and std_to_gamma(0.10) == pytest.approx(6.94, abs=0.005)
    for std in (0.01, 0.05, 0.12, 0.25):
        assert gamma_to_std(std_to_gamma(std)) == pytest.approx(std, rel=1e-10)
    for bad in (0, -0.1, 0.29, True):
        with pytest.raises(ConfigError, match=r"std=.* must be in \(0, 0.28\]"):
            std_to_gamma(bad)


def test_tracker_is_the_closed_form_power_average_of_the_trajectory():
    g = torch.Generator().manual_seed(0)
    trajectory = torch.randn(40, 3, generator=g, dtype=torch.float64).cumsum(0)  # (T, 3) weights after each step
    param = torch.zeros(3, dtype=torch.float64)
    tracker = PowerEMA([param], stds=(0.05, 0.10))
    for theta in trajectory:
        param.copy_(theta)
        tracker.update([param])
    for gamma, average in zip(tracker.gammas, tracker.averages):
        assert np.allclose(average[0].numpy(), discrete_average(trajectory.numpy(), gamma), rtol=0, atol=1e-12)


def test_inner_products_match_quadrature():
    profiles = [(std_to_gamma(0.05), 300.0), (std_to_gamma(0.10), 200.0), (std_to_gamma(0.2), 250.0)]
    for ga, ta in profiles:
        for gb, tb in profiles:
            p = lambda tau, g, t: (g + 1) * tau ** g / t ** (g + 1) if tau <= t else 0.0  # noqa: E731
            exact, _ = integrate.quad(lambda tau: p(tau, ga, ta) * p(tau, gb, tb), 0, min(ta, tb), epsabs=0,
                                      epsrel=1e-12, limit=200)
            assert profile_inner_products([ga], [ta], [gb], [tb])[0, 0] == pytest.approx(exact, rel=1e-9)


def snapshots_of(trajectory: np.ndarray, every: int, stds=(0.05, 0.10)) -> list[dict]:
    """Snapshots every `every` steps of a tracker run over trajectory (T, D), as read_snapshots gives them."""
    param = torch.zeros(trajectory.shape[1], dtype=torch.float64)
    tracker, out = PowerEMA([param], stds), []
    for t, theta in enumerate(trajectory, start=1):
        param.copy_(torch.as_tensor(theta))
        tracker.update([param])
        if t % every == 0:
            out += [{"step": t, "std": s, "gamma": g, "state": {"w": a[0].clone()}, "averaged": {"w"}}
                    for s, g, a in zip(tracker.stds, tracker.gammas, tracker.averages)]
    return out


def test_a_stored_std_reconstructs_to_its_own_snapshot():
    trajectory = np.random.default_rng(1).normal(size=(600, 5)).cumsum(0)
    snaps = snapshots_of(trajectory, every=50)
    for std, step in ((0.05, 600), (0.10, 600), (0.10, 300)):
        stored = next(s["state"]["w"] for s in snaps if s["std"] == std and s["step"] == step)
        assert torch.allclose(reconstruct(snaps, std, step)["w"], stored, rtol=0, atol=1e-6)


def independent_weights(profiles, gamma, time) -> np.ndarray:
    """The constrained least-squares weights, with the Gram matrix by quadrature and the constraint eliminated."""
    def inner(a, b):
        (ga, ta), (gb, tb) = a, b
        f = lambda tau: (ga + 1) * (gb + 1) * tau ** (ga + gb) / (ta ** (ga + 1) * tb ** (gb + 1))  # noqa: E731
        return integrate.quad(f, 0, min(ta, tb), epsabs=0, epsrel=1e-12, limit=200)[0]

    A = np.array([[inner(a, b) for b in profiles] for a in profiles])
    b = np.array([inner(a, (gamma, time)) for a in profiles])
    # x = x0 + N z with sum(x0) = 1 and N spanning sum = 0: minimize |p_r - sum x_i p_i|^2 over z
    n = len(profiles)
    x0, N = np.eye(n)[0], np.eye(n)[:, 1:] - np.eye(n)[:, :1]
    z = np.linalg.solve(N.T @ A @ N, N.T @ (b - A @ x0))
    return x0 + N @ z


def test_a_linear_trajectory_reconstructs_to_the_integral_of_its_fitted_profile():
    T, every = 400, 50
    a, b = np.array([1.0, -2.0]), np.array([0.01, 0.03])
    trajectory = a + b * np.arange(1, T + 1)[:, None]  # (T, 2): weights after step s = a + b s
    snaps = snapshots_of(trajectory, every)
    gamma = std_to_gamma(0.08)
    x = independent_weights([(s["gamma"], float(s["step"])) for s in snaps], gamma, float(T))
    assert np.allclose(reconstruction_weights([s["gamma"] for s in snaps], [s["step"] for s in snaps], gamma, T)[0],
                       x, atol=1e-6)
    # the fitted profile's average of the step-wise constant trajectory, integrated exactly per step
    s = np.arange(1, T + 1, dtype=np.float64)
    mass = sum(xi * (np.minimum(s, sn["step"]) ** (sn["gamma"] + 1) - np.minimum(s - 1, sn["step"]) ** (sn["gamma"] + 1))
               / sn["step"] ** (sn["gamma"] + 1) for xi, sn in zip(x, snaps))  # (T,) weight of each step
    assert np.allclose(reconstruct(snaps, 0.08, T)["w"].numpy(), mass @ trajectory, rtol=0, atol=1e-6)
    # and it is near the target profile's own average, within the fit error (Cauchy-Schwarz)
    _, fit_error = reconstruction_weights([s["gamma"] for s in snaps], [s["step"] for s in snaps], gamma, T)
    target = discrete_average(trajectory, gamma)
    norm_p = np.sqrt(profile_inner_products([gamma], [T], [gamma], [T])[0, 0])
    norm_theta = np.sqrt((trajectory ** 2).sum(0))  # L2 norm over (0, T] of the step-wise trajectory
    assert 0 < fit_error < 0.05
    assert np.all(np.abs(mass @ trajectory - target) <= fit_error * norm_p * norm_theta)


def test_snapshots_round_trip_and_refuse_a_foreign_file(tmp_path):
    state = {"w": torch.ones(2), "step_buffer": torch.tensor(3)}
    save_snapshot(tmp_path / "phema_step0000010.pt", 10, [0.05], [state], ["w"])
    (snap,) = read_snapshots(tmp_path)
    assert snap["step"] == 10 and snap["averaged"] == {"w"} and torch.equal(snap["state"]["w"], state["w"])
    torch.save({"w": 1}, tmp_path / "other.pt")
    with pytest.raises(Exception, match="other.pt: not a post-hoc EMA snapshot"):
        read_snapshots(tmp_path)


TRAJECTORY: list[list[torch.Tensor]] = []


class RecordWeights:
    """A callback (built from the config) that keeps the objective's parameters after every optimizer step."""

    def __new__(cls):
        import lightning as L

        class Record(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, *args):
                TRAJECTORY.append([p.detach().double().clone() for p in pl_module.objective.parameters()])

        return Record()


def test_training_writes_snapshots_of_the_closed_form_average_and_resumes_them_exactly(compose_cfg, tmp_path):
    from omegaconf import open_dict

    base = [*FAST, "trainer.max_steps=8", "trainer.val_check_interval=8", "callbacks.ema.snapshot_every=4",
            "callbacks.model_checkpoint.every_n_train_steps=4"]
    cfg = compose_cfg(base, tmp_path / "once")
    with open_dict(cfg):
        cfg.callbacks.record = {"_target_": f"{__name__}.RecordWeights"}
    TRAJECTORY.clear()
    train(cfg)
    snaps = read_snapshots(tmp_path / "once" / "ema_snapshots")
    assert [(s["step"], s["std"]) for s in snaps] == [(4, 0.05), (4, 0.1), (8, 0.05), (8, 0.1)]
    names = [n for n, _ in torch.nn.Module.named_parameters(build_objective(cfg))]
    assert len(TRAJECTORY) == 8 and snaps[0]["averaged"] == set(names)
    for snap in snaps:
        for i, name in enumerate(names):
            path = np.stack([step[i].numpy() for step in TRAJECTORY[: snap["step"]]])  # (t, *shape)
            assert np.allclose(snap["state"][name].numpy(), discrete_average(path, snap["gamma"]), atol=1e-6)

    # killed after step 4 and resumed: the same snapshots and profiles, bit for bit
    train(compose_cfg([*base, "trainer.max_steps=4"], tmp_path / "resumed"))
    resumed = compose_cfg(base, tmp_path / "resumed")
    resumed.ckpt_path = str(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    train(resumed)
    again = read_snapshots(tmp_path / "resumed" / "ema_snapshots")
    assert all(torch.equal(u["state"][k], v["state"][k]) for u, v in zip(snaps, again, strict=True) for k in u["state"])
    assert_same_training_state(tmp_path / "once" / "checkpoints" / "last.ckpt",
                               tmp_path / "resumed" / "checkpoints" / "last.ckpt")


def build_objective(cfg):
    from omegaconf import OmegaConf

    from diffusion_lab.build import build_model

    return build_model(OmegaConf.to_container(cfg, resolve=True)).objective


@pytest.fixture(scope="module")
def snapshot_run(tmp_path_factory):
    """A 12-step default run with snapshots every 3 steps."""
    from tests.helpers import compose_train

    run = tmp_path_factory.mktemp("phema_run")
    train(compose_train([*FAST, "trainer.max_steps=12", "trainer.val_check_interval=12",
                         "callbacks.ema.snapshot_every=3", "callbacks.model_checkpoint.every_n_train_steps=12"], run))
    return run


def compose_reconstruct(overrides: list[str], out_dir):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from diffusion_lab.app.config import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="reconstruct_ema", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        cfg.paths.data_dir = str(out_dir / "data")
    return cfg


def test_reconstructions_load_like_checkpoints_are_scored_and_cannot_be_resumed(snapshot_run, tmp_path, capsys):
    from diffusion_lab.app.reconstruct_ema import reconstruct_run
    from diffusion_lab.build import load_model
    from tests.helpers import compose_train

    cfg = compose_reconstruct([f"run={snapshot_run}", "std=[0.05,0.08]", "num_samples=16", "batch_size=16"], tmp_path)
    reconstruct_run(cfg)
    out = capsys.readouterr().out
    assert "fixed decay 0.999: swd=" in out and "best: std=" in out
    rows = __import__("json").loads((tmp_path / "reconstruction.json").read_text())["rows"]
    assert [r["ema"] for r in rows] == ["fixed decay 0.999", "std 0.05", "std 0.08"]
    assert all(r["num_samples"] == 16 and r["swd_floor"] > 0 for r in rows)
    # std 0.05 is tracked, so its reconstruction at the last snapshot is that snapshot; the model loads it
    stored = next(s for s in read_snapshots(snapshot_run / "ema_snapshots") if s["step"] == 12 and s["std"] == 0.05)
    model = load_model(tmp_path / "phema_std0.050.ckpt")
    for name, value in model.objective.state_dict().items():
        assert torch.allclose(value, stored["state"][name], atol=1e-6), name
    from diffusion_lab.export import export_model

    folder = export_model(tmp_path / "phema_std0.050.ckpt", tmp_path / "exported")
    assert "post-hoc EMA (relative std 0.05 at step 12) weights" in (folder / "README.md").read_text()
    assert all(torch.equal(v, model.objective.state_dict()[k]) for k, v in load_model(folder).objective.state_dict().items())
    resume = compose_train([*FAST, "trainer.max_steps=14"], tmp_path / "resume")
    resume.ckpt_path = str(tmp_path / "phema_std0.080.ckpt")
    with pytest.raises(ConfigError, match="a post-hoc EMA reconstruction holds weights to sample, not a training"):
        train(resume)


def test_a_run_without_snapshots_or_a_bad_std_is_one_line(snapshot_run, tmp_path):
    from diffusion_lab.app.reconstruct_ema import reconstruct_run
    from diffusion_lab.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no post-hoc EMA snapshots"):
        reconstruct_run(compose_reconstruct([f"run={snapshot_run / 'checkpoints'}",
                                             f"ckpt_path={snapshot_run / 'checkpoints' / 'last.ckpt'}"], tmp_path))
    with pytest.raises(ConfigError, match=r"std=0.5: a relative EMA standard deviation must be in"):
        reconstruct_run(compose_reconstruct([f"run={snapshot_run}", "std=[0.05,0.5]"], tmp_path))
    with pytest.raises(ConfigError, match=r"step=5: reconstruct at a snapshot's step \(taken at 3..12, every 3\)"):
        reconstruct_run(compose_reconstruct([f"run={snapshot_run}", "step=5", "score=false"], tmp_path))


def test_resuming_with_other_power_stds_is_one_line_naming_the_runs_setting(compose_cfg, tmp_path):
    base = [*FAST, "trainer.max_steps=4", "trainer.val_check_interval=4", "callbacks.ema.power_stds=[]"]
    train(compose_cfg(base))
    resumed = compose_cfg([*FAST, "trainer.max_steps=6", "trainer.val_check_interval=6"])
    resumed.ckpt_path = str(tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match=r"tracked no post-hoc EMA; resume with callbacks.ema.power_stds=\[\]$"):
        train(resumed)

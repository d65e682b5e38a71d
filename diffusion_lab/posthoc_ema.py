"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models", sec. 3):
power-function EMA profiles tracked while training, snapshots of them, and afterwards the EMA of any length as a
least-squares combination of the snapshots (their Algorithm 3).

    tracker = PowerEMA(model.parameters(), stds=(0.05, 0.10))   # then tracker.update(model.parameters()) per step
    state = reconstruct(read_snapshots("run/ema_snapshots"), std=0.08)   # a state_dict, as of the last snapshot

A power-function EMA of exponent gamma at time t averages the weights' trajectory theta(tau), tau in [0, t], with
the density p(tau) = (gamma + 1) tau^gamma / t^(gamma + 1) (EDM2 eq. 1). Its width relative to t is
sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))) (EDM2 eq. 2), so it grows with training. Time is
counted in optimizer steps: the update theta_hat <- beta theta_hat + (1 - beta) theta, beta = (1 - 1/t)^(gamma + 1),
at step t = 1, 2, ... gives theta_t the weight (t^(gamma+1) - (t-1)^(gamma+1)) / T^(gamma+1) at step T, which is
the integral of p over (t - 1, t]: the tracker is exactly the continuous average of the weights held constant
between steps, and the reconstruction's inner products of continuous profiles apply to it without approximation.
"""
import math
import os
from pathlib import Path

import numpy as np
import torch

from diffusion_lab.errors import CheckpointError, ConfigError

SNAPSHOT_FORMAT = "diffusion_lab/phema-1"
MAX_STD = 0.28  # sigma_rel peaks at 0.300 (gamma = -0.38); EDM2 uses 0.01 to 0.25


def std_to_gamma(std: float) -> float:
    """The exponent gamma of the power-function profile of relative standard deviation std (EDM2 eq. 2 solved for
    gamma: the largest root of gamma^3 + 7 gamma^2 + (16 - std^-2) gamma + (12 - std^-2))."""
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not 0 < std <= MAX_STD:
        raise ConfigError(f"std={std}: a relative EMA standard deviation must be in (0, {MAX_STD}]")
    c = std ** -2
    return float(max(r.real for r in np.roots([1.0, 7.0, 16.0 - c, 12.0 - c]) if abs(r.imag) < 1e-9))


def gamma_to_std(gamma: float) -> float:
    """sigma_rel of the power-function profile of exponent gamma (EDM2 eq. 2)."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


class PowerEMA:
    """Power-function EMAs of a list of tensors, one per std; `update` once per optimizer step."""

    def __init__(self, params, stds=(0.05, 0.10)):
        self.stds = [float(s) for s in stds]
        self.gammas = [std_to_gamma(s) for s in self.stds]
        self.step = 0
        params = [p.detach() for p in params]
        self.averages = [[p.clone() for p in params] for _ in self.stds]  # one list of tensors per std

    @torch.no_grad()
    def update(self, params) -> None:
        self.step += 1
        params = [p.detach() for p in params]
        for gamma, average in zip(self.gammas, self.averages):
            beta = (1 - 1 / self.step) ** (gamma + 1)  # 0 at the first step: the average starts at theta_1
            torch._foreach_lerp_(average, params, 1 - beta)

    def to(self, device) -> "PowerEMA":
        self.averages = [[a.to(device) for a in average] for average in self.averages]
        return self

    def state_dict(self) -> dict:
        return {"stds": self.stds, "step": self.step, "averages": self.averages}

    def load_state_dict(self, state: dict) -> None:
        if [float(s) for s in state["stds"]] != self.stds or len(state["averages"][0]) != len(self.averages[0]):
            raise ConfigError(f"callbacks.ema.power_stds={self.stds}: the checkpoint tracked {state['stds']} over "
                              f"{len(state['averages'][0])} tensors; resume with the run's own setting")
        self.step = int(state["step"])
        for average, saved in zip(self.averages, state["averages"]):
            torch._foreach_copy_(average, [s.to(a.device) for a, s in zip(average, saved)])


def save_snapshot(path: str | Path, step: int, stds: list[float], states: list[dict], averaged: list[str]) -> Path:
    """Writes one snapshot file atomically (a temporary file renamed): the state_dict of every profile at `step`,
    whose entries named in `averaged` are the profile's averages and the rest (buffers) the model's own."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": SNAPSHOT_FORMAT, "step": step, "stds": list(stds), "states": states,
                "averaged": list(averaged)}, tmp)
    os.replace(tmp, path)
    return path


def read_snapshots(folder: str | Path) -> list[dict]:
    """Every profile of every snapshot in folder as {"step", "std", "gamma", "state", "averaged"}, oldest first."""
    files = sorted(Path(folder).glob("*.pt"))
    if not files:
        raise CheckpointError(f"{folder}: no post-hoc EMA snapshots (train with callbacks.ema.power_stds set)")
    out = []
    for file in files:
        try:
            snap = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch.load raises many types for a truncated file
            raise CheckpointError(f"{file}: cannot read the snapshot ({type(err).__name__})") from None
        if not isinstance(snap, dict) or snap.get("format") != SNAPSHOT_FORMAT:
            raise CheckpointError(f"{file}: not a post-hoc EMA snapshot of diffusion_lab")
        out += [{"step": snap["step"], "std": std, "gamma": std_to_gamma(std), "state": state,
                 "averaged": set(snap["averaged"])} for std, state in zip(snap["stds"], snap["states"])]
    return sorted(out, key=lambda s: (s["step"], s["std"]))


def profile_inner_products(gammas_a, times_a, gammas_b, times_b) -> np.ndarray:
    """<p_a, p_b> = integral over tau of p_a(tau) p_b(tau) for power-function profiles (gamma, t), as a matrix
    (len(a), len(b)): (g_a+1)(g_b+1) min(t_a,t_b)^(g_a+g_b+1) / ((g_a+g_b+1) t_a^(g_a+1) t_b^(g_b+1)), in logs."""
    ga, ta = np.asarray(gammas_a, np.float64)[:, None], np.asarray(times_a, np.float64)[:, None]
    gb, tb = np.asarray(gammas_b, np.float64)[None, :], np.asarray(times_b, np.float64)[None, :]
    log = (np.log((ga + 1) * (gb + 1) / (ga + gb + 1)) + (ga + gb + 1) * np.log(np.minimum(ta, tb))
           - (ga + 1) * np.log(ta) - (gb + 1) * np.log(tb))
    return np.exp(log)


def reconstruction_weights(gammas, times, gamma: float, time: float) -> tuple[np.ndarray, float]:
    """Weights x of the snapshots (gammas[i], times[i]) whose combination sum_i x_i p_i is the least-squares fit of
    the profile (gamma, time) (EDM2 Algorithm 3: A x = b, A the snapshots' inner products, b theirs with the target),
    under sum_i x_i = 1 so that the fit stays an average (a weight left constant is kept exactly; unconstrained, a
    profile far from the tracked ones comes out scaled by a few percent); and the fit's relative L2 error."""
    A = profile_inner_products(gammas, times, gammas, times)  # (N, N)
    b = profile_inner_products(gammas, times, [gamma], [time])[:, 0]  # (N,)
    n = len(b)
    kkt = np.block([[A, np.ones((n, 1))], [np.ones((1, n)), np.zeros((1, 1))]])  # Lagrange multiplier of sum x = 1
    x = np.linalg.lstsq(kkt, np.append(b, 1.0), rcond=1e-12)[0][:n]
    target = profile_inner_products([gamma], [time], [gamma], [time])[0, 0]
    return x, math.sqrt(max(target - 2 * x @ b + x @ A @ x, 0.0) / target)


def fit(snapshots: list[dict], std: float, step: int | None = None) -> tuple[list[dict], np.ndarray, float]:
    """The snapshots (of read_snapshots) taken up to `step` (default: the last snapshot's), their weights in the
    power-function EMA of relative std `std` at that step, and the fit's relative L2 error."""
    steps = sorted({s["step"] for s in snapshots})
    step = steps[-1] if step is None else step
    if step not in steps:
        raise ConfigError(f"step={step}: reconstruct at a snapshot's step (taken at {steps[0]}..{steps[-1]}, every "
                          f"{steps[1] - steps[0] if len(steps) > 1 else steps[0]}); the weights after the last one "
                          "before it are unknown")
    used = [s for s in snapshots if s["step"] <= step]
    x, error = reconstruction_weights([s["gamma"] for s in used], [s["step"] for s in used], std_to_gamma(std), step)
    return used, x, error


def combine(used: list[dict], x: np.ndarray) -> dict:
    """The state_dict sum_i x_i used_i of snapshots and weights from `fit`; entries that are not averaged (buffers)
    are the newest snapshot's."""
    newest = used[-1]["state"]
    out = {}
    for name, value in newest.items():
        if name not in used[-1]["averaged"]:
            out[name] = value.clone()
            continue
        total = sum(float(w) * s["state"][name].double() for w, s in zip(x, used))
        out[name] = total.to(value.dtype)
    return out


def reconstruct(snapshots: list[dict], std: float, step: int | None = None) -> dict:
    """The state_dict of the power-function EMA of relative std `std` at `step` (default: the last snapshot's),
    from snapshots of read_snapshots taken up to that step."""
    used, x, _ = fit(snapshots, std, step)
    return combine(used, x)

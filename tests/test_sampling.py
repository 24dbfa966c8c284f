"""Flow-matching samplers on a closed-form case.

Data ``N(m, s^2)`` per dimension, noise ``N(0, 1)``, linear path ``x_t = t x1 + (1 - t) x0``:
``x_t ~ N(t m, var_t)`` with ``var_t = t^2 s^2 + (1 - t)^2`` and the exact velocity
``v(x, t) = m + (t s^2 - (1 - t)) / var_t * (x - t m)``. The exact ODE flow is
``x_t = t m + sqrt(var_t) z``, so noise ``z`` must map to ``m + s z``.
"""
import math

import pytest
import torch

from gpstoken.models.configs import SiTConfig
from gpstoken.models.sit import SiT
from gpstoken.sampling import (
    cfg_velocity,
    sample,
    sample_dopri5,
    sample_sde,
    sbdm_diffusion,
    score_from_velocity,
)

M = torch.tensor([1.5, -0.5, 0.0, 2.0], dtype=torch.float64)
S = torch.tensor([0.5, 2.0, 1.0, 0.8], dtype=torch.float64)


def gaussian_velocity(x, t, m=M, s=S):
    t = t[:, None]
    var = t**2 * s**2 + (1 - t) ** 2
    return m + (t * s**2 - (1 - t)) / var * (x - t * m)


def noise(n, seed=0):
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_score_and_diffusion_closed_form():
    x, t = noise(8), torch.full((8,), 0.3, dtype=torch.float64)
    var = t[:, None] ** 2 * S**2 + (1 - t[:, None]) ** 2
    exact_score = -(x - t[:, None] * M) / var  # grad log N(t m, var_t)
    torch.testing.assert_close(score_from_velocity(gaussian_velocity(x, t), x, t), exact_score)
    alpha, sigma, d_alpha, d_sigma = t, 1 - t, 1.0, -1.0
    torch.testing.assert_close(sbdm_diffusion(t), sigma**2 * d_alpha / alpha - sigma * d_sigma)


@pytest.mark.parametrize("method", ["euler", "heun", "dopri5"])
def test_ode_maps_noise_to_target(method):
    z = noise(4000)
    x = sample(gaussian_velocity, z, method=method, steps=101)
    tol = {"euler": 8e-2, "heun": 1e-3, "dopri5": 6e-2}[method]  # in units of s (default rtol for dopri5)
    assert ((x - (M + S * z)) / S).abs().max() < tol
    torch.testing.assert_close(x.mean(0), M, atol=4 * 2 / math.sqrt(4000), rtol=0)
    torch.testing.assert_close(x.var(0), S**2, atol=0, rtol=0.1)


def test_higher_order_solvers_are_more_accurate():
    z = noise(256)
    exact = M + S * z

    def err(method, steps):
        return (sample(gaussian_velocity, z, method=method, steps=steps) - exact).abs().max().item()

    e_euler, e_heun = err("euler", 11), err("heun", 11)
    assert err("dopri5", 11) < e_heun < e_euler / 10
    # convergence orders: halving the step divides the error by ~2 (Euler) and ~4 (Heun)
    assert 1.6 < e_euler / err("euler", 21) < 2.5
    assert 3.0 < e_heun / err("heun", 21) < 5.0


def test_dopri5_error_control():
    z = noise(64)
    exact = M + S * z
    calls = []

    def counted(x, t):
        calls.append(1)
        return gaussian_velocity(x, t)

    loose = (sample_dopri5(counted, z, rtol=1e-2, atol=1e-3) - exact).abs().max()
    n_loose = len(calls)
    calls.clear()
    tight = (sample_dopri5(counted, z, rtol=1e-8, atol=1e-10) - exact).abs().max()
    assert tight < 1e-6 < loose
    assert len(calls) > n_loose
    with pytest.raises(RuntimeError, match="max_steps"):
        sample_dopri5(gaussian_velocity, z, rtol=1e-10, atol=1e-12, max_steps=3)


def test_sde_matches_target_distribution():
    z = noise(8000)
    x = sample(gaussian_velocity, z, method="sde", steps=250, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(x.mean(0), M, atol=4 * 2 / math.sqrt(8000), rtol=0)
    torch.testing.assert_close(x.std(0), S, atol=0, rtol=0.04)


def test_sde_last_mean_step_contracts_narrow_dimensions():
    """With the official last "Mean" step (size 0.04, no noise) a dimension with s = 0.1
    ends with std ``sqrt(var_0.96) * (1 + 0.04 * (2 c - 1/0.96))``, c the velocity slope."""
    m, s = torch.zeros(4, dtype=torch.float64), torch.full((4,), 0.1, dtype=torch.float64)
    z = noise(3000)

    def v(x, t):
        return gaussian_velocity(x, t, m, s)

    gen = torch.Generator().manual_seed(2)
    official = sample_sde(v, z, steps=250, generator=gen)
    t = 0.96
    var_t = t**2 * 0.01 + (1 - t) ** 2
    slope = (t * 0.01 - (1 - t)) / var_t
    expected = math.sqrt(var_t) * (1 + 0.04 * (2 * slope - 1 / t))
    assert abs(official.std().item() / expected - 1) < 0.05
    no_last = sample_sde(v, z, steps=250, generator=gen, last_step_size=0.0)
    assert abs(no_last.std().item() / 0.1 - 1) < 0.05


def test_sde_is_deterministic_given_generator():
    z = noise(16)

    def run(seed):
        return sample(gaussian_velocity, z, method="sde", steps=20, generator=torch.Generator().manual_seed(seed))

    torch.testing.assert_close(run(5), run(5), atol=0, rtol=0)
    assert not torch.equal(run(5), run(6))


def test_sample_rejects_bad_arguments():
    z = noise(4)
    torch.testing.assert_close(sample(gaussian_velocity, z, method="ode-heun", steps=4),
                               sample(gaussian_velocity, z, method="heun", steps=4))
    with pytest.raises(ValueError, match="unknown sampling method"):
        sample(gaussian_velocity, z, method="rk4")
    with pytest.raises(TypeError, match="rtol"):
        sample(gaussian_velocity, z, method="euler", rtol=1e-3)
    with pytest.raises(ValueError, match=">= 2"):
        sample(gaussian_velocity, z, method="heun", steps=1)


def test_progress_bar_runs(capsys):
    z = noise(4)
    quiet = sample(gaussian_velocity, z, method="euler", steps=5)
    torch.testing.assert_close(sample(gaussian_velocity, z, method="euler", steps=5, progress=True), quiet)
    assert "euler" in capsys.readouterr().err


def _labelled_velocity(x, t):
    """Batch [cond; uncond]: the cond half moves by +1, the uncond half by -1 (per channel)."""
    half = x.shape[0] // 2
    sign = torch.cat([torch.ones(half), -torch.ones(half)]).to(x)
    return x + sign.reshape(-1, 1, 1, 1) * torch.arange(1, x.shape[1] + 1).to(x).reshape(1, -1, 1, 1)


def test_cfg_inside_interval_guides_first_channels_only():
    x = torch.randn(4, 3, 5, 1)
    guided = cfg_velocity(_labelled_velocity, 2.0, interval=(0.2, 0.8), n_cfg_channels=2)
    out = guided(x, torch.full((4,), 0.5))
    half = torch.cat([x[:2], x[:2]])
    ch = torch.arange(1, 4).reshape(1, -1, 1, 1).float()
    # uncond + 2 (cond - uncond) = (h - c) + 2 * 2c = h + 3c on the guided channels
    torch.testing.assert_close(out[:, :2], (half + 3 * ch)[:, :2])
    plain = _labelled_velocity(half, None)
    torch.testing.assert_close(out[:, 2:], plain[:, 2:])  # unguided channel keeps each half's output


def test_cfg_outside_interval_is_plain_and_only_t0_counts():
    x = torch.randn(4, 3, 5, 1)
    guided = cfg_velocity(_labelled_velocity, 2.0, interval=(0.2, 0.8))
    t = torch.tensor([0.9, 0.5, 0.5, 0.5])
    torch.testing.assert_close(guided(x, t), _labelled_velocity(x, t))
    inside = guided(x, torch.tensor([0.8, 0.95, 0.95, 0.95]))  # boundary included, rest of t ignored
    torch.testing.assert_close(inside[:2], inside[2:])
    with pytest.raises(ValueError, match="even batch"):
        guided(x[:3], t[:3])


def test_cfg_wrapper_matches_sit_forward_with_cfg():
    torch.manual_seed(0)
    model = SiT(SiTConfig(input_size=(8, 1), in_channels=5, hidden_size=32, depth=1, num_heads=2,
                          num_classes=3)).eval()
    for p in model.parameters():  # leave the zero init so the output depends on the labels
        torch.nn.init.normal_(p, std=0.1)
    z, g = torch.randn(2, 5, 8, 1), torch.randn(2, 8, 5)
    x, cond = torch.cat([z, z]), torch.cat([g, g])
    y = torch.tensor([0, 2, model.null_class, model.null_class])
    wrapper = cfg_velocity(lambda xx, tt: model(xx, tt, y, cond), 1.5, interval=(0.2, 0.6))
    with torch.no_grad():
        for tv in (0.3, 0.7):
            t = torch.full((4,), tv)
            torch.testing.assert_close(wrapper(x, t), model.forward_with_cfg(x, t, y, 1.5, 200, 600, cond))
        samples = sample(wrapper, x, method="euler", steps=6)
    assert samples.shape == x.shape and torch.isfinite(samples).all()

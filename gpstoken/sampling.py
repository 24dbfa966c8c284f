"""Flow-matching samplers (docs/algorithms.md section 6).

Path: linear interpolant ``x_t = t * x_data + (1 - t) * noise`` (``alpha_t = t``,
``sigma_t = 1 - t``), so ``t = 0`` is pure noise and ``t = 1`` is data. The model predicts the
velocity ``v(x, t) = E[x_data - noise | x_t = x]`` and sampling integrates from 0 to 1.

Samplers, all taking a ``velocity_fn(x [B, ...], t [B]) -> v [B, ...]``:

* ``"euler"``, ``"heun"``: fixed-step ODE solvers on ``linspace(0, 1, steps)``;
* ``"dopri5"``: adaptive Dormand-Prince 5(4) with error control (``rtol``, ``atol``);
* ``"sde"``: Euler-Maruyama on the reverse SDE with the SBDM diffusion, started at
  ``t0 = 1e-3`` and finished with a deterministic "Mean" step of size ``0.04``
  (the official ``sample_sde(diffusion_form="SBDM", last_step="Mean", last_step_size=0.04)``).

``steps`` follows the official ``num_sampling_steps``: it is the number of points of the
time grid, so ``euler`` takes ``steps - 1`` steps and ``sde`` takes ``steps - 1`` stochastic
steps plus the final mean step (``steps`` velocity evaluations in both cases).

Samplers do not change autograd mode; wrap calls in ``torch.no_grad()`` for inference.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, overload

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import validate

__all__ = [
    "SAMPLERS", "SamplingDefaults", "VelocityFn", "cfg_velocity", "check_sampling", "sample", "sample_dopri5",
    "sample_euler", "sample_heun", "sample_sde", "sbdm_diffusion", "score_from_velocity",
]

VelocityFn = Callable[[Tensor, Tensor], Tensor]
"""``(x [B, ...], t [B]) -> velocity [B, ...]``."""

METHODS = ("sde", "euler", "heun", "dopri5")
#: user-facing sampler names (``Generator.generate(sampler=...)``) -> :func:`sample` methods
SAMPLERS = {"sde": "sde", "ode": "heun", "euler": "euler", "heun": "heun", "dopri5": "dopri5"}


@dataclass(frozen=True)
class SamplingDefaults:
    """What ``Generator.generate`` uses when a sampling argument is not given.

    steps: time-grid points (official ``num_sampling_steps``); sampler: a key of
    :data:`SAMPLERS`; cfg_scale: classifier-free guidance scale (>= 1, 1 = off);
    guidance_interval: ``(low, high)`` flow times in ``[0, 1]`` where guidance applies
    (the official ``guidance_low/1000, guidance_high/1000``).
    """

    steps: int = 50
    sampler: str = "sde"
    cfg_scale: float = 1.5
    guidance_interval: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        check_sampling(self.steps, self.sampler, self.cfg_scale, self.guidance_interval)
        object.__setattr__(self, "guidance_interval", tuple(float(v) for v in self.guidance_interval))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SamplingDefaults":
        validate.config_fields(cls, d, "sampling")
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**fields)


def check_sampling(steps: Any, sampler: Any, cfg_scale: Any, guidance_interval: Any) -> None:
    """Raise ValueError/TypeError naming the argument unless the sampling settings are valid."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps: must be an int >= 2 (time-grid points), got {steps!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {sorted(SAMPLERS)}, got {sampler!r}")
    if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, (int, float)) or not 1.0 <= cfg_scale < math.inf:
        raise ValueError(f"cfg_scale: must be a finite number >= 1 (1 disables guidance), got {cfg_scale!r}")
    try:
        low, high = (float(v) for v in guidance_interval)
    except (TypeError, ValueError):
        raise ValueError(
            f"guidance_interval: expected (low, high) flow times in [0, 1], got {guidance_interval!r}") from None
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(
            f"guidance_interval: need 0 <= low <= high <= 1 (flow time; the official guidance_low=200 is 0.2), "
            f"got {guidance_interval!r}")


def _expand(t: Tensor, x: Tensor) -> Tensor:
    """``t [B]`` -> ``[B, 1, ..., 1]`` broadcastable against ``x``."""
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def _time(value: float, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), value, dtype=x.dtype, device=x.device)


def score_from_velocity(v: Tensor, x: Tensor, t: Tensor) -> Tensor:
    """Score ``grad log p_t(x)`` from the velocity, for the linear path.

    With ``x = t * x1 + (1 - t) * x0`` and ``v = E[x1 - x0 | x]``: ``x = t * v + E[x0 | x]``,
    so ``E[x0 | x] = x - t * v`` and, since the noise is standard normal,
    ``score = -E[x0 | x] / sigma_t = (t * v - x) / (1 - t)``. Singular at ``t = 1``.

    Args:
        v, x: ``[B, ...]``; t: ``[B]`` in ``[0, 1)``.
    """
    tt = _expand(t, x)
    return (tt * v - x) / (1 - tt)


@overload
def sbdm_diffusion(t: Tensor) -> Tensor: ...
@overload
def sbdm_diffusion(t: float) -> float: ...
def sbdm_diffusion(t: Tensor | float) -> Tensor | float:
    """SBDM diffusion coefficient ``w(t) = sigma_t^2 * alpha'_t / alpha_t - sigma_t * sigma'_t``.

    For the linear path (``alpha = t``, ``sigma = 1 - t``) this is
    ``(1 - t)^2 / t + (1 - t) = (1 - t) / t``: large near the noise end, zero at the data end.
    Singular at ``t = 0`` (hence the ``t0`` floor of the SDE sampler).
    """
    return (1 - t) / t


@contextmanager
def _progress(total: float, enabled: bool, desc: str) -> Iterator[Any]:
    """A tqdm bar when ``enabled``, else an object whose ``update`` is a no-op."""
    if not enabled:
        yield _NoBar()
        return
    bar = tqdm(total=total, desc=desc, leave=False)
    try:
        yield bar
    finally:
        bar.close()


class _NoBar:
    def update(self, n: float = 1) -> None:
        """Ignore progress updates."""


def _grid(steps: int, t0: float, t1: float) -> list[float]:
    if steps < 2:
        raise ValueError(f"steps is the number of time-grid points and must be >= 2, got {steps}")
    return torch.linspace(t0, t1, steps, dtype=torch.float64).tolist()


def sample_euler(velocity_fn: VelocityFn, noise: Tensor, *, steps: int = 50, progress: bool = False) -> Tensor:
    """Explicit Euler ODE integration from ``t = 0`` (``noise``) to ``t = 1``; ``steps - 1`` steps."""
    ts = _grid(steps, 0.0, 1.0)
    x = noise
    with _progress(len(ts) - 1, progress, "euler") as bar:
        for t_cur, t_next in zip(ts[:-1], ts[1:]):
            x = x + (t_next - t_cur) * velocity_fn(x, _time(t_cur, x))
            bar.update(1)
    return x


def sample_heun(velocity_fn: VelocityFn, noise: Tensor, *, steps: int = 50, progress: bool = False) -> Tensor:
    """Heun (explicit trapezoidal, 2nd order) ODE integration over ``linspace(0, 1, steps)``;
    two velocity evaluations per step."""
    ts = _grid(steps, 0.0, 1.0)
    x = noise
    with _progress(len(ts) - 1, progress, "heun") as bar:
        for t_cur, t_next in zip(ts[:-1], ts[1:]):
            dt = t_next - t_cur
            k1 = velocity_fn(x, _time(t_cur, x))
            k2 = velocity_fn(x + dt * k1, _time(t_next, x))
            x = x + 0.5 * dt * (k1 + k2)
            bar.update(1)
    return x


# Dormand-Prince 5(4) tableau; the 5th-order weights equal the last stage row (FSAL).
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_DP_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_DP_E = tuple(b5 - b4 for b5, b4 in zip(_DP_B5, _DP_B4))


def _rms(x: Tensor) -> float:
    return float(x.double().pow(2).mean().sqrt())


def sample_dopri5(
    velocity_fn: VelocityFn,
    noise: Tensor,
    *,
    rtol: float = 1e-3,
    atol: float = 1e-6,
    first_step: float | None = None,
    max_steps: int = 10_000,
    progress: bool = False,
) -> Tensor:
    """Adaptive Dormand-Prince 5(4) ODE integration from ``t = 0`` to ``t = 1``.

    One step size for the whole batch. A step is accepted when the RMS of
    ``err / (atol + rtol * max(|x|, |x_new|))`` is at most 1; the next step is scaled by
    ``0.9 * ratio^(-1/5)`` clamped to ``[0.2, 10]``. Defaults are the official ones
    (``rtol=1e-3``, ``atol=1e-6``).

    Args:
        first_step: initial step size; by default chosen from the local derivative scale.
        max_steps: bound on attempted steps; exceeding it raises ``RuntimeError``.
    """
    x = noise
    t = 0.0
    k1 = velocity_fn(x, _time(t, x))
    h = first_step if first_step is not None else _initial_step(velocity_fn, x, k1, rtol, atol)
    attempts = 0
    with _progress(1.0, progress, "dopri5") as bar:
        while t < 1.0:
            attempts += 1
            if attempts > max_steps:
                raise RuntimeError(f"dopri5 needed more than max_steps={max_steps} steps (reached t={t:.6f})")
            h = min(h, 1.0 - t)
            ks = [k1]
            for c, row in zip(_DP_C[1:], _DP_A[1:]):
                xi = x + h * sum(a * k for a, k in zip(row, ks))
                ks.append(velocity_fn(xi, _time(t + c * h, x)))
            x_new = x + h * sum(b * k for b, k in zip(_DP_B5, ks) if b)
            k_new = velocity_fn(x_new, _time(t + h, x))
            ks.append(k_new)
            err = h * sum(e * k for e, k in zip(_DP_E, ks) if e)
            scale = atol + rtol * torch.maximum(x.abs(), x_new.abs())
            ratio = _rms(err / scale)
            if not math.isfinite(ratio):
                raise RuntimeError(f"dopri5: non-finite error estimate at t={t:.6f} (velocity returned inf/nan?)")
            if ratio <= 1.0:
                t = 1.0 if 1.0 - (t + h) < 1e-12 else t + h
                x, k1 = x_new, k_new
                bar.update(h)
            factor = 10.0 if ratio == 0 else min(10.0, max(0.2, 0.9 * ratio ** -0.2))
            h *= factor
    return x


def _initial_step(velocity_fn: VelocityFn, x: Tensor, f0: Tensor, rtol: float, atol: float) -> float:
    """Hairer-Norsett-Wanner starting step for an order-5 method on ``[0, 1]``."""
    scale = atol + rtol * x.abs()
    d0, d1 = _rms(x / scale), _rms(f0 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    f1 = velocity_fn(x + h0 * f0, _time(h0, x))
    d2 = _rms((f1 - f0) / scale) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** 0.2
    return min(100 * h0, h1, 1.0)


def sample_sde(
    velocity_fn: VelocityFn,
    noise: Tensor,
    *,
    steps: int = 250,
    generator: torch.Generator | None = None,
    t0: float = 1e-3,
    last_step_size: float = 0.04,
    progress: bool = False,
) -> Tensor:
    """Euler-Maruyama on the reverse SDE with SBDM diffusion (official ``sample_sde``).

    ``dx = [v + w(t) * score] dt + sqrt(2 w(t)) dW`` with ``w = sbdm_diffusion`` and
    ``score = score_from_velocity``; this has the same marginals as the probability-flow ODE.
    The grid is ``linspace(t0, 1 - last_step_size, steps)``: ``steps - 1`` stochastic steps,
    then (when ``last_step_size > 0``) one deterministic "Mean" step
    ``x + drift(x, 1 - last_step_size) * last_step_size`` that ends at ``t = 1``.

    Args:
        noise: ``[B, ...]`` standard normal start (``t = 0``; used as the state at ``t0``).
        generator: source of the Brownian increments (must live on ``noise.device``); the same
            seed gives the same samples on the same device.
        t0: start time floor (``w`` is singular at 0).
        last_step_size: size of the final noise-free step; 0 integrates up to 1 with noise only.
    """
    if not 0 < t0 < 1 - last_step_size:
        raise ValueError(f"need 0 < t0 < 1 - last_step_size, got t0={t0}, last_step_size={last_step_size}")
    ts = _grid(steps, t0, 1.0 - last_step_size)
    dt = ts[1] - ts[0]

    def drift(x: Tensor, t: Tensor) -> Tensor:
        v = velocity_fn(x, t)
        return v + _expand(sbdm_diffusion(t), x) * score_from_velocity(v, x, t)

    x = noise
    with _progress(len(ts), progress, "sde") as bar:
        for t_cur in ts[:-1]:
            t = _time(t_cur, x)
            dw = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + drift(x, t) * dt + math.sqrt(2 * sbdm_diffusion(t_cur) * dt) * dw
            bar.update(1)
        if last_step_size > 0:
            x = x + drift(x, _time(ts[-1], x)) * last_step_size
        bar.update(1)
    return x


def sample(
    velocity_fn: VelocityFn,
    noise: Tensor,
    *,
    method: str = "sde",
    steps: int = 250,
    generator: torch.Generator | None = None,
    progress: bool = False,
    **opts: Any,
) -> Tensor:
    """Integrate ``velocity_fn`` from ``noise`` (``t = 0``) to data (``t = 1``).

    Args:
        velocity_fn: ``(x [B, ...], t [B]) -> v [B, ...]``.
        noise: ``[B, ...]`` standard normal start.
        method: ``"sde"`` (default, official), ``"euler"``, ``"heun"`` or ``"dopri5"`` (the ODE
            names may also be spelled ``"ode-euler"``, ``"ode-heun"``, ``"ode-dopri5"``).
        steps: number of time-grid points (official ``num_sampling_steps``); ignored by dopri5.
        generator: randomness of the SDE (ODE samplers are deterministic given ``noise``).
        progress: show a tqdm progress bar.
        **opts: method options: ``t0``, ``last_step_size`` (sde); ``rtol``, ``atol``,
            ``first_step``, ``max_steps`` (dopri5).

    Returns:
        ``[B, ...]`` samples at ``t = 1``.
    """
    allowed = {"sde": {"t0", "last_step_size"}, "euler": set(), "heun": set(),
               "dopri5": {"rtol", "atol", "first_step", "max_steps"}}
    method = {"ode-euler": "euler", "ode-heun": "heun", "ode-dopri5": "dopri5"}.get(method, method)
    if method not in allowed:
        raise ValueError(f"unknown sampling method {method!r}; choose from {list(METHODS)}")
    unknown = set(opts) - allowed[method]
    if unknown:
        raise TypeError(f"options {sorted(unknown)} do not apply to method {method!r} (allowed: "
                        f"{sorted(allowed[method])})")
    if method == "sde":
        return sample_sde(velocity_fn, noise, steps=steps, generator=generator, progress=progress, **opts)
    if method == "euler":
        return sample_euler(velocity_fn, noise, steps=steps, progress=progress)
    if method == "heun":
        return sample_heun(velocity_fn, noise, steps=steps, progress=progress)
    return sample_dopri5(velocity_fn, noise, progress=progress, **opts)


def cfg_velocity(
    velocity_fn: VelocityFn,
    cfg_scale: float,
    *,
    interval: tuple[float, float] = (0.0, 1.0),
    n_cfg_channels: int | None = None,
) -> VelocityFn:
    """Classifier-free guidance with a guidance interval, in the official batch layout.

    The state is ``[conditional half; unconditional half]`` (``2B`` rows) and ``velocity_fn``
    is bound to labels ``[y; null]``. Only ``t[0]`` is looked at:

    * inside ``interval[0] <= t[0] <= interval[1]`` the first half of ``x`` is duplicated and
      evaluated once; on the first ``n_cfg_channels`` channels (all by default) both halves get
      ``uncond + cfg_scale * (cond - uncond)``, the other channels keep each half's own output;
    * outside, ``velocity_fn`` runs on the full batch unchanged.

    ``interval`` is in flow time (the official ``guidance_low/1000, guidance_high/1000``).
    Take the first half of the final samples.
    """
    low, high = interval

    def guided(x: Tensor, t: Tensor) -> Tensor:
        if x.shape[0] % 2:
            raise ValueError(f"CFG needs an even batch [cond; uncond], got {x.shape[0]}")
        if not bool((t[0] >= low) & (t[0] <= high)):  # compared in t's dtype
            return velocity_fn(x, t)
        half = x[: x.shape[0] // 2]
        v = velocity_fn(torch.cat([half, half], dim=0), t)
        k = v.shape[1] if n_cfg_channels is None else n_cfg_channels
        v_cond, v_uncond = v[:, :k].chunk(2, dim=0)
        g = v_uncond + cfg_scale * (v_cond - v_uncond)
        return torch.cat([torch.cat([g, g], dim=0), v[:, k:]], dim=1)

    return guided

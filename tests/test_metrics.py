"""Metrics: PSNR / SSIM against scikit-image, the Frechet distance against a direct scipy
computation, feature moments merged across parts equal to one pass."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gpstoken.metrics import FeatureMoments, frechet_distance, psnr, ssim


def test_psnr_ssim_match_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 48, 40, generator=g) * 2 - 1
    y = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    for i in range(2):
        a = ((x[i] + 1) / 2).permute(1, 2, 0).double().numpy()
        b = ((y[i] + 1) / 2).permute(1, 2, 0).double().numpy()
        assert abs(psnr(x, y)[i].item() - metrics.peak_signal_noise_ratio(a, b, data_range=1.0)) < 1e-3
        ref = metrics.structural_similarity(a, b, data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                            use_sample_covariance=False)
        assert abs(ssim(x, y)[i].item() - ref) < 1e-4
    assert psnr(x, x).min() > 90 and torch.allclose(ssim(x, x), torch.ones(2))


def _scipy_frechet(mu1, s1, mu2, s2) -> float:
    linalg = pytest.importorskip("scipy.linalg")
    covmean = linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("dim, n", [(8, 200), (64, 40)])  # full rank, and rank-deficient (n < dim)
def test_frechet_distance_matches_scipy(dim, n):
    rng = np.random.default_rng(dim)
    a = rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim))
    b = 0.7 * rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim)) + 0.5
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    ref = _scipy_frechet(mu1, s1, mu2, s2)
    got = frechet_distance(*(torch.from_numpy(t) for t in (mu1, s1, mu2, s2)))
    assert got == pytest.approx(ref, rel=1e-6, abs=1e-6 * abs(np.trace(s1)))
    same = frechet_distance(*(torch.from_numpy(t) for t in (mu1, s1, mu1, s1)))
    assert same == pytest.approx(0, abs=1e-6 * np.trace(s1))


def test_feature_moments_merge_equals_numpy():
    rng = np.random.default_rng(0)
    f = torch.from_numpy(rng.normal(size=(50, 6)))
    parts = [FeatureMoments(6) for _ in range(3)]
    for i, chunk in enumerate(f.split([10, 25, 15])):
        parts[i].update(chunk)
    merged = FeatureMoments.from_state_dict(parts[0].state_dict())
    merged.merge(parts[1])
    merged.merge(parts[2])
    mean, cov = merged.mean_cov()
    assert merged.n == 50
    np.testing.assert_allclose(mean.numpy(), f.numpy().mean(0), atol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(f.numpy(), rowvar=False), atol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        FeatureMoments(6).mean_cov()


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="expected means"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(4), torch.eye(4))

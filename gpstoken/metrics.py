"""Image-quality metrics: PSNR, SSIM, ST-LPIPS and the Frechet distance between feature sets.

The one owner of these formulas: training (``gpstoken.train.losses``), ``gpstoken eval``
(:mod:`gpstoken.evaluate`) and the examples call them from here.

* :func:`psnr` / :func:`ssim`: per-image, images ``float [B,3,H,W]`` in ``[-1,1]`` mapped
  to ``[0,1]`` (tested against scikit-image).
* :class:`STLPIPS`: shift-tolerant LPIPS from the optional ``stlpips-pytorch`` package.
* :class:`FeatureMoments` and :func:`frechet_distance`: running first and second moments of
  feature vectors (mergeable across processes) and the Frechet distance between two
  Gaussians ``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` (FID when the features
  are the standard Inception pool features; tested against a direct scipy computation).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: how to install the optional ST-LPIPS package (see ../shared/spec/data.md)
STLPIPS_INSTALL = ("pip install --no-deps stlpips-pytorch==0.0.2 torchsummary (plus ipython, and "
                   "`pip install --no-deps torchvision` if torchvision is missing)")


def _unit(x: Tensor) -> Tensor:
    return (x.float().clamp(-1, 1) + 1) / 2


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-image PSNR in dB ``[B]`` of images ``float [B,3,H,W]`` in ``[-1,1]`` (data range 1
    after mapping to ``[0,1]``; identical images give 100 dB)."""
    mse = (_unit(x) - _unit(y)).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def _gaussian_window(size: int, sigma: float, device, dtype) -> Tensor:
    ax = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(ax ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(x: Tensor, y: Tensor, *, window: int = 11, sigma: float = 1.5, grey: bool = False) -> Tensor:
    """Per-image SSIM ``[B]`` (Wang et al. 2004: Gaussian window 11 / 1.5, K1 0.01, K2 0.03,
    valid filtering) of images ``float [B,3,H,W]`` in ``[-1,1]``, mapped to ``[0,1]``.
    ``grey=False`` averages over RGB channels; ``grey=True`` uses the BT.601 luma."""
    x, y = _unit(x), _unit(y)
    if grey:
        w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
        x, y = (x * w).sum(1, keepdim=True), (y * w).sum(1, keepdim=True)
    c = x.shape[1]
    g = _gaussian_window(window, sigma, x.device, x.dtype)
    kx = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    ky = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(z: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(z, kx, groups=c), ky, groups=c)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


# ----------------------------------------------------------------------------- ST-LPIPS


def _define_torchvision_stub_ops() -> None:
    """Register the two ``torchvision`` operator schemas its Python package checks at import,
    so a ``--no-deps`` torchvision wheel imports on a torch build it was not compiled for
    (only its model definitions are used by stlpips)."""
    lib = torch.library.Library("torchvision", "DEF")  # noqa: F841 - kept alive below
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _define_torchvision_stub_ops.lib = lib  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=None)
def import_torchvision():
    """``torchvision``, importable even where its wheel was built for another torch (see
    :func:`_define_torchvision_stub_ops`). Raises ImportError when it is not installed."""
    try:
        import torchvision
    except (ImportError, RuntimeError):
        try:
            _define_torchvision_stub_ops()
            import torchvision
        except Exception as e:  # any failure here means: not usable
            raise ImportError(f"torchvision could not be imported ({e})") from e
    return torchvision


@functools.lru_cache(maxsize=None)
def _import_stlpips():
    import_torchvision()
    from stlpips_pytorch import stlpips

    return stlpips


def stlpips_available() -> bool:
    """Whether the optional ST-LPIPS package (``stlpips-pytorch``) can be used."""
    try:
        _import_stlpips()
        return True
    except ImportError:
        return False


class STLPIPS(nn.Module):
    """Shift-tolerant LPIPS (``stlpips-pytorch``; weights ship in its wheel). Frozen, eval mode.

    ``forward(x, y)``: images ``float [B,3,H,W]`` in ``[-1,1]`` -> per-image distances ``[B]``
    (lower is better). Raises ImportError with the install command when the package is missing.
    """

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        try:
            stlpips = _import_stlpips()
        except ImportError as e:
            raise ImportError(f"ST-LPIPS needs the optional package: {STLPIPS_INSTALL}. ({e})") from e
        self.net = stlpips.LPIPS(net=net, variant="shift_tolerant", verbose=False).eval()
        self.net.requires_grad_(False)

    def train(self, mode: bool = True) -> "STLPIPS":
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.net(x.float(), y.float(), normalize=False).flatten()


# ----------------------------------------------------------------------------- Frechet distance


class FeatureMoments:
    """Running sums of feature vectors ``[B,D]`` for their mean and covariance, in float64.

    ``update`` adds a batch; ``merge`` adds another instance's sums (other processes);
    ``mean_cov`` gives the mean ``[D]`` and the unbiased covariance ``[D,D]`` (needs >= 2
    vectors). ``state_dict`` / ``from_state_dict`` move the sums through files.
    """

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, features: Tensor) -> None:
        f = features.detach().to("cpu", torch.float64).reshape(len(features), -1)
        self.n += len(f)
        self.sum += f.sum(0)
        self.outer += f.T @ f

    def merge(self, other: "FeatureMoments") -> None:
        self.n += other.n
        self.sum += other.sum
        self.outer += other.outer

    def mean_cov(self) -> tuple[Tensor, Tensor]:
        if self.n < 2:
            raise ValueError(f"FeatureMoments: a covariance needs at least 2 feature vectors, got {self.n}")
        mean = self.sum / self.n
        cov = (self.outer - self.n * torch.outer(mean, mean)) / (self.n - 1)
        return mean, cov

    def state_dict(self) -> dict[str, Tensor]:
        return {"n": torch.tensor(self.n, dtype=torch.int64), "sum": self.sum, "outer": self.outer}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> "FeatureMoments":
        m = cls(len(state["sum"]))
        m.n, m.sum, m.outer = int(state["n"]), state["sum"].double().clone(), state["outer"].double().clone()
        return m


def _sqrt_psd(s: Tensor) -> Tensor:
    """Symmetric square root of a positive semi-definite matrix (negative eigenvalues from
    rounding are clipped to 0)."""
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """Frechet distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)``: means ``[D]``,
    covariances ``[D,D]`` (symmetric PSD).

    ``tr(sqrtm(cov1 @ cov2))`` is computed as ``tr(sqrtm(A cov2 A))`` with ``A = sqrtm(cov1)``
    (a symmetric PSD matrix with the same eigenvalues), in float64 via eigh: no complex parts,
    no scipy needed.
    """
    mu1, mu2, cov1, cov2 = (t.detach().to("cpu", torch.float64) for t in (mu1, mu2, cov1, cov2))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"frechet_distance: expected means [D] and covariances [D,D], got "
                         f"{tuple(mu1.shape)}, {tuple(cov1.shape)}, {tuple(mu2.shape)}, {tuple(cov2.shape)}")
    a = _sqrt_psd((cov1 + cov1.T) / 2)
    m = a @ ((cov2 + cov2.T) / 2) @ a
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    d = (mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * tr_sqrt
    return max(float(d), 0.0)

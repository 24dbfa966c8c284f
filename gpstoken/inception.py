"""The standard FID Inception-v3 pool features (2048-d), from a maintained package.

gpstoken ships no Inception weights. :func:`load_inception` uses, in this order,

* ``torch-fidelity`` (``FeatureExtractorInceptionV3``, the TF-FID port): its weights
  ``weights-inception-2015-12-05-6726825d.pth`` come from ``weights`` (a local file, e.g.
  ``gpstoken eval --fid-weights PATH``) or are downloaded once into the torch hub cache;
* ``pytorch-fid`` (``InceptionV3`` with the FID weights ``pt_inception-2015-12-05-6726825d.pth``,
  downloaded once into the torch hub cache; it takes no weights path).

When neither can be had it returns no extractor and the reason, so callers can report
"n/a" instead of failing.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

#: what to install for rFID
FID_INSTALL = "pip install torch-fidelity (or pytorch-fid)"

Extractor = Callable[[torch.Tensor], torch.Tensor]


def _torch_fidelity(weights: Optional[str], device: torch.device) -> Extractor:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights)
    net = net.to(device).eval()

    def features(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return net(images.to(device))[0].float().cpu()

    return features


def _pytorch_fid(device: torch.device) -> Extractor:
    from pytorch_fid.inception import InceptionV3

    net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()

    def features(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return net(images.to(device).float() / 255.0)[0].flatten(1).float().cpu()

    return features


def load_inception(weights: Optional[str] = None,
                   device: torch.device | str = "cpu") -> tuple[Optional[Extractor], str]:
    """``(features, description)`` where ``features(uint8 [B,3,H,W]) -> float32 [B,2048]``,
    or ``(None, reason)`` when no backend or no weights are available."""
    device = torch.device(device)
    if weights is not None:
        try:
            return _torch_fidelity(weights, device), f"torch-fidelity InceptionV3, weights {weights}"
        except ImportError:
            return None, f"--fid-weights needs torch-fidelity ({FID_INSTALL})"
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            return None, f"cannot load the Inception weights {weights}: {e}"
    reasons = []
    backends = (("torch-fidelity", lambda: _torch_fidelity(None, device)),
                ("pytorch-fid", lambda: _pytorch_fid(device)))
    for name, make in backends:
        try:
            return make(), f"{name} InceptionV3 (standard FID weights)"
        except ImportError:
            continue
        except Exception as e:  # a failed download surfaces as URLError, HTTPError, OSError, RuntimeError ...
            reasons.append(f"{name}: {type(e).__name__}: {e}")
    if reasons:
        return None, ("the Inception weights could not be downloaded (" + "; ".join(reasons) +
                      "); pass --fid-weights PATH (torch-fidelity's weights-inception-2015-12-05-6726825d.pth)")
    return None, f"no Inception backend installed: {FID_INSTALL}"

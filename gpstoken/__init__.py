"""gpstoken: Gaussian Parameterized Spatially-adaptive image tokenization (GPSToken).

>>> import gpstoken
>>> tokens = gpstoken.encode(img, n_tokens=128)   # PIL / numpy / torch, any size >= 32
>>> img2 = gpstoken.decode(tokens)
>>> images = gpstoken.generate(class_id=3, n=4, seed=0)
"""
from .api import decode, edit_layout, encode, generate, reconstruct
from .layout import Layout, calibrate
from .partition import partition
from .pipeline import Generator, Tokenizer, load_generator, load_tokenizer
from .render import render
from .tokens import GPSTokens

__version__ = "0.1.0"

__all__ = [
    "GPSTokens", "Generator", "Layout", "Tokenizer", "calibrate", "decode", "edit_layout", "encode",
    "generate", "load_generator", "load_tokenizer", "partition", "reconstruct", "render",
]

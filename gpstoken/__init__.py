"""gpstoken: Gaussian Parameterized Spatially-adaptive image tokenization."""
__version__ = "0.1.0"
